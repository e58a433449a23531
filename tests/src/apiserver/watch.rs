//! Watch streams: newline-delimited JSON events (`ADDED`, `MODIFIED`,
//! `DELETED`, `BOOKMARK`, `ERROR`) over a chunked HTTP response.
//!
//! A watch starts from the request's resourceVersion (replaying the kept
//! history after it), or with synthetic `ADDED` events for the current state
//! when the resourceVersion is unset/"0" or `sendInitialEvents=true` (the
//! latter then ends the initial events with a `k8s.io/initial-events-end`
//! bookmark). It follows the store until `timeoutSeconds` (a clean end),
//! until [`ServerState::drop_watches`](super::ServerState::drop_watches)
//! (an abrupt end: the response body fails mid-stream), or until it has
//! fallen behind the kept history (an `ERROR` event with a 410 Status).
//! Under a selector, an object that stops matching is sent as `DELETED` and
//! one that starts matching as `ADDED`, as the real API server does.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::Frame;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use tokio::sync::watch as signal;
use tokio::time::{Instant, sleep_until};

use super::http::{Body, error_response, error_status};
use super::query::{Query, ResourceVersion};
use super::resources::ResourceType;
use super::selector::ObjectFilter;
use super::store::{Event, EventType, Store};
use super::{Error, Shared};

/// The longest `timeoutSeconds` honoured (a day), so deadlines cannot overflow.
const MAX_TIMEOUT_SECONDS: u64 = 24 * 60 * 60;

/// Answers a `watch=true` request.
pub fn start(
    shared: &Arc<Shared>,
    resource: &'static ResourceType,
    filter: ObjectFilter,
    query: &Query,
) -> Response<Body> {
    let mut stream = WatchStream::new(shared, resource, filter, query);
    let begun = stream.begin(&shared.store(), query);
    match begun {
        Ok(()) => {}
        Err(e @ Error::Expired { .. }) => stream.fail(&e),
        Err(e) => return error_response(&e),
    }
    let chunks = futures::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        Some((chunk, stream))
    });
    let mut response = Response::new(StreamBody::new(chunks.map_ok(Frame::data)).boxed_unsync());
    let json = HeaderValue::from_static("application/json");
    response.headers_mut().insert(CONTENT_TYPE, json);
    response
}

/// One open watch.
struct WatchStream {
    shared: Arc<Shared>,
    resource: &'static ResourceType,
    filter: ObjectFilter,
    /// The resourceVersion up to which the store's history has been seen.
    position: u64,
    pending: VecDeque<Bytes>,
    finished: bool,
    deadline: Instant,
    bookmarks: bool,
    next_bookmark: Instant,
    changed: signal::Receiver<u64>,
    dropped: signal::Receiver<u64>,
}

impl WatchStream {
    fn new(
        shared: &Arc<Shared>,
        resource: &'static ResourceType,
        filter: ObjectFilter,
        query: &Query,
    ) -> Self {
        let config = &shared.config;
        let timeout = query.timeout_seconds.filter(|s| *s > 0);
        let timeout = timeout.map(|s| Duration::from_secs(s.min(MAX_TIMEOUT_SECONDS)));
        let now = Instant::now();
        shared.count(resource.plural, |c| c.open_watches += 1);
        Self {
            shared: shared.clone(),
            resource,
            filter,
            position: 0,
            pending: VecDeque::new(),
            finished: false,
            deadline: now + timeout.unwrap_or(config.default_watch_timeout),
            bookmarks: query.bookmarks,
            next_bookmark: now + config.bookmark_interval,
            changed: shared.changed.subscribe(),
            dropped: shared.dropped.subscribe(),
        }
    }

    /// Queues the initial events and sets the starting position.
    fn begin(&mut self, store: &Store, query: &Query) -> Result<(), Error> {
        let current = store.resource_version();
        match query.resource_version {
            ResourceVersion::At(rv) if rv > current => Err(Error::TooLarge {
                requested: rv,
                current,
            }),
            ResourceVersion::At(rv) if !query.send_initial_events => {
                store.check_readable(rv)?;
                self.position = rv;
                self.collect(store);
                Ok(())
            }
            _ => {
                let (_, objects) = store.snapshot(self.resource.plural, None)?;
                for object in objects.iter().filter(|o| self.filter.matches(o)) {
                    self.pending.push_back(event_line("ADDED", object));
                }
                self.position = current;
                if query.send_initial_events {
                    self.push_bookmark(true);
                }
                Ok(())
            }
        }
    }

    async fn next_chunk(&mut self) -> Option<Result<Bytes, io::Error>> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                return Some(Ok(chunk));
            }
            if self.finished {
                return None;
            }
            if let Err(e) = self.wait().await {
                self.finished = true;
                return Some(Err(e));
            }
        }
    }

    /// Waits for the next thing to happen and queues what it produces.
    async fn wait(&mut self) -> Result<(), io::Error> {
        let (deadline, bookmark_at) = (self.deadline, self.next_bookmark);
        tokio::select! {
            biased;
            _ = self.dropped.changed() => {
                let aborted = io::ErrorKind::ConnectionAborted;
                return Err(io::Error::new(aborted, "watch dropped by the test API server"));
            }
            changed = self.changed.changed() => match changed {
                Ok(()) => {
                    let shared = self.shared.clone();
                    self.collect(&shared.store());
                }
                Err(_) => self.finished = true,
            },
            () = sleep_until(bookmark_at), if self.bookmarks => {
                self.push_bookmark(false);
                self.next_bookmark = Instant::now() + self.shared.config.bookmark_interval;
            }
            () = sleep_until(deadline) => self.finished = true,
        }
        Ok(())
    }

    /// Queues every selected event after the current position.
    fn collect(&mut self, store: &Store) {
        match store.events_after(self.position) {
            Ok(events) => {
                for event in events {
                    self.position = event.rv;
                    if let Some(line) = self.render(&event) {
                        self.pending.push_back(line);
                    }
                }
            }
            Err(e) => self.fail(&e),
        }
    }

    /// The line for an event as this watch's selector sees it, if any.
    fn render(&self, event: &Event) -> Option<Bytes> {
        if event.resource.plural != self.resource.plural {
            return None;
        }
        let now = self.filter.matches(&event.object);
        let before = event.old.as_ref().is_some_and(|o| self.filter.matches(o));
        let kind = match (event.kind, before, now) {
            (EventType::Added, _, true) | (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, true, false) | (EventType::Deleted, true, _) => "DELETED",
            _ => return None,
        };
        Some(event_line(kind, &event.object))
    }

    fn push_bookmark(&mut self, initial_events_end: bool) {
        let mut metadata = json!({"resourceVersion": self.position.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = json!({
            "kind": self.resource.kind,
            "apiVersion": self.resource.api_version,
            "metadata": metadata,
        });
        self.pending.push_back(event_line("BOOKMARK", &object));
    }

    /// Queues an `ERROR` event and ends the stream after it.
    fn fail(&mut self, e: &Error) {
        self.pending
            .push_back(event_line("ERROR", &error_status(e)));
        self.finished = true;
    }
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        let plural = self.resource.plural;
        self.shared.count(plural, |c| {
            c.open_watches = c.open_watches.saturating_sub(1)
        });
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{{\"type\":\"{kind}\",\"object\":{object}}}\n"))
}
