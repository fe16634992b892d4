//! The Prometheus text exposition format (version 0.0.4), written by hand:
//! samples are gathered into [`Exposition`] in any order, then rendered
//! family by family (`# HELP`, `# TYPE`, samples), as the format requires.
//!
//! Escaping follows the format: in label values `\` → `\\`, `"` → `\"`
//! and a line feed → `\n`; in HELP text `\` → `\\` and a line feed → `\n`.
//! Metric and label names are checked against `[a-zA-Z_:][a-zA-Z0-9_:]*`
//! (label names without `:`); a sample with a bad name is dropped, never
//! written half-valid. A [`Collector`] adds what one part of a process
//! knows to an exposition; see docs/design/metrics.md.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A sample value: integers are written exactly, floats as Prometheus
/// reads them (`NaN`, `+Inf`, `-Inf`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Number {
    Int(u64),
    Float(f64),
}

impl From<u64> for Number {
    fn from(v: u64) -> Number {
        Number::Int(v)
    }
}

impl From<u32> for Number {
    fn from(v: u32) -> Number {
        Number::Int(u64::from(v))
    }
}

impl From<usize> for Number {
    fn from(v: usize) -> Number {
        Number::Int(v as u64)
    }
}

impl From<f64> for Number {
    fn from(v: f64) -> Number {
        Number::Float(v)
    }
}

impl From<bool> for Number {
    fn from(v: bool) -> Number {
        Number::Int(u64::from(v))
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Number::Int(v) => write!(f, "{v}"),
            Number::Float(v) if v.is_nan() => f.write_str("NaN"),
            Number::Float(v) if v == f64::INFINITY => f.write_str("+Inf"),
            Number::Float(v) if v == f64::NEG_INFINITY => f.write_str("-Inf"),
            Number::Float(v) => write!(f, "{v}"),
        }
    }
}

/// A histogram's state: upper bounds (ascending, without `+Inf`), the count
/// of observations in each bucket (not cumulative; one more than
/// `bounds` for the `+Inf` bucket), and the sum of all observations.
#[derive(Clone, Debug, PartialEq)]
pub struct HistogramValue<'a> {
    pub bounds: &'a [f64],
    pub counts: Vec<u64>,
    pub sum: f64,
}

type Labels = Vec<(String, String)>;

#[derive(Debug)]
struct Family {
    help: String,
    kind: Kind,
    /// Suffix (`""`, `_bucket`, `_sum`, `_count`), labels, value.
    samples: Vec<(&'static str, Labels, Number)>,
}

/// Samples gathered for one scrape, rendered with [`Exposition::render`].
#[derive(Debug, Default)]
pub struct Exposition {
    /// Families in the order they were first named.
    order: Vec<String>,
    families: HashMap<String, Family>,
}

/// Is `name` a valid metric name (`label`: a label name, no `:`)?
pub fn valid_name(name: &str, label: bool) -> bool {
    let mut chars = name.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (!label && c == ':');
    let ok_rest = |c: char| c.is_ascii_alphanumeric() || c == '_' || (!label && c == ':');
    chars.next().is_some_and(ok_first) && chars.all(ok_rest) && !(label && name.starts_with("__"))
}

/// A label value as the text format writes it between quotes.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text as the text format writes it.
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition::default()
    }

    fn family(&mut self, name: &str, kind: Kind, help: &str) -> Option<&mut Family> {
        if !valid_name(name, false) {
            return None;
        }
        if !self.families.contains_key(name) {
            self.order.push(name.to_string());
            self.families.insert(name.to_string(), Family { help: help.to_string(), kind, samples: Vec::new() });
        }
        // A name used with two types keeps its first (one TYPE line).
        self.families.get_mut(name).filter(|f| f.kind == kind)
    }

    fn labels(labels: &[(&str, &str)]) -> Option<Labels> {
        if !labels.iter().all(|(k, _)| valid_name(k, true)) {
            return None;
        }
        Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn add(&mut self, name: &str, kind: Kind, help: &str, labels: &[(&str, &str)], v: Number) {
        let Some(labels) = Self::labels(labels) else { return };
        if let Some(f) = self.family(name, kind, help) {
            f.samples.push(("", labels, v));
        }
    }

    /// A counter sample (the name should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: impl Into<Number>) {
        self.add(name, Kind::Counter, help, labels, v.into());
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], v: impl Into<Number>) {
        self.add(name, Kind::Gauge, help, labels, v.into());
    }

    /// Names a family with no samples yet (so that it is listed, with its
    /// HELP and TYPE, even while nothing is measured).
    pub fn declare(&mut self, name: &str, kind: Kind, help: &str) {
        let _ = self.family(name, kind, help);
    }

    /// A histogram series: cumulative `_bucket{le}` samples ending in
    /// `+Inf`, `_sum` and `_count`. Ignored when `counts` does not have one
    /// entry more than `bounds`.
    pub fn histogram(&mut self, name: &str, help: &str, labels: &[(&str, &str)], h: &HistogramValue<'_>) {
        let Some(base) = Self::labels(labels) else { return };
        if h.counts.len() != h.bounds.len() + 1 || labels.iter().any(|(k, _)| *k == "le") {
            return;
        }
        let Some(f) = self.family(name, Kind::Histogram, help) else { return };
        let mut cumulative = 0u64;
        for (i, n) in h.counts.iter().enumerate() {
            cumulative = cumulative.saturating_add(*n);
            let le = h.bounds.get(i).map(|b| Number::Float(*b).to_string()).unwrap_or_else(|| "+Inf".into());
            let mut l = base.clone();
            l.push(("le".into(), le));
            f.samples.push(("_bucket", l, Number::Int(cumulative)));
        }
        f.samples.push(("_sum", base.clone(), Number::Float(h.sum)));
        f.samples.push(("_count", base, Number::Int(cumulative)));
    }

    /// Adds everything `other` holds.
    pub fn merge(&mut self, other: Exposition) {
        let Exposition { order, mut families } = other;
        for name in order {
            let Some(f) = families.remove(&name) else { continue };
            if let Some(mine) = self.family(&name, f.kind, &f.help) {
                mine.samples.extend(f.samples);
            }
        }
    }

    /// How many samples are held.
    pub fn len(&self) -> usize {
        self.families.values().map(|f| f.samples.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The text format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(64 * self.len() + 128 * self.order.len());
        for name in &self.order {
            let Some(f) = self.families.get(name) else { continue };
            let _ = writeln!(out, "# HELP {name} {}", escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {name} {}", f.kind.as_str());
            for (suffix, labels, v) in &f.samples {
                out.push_str(name);
                out.push_str(suffix);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (k, val)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{k}=\"{}\"", escape_label_value(val));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {v}");
            }
        }
        out
    }
}

/// A boxed future, as [`Collector::collect`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One part of a process that has metrics to add to a scrape.
pub trait Collector: Send + Sync {
    /// What it measures now.
    fn collect(&self) -> BoxFuture<'_, Exposition>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape_label_value(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label_value("line\nnext"), "line\\nnext");
        assert_eq!(escape_label_value("ünïcode {}=,"), "ünïcode {}=,");
        assert_eq!(escape_help("a\\b\nc \"quoted\""), "a\\\\b\\nc \"quoted\"");
        let mut e = Exposition::new();
        e.gauge("x_info", "Odd\nhelp \\ text", &[("path", "C:\\dir\n\"x\"")], 1u64);
        let text = e.render();
        assert_eq!(
            text,
            "# HELP x_info Odd\\nhelp \\\\ text\n# TYPE x_info gauge\nx_info{path=\"C:\\\\dir\\n\\\"x\\\"\"} 1\n"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("apiserver_request_total", false));
        assert!(valid_name("a:b", false));
        assert!(!valid_name("a:b", true));
        assert!(!valid_name("9lives", false));
        assert!(!valid_name("", false));
        assert!(!valid_name("a-b", false));
        assert!(!valid_name("__reserved", true));
        let mut e = Exposition::new();
        e.counter("bad-name_total", "h", &[], 1u64);
        e.counter("good_total", "h", &[("bad-label", "x")], 1u64);
        e.counter("good_total", "h", &[("ok", "x")], 2u64);
        assert_eq!(e.len(), 1);
        assert!(!e.render().contains("bad"));
    }

    #[test]
    fn families_are_grouped_whatever_the_order_of_samples() {
        let mut e = Exposition::new();
        e.counter("a_total", "A.", &[("vm", "1")], 1u64);
        e.gauge("b", "B.", &[], 0.5);
        e.counter("a_total", "A.", &[("vm", "2")], 2u64);
        // The same name with another type is left out.
        e.gauge("a_total", "A.", &[], 3u64);
        let text = e.render();
        assert_eq!(
            text,
            "# HELP a_total A.\n# TYPE a_total counter\na_total{vm=\"1\"} 1\na_total{vm=\"2\"} 2\n\
             # HELP b B.\n# TYPE b gauge\nb 0.5\n"
        );
        let mut other = Exposition::new();
        other.counter("a_total", "A.", &[("vm", "3")], 3u64);
        other.gauge("c", "C.", &[], f64::NAN);
        e.merge(other);
        let text = e.render();
        assert!(text.contains("a_total{vm=\"2\"} 2\na_total{vm=\"3\"} 3\n# HELP b"), "{text}");
        assert!(text.ends_with("# TYPE c gauge\nc NaN\n"), "{text}");
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        let bounds = [0.1, 1.0];
        let mut e = Exposition::new();
        let h = HistogramValue { bounds: &bounds, counts: vec![2, 0, 1], sum: 5.25 };
        e.histogram("d_seconds", "D.", &[("verb", "GET")], &h);
        assert_eq!(
            e.render(),
            "# HELP d_seconds D.\n# TYPE d_seconds histogram\n\
             d_seconds_bucket{verb=\"GET\",le=\"0.1\"} 2\n\
             d_seconds_bucket{verb=\"GET\",le=\"1\"} 2\n\
             d_seconds_bucket{verb=\"GET\",le=\"+Inf\"} 3\n\
             d_seconds_sum{verb=\"GET\"} 5.25\n\
             d_seconds_count{verb=\"GET\"} 3\n"
        );
        // A malformed one is not written.
        let mut e = Exposition::new();
        e.histogram("d_seconds", "D.", &[], &HistogramValue { bounds: &bounds, counts: vec![1], sum: 0.0 });
        assert!(e.is_empty());
    }

    #[test]
    fn numbers() {
        assert_eq!(Number::from(u64::MAX).to_string(), "18446744073709551615");
        assert_eq!(Number::from(f64::INFINITY).to_string(), "+Inf");
        assert_eq!(Number::from(f64::NEG_INFINITY).to_string(), "-Inf");
        assert_eq!(Number::from(0.25).to_string(), "0.25");
        assert_eq!(Number::from(true).to_string(), "1");
    }
}
