//! `sheaf get`, `sheaf apply` and `sheaf delete` against a real `sheaf
//! server` on a loopback port.

use std::process::{Command, Output, Stdio};

const SHEAF: &str = env!("CARGO_BIN_EXE_sheaf");

mod support;

use support::{free_port, Server};

/// The CLI driven against a test server.
trait Cli {
    fn file(&self, name: &str, text: &str) -> String;
    fn sheaf(&self, args: &[&str], stdin: Option<&str>) -> Output;
    fn ok(&self, args: &[&str]) -> String;
    fn ok_stdin(&self, args: &[&str], stdin: Option<&str>) -> String;
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> (String, String);
}

impl Cli for Server {
    /// Writes a file in the test directory and returns its path.
    fn file(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write manifest");
        p.display().to_string()
    }

    fn sheaf(&self, args: &[&str], stdin: Option<&str>) -> Output {
        run(args, stdin, &[("KUBECONFIG", self.kubeconfig.as_os_str()), ("HOME", self.dir.path().as_os_str())])
    }

    /// Runs `sheaf ARGS`, expecting success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_stdin(args, None)
    }

    fn ok_stdin(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.sheaf(args, stdin);
        assert!(
            out.status.success(),
            "sheaf {args:?} failed ({}):\n{}\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `sheaf ARGS`, expecting failure; returns (stdout, stderr).
    fn fails(&self, args: &[&str], stdin: Option<&str>) -> (String, String) {
        let out = self.sheaf(args, stdin);
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
        assert!(!out.status.success(), "sheaf {args:?} should fail but printed:\n{stdout}\n{stderr}");
        assert_eq!(out.status.code(), Some(1), "sheaf {args:?} should exit 1:\n{stderr}");
        no_panic(&stderr);
        (stdout, stderr)
    }
}

/// Runs the binary with a clean environment for the kubeconfig lookup.
fn run(args: &[&str], stdin: Option<&str>, env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut cmd = Command::new(SHEAF);
    cmd.args(args).env_remove("KUBECONFIG").env_remove("SHEAF_DATA_DIR").env("RUST_BACKTRACE", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("run sheaf");
    if let Some(input) = stdin {
        use std::io::Write as _;
        child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
    }
    child.wait_with_output().expect("sheaf output")
}

fn no_panic(stderr: &str) {
    assert!(!stderr.contains("panicked") && !stderr.contains("Stack backtrace"), "{stderr}");
}

const CONFIGMAP: &str = "\
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  labels:
    app: x
data:
  greeting: hello
";

fn vm(name: &str, memory: &str) -> String {
    format!(
        "\
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: {name}
  labels:
    app: x
spec:
  runStrategy: Halted
  template:
    metadata:
      labels:
        kubevirt.io/domain: {name}
    spec:
      domain:
        memory:
          guest: {memory}
        devices:
          disks:
          - name: containerdisk
            disk:
              bus: virtio
      volumes:
      - name: containerdisk
        containerDisk:
          image: quay.io/kubevirt/cirros-container-disk-demo
"
    )
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
fn apply_get_delete() {
    let s = Server::start();
    let cm = s.file("cm.yaml", CONFIGMAP);
    let vm_file = s.file("vm.yaml", &vm("vm1", "64Mi"));

    // Create, then nothing to do, then a change.
    let out = s.ok(&["apply", "-f", &cm, "-f", &vm_file]);
    assert_eq!(lines(&out), ["configmap/settings created", "virtualmachine.kubevirt.io/vm1 created"]);
    let out = s.ok(&["apply", "-f", &cm, "-f", &vm_file]);
    assert_eq!(lines(&out), ["configmap/settings unchanged", "virtualmachine.kubevirt.io/vm1 unchanged"]);
    let out = s.ok_stdin(&["apply", "-f", "-"], Some(&vm("vm1", "128Mi")));
    assert_eq!(lines(&out), ["virtualmachine.kubevirt.io/vm1 configured"]);

    // Tables from the server's Table answers.
    let table = s.ok(&["get", "vm"]);
    let header = table.lines().next().unwrap_or("");
    assert!(header.starts_with("NAME ") && header.trim_end().ends_with("AGE"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("vm1 ")), "{table}");
    let all = s.ok(&["get", "vms", "-A"]);
    assert!(all.lines().next().unwrap_or("").starts_with("NAMESPACE "), "{all}");
    assert!(all.lines().any(|l| l.starts_with("default ") && l.contains(" vm1 ")), "{all}");
    for kind in ["virtualmachine", "VirtualMachine", "virtualmachines.kubevirt.io", "VM"] {
        let t = s.ok(&["get", kind]);
        assert!(t.lines().any(|l| l.starts_with("vm1 ")), "{kind}: {t}");
    }
    let ns = s.ok(&["get", "ns"]);
    assert!(ns.lines().any(|l| l.starts_with("default ")), "{ns}");

    // YAML and JSON output.
    let yaml = s.ok(&["get", "vm", "vm1", "-o", "yaml"]);
    let v: serde_json::Value = serde_yaml::from_str(&yaml).expect("valid yaml");
    assert_eq!(v["kind"], "VirtualMachine");
    assert_eq!(v["spec"]["runStrategy"], "Halted");
    assert_eq!(v["spec"]["template"]["spec"]["domain"]["memory"]["guest"], "128Mi");
    assert_eq!(
        v["spec"]["template"]["spec"]["volumes"][0]["containerDisk"]["image"],
        "quay.io/kubevirt/cirros-container-disk-demo"
    );
    assert!(v["metadata"].get("managedFields").is_none(), "{yaml}");
    let json = s.ok(&["get", "vm/vm1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid json");
    assert_eq!(v["metadata"]["name"], "vm1");
    let list = s.ok(&["get", "cm", "-o", "yaml"]);
    let v: serde_json::Value = serde_yaml::from_str(&list).expect("valid yaml");
    assert_eq!(v["kind"], "List");
    assert!(v["items"].as_array().is_some_and(|i| i.iter().any(|o| o["metadata"]["name"] == "settings")), "{list}");

    // Label selectors and -o name.
    let t = s.ok(&["get", "cm", "-l", "app=x"]);
    assert!(t.lines().any(|l| l.starts_with("settings ")), "{t}");
    let out = s.sheaf(&["get", "cm", "-l", "app=nothing"], None);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("No resources found in default namespace."));
    assert_eq!(s.ok(&["get", "cm", "-l", "app=x", "-o", "name"]).trim(), "configmap/settings");
    let names = s.ok(&["get", "vm,cm", "-l", "app=x", "-o", "name"]);
    assert_eq!(lines(&names), ["virtualmachine.kubevirt.io/vm1", "configmap/settings"]);

    // Unknown kinds list the served ones.
    let (_, err) = s.fails(&["get", "nosuchkind"], None);
    assert!(err.contains("\"nosuchkind\"") && err.contains("virtualmachines.kubevirt.io (vm, vms)"), "{err}");

    // Invalid objects: the server's message, exit 1, nothing printed as done.
    let (out, err) = s.fails(&["apply", "-f", "-"], Some(&vm("Bad-Name", "64Mi")));
    assert!(out.is_empty(), "{out}");
    assert!(err.starts_with("Error from server (Invalid): ") && err.contains("metadata.name"), "{err}");
    let both = vm("vm2", "64Mi").replace("  runStrategy: Halted\n", "  runStrategy: Halted\n  running: true\n");
    let (_, err) = s.fails(&["apply", "-f", "-"], Some(&both));
    assert!(err.starts_with("Error from server (Invalid): ") && err.contains("spec.running"), "{err}");
    let unknown = CONFIGMAP.replace("\ndata:", "\nbogus: 1\ndata:");
    let (_, err) = s.fails(&["apply", "-f", "-"], Some(&unknown));
    assert!(err.contains("Error from server (BadRequest)") && err.contains("bogus"), "{err}");
    s.fails(&["get", "vm", "vm2"], None);

    // Broken YAML: the file and document are named, and nothing is applied.
    let bad = s.file(
        "bad.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: first\n---\napiVersion: v1\nkind: [oops\n",
    );
    let (_, err) = s.fails(&["apply", "-f", &bad], None);
    assert!(err.contains("bad.yaml") && err.contains("document 2"), "{err}");
    s.fails(&["get", "cm", "first"], None);
    let nameless = s.file("nameless.yaml", "apiVersion: v1\nkind: ConfigMap\ndata: {}\n");
    let (_, err) = s.fails(&["apply", "-f", &nameless], None);
    assert!(err.contains("nameless.yaml") && err.contains("metadata.name"), "{err}");

    // Cluster-scoped kinds and other namespaces.
    let out = s.ok_stdin(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n"));
    assert_eq!(out.trim(), "namespace/team-a created");
    assert_eq!(s.ok(&["apply", "-f", &cm, "-n", "team-a"]).trim(), "configmap/settings created");
    let all = s.ok(&["get", "cm", "-A", "-l", "app=x"]);
    assert!(all.lines().any(|l| l.starts_with("team-a ")) && all.lines().any(|l| l.starts_with("default ")), "{all}");
    assert_eq!(s.ok(&["delete", "cm", "settings", "-n", "team-a"]).trim(), "configmap \"settings\" deleted");

    // Delete, then it is gone.
    assert_eq!(s.ok(&["delete", "vm", "vm1"]).trim(), "virtualmachine.kubevirt.io \"vm1\" deleted");
    let (_, err) = s.fails(&["get", "vm", "vm1"], None);
    assert_eq!(err.trim(), "Error from server (NotFound): virtualmachines.kubevirt.io \"vm1\" not found");
    let (_, err) = s.fails(&["delete", "vm", "vm1"], None);
    assert!(err.contains("(NotFound)"), "{err}");
    assert!(s.ok(&["delete", "vm", "vm1", "--ignore-not-found"]).is_empty());
    let out = s.ok(&["delete", "-f", &cm, "--cascade=foreground"]);
    assert_eq!(out.trim(), "configmap \"settings\" deleted");
    s.fails(&["get", "cm", "settings"], None);

    // The kubeconfig the server writes in its data directory is the fallback.
    let home = tempfile::tempdir().expect("tempdir");
    let out = run(
        &["get", "ns", "default", "-o", "name"],
        None,
        &[("HOME", home.path().as_os_str()), ("SHEAF_DATA_DIR", s.data_dir().as_os_str())],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "namespace/default");
}

#[test]
fn client_errors_without_a_server() {
    let home = tempfile::tempdir().expect("tempdir");
    let missing = home.path().join("no-data-dir");
    let out = run(&["get", "vm"], None, &[("HOME", home.path().as_os_str()), ("SHEAF_DATA_DIR", missing.as_os_str())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no kubeconfig found") && err.contains("sheaf kubeconfig"), "{err}");
    no_panic(&err);

    // A kubeconfig naming a port where nothing listens.
    let kc = home.path().join("kubeconfig");
    let port = free_port();
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    \
             insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    \
             cluster: c\n    user: u\ncurrent-context: c\n"
        ),
    )
    .expect("write kubeconfig");
    let out = run(&["get", "vm"], None, &[("KUBECONFIG", kc.as_os_str()), ("HOME", home.path().as_os_str())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot reach the API server"), "{err}");
    no_panic(&err);

    // Bad manifests fail before any connection is made.
    let bad = home.path().join("bad.json");
    std::fs::write(&bad, "{\"apiVersion\": \"v1\", ").expect("write");
    let out = run(&["apply", "-f", &bad.display().to_string()], None, &[("KUBECONFIG", kc.as_os_str())]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bad.json: document 1"), "{err}");
    no_panic(&err);

    // Every command explains itself.
    for cmd in ["get", "apply", "delete"] {
        let out = run(&[cmd, "--help"], None, &[]);
        assert!(out.status.success());
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(help.contains("Examples:") && help.contains(&format!("sheaf {cmd} ")), "{help}");
    }
}

#[test]
fn manifests_from_a_directory() {
    let s = Server::start();
    let dir = s.dir.path().join("manifests");
    std::fs::create_dir(&dir).expect("mkdir");
    std::fs::write(dir.join("a-cm.yaml"), CONFIGMAP).expect("write");
    std::fs::write(
        dir.join("b-vm.json"),
        serde_json::to_string(&serde_yaml::from_str::<serde_json::Value>(&vm("vm3", "64Mi")).expect("yaml"))
            .expect("json"),
    )
    .expect("write");
    std::fs::write(dir.join("notes.txt"), "not a manifest").expect("write");
    let d = dir.display().to_string();
    let out = s.ok(&["apply", "-f", &d]);
    assert_eq!(lines(&out), ["configmap/settings created", "virtualmachine.kubevirt.io/vm3 created"]);
    let out = s.ok(&["delete", "-f", &d]);
    assert_eq!(lines(&out), ["configmap \"settings\" deleted", "virtualmachine.kubevirt.io \"vm3\" deleted"]);
    let out = s.sheaf(&["get", "vm"], None);
    assert!(out.status.success() && out.stdout.is_empty());
}
