use serde_json::{json, Value};

use super::*;
use crate::resource::ResourceType;

fn decode<K: Kind>(v: &Value, old: Option<&Value>) -> Result<K, Vec<FieldError>> {
    let d = ResourceType::of::<K>().decode(v, old)?;
    assert!(d.unknown_fields.is_empty(), "unknown fields {:?} in {v}", d.unknown_fields);
    Ok(serde_json::from_value(d.value).expect("decoded value reads back"))
}

fn errors_of<K: Kind>(v: &Value) -> Vec<FieldError> {
    decode::<K>(v, None).err().unwrap_or_else(|| panic!("{v} should be refused"))
}

fn has(errs: &[FieldError], field: &str, text: &str) -> bool {
    errs.iter().any(|e| e.field == field && e.message.contains(text))
}

#[track_caller]
fn assert_error(errs: &[FieldError], field: &str, text: &str) {
    assert!(has(errs, field, text), "no error at {field} containing {text:?}: {errs:#?}");
}

/// A version of template `default/web` whose VM boots a container disk
/// and has a root disk from an image.
fn version_json() -> Value {
    json!({
        "metadata": {"name": "web-v1", "namespace": "default"},
        "spec": {
            "templateId": "default/web",
            "description": "web servers",
            "keyPairIds": ["default/ops"],
            "vm": {
                "metadata": {
                    "labels": {"app": "web"},
                    "annotations": {
                        VOLUME_CLAIM_TEMPLATES_ANNOTATION: json!([
                            {"metadata": {"name": "pvc-rootdisk", "annotations": {IMAGE_ID_ANNOTATION: "default/ubuntu"}},
                             "spec": {"resources": {"requests": {"storage": "10Gi"}}}},
                            {"metadata": {"name": "pvc-data"}, "spec": {"resources": {"requests": {"storage": "1Gi"}}}},
                        ]).to_string(),
                    },
                },
                "spec": {
                    "runStrategy": "Always",
                    "template": {"spec": {
                        "domain": {
                            "cpu": {"cores": 1},
                            "resources": {"limits": {"memory": "1Gi", "cpu": "1"}},
                            "devices": {"disks": [
                                {"name": "rootdisk", "disk": {"bus": "virtio"}},
                                {"name": "data", "disk": {"bus": "virtio"}},
                                {"name": "cloudinit", "disk": {"bus": "virtio"}},
                            ]},
                        },
                        "volumes": [
                            {"name": "rootdisk", "persistentVolumeClaim": {"claimName": "pvc-rootdisk"}},
                            {"name": "data", "persistentVolumeClaim": {"claimName": "pvc-data"}},
                            {"name": "cloudinit", "cloudInitNoCloud": {"userData": "#cloud-config\n"}},
                        ],
                    }},
                },
            },
        },
    })
}

fn version() -> VirtualMachineTemplateVersion {
    decode::<VirtualMachineTemplateVersion>(&version_json(), None).expect("valid version")
}

#[test]
fn default_objects_are_valid() {
    let objects = default_objects();
    let names: Vec<&str> = objects.iter().filter_map(|o| o.pointer("/metadata/name").and_then(Value::as_str)).collect();
    for expected in [
        "iso-image-base-template",
        "raw-image-base-template",
        "windows-iso-image-base-template",
        "linux-cloud-init-template",
        "iso-image-base-version",
        "linux-cloud-init-base-version",
    ] {
        assert!(names.contains(&expected), "{expected} missing from {names:?}");
    }
    for o in &objects {
        assert_eq!(o.pointer("/metadata/namespace").and_then(Value::as_str), Some(PUBLIC_NAMESPACE));
        match o["kind"].as_str() {
            Some("VirtualMachineTemplate") => {
                decode::<VirtualMachineTemplate>(o, None).unwrap_or_else(|e| panic!("{o}: {e:?}"));
            }
            Some("VirtualMachineTemplateVersion") => {
                let v = decode::<VirtualMachineTemplateVersion>(o, None).unwrap_or_else(|e| panic!("{o}: {e:?}"));
                let tid = &v.spec.template_id;
                assert!(names.contains(&parse_ref(tid).expect("ref").1), "{tid} is shipped");
            }
            Some("Secret") => {
                decode::<crate::core::Secret>(o, None).unwrap_or_else(|e| panic!("{o}: {e:?}"));
            }
            other => panic!("unexpected kind {other:?}"),
        }
    }
    // The Linux template: 2 vCPU, 2Gi, a root disk from an image, the guest agent.
    let linux = objects.iter().find(|o| o["metadata"]["name"] == "linux-cloud-init-base-version").expect("linux");
    let v: VirtualMachineTemplateVersion = serde_json::from_value(linux.clone()).expect("typed");
    let d = &v.spec.vm.spec.template.spec.domain;
    assert_eq!(d.cpu.as_ref().and_then(|c| c.cores), Some(2));
    assert_eq!(d.resources.limits.get("memory").map(|q| q.to_string()).as_deref(), Some("2Gi"));
    let claims = claim_templates(&v.spec.vm.metadata.annotations).expect("claims");
    assert_eq!(claims[0]["metadata"]["annotations"][IMAGE_ID_ANNOTATION], "");
    assert!(linux.to_string().contains("qemu-guest-agent"));
}

#[test]
fn version_spec_is_checked_with_the_vm_rules_under_spec_vm() {
    // The VM rules: running and runStrategy together, a disk without a volume.
    let mut v = version_json();
    v["spec"]["vm"]["spec"]["running"] = json!(true);
    v["spec"]["vm"]["spec"]["template"]["spec"]["domain"]["devices"]["disks"][0]["name"] = json!("nosuch");
    let errs = errors_of::<VirtualMachineTemplateVersion>(&v);
    assert_error(&errs, "spec.vm.spec.running", "mutually exclusive");
    assert!(
        errs.iter().any(|e| e.field.starts_with("spec.vm.spec.template.spec.domain.devices.disks[0]")),
        "{errs:#?}"
    );

    // No VM at all.
    let mut v = version_json();
    v["spec"]["vm"] = json!({});
    assert_error(
        &errors_of::<VirtualMachineTemplateVersion>(&v),
        "spec.vm.spec.template",
        "missing virtual machine template",
    );

    // Bad labels of the VM.
    let mut v = version_json();
    v["spec"]["vm"]["metadata"]["labels"] = json!({"bad key": "x"});
    assert_error(&errors_of::<VirtualMachineTemplateVersion>(&v), "spec.vm.metadata.labels", "invalid label key");
}

#[test]
fn version_references_are_checked() {
    let mut v = version_json();
    v["spec"]["templateId"] = json!("");
    assert_error(&errors_of::<VirtualMachineTemplateVersion>(&v), "spec.templateId", "default/TEMPLATE");
    v["spec"]["templateId"] = json!("web");
    assert_error(&errors_of::<VirtualMachineTemplateVersion>(&v), "spec.templateId", "not NAMESPACE/NAME");
    v["spec"]["templateId"] = json!("other/web");
    assert_error(&errors_of::<VirtualMachineTemplateVersion>(&v), "spec.templateId", "in its template's namespace");
    v["spec"]["templateId"] = json!("default/Web_1");
    assert_error(&errors_of::<VirtualMachineTemplateVersion>(&v), "spec.templateId", "RFC 1123");

    let mut v = version_json();
    v["spec"]["keyPairIds"] = json!(["default/ops", "ops", "default/ops"]);
    v["spec"]["imageId"] = json!("ubuntu");
    let errs = errors_of::<VirtualMachineTemplateVersion>(&v);
    assert_error(&errs, "spec.keyPairIds[1]", "name a KeyPair");
    assert_error(&errs, "spec.keyPairIds[2]", "Duplicate");
    assert_error(&errs, "spec.imageId", "name a VirtualMachineImage");
}

#[test]
fn claims_annotation_is_checked() {
    let field = format!("spec.vm.metadata.annotations[{VOLUME_CLAIM_TEMPLATES_ANNOTATION}]");
    let with_claims = |claims: Value| {
        let mut v = version_json();
        v["spec"]["vm"]["metadata"]["annotations"][VOLUME_CLAIM_TEMPLATES_ANNOTATION] = json!(if claims.is_string() {
            claims.as_str().unwrap_or_default().to_string()
        } else {
            claims.to_string()
        });
        errors_of::<VirtualMachineTemplateVersion>(&v)
    };
    assert_error(&with_claims(json!("[{not json")), &field, "JSON list of PersistentVolumeClaims");
    assert_error(
        &with_claims(
            json!([{"metadata": {"name": "pvc-rootdisk"}}, {"metadata": {"name": "pvc-rootdisk"}}, {"metadata": {"name": "pvc-data"}}]),
        ),
        &field,
        "appears twice",
    );
    assert_error(&with_claims(json!([{"metadata": {}}])), &field, "metadata.name is required");
    assert_error(
        &with_claims(
            json!([{"metadata": {"name": "pvc-rootdisk", "annotations": {IMAGE_ID_ANNOTATION: "ubuntu"}}}, {"metadata": {"name": "pvc-data"}}]),
        ),
        &field,
        "not NAMESPACE/NAME",
    );
    assert_error(
        &with_claims(
            json!([{"metadata": {"name": "pvc-rootdisk"}, "spec": {"resources": {"requests": {"storage": "lots"}}}}, {"metadata": {"name": "pvc-data"}}]),
        ),
        &field,
        "storage",
    );
    // A volume on a claim the template does not make per VM would be shared.
    let errs = with_claims(json!([{"metadata": {"name": "pvc-rootdisk"}}]));
    assert_error(&errs, "spec.vm.spec.template.spec.volumes[1].persistentVolumeClaim.claimName", "would share it");
}

#[test]
fn a_version_spec_is_immutable() {
    let stored =
        ResourceType::of::<VirtualMachineTemplateVersion>().decode(&version_json(), None).expect("valid").value;
    // Metadata and status may change (the controller sets labels, owners, numbers).
    let mut relabelled = stored.clone();
    relabelled["metadata"]["labels"] = json!({TEMPLATE_LABEL: "web"});
    decode::<VirtualMachineTemplateVersion>(&relabelled, Some(&stored)).expect("metadata may change");
    let mut changed = stored.clone();
    changed["spec"]["description"] = json!("other");
    let errs = decode::<VirtualMachineTemplateVersion>(&changed, Some(&stored)).expect_err("spec changed");
    assert_error(&errs, "spec", "create a new version");
}

#[test]
fn template_default_version_must_be_in_its_namespace() {
    let t = |id: &str| json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"defaultVersionId": id, "description": "d"}});
    decode::<VirtualMachineTemplate>(&t(""), None).expect("empty is the first version");
    decode::<VirtualMachineTemplate>(&t("default/web-v1"), None).expect("same namespace");
    assert_error(&errors_of::<VirtualMachineTemplate>(&t("other/web-v1")), "spec.defaultVersionId", "its namespace");
    assert_error(&errors_of::<VirtualMachineTemplate>(&t("web-v1")), "spec.defaultVersionId", "NAMESPACE/NAME");
}

fn req(name: &str) -> CreateVmRequest {
    CreateVmRequest { name: name.into(), ..Default::default() }
}

fn claim_names(vm: &VirtualMachine) -> Vec<String> {
    claim_templates(&vm.metadata.annotations).expect("claims").iter().map(|c| claim_name(c).to_string()).collect()
}

fn volume_claims(vm: &VirtualMachine) -> Vec<String> {
    vm.spec.template.spec.volumes.iter().filter_map(|v| v.claim_name()).map(str::to_string).collect()
}

#[test]
fn two_vms_from_one_version_share_no_claim() {
    let v = version();
    let a = render_vm(&v, &req("vm-a"), "x1y2z").expect("a");
    let b = render_vm(&v, &req("vm-b"), "q9w8e").expect("b");
    assert_eq!(claim_names(&a), ["vm-a-rootdisk-x1y2z", "vm-a-data-x1y2z"]);
    assert_eq!(volume_claims(&a), ["vm-a-rootdisk-x1y2z", "vm-a-data-x1y2z"], "volumes follow the renamed claims");
    let (ca, cb) = (claim_names(&a), claim_names(&b));
    assert!(ca.iter().all(|n| !cb.contains(n)), "{ca:?} vs {cb:?}");
    // Same name, another suffix (a VM deleted and made again): new claims too.
    let a2 = render_vm(&v, &req("vm-a"), "00000").expect("a2");
    assert!(claim_names(&a2).iter().all(|n| !ca.contains(n)));
    // The image annotation and the rest of each claim are kept.
    let claims = claim_templates(&a.metadata.annotations).expect("claims");
    assert_eq!(claims[0]["metadata"]["annotations"][IMAGE_ID_ANNOTATION], "default/ubuntu");
    assert_eq!(claims[1]["spec"]["resources"]["requests"]["storage"], "1Gi");
    // And the result is a valid VirtualMachine.
    assert!(a.validate(None).is_empty(), "{:?}", a.validate(None));
}

#[test]
fn claim_names_stay_short_and_distinct() {
    let long = "v".repeat(200);
    let n = claim_name_for(&long, "rootdisk", "abcde");
    assert_eq!(n.len(), MAX_CLAIM_NAME);
    assert!(n.ends_with("-abcde") && validation::dns1123_subdomain(&n).is_ok(), "{n}");
    assert_eq!(claim_name_for("a.", "", "abcde"), "a-abcde", "no '-' or '.' before the suffix");

    // Two claims whose shortened names would collide get distinct names.
    let mut vm = VirtualMachine::default();
    vm.metadata.name = Some("x".repeat(70));
    vm.metadata.annotations.insert(
        VOLUME_CLAIM_TEMPLATES_ANNOTATION.into(),
        json!([{"metadata": {"name": "c1"}}, {"metadata": {"name": "c2"}}]).to_string(),
    );
    let renames = uniquify_claims(&mut vm, "abcde").expect("renamed");
    let new: BTreeSet<&String> = renames.values().collect();
    assert_eq!(new.len(), 2, "{renames:?}");

    // dataVolumeTemplates are per VM too.
    let mut vm: VirtualMachine = serde_json::from_value(json!({
        "metadata": {"name": "vm1"},
        "spec": {
            "dataVolumeTemplates": [{"metadata": {"name": "dv"}, "spec": {"storage": {}}}],
            "template": {"spec": {"volumes": [{"name": "disk0", "dataVolume": {"name": "dv"}}]}},
        },
    }))
    .expect("vm");
    uniquify_claims(&mut vm, "s1s2s").expect("renamed");
    assert_eq!(vm.spec.data_volume_templates[0].metadata.name.as_deref(), Some("vm1-disk0-s1s2s"));
    assert_eq!(volume_claims(&vm), ["vm1-disk0-s1s2s"]);
}

#[test]
fn overrides_and_back_references() {
    let v = version();
    let r = CreateVmRequest {
        name: "big".into(),
        namespace: Some("prod".into()),
        cpu: Some(4),
        memory: Some("8Gi".into()),
        image: Some("images/debian".into()),
        key_pairs: Some(vec!["mine".into(), "ops/shared".into()]),
        user_data: Some("#cloud-config\nhostname: big\n".into()),
    };
    assert!(r.validate("default").is_empty(), "{:?}", r.validate("default"));
    let vm = render_vm(&v, &r, "abcde").expect("vm");
    assert_eq!(vm.metadata.namespace.as_deref(), Some("prod"));
    let d = &vm.spec.template.spec.domain;
    assert_eq!(d.cpu.as_ref().and_then(|c| c.cores), Some(4));
    assert_eq!(d.resources.limits["cpu"].to_string(), "4");
    assert_eq!(d.resources.limits["memory"].to_string(), "8Gi");
    let claims = claim_templates(&vm.metadata.annotations).expect("claims");
    assert_eq!(claims[0]["metadata"]["annotations"][IMAGE_ID_ANNOTATION], "images/debian");
    let ssh = &vm.metadata.annotations[crate::harvester::SSH_NAMES_ANNOTATION];
    assert_eq!(serde_json::from_str::<Vec<String>>(ssh).expect("json"), ["prod/mine", "ops/shared"]);
    let ci = vm.spec.template.spec.volumes.iter().find_map(|v| v.cloud_init_no_cloud.as_ref()).expect("cloud-init");
    assert_eq!(ci.user_data.as_deref(), Some("#cloud-config\nhostname: big\n"));
    assert_eq!(vm.metadata.labels[VM_TEMPLATE_LABEL], "web");
    assert_eq!(vm.metadata.labels[VM_TEMPLATE_VERSION_LABEL], "web-v1");
    assert_eq!(vm.metadata.labels["app"], "web");
    assert_eq!(vm.metadata.annotations[VM_TEMPLATE_VERSION_ID_ANNOTATION], "default/web-v1");

    // Without overrides: the version's key pairs and image.
    let vm = render_vm(&v, &req("plain"), "abcde").expect("vm");
    let ssh = &vm.metadata.annotations[crate::harvester::SSH_NAMES_ANNOTATION];
    assert_eq!(serde_json::from_str::<Vec<String>>(ssh).expect("json"), ["default/ops"]);
    assert_eq!(vm.spec.template.spec.domain.cpu.as_ref().and_then(|c| c.cores), Some(1));

    // User data on a VM without cloud-init adds a NoCloud disk.
    let mut bare = version();
    bare.spec.vm.spec.template.spec.volumes.retain(|v| v.cloud_init_no_cloud.is_none());
    bare.spec.vm.spec.template.spec.domain.devices.disks.retain(|d| d.name != "cloudinit");
    let vm = render_vm(&bare, &CreateVmRequest { user_data: Some("#cloud-config\n".into()), ..req("u") }, "abcde")
        .expect("vm");
    assert!(vm.spec.template.spec.domain.devices.disks.iter().any(|d| d.name == "cloudinitdisk"));
    assert!(vm.validate(None).is_empty(), "{:?}", vm.validate(None));
}

#[test]
fn bad_requests_are_refused_in_their_own_terms() {
    let r = CreateVmRequest {
        name: "Bad_Name".into(),
        cpu: Some(0),
        memory: Some("12 apples".into()),
        image: Some("noslash".into()),
        key_pairs: Some(vec!["a/b/c".into()]),
        user_data: Some("  ".into()),
        ..Default::default()
    };
    let errs = r.validate("default");
    for (field, text) in [
        ("name", "RFC 1123"),
        ("cpu", "must be 1 to"),
        ("memory", "for example 2Gi"),
        ("image", "NAMESPACE/NAME"),
        ("keyPairs[0]", "name a KeyPair"),
        ("userData", "is empty"),
    ] {
        assert_error(&errs, field, text);
    }
    assert_error(&req("").validate("default"), "name", "name the VirtualMachine");
    let bad: Result<CreateVmRequest, _> = serde_json::from_value(json!({"name": "x", "cpus": 2}));
    assert!(bad.expect_err("unknown field").to_string().contains("cpus"));

    // A template disk made from an image needs one.
    let mut v = version();
    let ann = &mut v.spec.vm.metadata.annotations;
    let text = ann[VOLUME_CLAIM_TEMPLATES_ANNOTATION].replace("default/ubuntu", "");
    ann.insert(VOLUME_CLAIM_TEMPLATES_ANNOTATION.into(), text);
    let errs = render_vm(&v, &req("x"), "abcde").expect_err("no image");
    assert_error(&errs, "image", "is made from an image");
    render_vm(&v, &CreateVmRequest { image: Some("default/ubuntu".into()), ..req("x") }, "abcde").expect("with image");

    // An image for a template without image disks is a mistake.
    let mut v = version();
    v.spec.vm.metadata.annotations.remove(VOLUME_CLAIM_TEMPLATES_ANNOTATION);
    v.spec.vm.spec.template.spec.volumes.retain(|v| v.persistent_volume_claim.is_none());
    v.spec.vm.spec.template.spec.domain.devices.disks.retain(|d| d.name == "cloudinit");
    let errs = render_vm(&v, &CreateVmRequest { image: Some("default/ubuntu".into()), ..req("x") }, "abcde")
        .expect_err("no image disk");
    assert_error(&errs, "image", "no disk made from an image");
}
