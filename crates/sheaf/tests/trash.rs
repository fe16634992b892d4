//! The trash, end to end on a server whose retention is 20 s: a volume
//! deleted with kubectl while it has a snapshot stays, `Trashed`, listed
//! by `sheaf volume trash`, its name held (a claim of that name waits and
//! says why) until the retention ends; then it and its snapshot go and the
//! claim gets a new volume. A claim with snapshots can be deleted (its
//! volume goes to the trash) and `sheaf volume purge` empties it at once.
//! A bad purge annotation is refused.

mod support;

use std::time::{Duration, Instant};

use support::eventually;
use support::guest::{jsonpath, server_with_images, QemuReaper};

const CLAIM: &str = "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: one-copy
provisioner: driver.longhorn.io
reclaimPolicy: Delete
parameters:
  numberOfReplicas: \"1\"
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: kept
spec:
  accessModes: [ReadWriteOnce]
  volumeMode: Block
  storageClassName: one-copy
  resources:
    requests:
      storage: 16Mi
";

fn gone(s: &support::Server, kind: &str, name: &str) -> bool {
    let out = s.kubectl(&["get", kind, name, "-o", "name"]);
    !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound")
}

#[test]
fn deleted_volumes_keep_their_snapshots_in_the_trash_until_the_retention_ends() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let s = server_with_images(root.path(), &["--trash-retention", "20s"]);

    s.cli_ok(&["volume", "create", "kept", "--size", "16Mi", "--replicas", "1"]);
    s.cli_ok(&["volume", "snapshot", "kept", "before"]);
    let e = s.kubectl_err(&["annotate", "volume", "kept", "sheaf.io/purge=yes"], None);
    assert!(e.contains("sheaf.io/purge") && e.contains("\"true\""), "{e}");

    // kubectl deletes it: it stays, in the trash, until 20 s after.
    let deleted = Instant::now();
    s.kubectl_ok(&["delete", "volume", "kept", "--wait=false"]);
    assert!(
        eventually(Duration::from_secs(15), || jsonpath(&s, "volume", "kept", "{.status.state}") == "Trashed"
            && !jsonpath(&s, "volume", "kept", "{.status.purgeAt}").is_empty()),
        "{}",
        jsonpath(&s, "volume", "kept", "{.status}")
    );
    let trash = s.cli_ok(&["volume", "trash"]);
    assert!(trash.contains("kept") && trash.contains("before") && trash.contains("PURGED AT"), "{trash}");
    assert_eq!(jsonpath(&s, "volumesnapshot", "before", "{.status.readyToUse}"), "true");

    // A claim of the same name waits, and says why.
    s.apply(CLAIM);
    assert!(
        eventually(Duration::from_secs(15), || jsonpath(
            &s,
            "pvc",
            "kept",
            "{.status.conditions[?(@.type==\"Bound\")].reason}"
        ) == "VolumeTrashed"),
        "{}",
        jsonpath(&s, "pvc", "kept", "{.status}")
    );
    let why = jsonpath(&s, "pvc", "kept", "{.status.conditions[?(@.type==\"Bound\")].message}");
    assert!(why.contains("in the trash") && why.contains("sheaf volume purge kept"), "{why}");

    // At the end of the retention the snapshot and the volume go, and the
    // claim gets a volume of its own.
    assert!(
        eventually(Duration::from_secs(60), || gone(&s, "volumesnapshot", "before")),
        "snapshot left: {}",
        s.kubectl_ok(&["get", "volumesnapshots", "-o", "wide"])
    );
    assert!(deleted.elapsed() >= Duration::from_secs(19), "purged after {:?}, before the retention", deleted.elapsed());
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&s, "pvc", "kept", "{.status.phase}") == "Bound"),
        "{}",
        jsonpath(&s, "pvc", "kept", "{.status}")
    );
    assert!(jsonpath(&s, "volume", "kept", "{.metadata.deletionTimestamp}").is_empty());

    // A claim whose volume has a snapshot can be deleted: the volume goes
    // to the trash (it used to be refused); purged, everything goes.
    assert!(eventually(Duration::from_secs(30), || jsonpath(&s, "volume", "kept", "{.status.state}") == "Detached"));
    s.cli_ok(&["volume", "snapshot", "kept", "second"]);
    s.kubectl_ok(&["delete", "pvc", "kept", "--wait=false"]);
    assert!(
        eventually(Duration::from_secs(30), || jsonpath(&s, "volume", "kept", "{.status.state}") == "Trashed"),
        "{}",
        jsonpath(&s, "volume", "kept", "{.status}")
    );
    let out = s.cli_ok(&["volume", "purge", "kept"]);
    assert!(out.contains("volume kept and its 1 snapshot(s) deleted"), "{out}");
    assert!(gone(&s, "volumesnapshot", "second"));
    assert!(
        eventually(Duration::from_secs(30), || s.kubectl_ok(&["get", "replicas", "-o", "name"]).trim().is_empty()),
        "replicas left: {}",
        s.kubectl_ok(&["get", "replicas"])
    );
    let e = s.cli_fail(&["volume", "purge", "kept"]);
    assert!(e.contains("not found") || e.contains("NotFound"), "{e}");
}
