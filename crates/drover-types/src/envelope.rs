//! The kubectl-style envelope of a manifest document:
//!
//! ```yaml
//! apiVersion: drover/v1
//! kind: Manifest
//! metadata: {name: web}
//! spec: {selector: {role: edge}, resources: [...]}
//! ```
//!
//! It only wraps the flat form's fields (`name` moves to `metadata.name`, the rest into `spec`), so it is
//! unwrapped on the JSON value before the flat [`Manifest`](crate::manifest::Manifest) is parsed: whatever
//! the flat form gains, the envelope carries in `spec` unchanged.

use serde_json::{Map, Value};

/// The only `apiVersion` this build reads.
pub const API_VERSION: &str = "drover/v1";
/// The only `kind` a manifest document has.
pub const KIND: &str = "Manifest";

/// The keys that make a document an envelope; the flat form has none of them.
const ENVELOPE_KEYS: [&str; 4] = ["apiVersion", "kind", "metadata", "spec"];

/// Which form a document was written in, to name fields as the author wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Flat,
    Envelope,
}

impl Form {
    /// The path, in the document as written, of a field of the flat form (`resources[0].id` is
    /// `spec.resources[0].id` in an envelope; `name` is `metadata.name`).
    pub fn field(self, flat: &str) -> String {
        match self {
            Form::Flat => flat.to_string(),
            Form::Envelope if flat == "name" => "metadata.name".to_string(),
            Form::Envelope => format!("spec.{flat}"),
        }
    }
}

/// Why an envelope was refused, naming the field at fault as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {reason}")]
pub struct EnvelopeError {
    pub field: String,
    pub reason: String,
}

fn refuse(field: &str, reason: impl Into<String>) -> EnvelopeError {
    EnvelopeError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// Turns a manifest document into the flat form: an envelope is checked and unwrapped, anything else is
/// returned as it is (the flat form's own parsing names its problems).
pub fn unwrap(document: Value) -> Result<(Value, Form), EnvelopeError> {
    let Value::Object(mut top) = document else {
        return Ok((document, Form::Flat));
    };
    if !ENVELOPE_KEYS.iter().any(|k| top.contains_key(*k)) {
        return Ok((Value::Object(top), Form::Flat));
    }
    match top.remove("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(Value::String(v)) => {
            return Err(refuse(
                "apiVersion",
                format!("unknown apiVersion {v:?}; this server reads {API_VERSION:?}"),
            ));
        }
        Some(_) => return Err(refuse("apiVersion", format!("must be {API_VERSION:?}"))),
        None => {
            return Err(refuse(
                "apiVersion",
                format!("is required in an envelope (`apiVersion: {API_VERSION}`)"),
            ));
        }
    }
    match top.remove("kind") {
        Some(Value::String(k)) if k == KIND => {}
        Some(Value::String(k)) => {
            return Err(refuse(
                "kind",
                format!("unknown kind {k:?}; the only kind is {KIND:?}"),
            ));
        }
        Some(_) => return Err(refuse("kind", format!("must be {KIND:?}"))),
        None => return Err(refuse("kind", format!("is required (`kind: {KIND}`)"))),
    }
    let name = metadata_name(top.remove("metadata"))?;
    let mut spec = match top.remove("spec") {
        Some(Value::Object(spec)) => spec,
        Some(_) => return Err(refuse("spec", "must be a map of the manifest's fields")),
        None => return Err(refuse("spec", "is required (selector, resources)")),
    };
    if let Some(extra) = top.keys().next() {
        return Err(refuse(
            extra,
            "unknown field; an envelope has apiVersion, kind, metadata and spec",
        ));
    }
    if spec.contains_key("name") {
        return Err(refuse("spec.name", "the name goes in metadata.name"));
    }
    spec.insert("name".into(), name);
    Ok((Value::Object(spec), Form::Envelope))
}

/// `metadata` holds the name only: drover manifests have no labels or annotations of their own (nodes are
/// chosen by `spec.selector`), and silently dropping what an author wrote would mislead them.
fn metadata_name(metadata: Option<Value>) -> Result<Value, EnvelopeError> {
    let mut metadata: Map<String, Value> = match metadata {
        Some(Value::Object(m)) => m,
        Some(_) => return Err(refuse("metadata", "must be a map with a name")),
        None => return Err(refuse("metadata.name", "is required")),
    };
    let name = metadata
        .remove("name")
        .ok_or_else(|| refuse("metadata.name", "is required"))?;
    if !name.is_string() {
        return Err(refuse("metadata.name", "must be a string"));
    }
    if let Some(extra) = metadata.keys().next() {
        let hint = if extra == "labels" {
            "; drover manifests have no labels: spec.selector chooses the nodes"
        } else {
            ""
        };
        return Err(refuse(
            &format!("metadata.{extra}"),
            format!("unknown field; metadata has only a name{hint}"),
        ));
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;
    use serde_json::json;

    fn yaml(text: &str) -> Value {
        serde_saphyr::from_str(text).unwrap()
    }

    #[test]
    fn an_envelope_and_the_flat_form_give_the_same_manifest() {
        let flat = yaml(
            "name: web\nselector: {role: edge}\nresources:\n  - id: motd\n    file: {path: /etc/motd, content: hi}\n",
        );
        let envelope = yaml(
            "apiVersion: drover/v1\nkind: Manifest\nmetadata:\n  name: web\nspec:\n  selector: {role: edge}\n  resources:\n    - id: motd\n      file: {path: /etc/motd, content: hi}\n",
        );
        let (from_flat, form) = unwrap(flat).unwrap();
        assert_eq!(form, Form::Flat);
        let (from_envelope, form) = unwrap(envelope).unwrap();
        assert_eq!(form, Form::Envelope);
        let a: Manifest = serde_json::from_value(from_flat).unwrap();
        let b: Manifest = serde_json::from_value(from_envelope).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.name, "web");
    }

    #[test]
    fn a_wrong_envelope_is_refused_naming_the_field() {
        let good = json!({"apiVersion": "drover/v1", "kind": "Manifest",
            "metadata": {"name": "web"}, "spec": {"resources": []}});
        let cases: [(&str, Value, &str); 11] = [
            (
                "apiVersion",
                json!("drover/v2"),
                "unknown apiVersion \"drover/v2\"",
            ),
            ("apiVersion", json!(1), "must be"),
            ("apiVersion", Value::Null, "is required"),
            ("kind", json!("Deployment"), "unknown kind \"Deployment\""),
            ("kind", Value::Null, "is required"),
            ("metadata.name", json!({}), "is required"),
            (
                "metadata.labels",
                json!({"name": "web", "labels": {"a": "b"}}),
                "spec.selector",
            ),
            ("metadata", json!("web"), "must be a map"),
            ("spec", json!([]), "must be a map"),
            ("spec.name", json!({"name": "x"}), "metadata.name"),
            ("status", json!({}), "unknown field"),
        ];
        for (field, value, reason) in cases {
            let mut doc = good.clone();
            let top = doc.as_object_mut().unwrap();
            let key = match field {
                "metadata.name" | "metadata.labels" => "metadata",
                "spec.name" => "spec",
                other => other,
            };
            match value {
                Value::Null => {
                    top.remove(key);
                }
                v => {
                    top.insert(key.to_string(), v);
                }
            }
            let err = unwrap(doc).unwrap_err();
            assert_eq!(err.field, field, "{err}");
            assert!(err.to_string().contains(reason), "{field}: {err}");
        }
        // A document with only `kind` is still an envelope, so the missing apiVersion is named.
        let err = unwrap(json!({"kind": "Manifest"})).unwrap_err();
        assert_eq!(err.field, "apiVersion");
    }

    #[test]
    fn fields_are_named_as_the_author_wrote_them() {
        assert_eq!(Form::Flat.field("resources[0].id"), "resources[0].id");
        assert_eq!(
            Form::Envelope.field("resources[0].id"),
            "spec.resources[0].id"
        );
        assert_eq!(Form::Envelope.field("name"), "metadata.name");
    }
}
