//! Query parameters of list and watch requests, and the opaque `continue`
//! token of paginated lists (which pins the resourceVersion of the first page).

use super::Error;
use super::selector::{FieldSelector, LabelSelector};

/// The `resourceVersion` parameter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum ResourceVersion {
    /// Absent or empty: the most recent state.
    #[default]
    Unset,
    /// `"0"`: any state the server has at hand.
    Any,
    /// A specific resourceVersion.
    At(u64),
}

/// The `resourceVersionMatch` parameter.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RvMatch {
    /// Absent: legacy semantics (not older than, for lists).
    #[default]
    Unset,
    /// `NotOlderThan`.
    NotOlderThan,
    /// `Exact`.
    Exact,
}

/// The query parameters the server understands; others are ignored.
#[derive(Debug, Default, Clone)]
pub struct Query {
    /// `watch=true|1`.
    pub watch: bool,
    /// `resourceVersion`.
    pub resource_version: ResourceVersion,
    /// `resourceVersionMatch`.
    pub rv_match: RvMatch,
    /// `limit` (0 or absent: no limit).
    pub limit: Option<usize>,
    /// `continue`.
    pub continue_token: Option<String>,
    /// `labelSelector`.
    pub label_selector: LabelSelector,
    /// `fieldSelector`.
    pub field_selector: FieldSelector,
    /// `timeoutSeconds` (0 or absent: the server default).
    pub timeout_seconds: Option<u64>,
    /// `allowWatchBookmarks`.
    pub bookmarks: bool,
    /// `sendInitialEvents`.
    pub send_initial_events: bool,
}

impl Query {
    /// Parses a URL query string.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let mut query = Self::default();
        for pair in text.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            query.set(&percent_decode(name), percent_decode(value))?;
        }
        Ok(query)
    }

    fn set(&mut self, name: &str, value: String) -> Result<(), Error> {
        match name {
            "watch" => self.watch = boolean("watch", value)?,
            "allowWatchBookmarks" => self.bookmarks = boolean("allowWatchBookmarks", value)?,
            "sendInitialEvents" => {
                self.send_initial_events = boolean("sendInitialEvents", value)?;
            }
            "resourceVersion" => self.resource_version = resource_version(value)?,
            "resourceVersionMatch" => self.rv_match = rv_match(value)?,
            "limit" => self.limit = number("limit", value)?.filter(|n| *n > 0),
            "timeoutSeconds" => self.timeout_seconds = number("timeoutSeconds", value)?,
            "continue" => self.continue_token = Some(value).filter(|v| !v.is_empty()),
            "labelSelector" => self.label_selector = LabelSelector::parse(&value)?,
            "fieldSelector" => self.field_selector = FieldSelector::parse(&value)?,
            _ => {}
        }
        Ok(())
    }
}

fn boolean(name: &'static str, value: String) -> Result<bool, Error> {
    match value.as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" | "" => Ok(false),
        _ => Err(Error::BadParameter { name, value }),
    }
}

fn number<T: std::str::FromStr>(name: &'static str, value: String) -> Result<Option<T>, Error> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| Error::BadParameter { name, value })
}

fn resource_version(value: String) -> Result<ResourceVersion, Error> {
    match value.as_str() {
        "" => Ok(ResourceVersion::Unset),
        "0" => Ok(ResourceVersion::Any),
        _ => value
            .parse()
            .map(ResourceVersion::At)
            .map_err(|_| Error::BadParameter {
                name: "resourceVersion",
                value,
            }),
    }
}

fn rv_match(value: String) -> Result<RvMatch, Error> {
    match value.as_str() {
        "" => Ok(RvMatch::Unset),
        "NotOlderThan" => Ok(RvMatch::NotOlderThan),
        "Exact" => Ok(RvMatch::Exact),
        _ => Err(Error::BadParameter {
            name: "resourceVersionMatch",
            value,
        }),
    }
}

/// Decodes `%XX` escapes and `+` (as a space); invalid escapes are kept as is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| {
                u8::from_str_radix(hex, 16)
                    .ok()
                    .filter(|_| !hex.starts_with('+'))
            });
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, other) => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `continue` token after the object `namespace/name` of a list read at `rv`.
pub fn encode_continue(rv: u64, namespace: &str, name: &str) -> String {
    format!("{rv}\n{namespace}\n{name}")
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The resourceVersion, namespace and name a `continue` token stands for.
pub fn decode_continue(token: &str) -> Result<(u64, String, String), Error> {
    let bad = || Error::BadParameter {
        name: "continue",
        value: token.to_string(),
    };
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = text.splitn(3, '\n');
    let (rv, ns, name) = (parts.next(), parts.next(), parts.next());
    match (rv.and_then(|rv| rv.parse().ok()), ns, name) {
        (Some(rv), Some(ns), Some(name)) => Ok((rv, ns.to_string(), name.to_string())),
        _ => Err(bad()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_kube_sends() {
        let q = Query::parse(
            "&watch=true&timeoutSeconds=290&allowWatchBookmarks=true\
             &labelSelector=%21a%2C%21b&resourceVersion=12",
        )
        .unwrap();
        assert!(q.watch && q.bookmarks && !q.send_initial_events);
        assert_eq!(q.timeout_seconds, Some(290));
        assert_eq!(q.resource_version, ResourceVersion::At(12));
        assert_eq!(q.label_selector, LabelSelector::parse("!a,!b").unwrap());
    }

    #[test]
    fn rejects_bad_values() {
        for text in [
            "watch=maybe",
            "limit=-1",
            "resourceVersion=x",
            "resourceVersionMatch=Y",
        ] {
            assert!(Query::parse(text).is_err(), "{text}");
        }
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("a+b%3D%zz"), "a b=%zz");
    }

    #[test]
    fn continue_round_trip() {
        let token = encode_continue(42, "ns", "name");
        assert_eq!(
            decode_continue(&token).unwrap(),
            (42, "ns".into(), "name".into())
        );
        assert!(decode_continue("zz").is_err());
        assert!(decode_continue("é").is_err());
        assert!(decode_continue("4").is_err());
    }
}
