//! VM templates end to end, with the real server and real kubectl: the
//! default templates, a user's template with two versions (kubectl apply),
//! `sheaf vm create --template` twice from one version (distinct claim
//! names) and once from a version whose VM runs, and bad input refused
//! with messages that say what to do.

mod support;

use std::time::Duration;

use support::guest::{jsonpath, tiny_server, QemuReaper};
use support::{eventually, Server};

const TEMPLATE: &str = "apiVersion: harvesterhci.io/v1beta1
kind: VirtualMachineTemplate
metadata:
  name: tiny
spec:
  description: the tiny test guest
";

/// Version 1: halted VMs with two disks of their own (claims from the
/// volumeClaimTemplates annotation); they never boot.
const VERSION_1: &str = r#"apiVersion: harvesterhci.io/v1beta1
kind: VirtualMachineTemplateVersion
metadata:
  name: tiny-disks
spec:
  templateId: default/tiny
  description: two disks of its own
  vm:
    metadata:
      labels:
        app: tiny
      annotations:
        harvesterhci.io/volumeClaimTemplates: '[{"metadata":{"name":"pvc-rootdisk"},"spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"64Mi"}},"volumeMode":"Block"}},{"metadata":{"name":"pvc-data"},"spec":{"accessModes":["ReadWriteOnce"],"resources":{"requests":{"storage":"64Mi"}},"volumeMode":"Block"}}]'
    spec:
      runStrategy: Halted
      template:
        spec:
          domain:
            cpu:
              cores: 1
            memory:
              guest: 128Mi
            devices:
              disks:
              - name: rootdisk
                disk:
                  bus: virtio
              - name: data
                disk:
                  bus: virtio
          volumes:
          - name: rootdisk
            persistentVolumeClaim:
              claimName: pvc-rootdisk
          - name: data
            persistentVolumeClaim:
              claimName: pvc-data
"#;

/// Version 2: the tiny guest booted by kernel, running.
const VERSION_2: &str = r#"apiVersion: harvesterhci.io/v1beta1
kind: VirtualMachineTemplateVersion
metadata:
  name: tiny-boot
spec:
  templateId: default/tiny
  description: boots the tiny guest
  vm:
    spec:
      runStrategy: Always
      template:
        spec:
          terminationGracePeriodSeconds: 5
          domain:
            cpu:
              cores: 1
            memory:
              guest: 128Mi
            firmware:
              kernelBoot:
                kernelArgs: console=ttyS0 quiet
                container:
                  image: sheaf/tiny
                  kernelPath: /vmlinuz
                  initrdPath: /initramfs.cpio.gz
            devices:
              disks:
              - name: cloudinit
                disk:
                  bus: virtio
              interfaces:
              - name: default
                masquerade: {}
          networks:
          - name: default
            pod: {}
          volumes:
          - name: cloudinit
            cloudInitNoCloud:
              userData: |
                #cloud-config
                # marker: from-template
"#;

#[track_caller]
fn sheaf_err(s: &Server, args: &[&str], want: &[&str]) -> String {
    let (ok, out) = s.sheaf_cli(args);
    assert!(!ok, "sheaf {args:?} should fail but printed {out}");
    for w in want {
        assert!(out.contains(w), "sheaf {args:?}: {w:?} not in {out:?}");
    }
    out
}

fn claims_of(s: &Server, vm: &str) -> Vec<String> {
    let text = jsonpath(s, "vm", vm, "{.metadata.annotations.harvesterhci\\.io/volumeClaimTemplates}");
    let claims: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{vm}: {e}: {text:?}"));
    claims.iter().map(|c| c["metadata"]["name"].as_str().unwrap_or_default().to_string()).collect()
}

#[test]
fn templates_end_to_end() {
    let root = tempfile::tempdir().expect("tempdir");
    let _reaper = QemuReaper(root.path().to_path_buf());
    let s = tiny_server(root.path(), &[]);

    // The default templates, each with its first version as the default.
    let defaults = || s.kubectl_ok(&["get", "vmtemplates", "-n", "harvester-public"]);
    assert!(
        eventually(Duration::from_secs(30), || {
            let t = defaults();
            [
                "harvester-public/iso-image-base-version",
                "harvester-public/raw-image-base-version",
                "harvester-public/windows-iso-image-base-version",
                "harvester-public/linux-cloud-init-base-version",
            ]
            .iter()
            .all(|v| t.contains(v))
        }),
        "default templates: {}",
        defaults()
    );
    assert!(defaults().contains("VERSION_DEFAULT"), "{}", defaults());
    let list = s.cli_ok(&["template", "list"]);
    assert!(list.contains("linux-cloud-init-template") && list.contains("harvester-public"), "{list}");
    let show = s.cli_ok(&["template", "show", "linux-cloud-init-template"]);
    for want in ["CPU:        2", "Memory:     2Gi", "from an image (give --image)", "--image NS/IMAGE"] {
        assert!(show.contains(want), "{want:?} not in {show}");
    }

    // A user template and two versions, with kubectl apply.
    s.apply(TEMPLATE);
    s.apply(VERSION_1);
    assert!(
        eventually(Duration::from_secs(20), || jsonpath(&s, "vmtemplateversion", "tiny-disks", "{.status.version}")
            == "1"),
        "version 1 numbered: {}",
        jsonpath(&s, "vmtemplateversion", "tiny-disks", "{.status}")
    );
    s.apply(VERSION_2);
    assert!(
        eventually(Duration::from_secs(20), || jsonpath(&s, "vmtemplateversion", "tiny-boot", "{.status.version}")
            == "2"),
        "version 2 numbered: {}",
        jsonpath(&s, "vmtemplateversion", "tiny-boot", "{.status}")
    );
    assert!(
        eventually(Duration::from_secs(20), || {
            jsonpath(
                &s,
                "vmtemplate",
                "tiny",
                "{.spec.defaultVersionId} {.status.defaultVersion} {.status.latestVersion}",
            ) == "default/tiny-disks 1 2"
        }),
        "template status: {}",
        jsonpath(&s, "vmtemplate", "tiny", "{.spec} {.status}")
    );
    let table = s.kubectl_ok(&["get", "vmtemplateversions"]);
    assert!(table.contains("TEMPLATE_ID") && table.contains("default/tiny"), "{table}");

    // Two VMs from one version: no claim in common.
    let out = s.cli_ok(&["vm", "create", "disk-a", "--template", "tiny"]);
    assert!(out.contains("created from template default/tiny version 1"), "{out}");
    s.cli_ok(&["vm", "create", "disk-b", "--template", "default/tiny:1", "--memory", "256Mi"]);
    let (a, b) = (claims_of(&s, "disk-a"), claims_of(&s, "disk-b"));
    assert_eq!((a.len(), b.len()), (2, 2), "{a:?} {b:?}");
    assert!(a.iter().all(|n| n.starts_with("disk-a-") && !b.contains(n)), "{a:?} vs {b:?}");
    assert!(b.iter().all(|n| n.starts_with("disk-b-")), "{b:?}");
    let volumes = jsonpath(&s, "vm", "disk-a", "{.spec.template.spec.volumes[*].persistentVolumeClaim.claimName}");
    assert_eq!(volumes.split(' ').map(str::to_string).collect::<Vec<_>>(), a, "volumes use the VM's own claims");
    assert_eq!(jsonpath(&s, "vm", "disk-b", "{.spec.template.spec.domain.memory.guest}"), "256Mi");
    assert_eq!(jsonpath(&s, "vm", "disk-a", "{.metadata.labels.app}"), "tiny");
    assert_eq!(jsonpath(&s, "vm", "disk-a", "{.metadata.labels.harvesterhci\\.io/vmTemplateVersion}"), "tiny-disks");
    // The VMs select by template.
    let by_template = s.kubectl_ok(&["get", "vm", "-l", "harvesterhci.io/vmTemplate=tiny", "-o", "name"]);
    assert!(by_template.contains("disk-a") && by_template.contains("disk-b"), "{by_template}");

    // A VM from version 2 runs, with the version's user data.
    let out = s.cli_ok(&["vm", "create", "booted", "--template", "tiny:tiny-boot", "--cpu", "2"]);
    assert!(out.contains("version 2 (tiny-boot)"), "{out}");
    assert!(
        eventually(Duration::from_secs(90), || jsonpath(&s, "vmi", "booted", "{.status.phase}") == "Running"),
        "VMI not Running: {}",
        jsonpath(&s, "vmi", "booted", "{.status}")
    );
    assert_eq!(jsonpath(&s, "vmi", "booted", "{.spec.domain.cpu.cores}"), "2");

    // The API directly, with kubectl: 201 and the VM.
    let body = root.path().join("createvm.json");
    std::fs::write(&body, r#"{"name": "raw-api"}"#).expect("body");
    let path = "/apis/harvesterhci.io/v1beta1/namespaces/default/virtualmachinetemplateversions/tiny-disks/createvm";
    let out = s.kubectl_ok(&["create", "--raw", path, "-f", &body.display().to_string()]);
    assert!(out.contains(r#""kind":"VirtualMachine""#) && out.contains("raw-api"), "{out}");

    // Bad input, refused with what to do.
    sheaf_err(&s, &["vm", "create", "disk-a", "--template", "tiny"], &["AlreadyExists", "disk-a"]);
    sheaf_err(
        &s,
        &["vm", "create", "x", "--template", "default/nosuch"],
        &["default/nosuch", "not found", "sheaf template list"],
    );
    sheaf_err(&s, &["vm", "create", "x", "--template", "tiny:9"], &["no version 9", "it has 1, 2"]);
    sheaf_err(&s, &["vm", "create", "x", "--template", "tiny", "--cpu", "0"], &["cpu", "must be 1 to"]);
    sheaf_err(&s, &["vm", "create", "x", "--template", "tiny", "--memory", "lots"], &["memory", "for example 2Gi"]);
    sheaf_err(
        &s,
        &["vm", "create", "x", "--template", "tiny", "--ssh-key", "missing"],
        &["KeyPair default/missing", "not found"],
    );
    sheaf_err(
        &s,
        &["vm", "create", "x", "--template", "tiny:2", "--image", "default/nosuch"],
        &["VirtualMachineImage default/nosuch", "not found"],
    );
    sheaf_err(&s, &["vm", "create", "Bad_Name", "--template", "tiny"], &["name", "RFC 1123"]);
    let err = s.kubectl_err(
        &["create", "--raw", &path.replace("tiny-disks", "nosuch"), "-f", &body.display().to_string()],
        None,
    );
    assert!(err.contains("NotFound") || err.contains("not found"), "{err}");
    std::fs::write(&body, r#"{"name": "y", "cpus": 2}"#).expect("body");
    let err = s.kubectl_err(&["create", "--raw", path, "-f", &body.display().to_string()], None);
    assert!(err.contains("cpus"), "unknown field named: {err}");
    for vm in ["x", "y", "Bad_Name"] {
        let out = s.kubectl(&["get", "vm", vm]);
        assert!(!out.status.success(), "nothing left behind: {vm} exists");
    }

    // Versions: immutable, in their template's namespace, with a VM spec checked as a VM's.
    let changed = VERSION_1.replace("two disks of its own", "changed");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&changed));
    assert!(err.contains("create a new version"), "{err}");
    let elsewhere =
        VERSION_2.replace("name: tiny-boot", "name: other").replace("default/tiny", "harvester-public/tiny");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&elsewhere));
    assert!(err.contains("spec.templateId") && err.contains("in its template's namespace"), "{err}");
    let bad_vm = VERSION_2.replace("name: tiny-boot", "name: bad").replace("guest: 128Mi", "guest: 12 apples");
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&bad_vm));
    assert!(err.contains("spec.vm.spec.template.spec.domain.memory.guest"), "{err}");
    let shared = VERSION_1
        .replace("name: tiny-disks", "name: shared")
        .replace(r#"{"metadata":{"name":"pvc-data"},"#, r#"{"metadata":{"name":"pvc-other"},"#);
    let err = s.kubectl_err(&["apply", "-f", "-"], Some(&shared));
    assert!(err.contains("would share it"), "{err}");

    // The default version stays while its template does.
    let err = s.kubectl_err(&["delete", "vmtemplateversion", "tiny-disks"], None);
    assert!(
        err.contains("is the default version of template default/tiny") && err.contains("defaultVersionId"),
        "{err}"
    );

    // Deleting the template deletes its versions; its VMs stay.
    s.kubectl_ok(&["delete", "vmtemplate", "tiny"]);
    assert!(
        eventually(Duration::from_secs(20), || s
            .kubectl_ok(&["get", "vmtemplateversions", "-o", "name"])
            .trim()
            .is_empty()),
        "versions left: {}",
        s.kubectl_ok(&["get", "vmtemplateversions"])
    );
    assert_eq!(jsonpath(&s, "vm", "disk-a", "{.metadata.name}"), "disk-a");
    s.kubectl_ok(&["delete", "vm", "booted"]);
}
