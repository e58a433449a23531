//! Collapsing concurrent identical cache misses into one upstream query: the
//! first miss for a key leads and asks upstream, later ones for the same key
//! wait for the leader's result instead of asking again.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use hickory_proto::op::Message;
use tokio::sync::watch;

use super::ForwardError;
use crate::cache::CacheKey;

/// The outcome a leader shares; `None` until it is known.
type Outcome = Option<Result<Message, ForwardError>>;

/// The queries in flight upstream, by cache key.
#[derive(Debug, Default)]
pub(super) struct SingleFlight {
    flights: Mutex<HashMap<CacheKey, watch::Receiver<Outcome>>>,
}

/// What a caller is for one key: the one asking upstream, or one waiting.
pub(super) enum Role<'a> {
    /// Ask upstream, then [`Flight::land`] the outcome.
    Leader(Flight<'a>),
    /// Wait for the leader with [`follow`].
    Follower(watch::Receiver<Outcome>),
}

/// A leader's claim on a key; dropping it (landed or not) frees the key.
pub(super) struct Flight<'a> {
    owner: &'a SingleFlight,
    key: CacheKey,
    outcome: watch::Sender<Outcome>,
}

impl SingleFlight {
    /// Joins the flight for `key`, leading it if there is none.
    pub(super) fn join(&self, key: &CacheKey) -> Role<'_> {
        let mut flights = self.lock();
        if let Some(outcome) = flights.get(key) {
            return Role::Follower(outcome.clone());
        }
        let (sender, receiver) = watch::channel(None);
        flights.insert(key.clone(), receiver);
        Role::Leader(Flight {
            owner: self,
            key: key.clone(),
            outcome: sender,
        })
    }

    /// Number of keys in flight.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<CacheKey, watch::Receiver<Outcome>>> {
        self.flights.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Flight<'_> {
    /// Hands `outcome` to every follower and frees the key.
    pub(super) fn land(self, outcome: &Result<Message, ForwardError>) {
        self.outcome.send_replace(Some(outcome.clone()));
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        self.owner.lock().remove(&self.key);
    }
}

/// The leader's outcome, or `None` if the leader gave up (its future was
/// dropped) before it had one; the follower should then ask on its own.
pub(super) async fn follow(mut outcome: watch::Receiver<Outcome>) -> Outcome {
    let landed = outcome.wait_for(Option::is_some).await.ok()?;
    landed.clone()
}
