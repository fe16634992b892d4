//! Field validation: DNS-1123 names, label keys and values, quantities, and
//! the error type that carries a field path and a message a person can act on.

use std::fmt;

/// Why a field was rejected; the names are Kubernetes' `CauseType`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldErrorReason {
    Required,
    Invalid,
    Unsupported,
    Duplicate,
    NotFound,
    Forbidden,
    TooLong,
    /// A field this kind does not have.
    Unknown,
}

impl FieldErrorReason {
    /// The Kubernetes `StatusCause.reason` string.
    pub fn as_cause(self) -> &'static str {
        match self {
            FieldErrorReason::Required => "FieldValueRequired",
            FieldErrorReason::Invalid => "FieldValueInvalid",
            FieldErrorReason::Unsupported => "FieldValueNotSupported",
            FieldErrorReason::Duplicate => "FieldValueDuplicate",
            FieldErrorReason::NotFound => "FieldValueNotFound",
            FieldErrorReason::Forbidden => "FieldValueForbidden",
            FieldErrorReason::TooLong => "FieldValueTooLong",
            FieldErrorReason::Unknown => "FieldValueUnknown",
        }
    }
}

/// One rejected field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path, for example `spec.template.spec.domain.memory.guest`.
    pub field: String,
    pub reason: FieldErrorReason,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, reason: FieldErrorReason, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), reason, message: message.into() }
    }
    pub fn required(field: impl Into<String>) -> Self {
        Self::new(field, FieldErrorReason::Required, "Required value")
    }
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, FieldErrorReason::Invalid, message)
    }
    pub fn unsupported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list = supported.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        Self::new(
            field,
            FieldErrorReason::Unsupported,
            format!("Unsupported value: {value:?}: supported values: {list}"),
        )
    }
    pub fn duplicate(field: impl Into<String>, value: &str) -> Self {
        Self::new(field, FieldErrorReason::Duplicate, format!("Duplicate value: {value:?}"))
    }
    pub fn forbidden(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(field, FieldErrorReason::Forbidden, message)
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Accumulates errors while walking an object.
#[derive(Debug, Default)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    pub fn push(&mut self, e: FieldError) {
        self.0.push(e);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn into_result(self) -> Result<(), Vec<FieldError>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Checks an RFC 1123 label: lower-case alphanumerics and '-', starting and
/// ending with an alphanumeric, at most 63 characters.
pub fn dns1123_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > DNS1123_LABEL_MAX {
        return Err(format!("must be no more than {DNS1123_LABEL_MAX} characters"));
    }
    let ok = value.chars().all(|c| is_lower_alnum(c) || c == '-')
        && value.starts_with(is_lower_alnum)
        && value.ends_with(is_lower_alnum);
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', \
             and must start and end with an alphanumeric character (e.g. 'my-name', or '123-abc')"
            .into())
    }
}

/// Checks an RFC 1123 subdomain: dot-separated labels, at most 253 characters.
pub fn dns1123_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        return Err(format!("must be no more than {DNS1123_SUBDOMAIN_MAX} characters"));
    }
    let ok = value.split('.').all(|l| {
        !l.is_empty()
            && l.chars().all(|c| is_lower_alnum(c) || c == '-')
            && l.starts_with(is_lower_alnum)
            && l.ends_with(is_lower_alnum)
    });
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' \
             or '.', and must start and end with an alphanumeric character (e.g. 'example.com')"
            .into())
    }
}

fn qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks a label or annotation key: `[prefix/]name`.
pub fn qualified_name(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        dns1123_subdomain(p).map_err(|e| format!("prefix part {e}"))?;
    }
    if qualified_name_part(name) {
        Ok(())
    } else {
        Err("name part must consist of alphanumeric characters, '-', '_' or '.', must start and end \
             with an alphanumeric character and be at most 63 characters (e.g. 'MyName', \
             'my.name', or '123-abc'), with an optional DNS subdomain prefix and '/' \
             (e.g. 'example.com/MyName')"
            .into())
    }
}

/// Checks a label value: empty, or a qualified name part.
pub fn label_value(v: &str) -> Result<(), String> {
    if v.is_empty() || qualified_name_part(v) {
        Ok(())
    } else {
        Err("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' \
             or '.', and must start and end with an alphanumeric character, at most 63 characters"
            .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(dns1123_label("vm-1").is_ok());
        assert!(dns1123_label("Vm").is_err());
        assert!(dns1123_label("-a").is_err());
        assert!(dns1123_label("a-").is_err());
        assert!(dns1123_label(&"a".repeat(64)).is_err());
        assert!(dns1123_label(&"a".repeat(63)).is_ok());
        assert!(dns1123_label("a.b").is_err());
    }

    #[test]
    fn subdomains() {
        assert!(dns1123_subdomain("kubevirt.io").is_ok());
        assert!(dns1123_subdomain("a..b").is_err());
        assert!(dns1123_subdomain("under_score").is_err());
    }

    #[test]
    fn qualified() {
        assert!(qualified_name("app").is_ok());
        assert!(qualified_name("kubevirt.io/vm").is_ok());
        assert!(qualified_name("Bad Key").is_err());
        assert!(qualified_name("UPPER.example/x").is_err());
        assert!(label_value("").is_ok());
        assert!(label_value("v1.2_3").is_ok());
        assert!(label_value("no spaces").is_err());
    }
}
