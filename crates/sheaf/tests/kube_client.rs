//! The `kube` crate (kube-rs), unchanged, against a real `sheaf server`:
//! typed core objects, dynamic KubeVirt objects found through discovery,
//! server-side apply, and a runtime watcher.

mod support;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::{Discovery, Scope};
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::json;
use support::Server;

async fn client(s: &Server) -> Client {
    let kc = Kubeconfig::read_from(&s.kubeconfig).expect("kubeconfig");
    let cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.expect("config");
    Client::try_from(cfg).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_rs_typed_dynamic_apply_and_watch() {
    let s = Server::start();
    let client = client(&s).await;

    // Typed core kind.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("kube-rs".into());
    cm.data = Some([("k".to_string(), "v".to_string())].into());
    let created = cms.create(&PostParams::default(), &cm).await.expect("create");
    assert!(created.metadata.uid.is_some());
    let got = cms.get("kube-rs").await.expect("get");
    assert_eq!(got.data.expect("data")["k"], "v");
    let err = cms.create(&PostParams::default(), &cm).await.expect_err("duplicate");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 409);
            assert_eq!(status.reason, "AlreadyExists");
        }
        other => panic!("expected an API error, got {other}"),
    }

    // Dynamic KubeVirt kind through discovery.
    let discovery = Discovery::new(client.clone()).run().await.expect("discovery");
    let (ar, caps) = discovery
        .groups()
        .flat_map(|g| g.recommended_resources())
        .find(|(ar, _)| ar.kind == "VirtualMachine")
        .expect("VirtualMachine discovered");
    assert_eq!(ar.group, "kubevirt.io");
    assert_eq!(caps.scope, Scope::Namespaced);
    let vms: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);

    // A watcher started before the writes sees them.
    let watch_api = vms.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watcher_task = tokio::spawn(async move {
        let mut stream = watcher(watch_api, watcher::Config::default()).boxed();
        while let Ok(Some(ev)) = stream.try_next().await {
            if let watcher::Event::Apply(o) = ev {
                let rs = o.data["spec"]["runStrategy"].as_str().unwrap_or("").to_string();
                if tx.send((o.metadata.name.unwrap_or_default(), rs)).is_err() {
                    break;
                }
            }
        }
    });

    let manifest = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "kvm1"},
        "spec": {
            "runStrategy": "Halted",
            "template": {"spec": {
                "domain": {"memory": {"guest": "64Mi"}, "devices": {"disks": [{"name": "root", "disk": {"bus": "virtio"}}]}},
                "volumes": [{"name": "root", "containerDisk": {"image": "tiny"}}]
            }}
        }
    });
    let pp = PatchParams::apply("kube-rs-test");
    let applied = vms.patch("kvm1", &pp, &Patch::Apply(&manifest)).await.expect("server-side apply");
    assert_eq!(applied.data["spec"]["runStrategy"], "Halted");
    let mut changed = manifest.clone();
    changed["spec"]["runStrategy"] = json!("Always");
    vms.patch("kvm1", &pp, &Patch::Apply(&changed)).await.expect("apply again");

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !seen.iter().any(|(n, rs): &(String, String)| n == "kvm1" && rs == "Always") {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => seen.push(e),
            _ => panic!("watcher did not see the update; saw {seen:?}"),
        }
    }
    watcher_task.abort();

    let list = vms.list(&ListParams::default().labels("")).await.expect("list");
    assert_eq!(list.items.len(), 1);

    // Invalid object: a 422 Status with the field path.
    let mut bad = manifest.clone();
    bad["metadata"]["name"] = json!("kvm2");
    bad["spec"]["running"] = json!(true);
    let err =
        vms.create(&PostParams::default(), &serde_json::from_value(bad).expect("dynamic")).await.expect_err("invalid");
    match err {
        kube::Error::Api(status) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("running"), "{}", status.message);
        }
        other => panic!("expected an API error, got {other}"),
    }

    vms.delete("kvm1", &DeleteParams::default()).await.expect("delete");
    cms.delete("kube-rs", &DeleteParams::default()).await.expect("delete cm");
    assert!(cms.get_opt("kube-rs").await.expect("get_opt").is_none());
}
