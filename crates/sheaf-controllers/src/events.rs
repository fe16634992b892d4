//! Core `v1` Events about the objects controllers act on, as `kubectl
//! describe` and `kubectl get events` show them.
//!
//! Recording is best effort: a failure is logged and never fails a
//! reconcile. The same event (object, type, reason and message) repeated
//! within [`AGGREGATION_WINDOW`] bumps `count` and `lastTimestamp` of the
//! existing Event instead of creating another, like client-go's recorder.
//! Which Event to bump is remembered in memory only; after a restart a new
//! Event is created.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use serde_json::json;
use sheaf_client::{Api, Typed};
use sheaf_types::core::{Event, EventSource};
use sheaf_types::meta::ObjectReference;
use sheaf_types::{Kind, ObjectMeta, Time};
use tokio::time::Instant;

/// Repeats within this window are folded into one Event.
pub const AGGREGATION_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Remembered Events beyond this many are forgotten (oldest first).
const REMEMBERED: usize = 4096;

/// `Normal` or `Warning`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// The reference an Event's `involvedObject` holds for `obj`.
pub fn reference_to<K: Kind>(obj: &K) -> ObjectReference {
    let m = obj.metadata();
    let api_version = if K::GROUP.is_empty() { K::VERSION.to_string() } else { format!("{}/{}", K::GROUP, K::VERSION) };
    ObjectReference {
        api_version: Some(api_version),
        kind: Some(K::KIND.to_string()),
        name: m.name.clone(),
        namespace: m.namespace.clone(),
        uid: m.uid.clone(),
        resource_version: m.resource_version.clone(),
        field_path: None,
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Fingerprint {
    uid: String,
    type_: EventType,
    reason: String,
    message: String,
}

struct Recorded {
    namespace: String,
    name: String,
    count: i32,
    last: Instant,
}

/// Writes Events on behalf of one component (`source.component`).
pub struct EventRecorder {
    api: Arc<dyn Api>,
    component: &'static str,
    recent: Mutex<HashMap<Fingerprint, Recorded>>,
}

fn now() -> Time {
    Time(Utc::now().trunc_subsecs(0))
}

impl EventRecorder {
    pub fn new(api: Arc<dyn Api>, component: &'static str) -> Self {
        EventRecorder { api, component, recent: Mutex::new(HashMap::new()) }
    }

    /// Records that `reason` happened to `involved`.
    pub async fn record(&self, involved: &ObjectReference, type_: EventType, reason: &str, message: impl Into<String>) {
        let message = message.into();
        let fp = Fingerprint {
            uid: involved.uid.clone().unwrap_or_default(),
            type_,
            reason: reason.to_string(),
            message: message.clone(),
        };
        let previous = {
            let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent
                .get(&fp)
                .filter(|r| r.last.elapsed() < AGGREGATION_WINDOW)
                .map(|r| (r.namespace.clone(), r.name.clone(), r.count))
        };
        let events = Typed::<Event>::new(self.api.as_ref());
        if let Some((ns, name, count)) = previous {
            let patch = json!({"count": count + 1, "lastTimestamp": now()});
            match events.merge_patch(Some(&ns), &name, patch, false).await {
                Ok(_) => {
                    self.remember(fp, ns, name, count + 1);
                    return;
                }
                // Gone (expired, deleted): write a new one.
                Err(e) if e.is_not_found() => {}
                Err(e) => {
                    tracing::debug!(component = self.component, reason, error = %e, "cannot update an event");
                    return;
                }
            }
        }
        let ns = involved.namespace.clone().unwrap_or_else(|| "default".to_string());
        let base = involved.name.clone().unwrap_or_default();
        let stamp = Utc::now().timestamp_nanos_opt().unwrap_or_default();
        let t = now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{base}.{stamp:x}")),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: involved.clone(),
            reason: Some(reason.to_string()),
            message: Some(message),
            source: Some(EventSource { component: Some(self.component.to_string()), host: None }),
            first_timestamp: Some(t),
            last_timestamp: Some(t),
            count: Some(1),
            type_: Some(type_.as_str().to_string()),
            reporting_component: Some(self.component.to_string()),
            ..Default::default()
        };
        match events.create(&event).await {
            Ok(created) => {
                let name = created.metadata.name.unwrap_or_default();
                self.remember(fp, ns, name, 1);
            }
            Err(e) => tracing::debug!(component = self.component, reason, error = %e, "cannot record an event"),
        }
    }

    fn remember(&self, fp: Fingerprint, namespace: String, name: String, count: i32) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        if recent.len() >= REMEMBERED && !recent.contains_key(&fp) {
            recent.retain(|_, r| r.last.elapsed() < AGGREGATION_WINDOW);
            if recent.len() >= REMEMBERED {
                if let Some(oldest) = recent.iter().min_by_key(|(_, r)| r.last).map(|(k, _)| k.clone()) {
                    recent.remove(&oldest);
                }
            }
        }
        recent.insert(fp, Recorded { namespace, name, count, last: Instant::now() });
    }
}
