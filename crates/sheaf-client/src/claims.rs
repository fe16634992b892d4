//! From a VMI volume's claim name to the Sheaf Volume that holds its data.
//!
//! A `persistentVolumeClaim.claimName` (or `dataVolume.name`) names a Sheaf
//! Volume in the VMI's namespace: the Volume of that name, made directly or
//! for the PersistentVolumeClaim of that name (a claim's Volume has the
//! claim's name). Everything that needs the Volume behind
//! a claim (the node agent attaching it at boot or as a hotplug, the API
//! server checking an `addvolume` request) resolves it here, so that there
//! is one place that says what a claim name means.

use sheaf_types::storage::Volume;

use crate::{Api, ClientError, Typed};

/// The Volume claim `claim` in namespace `ns` refers to (None: no such
/// Volume).
pub async fn volume_for_claim(api: &dyn Api, ns: &str, claim: &str) -> Result<Option<Volume>, ClientError> {
    Typed::<Volume>::new(api).get(Some(ns), claim).await
}
