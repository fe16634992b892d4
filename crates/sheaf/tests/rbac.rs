//! Users, roles, quotas and the audit log end to end: a real server, users
//! made by `sheaf user create`, the real kubectl with their kubeconfigs
//! (`auth can-i`, `auth whoami`, `--as`), a tiny guest's serial console
//! opened (or refused) with each user's token.

mod support;

use std::process::Command;
use std::time::Duration;

use support::console::Console;
use support::guest::{jsonpath, tiny_server, tiny_vm, QemuReaper};
use support::{eventually, Server};

/// kubectl with another kubeconfig: (success, stdout, stderr).
fn kubectl_as(s: &Server, kubeconfig: &std::path::Path, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    let out = s.kubectl_as(kubeconfig, args, stdin);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sheaf user create ...` writing the printed kubeconfig to a file.
fn create_user(s: &Server, name: &str, args: &[&str]) -> std::path::PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_sheaf"))
        .args(["user", "create", name])
        .args(args)
        .arg("--kubeconfig")
        .arg(&s.kubeconfig)
        .output()
        .expect("sheaf user create");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = s.dir.path().join(format!("{name}.kubeconfig"));
    std::fs::write(&path, &out.stdout).expect("write kubeconfig");
    path
}

fn can_i(s: &Server, kc: &std::path::Path, args: &[&str]) -> String {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let (_, out, err) = kubectl_as(s, kc, &all, None);
    format!("{}{}", out.trim(), if out.trim().is_empty() { err.trim() } else { "" })
}

#[test]
fn users_roles_quota_and_audit() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let s = tiny_server(root.path(), &[]);
    for ns in ["team-a", "team-b"] {
        s.kubectl_ok(&["create", "namespace", ns]);
    }
    // The built-in roles are there, with Kubernetes' shape.
    let roles = s.kubectl_ok(&["get", "clusterroles", "-o", "name"]);
    for r in ["cluster-admin", "admin", "operator", "viewer"] {
        assert!(roles.contains(&format!("clusterrole.rbac.authorization.k8s.io/{r}\n")), "{roles}");
    }

    let ann = create_user(&s, "ann", &["--role", "operator", "--namespace", "team-a", "--group", "dev"]);
    let vic = create_user(&s, "vic", &["--role", "viewer"]);
    let (ok, who, err) = kubectl_as(&s, &ann, &["auth", "whoami"], None);
    assert!(ok && who.contains("ann") && who.contains("dev"), "{who}{err}");

    // What each may do, asked the way kubectl asks.
    assert_eq!(can_i(&s, &ann, &["create", "virtualmachines.kubevirt.io", "-n", "team-a"]), "yes");
    assert_eq!(can_i(&s, &ann, &["create", "virtualmachines.kubevirt.io", "-n", "team-b"]), "no");
    assert_eq!(can_i(&s, &ann, &["get", "secrets", "-n", "team-a"]), "no");
    assert_eq!(can_i(&s, &vic, &["list", "virtualmachines.kubevirt.io", "-A"]), "yes");
    assert_eq!(can_i(&s, &vic, &["create", "virtualmachines.kubevirt.io", "-n", "team-a"]), "no");
    assert_eq!(
        can_i(
            &s,
            &vic,
            &["get", "virtualmachineinstances.subresources.kubevirt.io", "--subresource", "console", "-n", "team-a"]
        ),
        "no"
    );
    assert_eq!(
        can_i(
            &s,
            &ann,
            &["get", "virtualmachineinstances.subresources.kubevirt.io", "--subresource", "console", "-n", "team-a"]
        ),
        "yes"
    );
    // An admin asks on someone's behalf.
    assert_eq!(
        can_i(&s, &s.kubeconfig, &["create", "virtualmachines.kubevirt.io", "-n", "team-b", "--as", "ann"]),
        "no"
    );
    assert_eq!(
        can_i(&s, &s.kubeconfig, &["create", "virtualmachines.kubevirt.io", "-n", "team-a", "--as", "ann"]),
        "yes"
    );
    // Users may not impersonate.
    assert!(
        can_i(&s, &vic, &["list", "secrets", "--as", "admin", "--as-group", "system:masters"]).contains("Forbidden")
    );
    let (_, list, _) = kubectl_as(&s, &ann, &["auth", "can-i", "--list", "-n", "team-a"], None);
    assert!(list.contains("virtualmachines.kubevirt.io"), "{list}");

    // The operator runs a VM in their namespace, not in another one.
    let vm = tiny_vm("web", "rbac");
    let (ok, _, err) = kubectl_as(&s, &ann, &["apply", "-n", "team-a", "-f", "-"], Some(&vm));
    assert!(ok, "{err}");
    let (ok, _, err) = kubectl_as(&s, &ann, &["create", "-n", "team-b", "-f", "-"], Some(&vm));
    assert!(!ok, "an operator of team-a created a VM in team-b");
    assert!(err.contains("User \"ann\" cannot") && err.contains("virtualmachines") && err.contains("team-b"), "{err}");
    let (ok, _, err) = kubectl_as(&s, &ann, &["get", "secrets", "-n", "team-a"], None);
    assert!(!ok && err.contains("Forbidden") && err.contains("secrets"), "{err}");
    assert!(
        eventually(Duration::from_secs(60), || {
            s.kubectl(&["get", "vmi", "web", "-n", "team-a", "-o", "jsonpath={.status.phase}"]).stdout == b"Running"
        }),
        "{}",
        s.log()
    );

    // The viewer sees it and cannot create, change or console into it.
    let (ok, out, err) = kubectl_as(&s, &vic, &["get", "vm", "-A"], None);
    assert!(ok && out.contains("web"), "{out}{err}");
    let (ok, _, err) = kubectl_as(&s, &vic, &["apply", "-n", "team-a", "-f", "-"], Some(&tiny_vm("other", "x")));
    assert!(!ok && err.contains("User \"vic\" cannot"), "{err}");
    let (ok, _, err) = kubectl_as(&s, &vic, &["delete", "vm", "web", "-n", "team-a"], None);
    assert!(!ok && err.contains("cannot delete"), "{err}");
    let mut refused = Console::open(&vic, "web", Some("team-a"));
    assert!(!refused.expect_shell(6, 7, Duration::from_secs(5)), "the viewer's console answered");
    let text = refused.output();
    assert!(text.contains("forbidden") && text.contains("console"), "{text}");
    // The operator's console reaches the guest's shell.
    let mut console = Console::open(&ann, "web", Some("team-a"));
    assert!(
        console.expect_shell(6, 7, Duration::from_secs(90)),
        "the operator's console did not answer: {}",
        console.output()
    );
    drop(console);

    // Quota: the namespace's VMs may take 2 vCPUs; web takes 1.
    s.apply(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: compute\n  namespace: team-a\nspec:\n  hard:\n    limits.cpu: \"2\"\n    count/virtualmachines.kubevirt.io: \"5\"\n",
    );
    let big = tiny_vm("big", "q").replace("cores: 1", "cores: 2");
    let (ok, _, err) = kubectl_as(&s, &ann, &["apply", "-n", "team-a", "-f", "-"], Some(&big));
    assert!(!ok, "a VM over the quota was created");
    assert!(
        err.contains("exceeded quota: compute")
            && err.contains("requested: limits.cpu=2")
            && err.contains("used: limits.cpu=1")
            && err.contains("limited: limits.cpu=2"),
        "{err}"
    );
    let fits = tiny_vm("small", "q");
    let (ok, _, err) = kubectl_as(&s, &ann, &["apply", "-n", "team-a", "-f", "-"], Some(&fits));
    assert!(ok, "a VM within the quota was refused: {err}");
    assert!(
        eventually(Duration::from_secs(20), || jsonpath_ns(
            &s,
            "quota",
            "compute",
            "team-a",
            "{.status.used.limits\\.cpu}"
        ) == "2"),
        "quota status: {}",
        jsonpath_ns(&s, "quota", "compute", "team-a", "{.status}")
    );
    let (ok, _, err) = kubectl_as(&s, &ann, &["delete", "vm", "small", "-n", "team-a"], None);
    assert!(ok, "{err}");

    // Bad input is refused with the field.
    let bad = "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: x\n  namespace: team-a\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Robot\n  name: operator\nsubjects:\n- kind: User\n  name: bob\n";
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(bad));
    assert!(err.contains("roleRef.kind"), "{err}");
    let err = s.kubectl_err(
        &["apply", "-f", "-"],
        Some("apiVersion: v1\nkind: ResourceQuota\nmetadata:\n  name: q\n  namespace: team-a\nspec:\n  hard:\n    pods: \"3\"\n"),
    );
    assert!(err.contains("spec.hard[pods]") && err.contains("limits.cpu"), "{err}");

    // A scraper's token reads /metrics and nothing else; a viewer's does
    // not read /metrics.
    s.apply("apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: metrics-reader\nrules:\n- nonResourceURLs: [\"/metrics\"]\n  verbs: [\"get\"]\n");
    let prom = s.cli_ok(&["user", "create", "prom", "--role", "metrics-reader", "-o", "token"]);
    let prom = prom.lines().find(|l| l.starts_with("sheaf-")).expect("a token line").to_string();
    let vic_kc = std::fs::read_to_string(&vic).expect("kubeconfig");
    let vic_token = vic_kc.lines().find_map(|l| l.trim().strip_prefix("token: ")).expect("token").to_string();
    let ca = s.dir.path().join("data/pki/ca.crt");
    let curl = |token: &str, path: &str| {
        let out = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .args(["-H", &format!("Authorization: Bearer {token}"), &format!("{}{path}", s.url())])
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(curl(&prom, "/metrics"), "200");
    assert_eq!(curl(&prom, "/apis/kubevirt.io/v1/virtualmachines"), "403");
    assert_eq!(curl(&vic_token, "/metrics"), "403");
    assert_eq!(curl("sheaf-0000.forged", "/metrics"), "401");

    // Revoked: the next request is refused.
    s.cli_ok(&["user", "revoke", "ann"]);
    let (ok, _, err) = kubectl_as(&s, &ann, &["get", "vm", "-n", "team-a"], None);
    assert!(!ok && err.contains("Unauthorized"), "a revoked token still works: {err}");
    let (ok, _, err) = kubectl_as(&s, &ann, &["delete", "vm", "web", "-n", "team-a"], None);
    assert!(!ok && err.contains("Unauthorized"), "a revoked token still works: {err}");
    let users = s.cli_ok(&["user", "list"]);
    assert!(users.contains("ann") && users.contains("operator@team-a") && users.contains("vic"), "{users}");

    // The audit log names who did what, with the result.
    let audit = std::fs::read_to_string(s.data_dir().join("audit.log")).expect("audit.log");
    let lines: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let find = |user: &str, verb: &str, ns: &str, code: u64| {
        lines.iter().any(|l| {
            l["user"] == user
                && l["verb"] == verb
                && l["resource"] == "virtualmachines"
                && l["namespace"] == ns
                && l["code"] == code
        })
    };
    assert!(find("ann", "create", "team-a", 201), "no record of ann's VM:\n{audit}");
    assert!(lines.iter().any(|l| l["user"] == "ann" && l["name"] == "web" && l["code"] == 201), "{audit}");
    assert!(find("ann", "create", "team-b", 403), "no record of the refusal:\n{audit}");
    assert!(lines.iter().any(|l| l["user"] == "vic" && l["subresource"] == "console" && l["code"] == 403), "{audit}");
    assert!(lines.iter().any(|l| l["user"] == "" && l["code"] == 401), "the revoked token's attempt:\n{audit}");
    assert!(lines.iter().all(|l| l["time"].as_str().is_some_and(|t| t.ends_with('Z'))), "{audit}");
    let kc = std::fs::read_to_string(&ann).expect("kubeconfig");
    let token = kc.lines().find_map(|l| l.trim().strip_prefix("token: ")).expect("a token in the kubeconfig");
    assert!(token.starts_with("sheaf-") && !audit.contains(token), "a token leaked into the audit log");
    let _ = jsonpath(&s, "vm", "web", "{.metadata.name}");
}

fn jsonpath_ns(s: &Server, kind: &str, name: &str, ns: &str, path: &str) -> String {
    let out = s.kubectl(&["get", kind, name, "-n", ns, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).to_string()
}
