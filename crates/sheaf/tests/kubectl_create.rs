//! kubectl's typed commands (`kubectl create namespace|configmap|secret`)
//! send their request bodies as Kubernetes protobuf; the server decodes them.

mod support;

use std::time::Duration;

use support::{eventually, Server};

fn jsonpath(s: &Server, args: &[&str], path: &str) -> String {
    let expr = format!("jsonpath={path}");
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["-o", &expr]);
    s.kubectl_ok(&all)
}

#[test]
fn kubectl_create_sends_protobuf_and_objects_round_trip() {
    let s = Server::start();

    let out = s.kubectl_ok(&["create", "namespace", "team-x"]);
    assert_eq!(out.trim(), "namespace/team-x created");
    assert_eq!(jsonpath(&s, &["namespace", "team-x"], "{.metadata.name} {.status.phase}"), "team-x Active");

    // kubectl really sends protobuf here (and accepts the JSON answer).
    let out = s.kubectl(&["create", "configmap", "c1", "-n", "team-x", "--from-literal=a=b", "-v=8"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("Content-Type: application/vnd.kubernetes.protobuf"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "configmap/c1 created");
    assert_eq!(jsonpath(&s, &["configmap", "c1", "-n", "team-x"], "{.data.a}"), "b");
    assert_eq!(jsonpath(&s, &["configmap", "c1", "-n", "team-x"], "{.metadata.namespace}"), "team-x");

    // Binary file contents travel as protobuf bytes and come back as base64 binaryData.
    let bin = s.dir.path().join("blob.bin");
    std::fs::write(&bin, [0u8, 1, 2, 0xff, 0xfe]).expect("write blob");
    let from_file = format!("--from-file=blob={}", bin.display());
    s.kubectl_ok(&["create", "configmap", "c2", "-n", "team-x", &from_file, "--from-literal=k=v"]);
    assert_eq!(jsonpath(&s, &["configmap", "c2", "-n", "team-x"], "{.binaryData.blob}"), "AAEC//4=");
    assert_eq!(jsonpath(&s, &["configmap", "c2", "-n", "team-x"], "{.data.k}"), "v");

    let out = s.kubectl_ok(&["create", "secret", "generic", "s1", "-n", "team-x", "--from-literal=password=hunter2"]);
    assert_eq!(out.trim(), "secret/s1 created");
    // base64("hunter2")
    assert_eq!(jsonpath(&s, &["secret", "s1", "-n", "team-x"], "{.data.password}"), "aHVudGVyMg==");

    let out = s.kubectl_ok(&[
        "create",
        "secret",
        "docker-registry",
        "reg",
        "-n",
        "team-x",
        "--docker-server=registry.example",
        "--docker-username=u",
        "--docker-password=p",
    ]);
    assert_eq!(out.trim(), "secret/reg created");
    assert_eq!(jsonpath(&s, &["secret", "reg", "-n", "team-x"], "{.type}"), "kubernetes.io/dockerconfigjson");

    // Server-side dry run and errors go through the same protobuf path.
    let out = s.kubectl_ok(&[
        "create",
        "configmap",
        "dry",
        "-n",
        "team-x",
        "--from-literal=x=y",
        "--dry-run=server",
        "-o",
        "jsonpath={.data.x}",
    ]);
    assert_eq!(out, "y");
    let err = s.kubectl_err(&["get", "configmap", "dry", "-n", "team-x"], None);
    assert!(err.contains("NotFound"), "{err}");
    let err = s.kubectl_err(&["create", "configmap", "c1", "-n", "team-x", "--from-literal=a=c"], None);
    assert!(err.contains("configmaps \"c1\" already exists"), "{err}");

    let out = s.kubectl_ok(&["delete", "ns", "team-x"]);
    assert!(out.contains("namespace \"team-x\" deleted"), "{out}");
    assert!(
        eventually(Duration::from_secs(30), || !s.kubectl(&["get", "ns", "team-x"]).status.success()),
        "namespace team-x still exists: {}",
        s.kubectl_ok(&["get", "ns", "team-x", "-o", "yaml"])
    );
    let err = s.kubectl_err(&["get", "configmap", "c1", "-n", "team-x"], None);
    assert!(err.contains("NotFound"), "{err}");
}
