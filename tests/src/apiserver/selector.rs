//! Label and field selectors as the Kubernetes API accepts them in the
//! `labelSelector` and `fieldSelector` query parameters.
//!
//! Labels: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`,
//! comma-separated (all must match). Fields: `path=v`, `path==v`, `path!=v`
//! where `path` is any dotted JSON path into the object (`metadata.name`,
//! `metadata.namespace`, `spec.nodeName`...); a missing field reads as "".

use serde_json::Value;

use super::Error;

/// A parsed `labelSelector`; the empty selector matches everything.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed `fieldSelector`; the empty selector matches everything.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldSelector(Vec<FieldRequirement>);

#[derive(Debug, Clone, PartialEq, Eq)]
struct FieldRequirement {
    path: Vec<String>,
    equals: bool,
    value: String,
}

/// What a list or watch request selects within one kind.
#[derive(Debug, Default, Clone)]
pub struct ObjectFilter {
    /// Only objects in this namespace (`None`: every namespace).
    pub namespace: Option<String>,
    /// The `labelSelector`.
    pub labels: LabelSelector,
    /// The `fieldSelector`.
    pub fields: FieldSelector,
}

impl ObjectFilter {
    /// Whether the object is selected.
    pub fn matches(&self, object: &Value) -> bool {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
        self.namespace.as_deref().is_none_or(|ns| ns == namespace)
            && self.labels.matches(object)
            && self.fields.matches(object)
    }
}

impl LabelSelector {
    /// Parses a `labelSelector` query value.
    pub fn parse(text: &str) -> Result<Self, Error> {
        split_top_level(text)
            .into_iter()
            .map(str::trim)
            .filter(|term| !term.is_empty())
            .map(|term| parse_label_term(term).ok_or_else(|| bad(text)))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether the object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |key: &str| labels.get(key).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::NotExists(k) => get(k).is_none(),
            LabelRequirement::In(k, vs) => get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
            LabelRequirement::NotIn(k, vs) => !get(k).is_some_and(|v| vs.iter().any(|x| x == v)),
        })
    }
}

impl FieldSelector {
    /// Parses a `fieldSelector` query value.
    pub fn parse(text: &str) -> Result<Self, Error> {
        text.split(',')
            .map(str::trim)
            .filter(|term| !term.is_empty())
            .map(|term| parse_field_term(term).ok_or_else(|| bad(text)))
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether the object's fields satisfy every requirement.
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|req| {
            let actual = field_value(object, &req.path);
            (actual == req.value) == req.equals
        })
    }
}

fn bad(text: &str) -> Error {
    Error::BadSelector(text.to_string())
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_label_term(term: &str) -> Option<LabelRequirement> {
    if let Some(key) = term.strip_prefix('!') {
        return valid_key(key.trim()).map(LabelRequirement::NotExists);
    }
    if term.ends_with(')') {
        return parse_set_term(term);
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Some(LabelRequirement::NotEquals(
            valid_key(k.trim())?,
            valid_value(v)?,
        ));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Some(LabelRequirement::Equals(
            valid_key(k.trim())?,
            valid_value(v)?,
        ));
    }
    valid_key(term).map(LabelRequirement::Exists)
}

fn parse_set_term(term: &str) -> Option<LabelRequirement> {
    let (head, rest) = term.split_once('(')?;
    let values: Vec<String> = rest
        .strip_suffix(')')?
        .split(',')
        .map(valid_value)
        .collect::<Option<_>>()?;
    let mut words = head.split_whitespace();
    let (key, op) = (valid_key(words.next()?)?, words.next()?);
    if words.next().is_some() {
        return None;
    }
    match op {
        "in" => Some(LabelRequirement::In(key, values)),
        "notin" => Some(LabelRequirement::NotIn(key, values)),
        _ => None,
    }
}

fn valid_key(key: &str) -> Option<String> {
    let ok = !key.is_empty() && !key.contains(|c: char| c.is_whitespace() || "=!(),".contains(c));
    ok.then(|| key.to_string())
}

fn valid_value(value: &str) -> Option<String> {
    let value = value.trim();
    let ok = !value.contains(|c: char| c.is_whitespace() || "=!(),".contains(c));
    ok.then(|| value.to_string())
}

fn parse_field_term(term: &str) -> Option<FieldRequirement> {
    let (path, equals, value) = if let Some((p, v)) = term.split_once("!=") {
        (p, false, v)
    } else {
        let (p, v) = term.split_once("==").or_else(|| term.split_once('='))?;
        (p, true, v)
    };
    let path: Vec<String> = path.trim().split('.').map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return None;
    }
    Some(FieldRequirement {
        path,
        equals,
        value: value.trim().to_string(),
    })
}

fn field_value(object: &Value, path: &[String]) -> String {
    let found = path.iter().try_fold(object, |v, key| v.get(key));
    match found {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(labels: Value) -> Value {
        json!({"metadata": {"name": "a", "namespace": "ns", "labels": labels}})
    }

    #[test]
    fn kube_proxy_selector() {
        let sel = LabelSelector::parse(
            "!service.kubernetes.io/headless,!service.kubernetes.io/service-proxy-name",
        )
        .unwrap();
        assert!(sel.matches(&svc(json!({"app": "x"}))));
        assert!(sel.matches(&json!({"metadata": {"name": "a"}})));
        assert!(!sel.matches(&svc(json!({"service.kubernetes.io/headless": ""}))));
    }

    #[test]
    fn equality_and_sets() {
        let sel = LabelSelector::parse("app=web,tier!=db,env in (a, b),x notin (y)").unwrap();
        assert!(sel.matches(&svc(json!({"app": "web", "env": "b"}))));
        assert!(!sel.matches(&svc(json!({"app": "web", "env": "c"}))));
        assert!(!sel.matches(&svc(json!({"app": "web", "env": "a", "tier": "db"}))));
        assert!(!sel.matches(&svc(json!({"app": "web", "env": "a", "x": "y"}))));
        assert!(
            LabelSelector::parse("app")
                .unwrap()
                .matches(&svc(json!({"app": ""})))
        );
    }

    #[test]
    fn rejects_garbage() {
        for text in ["a b", "=x", "k in x)", "k on (a)", "!", "a=b=c"] {
            assert!(LabelSelector::parse(text).is_err(), "{text}");
        }
        assert!(FieldSelector::parse("metadata.name").is_err());
        assert!(FieldSelector::parse(".x=1").is_err());
    }

    #[test]
    fn fields() {
        let sel = FieldSelector::parse("metadata.name=a,metadata.namespace!=kube-system").unwrap();
        assert!(sel.matches(&svc(json!({}))));
        let sel = FieldSelector::parse("spec.nodeName=").unwrap();
        assert!(sel.matches(&svc(json!({}))));
        assert!(FieldSelector::parse("").unwrap().matches(&json!({})));
    }
}
