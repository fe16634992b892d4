//! The real kubectl against a real `sheaf server`.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{eventually, Server};

const VM: &str = include_str!("manifests/vm-cirros.yaml");

fn vm_manifest(name: &str) -> String {
    VM.replace("name: testvm", &format!("name: {name}"))
}

fn owned_configmap(name: &str, owner: &str, owner_uid: &str) -> String {
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
  ownerReferences:
  - apiVersion: kubevirt.io/v1
    kind: VirtualMachine
    name: {owner}
    uid: {owner_uid}
data:
  a: \"1\"
"
    )
}

#[test]
fn apply_get_patch_watch_explain_delete() {
    let s = Server::start();
    let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&vm_manifest("vm1")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "virtualmachine.kubevirt.io/vm1 created");

    // Table output with server-side columns.
    let table = s.kubectl_ok(&["get", "vm"]);
    let header = table.lines().next().unwrap_or("");
    assert!(header.starts_with("NAME") && header.contains("STATUS") && header.contains("AGE"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("vm1 ")), "{table}");
    let all = s.kubectl_ok(&["get", "vms", "-A"]);
    assert!(all.lines().next().unwrap_or("").starts_with("NAMESPACE"), "{all}");
    assert!(all.contains("default") && all.contains("vm1"), "{all}");

    // YAML round trip keeps the KubeVirt fields.
    let yaml = s.kubectl_ok(&["get", "vm", "vm1", "-o", "yaml"]);
    let v: serde_json::Value = serde_yaml::from_str(&yaml).expect("valid yaml");
    assert_eq!(v["spec"]["runStrategy"], "Halted");
    assert_eq!(v["spec"]["template"]["spec"]["domain"]["memory"]["guest"], "128Mi");
    assert_eq!(v["metadata"]["generation"], 1);

    // Client-side apply again: unchanged.
    let again = s.kubectl_stdin(&["apply", "-f", "-"], Some(&vm_manifest("vm1")));
    assert_eq!(String::from_utf8_lossy(&again.stdout).trim(), "virtualmachine.kubevirt.io/vm1 unchanged");

    // A watch started now sees the patches.
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .env("HOME", s.dir.path())
        .args(["get", "vm", "vm1", "-w", "-o", "jsonpath={.spec.runStrategy}{\"\\n\"}"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("kubectl get -w");
    let (tx, rx) = mpsc::channel();
    let stdout = watch.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Status writes by the VM controller also arrive as events: wait for
    // the next line that differs from the previous one.
    let mut last = String::new();
    let mut next_value = |what: &str| -> String {
        loop {
            let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("watch: {what}"));
            if line != last {
                last = line.clone();
                return line;
            }
        }
    };
    assert_eq!(next_value("initial line"), "Halted");
    s.kubectl_ok(&["patch", "vm", "vm1", "--type", "merge", "-p", r#"{"spec":{"runStrategy":"Manual"}}"#]);
    assert_eq!(next_value("merge patch"), "Manual");
    s.kubectl_ok(&[
        "patch",
        "vm",
        "vm1",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/runStrategy","value":"Halted"}]"#,
    ]);
    assert_eq!(next_value("json patch"), "Halted");
    let _ = watch.kill();
    let _ = watch.wait();
    let gen = s.kubectl_ok(&["get", "vm", "vm1", "-o", "jsonpath={.metadata.generation}"]);
    assert_eq!(gen, "3", "each spec change bumps generation");

    // A label change does not bump generation.
    s.kubectl_ok(&["label", "vm", "vm1", "tier=web"]);
    assert_eq!(s.kubectl_ok(&["get", "vm", "-l", "tier=web", "-o", "name"]).trim(), "virtualmachine.kubevirt.io/vm1");
    assert_eq!(s.kubectl_ok(&["get", "vm", "vm1", "-o", "jsonpath={.metadata.generation}"]), "3");

    // Server-side apply takes over and then owns the fields it applied.
    let ssa = s.kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&vm_manifest("vm1")));
    assert!(ssa.status.success(), "{}", String::from_utf8_lossy(&ssa.stderr));
    assert_eq!(s.kubectl_ok(&["get", "vm", "vm1", "-o", "jsonpath={.spec.runStrategy}"]), "Halted");
    let mf = s.kubectl_ok(&[
        "get",
        "vm",
        "vm1",
        "--show-managed-fields",
        "-o",
        "jsonpath={.metadata.managedFields[*].manager}",
    ]);
    assert!(mf.contains("kubectl"), "{mf}");

    // explain reads the OpenAPI v3 schema.
    let explain = s.kubectl_ok(&["explain", "virtualmachine.spec"]);
    assert!(explain.contains("runStrategy") && explain.contains("template"), "{explain}");
    let explain = s.kubectl_ok(&["explain", "vm.spec.template.spec.domain.cpu"]);
    assert!(explain.contains("cores"), "{explain}");

    // Cascading delete: the VM owns a ConfigMap.
    let uid = s.kubectl_ok(&["get", "vm", "vm1", "-o", "jsonpath={.metadata.uid}"]);
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&owned_configmap("owned", "vm1", &uid)));
    assert!(s.kubectl_ok(&["get", "cm", "owned", "-o", "name"]).contains("owned"));
    s.kubectl_ok(&["delete", "vm", "vm1"]);
    assert!(
        eventually(Duration::from_secs(15), || !s.kubectl(&["get", "cm", "owned"]).status.success()),
        "the owned ConfigMap was garbage-collected"
    );
    let err = s.kubectl_err(&["get", "vm", "vm1"], None);
    assert!(err.contains("NotFound") && err.contains("\"vm1\" not found"), "{err}");
}

#[test]
fn orphan_and_foreground_deletion() {
    let s = Server::start();
    for vm in ["keep", "fg"] {
        s.kubectl_stdin(&["apply", "-f", "-"], Some(&vm_manifest(vm)));
        let uid = s.kubectl_ok(&["get", "vm", vm, "-o", "jsonpath={.metadata.uid}"]);
        let out = s.kubectl_stdin(&["apply", "-f", "-"], Some(&owned_configmap(&format!("{vm}-cm"), vm, &uid)));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Orphan: the dependent stays and loses its owner reference.
    s.kubectl_ok(&["delete", "vm", "keep", "--cascade=orphan"]);
    assert!(eventually(Duration::from_secs(15), || !s.kubectl(&["get", "vm", "keep"]).status.success()));
    let owners = s.kubectl_ok(&["get", "cm", "keep-cm", "-o", "jsonpath={.metadata.ownerReferences}"]);
    assert_eq!(owners.trim(), "", "owner reference removed");

    // Foreground: dependents go first, then the owner; kubectl waits.
    s.kubectl_ok(&["delete", "vm", "fg", "--cascade=foreground", "--timeout=30s"]);
    assert!(!s.kubectl(&["get", "cm", "fg-cm"]).status.success(), "dependent deleted");
    assert!(!s.kubectl(&["get", "vm", "fg"]).status.success(), "owner deleted");
}

#[test]
fn namespace_deletion_removes_its_contents() {
    let s = Server::start();
    s.kubectl_stdin(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n"));
    let out = s.kubectl_stdin(&["apply", "-n", "team-a", "-f", "-"], Some(&vm_manifest("a1")));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(s.kubectl_ok(&["get", "vm", "-n", "team-a"]).contains("a1"));
    s.kubectl_ok(&["delete", "namespace", "team-a", "--timeout=30s"]);
    assert!(eventually(Duration::from_secs(15), || !s.kubectl(&["get", "ns", "team-a"]).status.success()));
    let err = s.kubectl_err(&["apply", "-n", "team-a", "-f", "-"], Some(&vm_manifest("a2")));
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn bad_input_gets_clear_errors() {
    let s = Server::start();
    let bad_name = vm_manifest("Bad_Name");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&bad_name));
    assert!(err.contains("RFC 1123"), "{err}");

    let both = vm_manifest("both").replace("runStrategy: Halted", "runStrategy: Halted\n  running: true");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&both));
    assert!(err.contains("running") && err.contains("runStrategy"), "{err}");

    let unknown = vm_manifest("unk").replace("runStrategy: Halted", "runStrategy: Halted\n  bogusField: 1");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&unknown));
    assert!(err.contains("unknown field") && err.contains("bogusField"), "{err}");

    let wrong_type = vm_manifest("wt").replace("cores: 1", "cores: two");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&wrong_type));
    assert!(err.contains("cores"), "{err}");

    let err = s.kubectl_err(&["get", "widgets"], None);
    assert!(err.contains("widgets"), "{err}");

    // Conflicting resourceVersion.
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&vm_manifest("cas")));
    let mut v: serde_json::Value =
        serde_yaml::from_str(&s.kubectl_ok(&["get", "vm", "cas", "-o", "yaml"])).expect("yaml");
    v["metadata"]["resourceVersion"] = serde_json::json!("1");
    let err = s.kubectl_err(&["replace", "-f", "-"], Some(&v.to_string()));
    assert!(err.contains("the object has been modified"), "{err}");
    // Nothing half-written: the VM is as before.
    assert_eq!(s.kubectl_ok(&["get", "vm", "cas", "-o", "jsonpath={.spec.runStrategy}"]), "Halted");
    assert!(!s.kubectl(&["get", "vm", "unk"]).status.success());
}
