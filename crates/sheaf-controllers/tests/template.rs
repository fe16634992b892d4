//! The VM template controllers against a real API (object layer over
//! SQLite, garbage collector running): version numbers, the default
//! version, owner references and cascading deletion, versions of missing
//! templates, and the default templates.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Cluster, Run, PATIENCE};
use serde_json::{json, Value};
use sheaf_client::{Gvr, Selectors, Typed};
use sheaf_controllers::{template, vm};
use sheaf_types::template::{
    VirtualMachineTemplate, VirtualMachineTemplateVersion, ASSIGNED_CONDITION, PUBLIC_NAMESPACE, TEMPLATE_LABEL,
};

/// Aborts the controllers when the test ends.
struct Running(tokio::task::JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn start() -> (Cluster, Running) {
    let c = Cluster::start(Run::Nothing, vm::Config::default()).await.expect("cluster");
    let r = Running(tokio::spawn(template::run(c.api.clone())));
    (c, r)
}

fn templates(c: &Cluster) -> Typed<'_, VirtualMachineTemplate> {
    Typed::new(c.api.as_ref())
}

fn versions(c: &Cluster) -> Typed<'_, VirtualMachineTemplateVersion> {
    Typed::new(c.api.as_ref())
}

async fn create_template(c: &Cluster, ns: &str, name: &str) {
    let body = json!({"apiVersion": "harvesterhci.io/v1beta1", "kind": "VirtualMachineTemplate",
                      "metadata": {"name": name, "namespace": ns}, "spec": {"description": "test"}});
    c.api.create(Gvr::of::<VirtualMachineTemplate>(), Some(ns), body).await.expect("create template");
}

fn version_body(ns: &str, name: &str, template: &str, marker: &str) -> Value {
    json!({
        "apiVersion": "harvesterhci.io/v1beta1", "kind": "VirtualMachineTemplateVersion",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"templateId": format!("{ns}/{template}"), "description": marker, "vm": {"spec": {
            "runStrategy": "Halted",
            "template": {"spec": {
                "domain": {"memory": {"guest": "128Mi"}, "devices": {"disks": [{"name": "root", "disk": {}}]}},
                "volumes": [{"name": "root", "containerDisk": {"image": "sheaf/tiny"}}],
            }},
        }}},
    })
}

async fn create_version(c: &Cluster, ns: &str, name: &str, template: &str) {
    c.api
        .create(Gvr::of::<VirtualMachineTemplateVersion>(), Some(ns), version_body(ns, name, template, name))
        .await
        .expect("create version");
}

/// Polls `f` until it returns Some; panics with `what` and the last state.
async fn wait_for<T, F>(what: &str, mut f: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(last) if tokio::time::Instant::now() > deadline => panic!("{what}: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn number_of(c: &Cluster, ns: &str, name: &str) -> u32 {
    wait_for(&format!("version {ns}/{name} numbered"), || async {
        let v = versions(c).get(Some(ns), name).await.map_err(|e| e.to_string())?.ok_or("no version")?;
        v.number().ok_or_else(|| format!("{:?}", v.status))
    })
    .await
}

/// Waits until the template's (defaultVersionId, defaultVersion, latestVersion) is `want`.
async fn wait_template(c: &Cluster, ns: &str, name: &str, want: (&str, u32, u32)) -> VirtualMachineTemplate {
    wait_for(&format!("template {ns}/{name} at {want:?}"), || async {
        let t = templates(c).get(Some(ns), name).await.map_err(|e| e.to_string())?.ok_or("no template")?;
        let s = t.status.clone().unwrap_or_default();
        let got = (t.spec.default_version_id.as_str(), s.default_version, s.latest_version);
        if got == want {
            Ok(t.clone())
        } else {
            Err(format!("{got:?}"))
        }
    })
    .await
}

#[tokio::test]
async fn versions_are_numbered_in_order_and_the_first_is_the_default() {
    let (c, _run) = start().await;
    create_template(&c, "default", "web").await;
    // Creation order counts, not names: web-b first.
    create_version(&c, "default", "web-b", "web").await;
    assert_eq!(number_of(&c, "default", "web-b").await, 1);
    create_version(&c, "default", "web-a", "web").await;
    assert_eq!(number_of(&c, "default", "web-a").await, 2);
    wait_template(&c, "default", "web", ("default/web-b", 1, 2)).await;

    // Label and owner reference, set by the controller.
    let v = versions(&c).get(Some("default"), "web-a").await.expect("get").expect("exists");
    let t = templates(&c).get(Some("default"), "web").await.expect("get").expect("exists");
    assert_eq!(v.metadata.labels.get(TEMPLATE_LABEL).map(String::as_str), Some("web"));
    let owner = v.metadata.owner_references.first().expect("owner");
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("VirtualMachineTemplate", t.metadata.uid.as_deref().unwrap_or(""))
    );
    let cond =
        v.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == ASSIGNED_CONDITION)).expect("cond");
    assert_eq!(cond.status, "True");

    // A user's choice of default is kept and followed.
    templates(&c)
        .merge_patch(Some("default"), "web", json!({"spec": {"defaultVersionId": "default/web-a"}}), false)
        .await
        .expect("patch");
    wait_template(&c, "default", "web", ("default/web-a", 2, 2)).await;

    // Many at once: distinct numbers 3.., none twice.
    for i in 0..5 {
        create_version(&c, "default", &format!("web-x{i}"), "web").await;
    }
    let mut numbers = BTreeSet::new();
    for i in 0..5 {
        numbers.insert(number_of(&c, "default", &format!("web-x{i}")).await);
    }
    assert_eq!(numbers, (3..=7).collect::<BTreeSet<u32>>());
    wait_template(&c, "default", "web", ("default/web-a", 2, 7)).await;

    // A version's spec is immutable.
    let mut body =
        serde_json::to_value(versions(&c).get(Some("default"), "web-a").await.expect("get").expect("exists"))
            .expect("json");
    body["spec"]["description"] = json!("changed");
    let err =
        c.api.update(Gvr::of::<VirtualMachineTemplateVersion>(), Some("default"), body).await.expect_err("immutable");
    assert!(err.code == 422 && err.message.contains("create a new version"), "{err}");

    // The default version cannot be deleted while its template exists; the others can.
    let err = versions(&c).delete(Some("default"), "web-a").await.expect_err("the default version");
    assert!(err.code == 409 && err.message.contains("default version of template default/web"), "{err}");
    versions(&c).delete(Some("default"), "web-b").await.expect("not the default");

    // Deleting the template deletes its versions, the default one included.
    templates(&c).delete(Some("default"), "web").await.expect("delete");
    wait_for("versions deleted with their template", || async {
        let left = versions(&c).list(Some("default"), &Selectors::default()).await.map_err(|e| e.to_string())?;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{:?}", left.iter().map(|v| v.metadata.name.clone()).collect::<Vec<_>>()))
        }
    })
    .await;
}

#[tokio::test]
async fn a_version_of_a_missing_template_says_so_until_it_exists() {
    let (c, _run) = start().await;
    create_version(&c, "default", "lonely-v1", "lonely").await;
    let message = wait_for("TemplateNotFound condition", || async {
        let v = versions(&c).get(Some("default"), "lonely-v1").await.map_err(|e| e.to_string())?.ok_or("gone")?;
        let cond = v.status.as_ref().and_then(|s| s.conditions.iter().find(|c| c.type_ == ASSIGNED_CONDITION).cloned());
        match cond {
            Some(c) if c.status == "False" && c.reason.as_deref() == Some("TemplateNotFound") => {
                Ok(c.message.unwrap_or_default())
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(message.contains("default/lonely does not exist"), "{message}");
    assert_eq!(versions(&c).get(Some("default"), "lonely-v1").await.expect("get").expect("v").number(), None);

    create_template(&c, "default", "lonely").await;
    assert_eq!(number_of(&c, "default", "lonely-v1").await, 1);
    wait_template(&c, "default", "lonely", ("default/lonely-v1", 1, 1)).await;
}

#[tokio::test]
async fn default_templates_exist_and_edits_are_kept() {
    let (c, _run) = start().await;
    for (t, v) in [
        ("iso-image-base-template", "iso-image-base-version"),
        ("raw-image-base-template", "raw-image-base-version"),
        ("windows-iso-image-base-template", "windows-iso-image-base-version"),
        ("linux-cloud-init-template", "linux-cloud-init-base-version"),
    ] {
        wait_template(&c, PUBLIC_NAMESPACE, t, (&format!("{PUBLIC_NAMESPACE}/{v}"), 1, 1)).await;
    }
    let secret =
        c.api.get(Gvr::of::<sheaf_types::core::Secret>(), Some(PUBLIC_NAMESPACE), "raw-image-template-userdata").await;
    assert!(secret.expect("get").is_some(), "the default user data Secret exists");

    // A user's edit survives the next start.
    templates(&c)
        .merge_patch(Some(PUBLIC_NAMESPACE), "raw-image-base-template", json!({"spec": {"description": "mine"}}), false)
        .await
        .expect("edit");
    template::ensure_defaults(c.api.as_ref()).await.expect("defaults again");
    let t = templates(&c).get(Some(PUBLIC_NAMESPACE), "raw-image-base-template").await.expect("get").expect("t");
    assert_eq!(t.spec.description.as_deref(), Some("mine"));
    // A deleted default comes back.
    templates(&c).delete(Some(PUBLIC_NAMESPACE), "iso-image-base-template").await.expect("delete");
    wait_for("default versions gone with the template", || async {
        match versions(&c).get(Some(PUBLIC_NAMESPACE), "iso-image-base-version").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    template::ensure_defaults(c.api.as_ref()).await.expect("defaults again");
    wait_template(&c, PUBLIC_NAMESPACE, "iso-image-base-template", ("harvester-public/iso-image-base-version", 1, 1))
        .await;
}
