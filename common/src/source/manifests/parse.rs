//! One manifest file → its documents (YAML multi-document, a JSON stream, `kind: List` items) →
//! converted objects, rejected documents and the problems that explain them.

use std::path::Path;

use serde_json::Value;
use serde_saphyr::Spanned;
use serde_saphyr::granit_parser::{Event, Parser};

use super::{Problem, ProblemError};
use crate::convert::{self, Identity};
use crate::model::{Object, ObjectKey, ObjectRef};

/// Where an object sits in its file: the 1-based document index and, for `List` items, the
/// 0-based item index plus one (0: not a list item), so that slots order as in the file. Two
/// `u32`s keep a file's `(Slot, Object)` entries at 24 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Slot {
    document: u32,
    item: u32,
}

impl Slot {
    pub(super) fn new(document: usize, item: Option<usize>) -> Slot {
        let narrow = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        Slot {
            document: narrow(document),
            item: item.map_or(0, |i| narrow(i).saturating_add(1)),
        }
    }
}

/// A raw document of a file.
struct Document {
    /// 1-based, counting empty documents too.
    index: usize,
    /// 1-based line where the document's content starts, when known.
    line: Option<u64>,
    value: Value,
}

/// What a file that parses as YAML/JSON yields.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    /// Valid objects, in file order.
    pub objects: Vec<(Slot, Object)>,
    /// Rejected documents of a kind svcplane consumes, with the object they name if readable.
    pub rejected: Vec<(Slot, Option<ObjectRef>)>,
    pub problems: Vec<Problem>,
}

/// Parses a whole file. `Err` means the file is not valid YAML/JSON at all.
pub(super) fn parse_file(path: &Path, text: &str) -> Result<Parsed, ProblemError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let docs = if is_json(path) {
        json_documents(text)?
    } else {
        yaml_documents(text)?
    };
    let mut parsed = Parsed::default();
    for doc in docs {
        match list_items(&doc.value) {
            Some(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    convert_one(path, &doc, Some(i), item, &mut parsed);
                }
            }
            None => convert_one(path, &doc, None, doc.value.clone(), &mut parsed),
        }
    }
    Ok(parsed)
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// The parser's limits: its defaults (1,024 documents, 250,000 nodes) suit untrusted input;
/// manifests are the operator's own files and may list thousands of objects. Nesting stays
/// capped at the default depth of 64.
fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_documents = 1_000_000;
    budget.max_nodes = 50_000_000;
    budget.max_events = 100_000_000;
    budget.max_total_scalar_bytes = 1 << 30;
    serde_saphyr::options! { with_snippet: false, budget: Some(budget) }
}

fn yaml_documents(text: &str) -> Result<Vec<Document>, ProblemError> {
    let options = options();
    let values: Vec<Spanned<Value>> = serde_saphyr::from_multiple_with_options(text, options)
        .map_err(|e| ProblemError::Syntax(e.to_string()))?;
    let starts = document_start_lines(text);
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(ordinal, spanned)| {
            let line = spanned.referenced.line();
            let index = if line == 0 {
                ordinal + 1
            } else {
                starts
                    .iter()
                    .filter(|s| **s <= line)
                    .count()
                    .max(ordinal + 1)
            };
            Document {
                index,
                line: (line > 0).then_some(line),
                value: spanned.value,
            }
        })
        .collect())
}

/// The line of every document start, empty documents included (the deserializer skips those).
fn document_start_lines(text: &str) -> Vec<u64> {
    let mut lines = Vec::new();
    for event in Parser::new_from_str(text) {
        match event {
            Ok((Event::DocumentStart(..), span)) => {
                lines.push(u64::try_from(span.start.line()).unwrap_or(u64::MAX));
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
    lines
}

fn json_documents(text: &str) -> Result<Vec<Document>, ProblemError> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut docs = Vec::new();
    let mut index = 0;
    loop {
        let start = stream.byte_offset();
        let Some(next) = stream.next() else {
            break;
        };
        let value = next.map_err(|e| ProblemError::Syntax(e.to_string()))?;
        index += 1;
        if value.is_null() {
            continue;
        }
        let skipped = text
            .get(start..)
            .map_or(0, |rest| rest.len() - rest.trim_start().len());
        let line = text
            .get(..start + skipped)
            .map(|head| head.bytes().filter(|b| *b == b'\n').count() as u64 + 1);
        docs.push(Document { index, line, value });
    }
    Ok(docs)
}

/// The items of a `kind: List` (or a typed list such as `ServiceList`), with `apiVersion` and
/// `kind` filled in from a typed list where the items omit them.
fn list_items(value: &Value) -> Option<Vec<Value>> {
    let kind = value.get("kind")?.as_str()?;
    let items = value.get("items")?.as_array()?;
    let item_kind = kind.strip_suffix("List")?;
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    Some(
        items
            .iter()
            .map(|item| fill_type(item.clone(), api_version, item_kind))
            .collect(),
    )
}

fn fill_type(mut item: Value, api_version: Option<&str>, kind: &str) -> Value {
    if let Some(map) = item.as_object_mut()
        && !kind.is_empty()
    {
        if let Some(api_version) = api_version {
            map.entry("apiVersion")
                .or_insert_with(|| api_version.into());
        }
        map.entry("kind").or_insert_with(|| kind.into());
    }
    item
}

fn convert_one(path: &Path, doc: &Document, item: Option<usize>, value: Value, out: &mut Parsed) {
    let slot = Slot::new(doc.index, item);
    let identity = Identity::of(&value);
    match convert::from_json(value) {
        Ok(Some(object)) => out.objects.push((slot, object)),
        Ok(None) => {}
        Err(error) => {
            out.rejected.push((slot, object_ref(&identity)));
            out.problems.push(Problem {
                file: path.to_path_buf(),
                document: Some(doc.index),
                item,
                line: doc.line,
                object: identity.kind.is_some().then(|| identity.describe()),
                error: ProblemError::Convert(error),
            });
        }
    }
}

/// The object a raw document names, if its kind is one svcplane consumes and it has a name.
fn object_ref(identity: &Identity) -> Option<ObjectRef> {
    let kind = convert::kind_of(identity.api_version.as_deref()?, identity.kind.as_deref()?)?;
    let name = identity.name.as_deref().filter(|n| !n.is_empty())?;
    let namespace = if convert::is_namespaced(kind) {
        identity.namespace.as_deref().unwrap_or_default()
    } else {
        ""
    };
    Some(ObjectRef {
        kind,
        key: ObjectKey::new(namespace, name),
    })
}
