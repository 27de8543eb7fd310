//! How a filter wants events served (spec: `Filter.event_format`, `Filter.event_fields`):
//! the client form or the federation form (the signed PDU), optionally cut down to the
//! listed fields.

use std::sync::Arc;

use ruma::api::client::filter::{EventFormat as Format, FilterDefinition};
use serde_json::{Map, Value};

use crate::{
    error::Result,
    service::rooms::{format::Viewer, Rooms, StoredEvent},
};

/// A filter's event format and field selection, parsed once per request.
pub struct EventFormat {
    federation: bool,
    /// Each entry a dot-separated property path, split into its property names.
    fields: Option<Vec<Vec<String>>>,
}

impl EventFormat {
    pub fn of(filter: &FilterDefinition) -> Self {
        Self {
            federation: filter.event_format == Format::Federation,
            fields: filter
                .event_fields
                .as_ref()
                .map(|fields| fields.iter().map(|f| split_path(f)).collect()),
        }
    }

    /// A timeline event (`bundled`: with its aggregations, as timelines carry them) or a state
    /// event as the filter wants it.
    pub fn event(
        &self,
        rooms: &Rooms,
        event: &StoredEvent,
        viewer: Option<Viewer<'_>>,
        bundled: bool,
    ) -> Result<Value> {
        let value = match (self.federation, bundled) {
            (true, _) => rooms.federation_event(event, viewer),
            (false, true) => rooms.client_event_bundled(event, viewer)?,
            (false, false) => rooms.client_event(event, viewer),
        };
        Ok(self.select(value))
    }

    /// Only the listed fields of `value` (all of it without `event_fields`).
    fn select(&self, value: Value) -> Value {
        let Some(fields) = &self.fields else {
            return value;
        };
        let mut out = Value::Object(Map::new());
        for path in fields {
            copy_path(&value, &mut out, path);
        }
        out
    }
}

impl EventFormat {
    /// A timeline event as the filter wants it. In the plain client form, and without
    /// aggregations to bundle (which differ by viewer), it is the event's shared JSON text
    /// ([`Rooms::shared_client_json`]) with this viewer's `unsigned` members.
    pub fn timeline_event(
        &self,
        rooms: &Rooms,
        event: &Arc<StoredEvent>,
        viewer: Option<Viewer<'_>>,
    ) -> Result<Json> {
        if !self.federation && self.fields.is_none() {
            let parts = rooms.shared_client_json(event)?;
            if !parts.has_relations {
                return Ok(Json::Text(parts.for_viewer(event, viewer)));
            }
        }
        Ok(Json::Value(self.event(rooms, event, viewer, true)?))
    }
}

/// A response body under construction: JSON values, and JSON text made elsewhere (an event's
/// shared client form) that is copied in as it is.
pub enum Json {
    Value(Value),
    /// Valid JSON text, serialised by this server.
    Text(String),
    /// Members in order; each key once.
    Object(Vec<(String, Json)>),
    Array(Vec<Json>),
}

impl Json {
    /// The JSON text of the whole tree.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut Vec<u8>) {
        match self {
            // Writing into a Vec cannot fail, and a Value always serialises.
            Json::Value(value) => {
                let _ = serde_json::to_writer(&mut *out, value);
            }
            Json::Text(text) => out.extend_from_slice(text.as_bytes()),
            Json::Object(members) => {
                out.push(b'{');
                for (i, (key, value)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    let _ = serde_json::to_writer(&mut *out, key);
                    out.push(b':');
                    value.write(out);
                }
                out.push(b'}');
            }
            Json::Array(items) => {
                out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    item.write(out);
                }
                out.push(b']');
            }
        }
    }
}

/// Splits a dot-separated property path (spec appendix: `\.` is a literal dot, `\\` a
/// literal backslash, any other backslash is itself).
fn split_path(path: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some('.' | '\\')) => {
                current.extend(chars.next());
            }
            '.' => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
}

/// Copies `from[path]` into `to[path]`, creating the objects on the way; nothing if `from`
/// has no such field.
fn copy_path(from: &Value, to: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(value) = from.get(first) else {
        return;
    };
    let Some(to) = to.as_object_mut() else {
        return;
    };
    if rest.is_empty() {
        to.insert(first.clone(), value.clone());
        return;
    }
    if !value.is_object() {
        return;
    }
    let slot = to
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    copy_path(value, slot, rest);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_split_with_escapes() {
        assert_eq!(split_path("content.body"), ["content", "body"]);
        assert_eq!(
            split_path(r"content.m\.relates_to"),
            ["content", "m.relates_to"]
        );
        assert_eq!(split_path(r"content.m\\foo"), ["content", r"m\foo"]);
        assert_eq!(split_path(r"a\xb"), [r"a\xb"]);
    }

    #[test]
    fn trees_with_text_serialise_as_json() {
        let tree = Json::Object(vec![
            ("a".into(), Json::Value(json!({"x": [1, "y\"z"]}))),
            (
                "b\"".into(),
                Json::Array(vec![
                    Json::Text(r#"{"unsigned":{"age":3},"k":true}"#.into()),
                    Json::Array(vec![]),
                    Json::Object(vec![]),
                ]),
            ),
        ]);
        let parsed: Value = serde_json::from_slice(&tree.to_vec()).unwrap();
        assert_eq!(
            parsed,
            json!({"a": {"x": [1, "y\"z"]}, "b\"": [{"unsigned": {"age": 3}, "k": true}, [], {}]})
        );
    }

    #[test]
    fn fields_are_selected() {
        let format = EventFormat {
            federation: false,
            fields: Some(vec![split_path("type"), split_path(r"content.m\.x.y")]),
        };
        let event =
            json!({"type": "t", "sender": "s", "content": {"m.x": {"y": 1, "z": 2}, "b": 3}});
        assert_eq!(
            format.select(event),
            json!({"type": "t", "content": {"m.x": {"y": 1}}})
        );
    }
}
