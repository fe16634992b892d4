//! The web UI, served by `sheaf server` at `/` from the binary itself, and
//! driven end to end in Debian's Chromium by Playwright (`ui/e2e/run.mjs`):
//! log in with the API's token, upload a bootable disk image, create a VM
//! from it with the wizard, see it Running, type into its serial console
//! and read the guest's answer, hotplug a new blank volume into it,
//! snapshot and expand that volume from the volumes page, sort that list
//! (mouse and keyboard), unplug the volume, revert it to its snapshot,
//! make a new volume from the snapshot and a clone of the volume's claim,
//! snapshot the VM (a VM backup of type snapshot) and restore it as a new
//! VM, stop the VM, delete it. The
//! browser run checks each step against the API as it goes; this test then
//! checks what it left with kubectl. The run's screenshots of the main
//! pages are kept in `docs/screenshots/`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::guest::{server_with_images, QemuReaper};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repository root")
}

/// `curl` of `path`: status, headers (lowercase names) and body size.
fn fetch(s: &support::Server, path: &str, gzip: bool) -> (String, String, usize) {
    let mut args = vec!["-sk", "-D", "-", "-o", "/dev/stderr", "--max-time", "10"];
    if gzip {
        args.extend(["-H", "Accept-Encoding: gzip"]);
    }
    let url = format!("{}{path}", s.url());
    let out = Command::new("curl").args(&args).arg(&url).output().expect("curl");
    let head = String::from_utf8_lossy(&out.stdout).to_lowercase();
    let status = head.split_whitespace().nth(1).unwrap_or_default().to_string();
    (status, head, out.stderr.len())
}

#[test]
fn the_ui_is_served_from_the_binary_compressed_and_cached() {
    let s = support::Server::start();
    let (status, head, _) = fetch(&s, "/", false);
    assert_eq!(status, "200", "{head}");
    assert!(head.contains("content-type: text/html") && head.contains("cache-control: no-cache"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'self'"), "{head}");
    let page = Command::new("curl").args(["-sk", &format!("{}/", s.url())]).output().expect("curl").stdout;
    let page = String::from_utf8_lossy(&page);
    assert!(
        !page.contains("built without its web UI"),
        "the binary holds the placeholder page: run scripts/build-ui.sh"
    );
    let script = page
        .split("src=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .filter(|p| p.starts_with("/assets/"))
        .unwrap_or_else(|| panic!("no /assets/ script in the page: {page}"))
        .to_string();
    let (status, head, plain) = fetch(&s, &script, false);
    assert_eq!(status, "200", "{head}");
    assert!(head.contains("text/javascript") && head.contains("immutable"), "{head}");
    let (_, head, zipped) = fetch(&s, &script, true);
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(zipped < plain, "gzip {zipped} bytes, plain {plain}");
    // The API still answers under the UI, and still wants a token.
    let (status, _, _) = fetch(&s, "/api/v1/namespaces", false);
    assert_eq!(status, "401");
    let (status, _, _) = fetch(&s, "/assets/nothing-here.js", false);
    assert_eq!(status, "404");

    // Large API answers go zstd-compressed to clients that take it (the
    // browser's lists); the same answer is plain for others (kubectl).
    let filler = "x".repeat(1024);
    let many: String = (0..200)
        .map(|i| format!("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c{i}\ndata:\n  v: {filler}\n"))
        .collect();
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&many));
    let list = |coding: &str| {
        let out = Command::new("curl")
            .args(["-sk", "-D", "/dev/stderr", "-H", &format!("Authorization: Bearer {}", s.token())])
            .args(["-H", &format!("Accept-Encoding: {coding}")])
            .arg(format!("{}/api/v1/namespaces/default/configmaps", s.url()))
            .output()
            .expect("curl");
        (String::from_utf8_lossy(&out.stderr).to_lowercase(), out.stdout)
    };
    let (head, plain) = list("gzip");
    assert!(!head.contains("content-encoding"), "{head}");
    assert!(plain.len() > 200 << 10, "{} bytes", plain.len());
    let (head, zipped) = list("gzip, deflate, br, zstd");
    assert!(head.contains("content-encoding: zstd"), "{head}");
    assert!(zipped.len() * 10 < plain.len(), "zstd {} bytes, plain {}", zipped.len(), plain.len());
    let mut d = Command::new("zstd")
        .args(["-dc"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("zstd");
    use std::io::Write as _;
    d.stdin.take().expect("stdin").write_all(&zipped).expect("write");
    let back = d.wait_with_output().expect("zstd").stdout;
    let items =
        |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).expect("json")["items"].as_array().map(Vec::len);
    assert_eq!(items(&back), Some(200));
    assert_eq!(items(&plain), Some(200));
}

#[test]
fn a_vm_is_made_from_an_uploaded_image_and_used_through_the_browser() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let s = server_with_images(root.path(), &[]);
    let repo = repo();
    let disk = repo.join("target/test-guests/tiny/disk.img");
    assert!(disk.is_file(), "{} missing: run scripts/build-test-guests.sh", disk.display());
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is missing: run scripts/install-deps.sh --test"
    );
    let ui = repo.join("ui");
    assert!(ui.join("node_modules/playwright-core").is_dir(), "ui/node_modules missing: run scripts/build-ui.sh");
    let shots = repo.join("docs/screenshots");
    let out = Command::new("node")
        .arg("e2e/run.mjs")
        .current_dir(&ui)
        .env("SHEAF_URL", s.url())
        .env("SHEAF_TOKEN", s.token())
        .env("SHEAF_IMAGE_FILE", &disk)
        // The guest's shell computes the answer: typed in the browser, run
        // in the guest, read back from the page.
        .env("SHEAF_CONSOLE_INPUT", "echo SHEAF-E2E-$((40+2))")
        .env("SHEAF_MARKER", "SHEAF-E2E-42")
        .env("SHEAF_SCREENSHOTS", &shots)
        .output()
        .expect("node");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser run failed:\n{text}\n--- server\n{}", s.log());
    assert!(text.contains("passed"), "{text}");
    println!("{text}");
    let pages = ["dashboard", "images", "vm-list", "wizard", "vm-detail", "vm-console", "vm-disks", "volumes", "nodes"];
    for page in pages {
        assert!(shots.join(format!("{page}.png")).is_file(), "no screenshot of {page}");
    }

    // What the page did, seen by kubectl: the hotplugged volume's claim and
    // volume outlive the VM, grown to 128Mi and reverted to its snapshot,
    // which is ready; a volume made from the snapshot holds its data; a
    // clone of the claim is Bound.
    let json = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&s.kubectl_ok(args)).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}"))
    };
    let items = |v: &serde_json::Value| v["items"].as_array().cloned().unwrap_or_default();
    let snaps = items(&json(&["get", "volumesnapshots", "-o", "json"]));
    let snap: Vec<_> =
        snaps.iter().filter(|o| o["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("e2e-snap-"))).collect();
    assert_eq!(snap.len(), 1, "one snapshot expected: {snaps:#?}");
    let (snap, snap_name) = (snap[0], snap[0]["metadata"]["name"].as_str().unwrap_or_default());
    assert_eq!(snap["status"]["readyToUse"], true, "{snap:#}");
    let hot_name = snap["spec"]["volumeName"].as_str().unwrap_or_default();
    assert!(hot_name.starts_with("e2e-hot-"), "{snap:#}");
    let hot = json(&["get", "volume", hot_name, "-o", "json"]);
    assert_eq!(hot["spec"]["size"], "128Mi", "{hot:#}");
    assert_eq!(hot["status"]["size"], 128 << 20, "{hot:#}");
    assert_eq!(hot["status"]["lastRevert"]["snapshot"], snap_name, "{hot:#}");
    assert!(hot["status"]["lastRevert"]["error"].is_null(), "{hot:#}");
    let claim = json(&["get", "pvc", hot_name, "-o", "json"]);
    assert_eq!(claim["spec"]["resources"]["requests"]["storage"], "128Mi", "{claim:#}");
    let restored = json(&["get", "volume", &format!("{hot_name}-r"), "-o", "json"]);
    assert_eq!(restored["spec"]["fromSnapshot"], snap_name, "{restored:#}");
    assert!(restored["status"]["restoredFrom"].is_string(), "{restored:#}");
    let clone = json(&["get", "pvc", &format!("{hot_name}-c"), "-o", "json"]);
    assert_eq!(clone["status"]["phase"], "Bound", "{clone:#}");
    assert_eq!(clone["spec"]["dataSource"]["name"], hot_name, "{clone:#}");
    assert!(items(&json(&["get", "vm", "-o", "json"])).is_empty(), "the VM was deleted through the page");
}
