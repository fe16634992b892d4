//! Server-side `Table` output (`meta.k8s.io/v1`), which `kubectl get` asks
//! for so that it can print useful columns for kinds it does not know.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sheaf_types::{Column, ResourceType};

/// Does the `Accept` header ask for a Table?
pub fn wants_table(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',').any(|part| {
            let p = part.replace(' ', "");
            p.contains("as=Table")
                && p.contains("g=meta.k8s.io")
                && (p.contains("v=v1;") || p.ends_with("v=v1") || p.contains("v=v1beta1"))
        })
    })
}

/// Kubernetes' `HumanDuration`: "45s", "5m10s", "3h", "12d", "2y30d".
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    let secs = secs.max(0);
    let minutes = secs / 60;
    let hours = minutes / 60;
    let days = hours / 24;
    if secs < 120 {
        format!("{secs}s")
    } else if minutes < 10 {
        let s = secs % 60;
        if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        let m = minutes % 60;
        if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 {
            format!("{days}d")
        } else {
            format!("{days}d{h}h")
        }
    } else if days < 365 * 2 {
        format!("{days}d")
    } else if days < 365 * 8 {
        let y = days / 365;
        let d = days % 365;
        if d == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{d}d")
        }
    } else {
        format!("{}y", days / 365)
    }
}

fn age(ts: Option<&str>, now: DateTime<Utc>) -> Value {
    match ts.and_then(|t| DateTime::parse_from_rfc3339(t).ok()) {
        Some(t) => Value::String(human_duration((now - t.with_timezone(&Utc)).num_seconds())),
        None => Value::String("<unknown>".into()),
    }
}

/// Follows a column path such as `.status.interfaces[0].ipAddress` or
/// `.data.#len` (number of entries).
pub fn extract<'a>(obj: &'a Value, path: &str) -> Option<std::borrow::Cow<'a, Value>> {
    let mut cur = obj;
    for seg in path.trim_start_matches('.').split('.') {
        if seg == "#len" {
            let n = match cur {
                Value::Object(m) => m.len(),
                Value::Array(a) => a.len(),
                _ => 0,
            };
            return Some(std::borrow::Cow::Owned(json!(n)));
        }
        let (name, index) = match seg.find('[') {
            Some(i) => (&seg[..i], seg[i + 1..].trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        if !name.is_empty() {
            cur = cur.get(name)?;
        }
        if let Some(i) = index {
            cur = cur.get(i)?;
        }
    }
    Some(std::borrow::Cow::Borrowed(cur))
}

fn cell(obj: &Value, col: &Column, now: DateTime<Utc>) -> Value {
    let Some(v) = extract(obj, col.path) else {
        // Missing values print as "<none>" in kubectl, which wants null.
        return Value::Null;
    };
    match (col.type_, v.as_ref()) {
        ("date", Value::String(s)) => age(Some(s), now),
        (_, Value::Array(a)) => Value::String(
            a.iter()
                .map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string()))
                .collect::<Vec<_>>()
                .join(","),
        ),
        (_, Value::Object(_)) => Value::String(v.to_string()),
        _ => v.into_owned(),
    }
}

fn column_definitions(rt: &ResourceType) -> Vec<Value> {
    let mut cols = vec![json!({
        "name": "Name", "type": "string", "format": "name", "priority": 0,
        "description": "Name must be unique within a namespace."
    })];
    for c in &rt.columns {
        cols.push(json!({
            "name": c.name, "type": if c.type_ == "date" { "string" } else { c.type_ },
            "format": "", "priority": c.priority, "description": c.description
        }));
    }
    cols.push(json!({
        "name": "Age", "type": "string", "format": "", "priority": 0,
        "description": "Time since the object was created."
    }));
    cols
}

/// `includeObject` of the Table request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn row(rt: &ResourceType, obj: &Value, include: IncludeObject, now: DateTime<Utc>) -> Value {
    let mut cells = vec![obj.pointer("/metadata/name").cloned().unwrap_or(Value::Null)];
    for c in &rt.columns {
        cells.push(cell(obj, c, now));
    }
    cells.push(age(obj.pointer("/metadata/creationTimestamp").and_then(Value::as_str), now));
    let object = match include {
        IncludeObject::None => Value::Null,
        IncludeObject::Object => obj.clone(),
        IncludeObject::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or(Value::Null),
        }),
    };
    let mut r = Map::new();
    r.insert("cells".into(), Value::Array(cells));
    if !object.is_null() {
        r.insert("object".into(), object);
    }
    Value::Object(r)
}

/// A Table of `objects`. `headers` false omits the column definitions (used
/// for watch events after the first).
pub fn table(rt: &ResourceType, objects: &[Value], list_meta: Value, include: IncludeObject, headers: bool) -> Value {
    let now = Utc::now();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": if headers { Value::Array(column_definitions(rt)) } else { Value::Null },
        "rows": objects.iter().map(|o| row(rt, o, include, now)).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(130), "2m10s");
        assert_eq!(human_duration(3600), "60m");
        assert_eq!(human_duration(4 * 3600 + 60), "4h1m");
        assert_eq!(human_duration(30 * 3600), "30h");
        assert_eq!(human_duration(3 * 86400), "3d");
        assert_eq!(human_duration(100 * 86400), "100d");
    }

    #[test]
    fn accept() {
        assert!(wants_table(Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json")));
        assert!(!wants_table(Some("application/json")));
        assert!(!wants_table(None));
    }

    #[test]
    fn paths() {
        let v = json!({"status": {"interfaces": [{"ipAddress": "10.0.0.2"}]}, "data": {"a": "1", "b": "2"}});
        assert_eq!(extract(&v, ".status.interfaces[0].ipAddress").map(|c| c.into_owned()), Some(json!("10.0.0.2")));
        assert_eq!(extract(&v, ".data.#len").map(|c| c.into_owned()), Some(json!(2)));
        assert!(extract(&v, ".spec.x").is_none());
    }
}
