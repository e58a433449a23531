//! HTTP routing for the test API server: discovery documents, list (with
//! `limit`/`continue` pagination and `resourceVersion` semantics), GET of one
//! object, and handing watch requests to [`super::watch`]. Every failure is
//! answered with a Kubernetes `Status` object; nothing a client sends panics.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri};
use serde_json::{Value, json};

use super::query::{Query, ResourceVersion, RvMatch, decode_continue, encode_continue};
use super::resources::{self, ResourceType};
use super::selector::ObjectFilter;
use super::{Error, Shared, watch};

/// Response body: a whole JSON document, or a stream of watch events.
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

/// Answers one request; fails (closing the connection) during a simulated outage.
pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Response<Body>, Error> {
    if !shared.is_available() {
        return Err(Error::Unavailable);
    }
    Ok(route(&shared, req.method(), req.uri()))
}

fn route(shared: &Arc<Shared>, method: &Method, uri: &Uri) -> Response<Body> {
    if method != Method::GET {
        let message = format!("the test API server does not support {method}");
        return status(405, "MethodNotAllowed", &message);
    }
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let query = match Query::parse(uri.query().unwrap_or_default()) {
        Ok(query) => query,
        Err(e) => return error_response(&e),
    };
    let found = match segments.as_slice() {
        ["version"] => Some(json_response(resources::version())),
        ["healthz" | "livez" | "readyz"] => Some(text_response("ok")),
        ["api"] => Some(json_response(resources::core_versions())),
        ["apis"] => Some(json_response(resources::group_list())),
        ["api", version] => resources::resource_list("", version).map(json_response),
        ["apis", group] => resources::group_document(group).map(json_response),
        ["apis", group, version] => resources::resource_list(group, version).map(json_response),
        ["api", version, rest @ ..] => resource_request(shared, "", version, rest, &query),
        ["apis", group, version, rest @ ..] => {
            resource_request(shared, group, version, rest, &query)
        }
        _ => None,
    };
    found.unwrap_or_else(|| {
        status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    })
}

/// Collection or object requests below a group version; `None` is a 404.
fn resource_request(
    shared: &Arc<Shared>,
    group: &str,
    version: &str,
    rest: &[&str],
    query: &Query,
) -> Option<Response<Body>> {
    let find = |plural: &str, namespaced: bool| {
        resources::by_path(group, version, plural).filter(|r| r.namespaced == namespaced)
    };
    let response = match rest {
        ["namespaces", ns, plural] => collection(shared, find(plural, true)?, Some(ns), query),
        ["namespaces", ns, plural, name] => object(shared, find(plural, true)?, ns, name),
        [plural] => {
            let resource = resources::by_path(group, version, plural)?;
            collection(shared, resource, None, query)
        }
        [plural, name] => object(shared, find(plural, false)?, "", name),
        _ => return None,
    };
    Some(response)
}

fn collection(
    shared: &Arc<Shared>,
    resource: &'static ResourceType,
    namespace: Option<&str>,
    query: &Query,
) -> Response<Body> {
    let filter = ObjectFilter {
        namespace: namespace.map(str::to_string),
        labels: query.label_selector.clone(),
        fields: query.field_selector.clone(),
    };
    if query.watch {
        shared.count(resource.plural, |c| c.watches += 1);
        return watch::start(shared, resource, filter, query);
    }
    shared.count(resource.plural, |c| {
        c.lists += 1;
        c.initial_lists += u64::from(query.continue_token.is_none());
    });
    match list(shared, resource, &filter, query) {
        Ok(body) => json_response(body),
        Err(e) => error_response(&e),
    }
}

fn object(
    shared: &Shared,
    resource: &'static ResourceType,
    ns: &str,
    name: &str,
) -> Response<Body> {
    shared.count(resource.plural, |c| c.gets += 1);
    let key = (resource.plural, ns.to_string(), name.to_string());
    match shared.store().get(&key) {
        Some(object) => json_response((*object).clone()),
        None => {
            let message = format!("{} \"{name}\" not found", resource.plural);
            let mut response = status_value(404, "NotFound", &message);
            response["details"] = json!({"name": name, "kind": resource.plural});
            respond(StatusCode::NOT_FOUND, response)
        }
    }
}

/// One page of a list, read at the resourceVersion the request asks for.
fn list(
    shared: &Shared,
    resource: &'static ResourceType,
    filter: &ObjectFilter,
    query: &Query,
) -> Result<Value, Error> {
    let (at, after) = match &query.continue_token {
        Some(token) => {
            let (rv, ns, name) = decode_continue(token)?;
            (Some(rv), Some((resource.plural, ns, name)))
        }
        None => (exact_version(shared, query)?, None),
    };
    let (rv, objects) = shared.store().snapshot(resource.plural, at)?;
    let mut matching = objects.iter().filter(|o| filter.matches(o)).filter(|o| {
        let key = super::store::key_of(resource, o);
        after.as_ref().is_none_or(|after| key > *after)
    });
    let limit = query.limit.unwrap_or(usize::MAX);
    let items: Vec<Value> = matching
        .by_ref()
        .take(limit)
        .map(|o| (**o).clone())
        .collect();
    let remaining = matching.count();
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if let (Some(last), true) = (items.last(), remaining > 0) {
        let (_, ns, name) = super::store::key_of(resource, last);
        metadata["continue"] = json!(encode_continue(rv, &ns, &name));
        metadata["remainingItemCount"] = json!(remaining);
    }
    Ok(json!({
        "kind": resource.list_kind,
        "apiVersion": resource.api_version,
        "metadata": metadata,
        "items": items,
    }))
}

/// The resourceVersion a list must be read at, `None` for the newest.
fn exact_version(shared: &Shared, query: &Query) -> Result<Option<u64>, Error> {
    match (query.resource_version, query.rv_match) {
        (ResourceVersion::At(rv), RvMatch::Exact) => Ok(Some(rv)),
        (_, RvMatch::Exact) => Err(Error::BadParameter {
            name: "resourceVersionMatch",
            value: "Exact without a resourceVersion".into(),
        }),
        (ResourceVersion::At(rv), _) => {
            let current = shared.store().resource_version();
            match rv > current {
                true => Err(Error::TooLarge {
                    requested: rv,
                    current,
                }),
                false => Ok(None),
            }
        }
        _ => Ok(None),
    }
}

/// A `Status` object describing a failure.
pub fn status_value(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// The `Status` object for an error.
pub fn error_status(e: &Error) -> Value {
    let (code, reason) = match e {
        Error::Expired { .. } => (410, "Expired"),
        Error::TooLarge { .. } => (504, "Timeout"),
        Error::BadSelector(_) | Error::BadParameter { .. } => (400, "BadRequest"),
        _ => (500, "InternalError"),
    };
    status_value(code, reason, &e.to_string())
}

/// The response for an error.
pub fn error_response(e: &Error) -> Response<Body> {
    let body = error_status(e);
    let code = body["code"].as_u64().and_then(|c| u16::try_from(c).ok());
    let code = code.and_then(|c| StatusCode::from_u16(c).ok());
    respond(code.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body)
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    let code_value = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    respond(code_value, status_value(code, reason, message))
}

fn json_response(body: Value) -> Response<Body> {
    respond(StatusCode::OK, body)
}

fn respond(code: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    let json = HeaderValue::from_static("application/json");
    response.headers_mut().insert(CONTENT_TYPE, json);
    response
}

fn text_response(text: &'static str) -> Response<Body> {
    let mut response = Response::new(full(Bytes::from_static(text.as_bytes())));
    let plain = HeaderValue::from_static("text/plain");
    response.headers_mut().insert(CONTENT_TYPE, plain);
    response
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}
