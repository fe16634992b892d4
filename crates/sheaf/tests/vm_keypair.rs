//! Harvester's SSH key flow: KeyPair objects are validated and
//! fingerprinted, and a VM naming them in `harvesterhci.io/sshNames` gets
//! their keys in its cloud-init user data (a missing KeyPair is a clear
//! failure). The full-guest test logs in with such a key.

mod support;

use std::process::Command;
use std::time::Duration;

use support::guest::{tiny_server, tiny_vm, QemuReaper};
use support::{eventually, Server};

const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBm0KmXtOYOfA6m4iU6s2qzUx0lA9nI3Kz1h3xv2Sx3H me@host";

fn jsonpath(s: &Server, kind: &str, name: &str, path: &str) -> String {
    let out = s.kubectl(&["get", kind, name, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn keypair(name: &str, key: &str) -> String {
    format!(
        "apiVersion: harvesterhci.io/v1beta1\nkind: KeyPair\nmetadata:\n  name: {name}\nspec:\n  publicKey: {key}\n"
    )
}

/// The VM manifest with the sshNames annotation.
fn vm_with_keys(name: &str, keys: &str) -> String {
    tiny_vm(name, "keys").replacen(
        &format!("metadata:\n  name: {name}\n"),
        &format!("metadata:\n  name: {name}\n  annotations:\n    harvesterhci.io/sshNames: '{keys}'\n"),
        1,
    )
}

#[test]
fn keypairs_are_validated_and_injected() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let s = tiny_server(root.path(), &[]);

    // Not a public key: refused, saying why.
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&keypair("bad", "-----BEGIN OPENSSH PRIVATE KEY-----")));
    assert!(err.contains("spec.publicKey") && err.contains("not an OpenSSH public key type"), "{err}");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&keypair("bad", "ssh-ed25519 AAAA")));
    assert!(err.contains("spec.publicKey"), "{err}");

    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&keypair("mykey", KEY)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let fp = jsonpath(&s, "keypair", "mykey", "{.status.fingerPrint}");
    assert!(fp.starts_with("SHA256:") && fp.len() == 50, "{fp:?}");
    let table = s.kubectl_ok(&["get", "keypairs.harvesterhci.io"]);
    assert!(table.contains("mykey") && table.contains(&fp), "{table}");

    // A VM naming a KeyPair that does not exist fails with the reason.
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&vm_with_keys("nokey", r#"["default/missing"]"#)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let events = || s.kubectl_ok(&["get", "events", "--field-selector", "involvedObject.name=nokey"]);
    assert!(
        eventually(Duration::from_secs(30), || events().contains("KeyPair default/missing")),
        "no clear failure: {}\n{}",
        events(),
        jsonpath(&s, "vm", "nokey", "{.status}")
    );
    assert!(events().contains("FailedStart"), "{}", events());
    s.kubectl_ok(&["delete", "vm", "nokey"]);

    // With the KeyPair: the key is in the seed's user data.
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&vm_with_keys("withkey", r#"["mykey"]"#)));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        eventually(Duration::from_secs(60), || jsonpath(&s, "vmi", "withkey", "{.status.phase}") == "Running"),
        "VMI not Running: {}",
        jsonpath(&s, "vmi", "withkey", "{.status}")
    );
    let uid = jsonpath(&s, "vmi", "withkey", "{.metadata.uid}");
    let iso = root.path().join("run").join(&uid).join("cloudinit.seed.iso");
    let out = Command::new("isoinfo").args(["-J", "-x", "/user-data", "-i"]).arg(&iso).output().expect("isoinfo");
    let user_data = String::from_utf8_lossy(&out.stdout);
    assert!(user_data.starts_with("#cloud-config"), "{user_data}");
    assert!(user_data.contains("# marker: keys"), "comments kept: {user_data}");
    assert!(user_data.contains("ssh_authorized_keys:") && user_data.contains(KEY), "{user_data}");
    s.kubectl_ok(&["delete", "vm", "withkey"]);
}
