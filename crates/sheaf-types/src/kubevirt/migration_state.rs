//! A VMI's `status.migrationState` (kept as written, KubeVirt's field
//! names): what the migration controller, the failover controller,
//! maintenance mode and the source and target agents read and write of it.

use serde_json::{json, Value};

use crate::Time;

/// The non-empty string at `key`.
pub fn text<'a>(state: &'a Value, key: &str) -> Option<&'a str> {
    state.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// Whether the migration completed.
pub fn completed(state: &Value) -> bool {
    state.get("completed") == Some(&json!(true))
}

/// Whether the migration failed.
pub fn failed(state: &Value) -> bool {
    state.get("failed") == Some(&json!(true))
}

/// Whether the migration ended (completed or failed).
pub fn ended(state: &Value) -> bool {
    completed(state) || failed(state)
}

/// The keys that record a failure with `reason`, to merge into the state.
pub fn failure(reason: &str, now: Time) -> Value {
    json!({"failed": true, "failureReason": reason, "endTimestamp": now})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_means_completed_or_failed() {
        assert!(!ended(&Value::Null));
        assert!(!ended(&json!({"targetNode": "n2", "completed": false})));
        assert!(ended(&json!({"completed": true})) && completed(&json!({"completed": true})));
        let f = failure("boom", Time::now());
        assert!(ended(&f) && failed(&f) && !completed(&f));
        assert_eq!(text(&f, "failureReason"), Some("boom"));
        assert_eq!(text(&json!({"x": ""}), "x"), None);
    }
}
