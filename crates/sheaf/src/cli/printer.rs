//! Output: server-side `Table`s as aligned text, objects as YAML or JSON.

use serde_json::{json, Value};

/// How to render a table.
#[derive(Debug, Clone, Default)]
pub struct TableOptions {
    /// Include columns of priority > 0 (`-o wide`).
    pub wide: bool,
    /// Prepend a NAMESPACE column (`-A`).
    pub namespace_column: bool,
    /// Append a LABELS column (`--show-labels`).
    pub show_labels: bool,
    pub no_headers: bool,
    /// Put `kind.group/` before names (several kinds in one command).
    pub name_prefix: Option<String>,
}

/// Renders a cell as kubectl does: nulls as `<none>`.
pub fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => "<none>".to_string(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

fn labels_text(row: &Value) -> String {
    match row.pointer("/object/metadata/labels").and_then(Value::as_object) {
        Some(m) if !m.is_empty() => {
            m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(",")
        }
        _ => "<none>".to_string(),
    }
}

/// Lays out rows of cells in columns separated by at least three spaces,
/// like kubectl's tabwriter.
pub fn align(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0usize; cols];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            line.push_str(c);
            if i + 1 < r.len() {
                let pad = widths[i] - c.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Renders the `columnDefinitions` and `rows` of a Table.
pub fn render_table(columns: &[Value], rows: &[Value], opts: &TableOptions) -> String {
    let shown: Vec<(usize, &Value)> = columns
        .iter()
        .enumerate()
        .filter(|(_, c)| opts.wide || c.get("priority").and_then(Value::as_i64).unwrap_or(0) == 0)
        .collect();
    let name_col = columns
        .iter()
        .position(|c| c.get("format").and_then(Value::as_str) == Some("name"))
        .or_else(|| columns.iter().position(|c| c.get("name").and_then(Value::as_str) == Some("Name")));
    let mut lines: Vec<Vec<String>> = Vec::new();
    if !opts.no_headers {
        let mut h = Vec::new();
        if opts.namespace_column {
            h.push("NAMESPACE".to_string());
        }
        for (_, c) in &shown {
            h.push(c.get("name").and_then(Value::as_str).unwrap_or("").to_uppercase());
        }
        if opts.show_labels {
            h.push("LABELS".to_string());
        }
        lines.push(h);
    }
    for row in rows {
        let cells = row.get("cells").and_then(Value::as_array);
        let mut line = Vec::new();
        if opts.namespace_column {
            let ns = row.pointer("/object/metadata/namespace").and_then(Value::as_str).unwrap_or("");
            line.push(ns.to_string());
        }
        for (i, _) in &shown {
            let v = cells.and_then(|c| c.get(*i)).unwrap_or(&Value::Null);
            let mut text = cell_text(v);
            if Some(*i) == name_col {
                if let Some(p) = &opts.name_prefix {
                    text = format!("{p}/{text}");
                }
            }
            line.push(text);
        }
        if opts.show_labels {
            line.push(labels_text(row));
        }
        lines.push(line);
    }
    align(&lines)
}

/// A Table made from plain objects, for servers that do not answer with
/// one: NAME and AGE (from creationTimestamp, as given).
pub fn fallback_table(objects: &[Value]) -> (Vec<Value>, Vec<Value>) {
    let columns = vec![
        json!({"name": "Name", "type": "string", "format": "name", "priority": 0}),
        json!({"name": "Created", "type": "string", "format": "", "priority": 0}),
    ];
    let rows = objects
        .iter()
        .map(|o| {
            json!({
                "cells": [o.pointer("/metadata/name").cloned().unwrap_or(Value::Null),
                          o.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null)],
                "object": {"metadata": o.get("metadata").cloned().unwrap_or(Value::Null)},
            })
        })
        .collect();
    (columns, rows)
}

/// kubectl hides `metadata.managedFields` unless asked.
pub fn strip_managed_fields(v: &mut Value) {
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
}

/// JSON indented by four spaces, as kubectl prints it.
pub fn to_json(v: &Value) -> anyhow::Result<String> {
    use serde::Serialize as _;
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    v.serialize(&mut ser)?;
    let mut s = String::from_utf8(buf)?;
    s.push('\n');
    Ok(s)
}

pub fn to_yaml(v: &Value) -> anyhow::Result<String> {
    Ok(serde_yaml::to_string(v)?)
}

/// A `List` of objects, as `kubectl get -o yaml` prints several.
pub fn list_of(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_kubectl() {
        let columns = vec![
            json!({"name": "Name", "format": "name", "priority": 0}),
            json!({"name": "Status", "priority": 0}),
            json!({"name": "Node", "priority": 1}),
            json!({"name": "Age", "priority": 0}),
        ];
        let rows = vec![
            json!({"cells": ["vm1", null, "n1", "5s"], "object": {"metadata": {"namespace": "default", "labels": {"app": "x"}}}}),
            json!({"cells": ["a-longer-name", "Running", null, "10m"], "object": {"metadata": {"namespace": "ns2"}}}),
        ];
        let t = render_table(&columns, &rows, &TableOptions::default());
        assert_eq!(t, "NAME            STATUS    AGE\nvm1             <none>    5s\na-longer-name   Running   10m\n");
        let t = render_table(
            &columns,
            &rows,
            &TableOptions { wide: true, namespace_column: true, show_labels: true, ..Default::default() },
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "NAMESPACE   NAME            STATUS    NODE     AGE   LABELS");
        assert_eq!(lines[1], "default     vm1             <none>    n1       5s    app=x");
        assert_eq!(lines[2], "ns2         a-longer-name   Running   <none>   10m   <none>");
        let t = render_table(
            &columns,
            &rows[..1],
            &TableOptions {
                no_headers: true,
                name_prefix: Some("virtualmachine.kubevirt.io".into()),
                ..Default::default()
            },
        );
        assert_eq!(t, "virtualmachine.kubevirt.io/vm1   <none>   5s\n");
    }

    #[test]
    fn cells() {
        assert_eq!(cell_text(&json!(3)), "3");
        assert_eq!(cell_text(&json!(true)), "true");
        assert_eq!(cell_text(&json!("")), "");
        assert_eq!(cell_text(&Value::Null), "<none>");
    }

    #[test]
    fn json_indent() {
        assert_eq!(to_json(&json!({"a": [1]})).ok().as_deref(), Some("{\n    \"a\": [\n        1\n    ]\n}\n"));
    }
}
