//! Kubernetes `resource.Quantity` and `intstr.IntOrString`.
//!
//! A [`Quantity`] keeps the text it was written with ("512Mi", "2", "500m",
//! "1.5Gi", "1e3") and serialises back to exactly that text, so a round trip
//! never rewrites a manifest. It is read from a JSON string or a JSON number,
//! and rejects text that is not a quantity with the message Kubernetes gives.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The pattern Kubernetes publishes in OpenAPI for quantities.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// The regular expression Kubernetes quotes when it rejects a quantity.
const QUANTITY_ERROR_REGEX: &str = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$";

/// Significant digits that fit in the `u128` mantissa.
const MAX_DIGITS: usize = 38;

/// A fixed-point number with an optional SI or binary suffix, such as
/// `512Mi`, `2`, `500m`, `1G`, `1.5Gi` or `1e3`.
///
/// Equality compares the text, so `1Gi` and `1024Mi` are different values;
/// compare [`Quantity::as_bytes_u64`] or [`Quantity::as_millis`] for the
/// amount.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Quantity {
    text: String,
    num: Number,
}

/// `mantissa * 10^exp10 * 2^exp2`, negated when `negative`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Number {
    negative: bool,
    mantissa: u128,
    exp10: i32,
    exp2: u32,
}

fn format_error(s: &str) -> String {
    format!(
        "invalid quantity {s:?}: quantities must match the regular expression \
         '{QUANTITY_ERROR_REGEX}'; expected e.g. 512Mi, 2Gi, 500m or 1.5"
    )
}

fn parse_number(s: &str) -> Result<Number, String> {
    let bytes = s.as_bytes();
    let mut pos = 0;
    let mut negative = false;
    match bytes.first() {
        Some(b'+') => pos = 1,
        Some(b'-') => {
            negative = true;
            pos = 1;
        }
        _ => {}
    }
    let int_start = pos;
    while pos < bytes.len() && bytes[pos].is_ascii_digit() {
        pos += 1;
    }
    let int_part = &s[int_start..pos];
    let mut frac_part = "";
    if pos < bytes.len() && bytes[pos] == b'.' {
        pos += 1;
        let frac_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        frac_part = &s[frac_start..pos];
    }
    if int_part.is_empty() && frac_part.is_empty() {
        return Err(format_error(s));
    }
    let (exp10_suffix, exp2) = match &s[pos..] {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        suffix => {
            let exp = suffix.strip_prefix(['e', 'E']).ok_or_else(|| format_error(s))?;
            let digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format_error(s));
            }
            let e: i32 = exp.parse().map_err(|_| format!("invalid quantity {s:?}: exponent out of range"))?;
            (e, 0)
        }
    };
    let frac_part = frac_part.trim_end_matches('0');
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    // Trailing zeros of the integer part move into the exponent.
    let significant = digits.trim_end_matches('0');
    let trailing_zeros = i32::try_from(digits.len() - significant.len()).map_err(|_| format_error(s))?;
    let digits = significant;
    if digits.len() > MAX_DIGITS {
        return Err(format!("invalid quantity {s:?}: too many significant digits (at most {MAX_DIGITS})"));
    }
    let mantissa: u128 = if digits.is_empty() { 0 } else { digits.parse().map_err(|_| format_error(s))? };
    let frac_len = i32::try_from(frac_part.len()).map_err(|_| format_error(s))?;
    let exp10 = exp10_suffix
        .checked_sub(frac_len)
        .and_then(|e| e.checked_add(trailing_zeros))
        .ok_or_else(|| format!("invalid quantity {s:?}: exponent out of range"))?;
    Ok(Number { negative: negative && mantissa != 0, mantissa, exp10, exp2 })
}

impl Number {
    /// The value divided by `10^scale`, rounded away from zero; `None` when it
    /// does not fit in an `i128`.
    fn scaled(&self, scale: i32) -> Option<i128> {
        if self.mantissa == 0 {
            return Some(0);
        }
        let n = self.mantissa.checked_mul(1u128.checked_shl(self.exp2)?)?;
        let e = i64::from(self.exp10) - i64::from(scale);
        let magnitude = if e >= 0 {
            let p = 10u128.checked_pow(u32::try_from(e).ok()?)?;
            n.checked_mul(p)?
        } else {
            match u32::try_from(-e).ok().and_then(|x| 10u128.checked_pow(x)) {
                Some(d) => n / d + u128::from(n % d != 0),
                // The divisor exceeds any u128, so the quotient rounds up to 1.
                None => 1,
            }
        };
        let v = i128::try_from(magnitude).ok()?;
        Some(if self.negative { -v } else { v })
    }

    fn to_f64(self) -> f64 {
        let base: f64 = format!("{}e{}", self.mantissa, self.exp10).parse().unwrap_or(f64::INFINITY);
        let v = base * 2f64.powi(self.exp2 as i32);
        if self.negative {
            -v
        } else {
            v
        }
    }
}

impl Quantity {
    /// Parses a quantity, keeping its text.
    pub fn parse(s: &str) -> Result<Quantity, String> {
        let num = parse_number(s)?;
        Ok(Quantity { text: s.to_string(), num })
    }

    /// The text the quantity was written with.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn is_negative(&self) -> bool {
        self.num.negative
    }

    pub fn is_zero(&self) -> bool {
        self.num.mantissa == 0
    }

    /// Greater than zero.
    pub fn is_positive(&self) -> bool {
        !self.is_negative() && !self.is_zero()
    }

    /// The value in base units (bytes, cores) as a float.
    pub fn to_f64(&self) -> f64 {
        self.num.to_f64()
    }

    /// The value in base units, rounded up to a whole unit as Kubernetes'
    /// `Quantity.Value()` does; `None` when it does not fit in an `i64`.
    pub fn value(&self) -> Option<i64> {
        self.num.scaled(0).and_then(|v| i64::try_from(v).ok())
    }

    /// The value in base units (for memory and storage: bytes), rounded up;
    /// `None` when negative or too large for a `u64`.
    pub fn as_bytes_u64(&self) -> Option<u64> {
        self.num.scaled(0).and_then(|v| u64::try_from(v).ok())
    }

    /// The value in thousandths of a base unit (for CPU: millicores), rounded
    /// up as Kubernetes' `MilliValue()` does; `None` when it does not fit in
    /// an `i64`.
    pub fn as_millis(&self) -> Option<i64> {
        self.num.scaled(-3).and_then(|v| i64::try_from(v).ok())
    }

    /// Checks a quantity used as an amount of something (memory, disk size,
    /// CPU): it must be greater than zero.
    pub fn check_positive(&self) -> Result<(), String> {
        if self.is_positive() {
            Ok(())
        } else {
            Err(format!("must be greater than zero, got {:?}; expected e.g. 512Mi or 2Gi", self.text))
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Quantity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Quantity::parse(s)
    }
}

impl TryFrom<&str> for Quantity {
    type Error = String;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Quantity::parse(s)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

struct QuantityVisitor;

impl Visitor<'_> for QuantityVisitor {
    type Value = Quantity;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a quantity such as 512Mi, 2Gi or 500m (a string or a number)")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
        Quantity::parse(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
        Quantity::parse(&v.to_string()).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
        Quantity::parse(&v.to_string()).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
        if !v.is_finite() {
            return Err(E::custom(format!("invalid quantity {v}: must be a finite number")));
        }
        Quantity::parse(&v.to_string()).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor)
    }
}

impl JsonSchema for Quantity {
    fn schema_name() -> Cow<'static, str> {
        "Quantity".into()
    }

    fn schema_id() -> Cow<'static, str> {
        "sheaf_types::quantity::Quantity".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A fixed-point amount with an optional suffix: binary (Ki, Mi, Gi, Ti, Pi, Ei), \
                            decimal (m, k, M, G, T, P, E) or an exponent (1e3); for example 512Mi, 2Gi, \
                            500m or 2. Written as a string, or as a number for plain amounts.",
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": true
        })
    }
}

/// An integer or a string, as Kubernetes' `intstr.IntOrString` (for example
/// a port number or name, or a count or percentage such as `25%`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum IntOrString {
    Int(i32),
    String(String),
}

impl IntOrString {
    /// The integer, or the string parsed as an integer.
    pub fn as_int(&self) -> Option<i32> {
        match self {
            IntOrString::Int(i) => Some(*i),
            IntOrString::String(s) => s.parse().ok(),
        }
    }

    /// Resolves an absolute count or a percentage (`"25%"`) of `total`,
    /// rounding a percentage up or down, as Kubernetes'
    /// `GetScaledValueFromIntOrPercent`.
    pub fn scaled_value(&self, total: i64, round_up: bool) -> Result<i64, String> {
        match self {
            IntOrString::Int(i) => Ok(i64::from(*i)),
            IntOrString::String(s) => {
                let pct: i64 = s
                    .strip_suffix('%')
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("invalid value {s:?}: expected an integer or a percentage such as 25%"))?;
                let product = pct.saturating_mul(total);
                Ok(if round_up { product.saturating_add(99).div_euclid(100) } else { product.div_euclid(100) })
            }
        }
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(i) => write!(f, "{i}"),
            IntOrString::String(s) => f.write_str(s),
        }
    }
}

impl From<i32> for IntOrString {
    fn from(i: i32) -> Self {
        IntOrString::Int(i)
    }
}

impl From<&str> for IntOrString {
    fn from(s: &str) -> Self {
        IntOrString::String(s.to_string())
    }
}

impl From<String> for IntOrString {
    fn from(s: String) -> Self {
        IntOrString::String(s)
    }
}

impl Serialize for IntOrString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            IntOrString::Int(i) => s.serialize_i32(*i),
            IntOrString::String(v) => s.serialize_str(v),
        }
    }
}

struct IntOrStringVisitor;

impl Visitor<'_> for IntOrStringVisitor {
    type Value = IntOrString;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer or a string")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
        i32::try_from(v)
            .map(IntOrString::Int)
            .map_err(|_| E::custom(format!("integer {v} is out of range for a 32-bit integer")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
        i32::try_from(v)
            .map(IntOrString::Int)
            .map_err(|_| E::custom(format!("integer {v} is out of range for a 32-bit integer")))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
        Ok(IntOrString::String(v.to_string()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<IntOrString, E> {
        Ok(IntOrString::String(v))
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntOrStringVisitor)
    }
}

impl JsonSchema for IntOrString {
    fn schema_name() -> Cow<'static, str> {
        "IntOrString".into()
    }

    fn schema_id() -> Cow<'static, str> {
        "sheaf_types::quantity::IntOrString".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "An integer or a string.",
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).expect(s)
    }

    #[test]
    fn parses_the_usual_forms() {
        assert_eq!(q("512Mi").as_bytes_u64(), Some(512 << 20));
        assert_eq!(q("2Gi").as_bytes_u64(), Some(2 << 30));
        assert_eq!(q("1.5Gi").as_bytes_u64(), Some(3 << 29));
        assert_eq!(q("1G").as_bytes_u64(), Some(1_000_000_000));
        assert_eq!(q("1e3").as_bytes_u64(), Some(1000));
        assert_eq!(q("1E3").as_bytes_u64(), Some(1000));
        assert_eq!(q("1E").as_bytes_u64(), Some(1_000_000_000_000_000_000));
        assert_eq!(q("1Ki").as_bytes_u64(), Some(1024));
        assert_eq!(q("2").as_bytes_u64(), Some(2));
        assert_eq!(q("0").as_bytes_u64(), Some(0));
        assert_eq!(q(".5k").as_bytes_u64(), Some(500));
        assert_eq!(q("5.").as_bytes_u64(), Some(5));
        assert_eq!(q("+7").value(), Some(7));
        assert_eq!(q("1e-3").as_millis(), Some(1));
        assert_eq!(q("100M").as_bytes_u64(), Some(100_000_000));
    }

    #[test]
    fn millis_for_cpu() {
        assert_eq!(q("500m").as_millis(), Some(500));
        assert_eq!(q("2").as_millis(), Some(2000));
        assert_eq!(q("0.25").as_millis(), Some(250));
        assert_eq!(q("1.5").as_millis(), Some(1500));
        assert_eq!(q("100u").as_millis(), Some(1), "rounds up like MilliValue");
        assert_eq!(q("500m").value(), Some(1), "rounds up like Value");
        assert_eq!(q("-500m").as_millis(), Some(-500));
    }

    #[test]
    fn floats() {
        assert_eq!(q("500m").to_f64(), 0.5);
        assert_eq!(q("1.5Gi").to_f64(), 1.5 * 1024.0 * 1024.0 * 1024.0);
        assert_eq!(q("-2k").to_f64(), -2000.0);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["12Q", "", "abc", "1.2.3", "--1", "1 Gi", "1K", "1e", "1e+", "Mi", ".", "1Gi ", "1ee3", "1e3.5"] {
            let err = Quantity::parse(bad).expect_err(bad);
            assert!(err.contains("quantities must match the regular expression"), "{bad}: {err}");
            assert!(err.contains("512Mi"), "{err}");
        }
        assert!(Quantity::parse(&"9".repeat(40)).is_err());
        let big = format!("1{}", "0".repeat(45));
        assert_eq!(q(&big).to_f64(), 1e45);
    }

    #[test]
    fn negative_and_zero_are_not_sizes() {
        let neg = q("-5");
        assert!(neg.is_negative());
        assert_eq!(neg.as_bytes_u64(), None);
        assert!(neg.check_positive().expect_err("negative").contains("greater than zero"));
        assert!(q("0Mi").check_positive().is_err());
        assert!(q("-0").check_positive().is_err());
        assert!(!q("-0").is_negative());
        assert!(q("1").check_positive().is_ok());
    }

    #[test]
    fn overflow_is_none() {
        assert_eq!(q("16Ei").as_bytes_u64(), None);
        assert_eq!(q("1e40").value(), None);
        assert_eq!(q("0e400").value(), Some(0));
        assert_eq!(q("1e-400").value(), Some(1));
    }

    #[test]
    fn serde_keeps_the_text() {
        for s in ["512Mi", "2", "500m", "1G", "1.5Gi", "1e3"] {
            let v: Quantity = serde_json::from_value(json!(s)).expect(s);
            assert_eq!(serde_json::to_value(&v).expect("ser"), json!(s));
        }
        let n: Quantity = serde_json::from_value(json!(2)).expect("int");
        assert_eq!(n.as_str(), "2");
        let f: Quantity = serde_json::from_value(json!(1.5)).expect("float");
        assert_eq!(f.as_millis(), Some(1500));
        let neg: Quantity = serde_json::from_value(json!(-3)).expect("negative number");
        assert!(neg.is_negative());
        let err = serde_json::from_value::<Quantity>(json!("12Q")).expect_err("12Q");
        assert!(err.to_string().contains("quantities must match"), "{err}");
        assert!(serde_json::from_value::<Quantity>(json!(true)).is_err());
    }

    #[test]
    fn int_or_string() {
        let i: IntOrString = serde_json::from_value(json!(8080)).expect("int");
        assert_eq!(i, IntOrString::Int(8080));
        assert_eq!(serde_json::to_value(&i).expect("ser"), json!(8080));
        let s: IntOrString = serde_json::from_value(json!("http")).expect("str");
        assert_eq!(s, IntOrString::String("http".into()));
        assert_eq!(serde_json::to_value(&s).expect("ser"), json!("http"));
        assert!(serde_json::from_value::<IntOrString>(json!(1.5)).is_err());
        assert!(serde_json::from_value::<IntOrString>(json!(1u64 << 40)).is_err());
        assert_eq!(IntOrString::from("25%").scaled_value(10, true), Ok(3));
        assert_eq!(IntOrString::from("25%").scaled_value(10, false), Ok(2));
        assert_eq!(IntOrString::Int(4).scaled_value(10, true), Ok(4));
        assert!(IntOrString::from("x").scaled_value(10, true).is_err());
    }

    #[test]
    fn schemas_are_int_or_string() {
        let mut g = SchemaGenerator::default();
        let s = serde_json::to_value(Quantity::json_schema(&mut g)).expect("schema");
        assert_eq!(s["x-kubernetes-int-or-string"], json!(true));
        assert_eq!(s["anyOf"], json!([{"type": "integer"}, {"type": "string"}]));
        let s = serde_json::to_value(IntOrString::json_schema(&mut g)).expect("schema");
        assert_eq!(s["x-kubernetes-int-or-string"], json!(true));
    }
}
