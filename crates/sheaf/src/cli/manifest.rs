//! Reading objects from YAML or JSON files, directories or stdin.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use serde::Deserialize as _;
use serde_json::Value;

/// One object read from a manifest.
#[derive(Debug, Clone)]
pub struct Doc {
    /// File name, or "STDIN".
    pub source: String,
    /// 1-based index of the document in its source.
    pub index: usize,
    pub value: Value,
}

impl Doc {
    /// `"vm.yaml" (document 2)`, for messages.
    pub fn origin(&self) -> String {
        format!("{:?} (document {})", self.source, self.index)
    }

    pub fn str_field(&self, pointer: &str) -> Option<&str> {
        self.value.pointer(pointer).and_then(Value::as_str).filter(|s| !s.is_empty())
    }

    pub fn api_version(&self) -> &str {
        self.str_field("/apiVersion").unwrap_or("")
    }

    pub fn kind(&self) -> &str {
        self.str_field("/kind").unwrap_or("")
    }

    pub fn name(&self) -> &str {
        self.str_field("/metadata/name").unwrap_or("")
    }

    pub fn namespace(&self) -> Option<&str> {
        self.str_field("/metadata/namespace")
    }

    /// Checks the fields every command needs.
    pub fn check(&self) -> anyhow::Result<()> {
        let at = format!("{}: document {}", self.source, self.index);
        if !self.value.is_object() {
            bail!("{at} is not an object (a mapping with apiVersion, kind and metadata)");
        }
        if self.api_version().is_empty() {
            bail!("{at} has no apiVersion");
        }
        if self.kind().is_empty() {
            bail!("{at} has no kind");
        }
        if self.value.get("metadata").is_some_and(|m| !m.is_object()) {
            bail!("{at}: metadata must be a mapping");
        }
        if self.name().is_empty() {
            bail!("{at} ({}) has no metadata.name", self.kind());
        }
        Ok(())
    }
}

fn is_manifest(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json"))
}

fn walk(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if recursive {
                walk(&p, recursive, out)?;
            }
        } else if is_manifest(&p) {
            out.push(p);
        }
    }
    Ok(())
}

/// Reads every `-f` argument: a file, a directory (its .yaml, .yml and .json
/// files; subdirectories too with `recursive`) or `-` for stdin.
pub fn read_all(args: &[String], recursive: bool) -> anyhow::Result<Vec<Doc>> {
    let mut docs = Vec::new();
    for arg in args {
        if arg == "-" {
            let text = std::io::read_to_string(std::io::stdin()).context("cannot read standard input")?;
            docs.extend(parse("STDIN", &text)?);
            continue;
        }
        if arg.starts_with("http://") || arg.starts_with("https://") {
            bail!("{arg}: reading manifests from URLs is not supported; download the file first");
        }
        let path = Path::new(arg);
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {arg}"))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(path, recursive, &mut files)?;
            if files.is_empty() {
                bail!("{arg} holds no .yaml, .yml or .json files");
            }
            for f in files {
                let name = f.display().to_string();
                let text = std::fs::read_to_string(&f).with_context(|| format!("cannot read {name}"))?;
                docs.extend(parse(&name, &text)?);
            }
        } else {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {arg}"))?;
            docs.extend(parse(arg, &text)?);
        }
    }
    Ok(docs)
}

/// Splits a text into objects: a YAML stream (documents separated by
/// `---`) or a sequence of JSON values. Empty documents are skipped and
/// `List` kinds are expanded into their items.
pub fn parse(source: &str, text: &str) -> anyhow::Result<Vec<Doc>> {
    let mut raw: Vec<(usize, Value)> = Vec::new();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        for (i, v) in serde_json::Deserializer::from_str(text).into_iter::<Value>().enumerate() {
            let v = v.map_err(|e| anyhow!("{source}: document {} is not valid JSON: {e}", i + 1))?;
            raw.push((i + 1, v));
        }
    } else {
        for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let v =
                Value::deserialize(de).map_err(|e| anyhow!("{source}: document {} is not valid YAML: {e}", i + 1))?;
            raw.push((i + 1, v));
        }
    }
    let mut docs = Vec::new();
    for (index, value) in raw {
        match value {
            Value::Null => {}
            Value::Object(ref m)
                if m.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List"))
                    && m.get("items").is_some_and(Value::is_array) =>
            {
                for item in m.get("items").and_then(Value::as_array).into_iter().flatten() {
                    docs.push(Doc { source: source.to_string(), index, value: item.clone() });
                }
            }
            value => docs.push(Doc { source: source.to_string(), index, value }),
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_stream() {
        let text = "---\n# comment only\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: b}\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: c}\n";
        let docs = parse("f.yaml", text).expect("parses");
        let names: Vec<&str> = docs.iter().map(Doc::name).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(docs[0].index, 2);
        assert!(docs.iter().all(|d| d.check().is_ok()));
    }

    #[test]
    fn json_stream() {
        let text = "{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"a\"}}\n{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":{\"name\":\"b\"}}";
        let docs = parse("f.json", text).expect("parses");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].name(), "b");
    }

    #[test]
    fn bad_input_names_file_and_document() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\nkind: [unclosed\n";
        let err = parse("bad.yaml", text).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("bad.yaml: document 2"), "{err}");
        let err = parse("bad.json", "{\"a\": }").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("bad.json: document 1"), "{err}");
        let docs = parse("s.yaml", "- a\n- b\n").expect("parses");
        assert!(docs[0].check().is_err());
        let docs = parse("s.yaml", "apiVersion: v1\nkind: ConfigMap\n").expect("parses");
        let err = docs[0].check().err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("no metadata.name"), "{err}");
        let docs = parse("s.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: 3\n").expect("parses");
        assert!(docs[0].check().is_err());
    }
}
