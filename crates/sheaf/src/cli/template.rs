//! `sheaf template list|show` and `sheaf vm create --template`: VM
//! templates (`harvesterhci.io/v1beta1` VirtualMachineTemplate and
//! VirtualMachineTemplateVersion) and VMs made from them through the
//! version's `createvm` subresource.
//!
//! A template is named `NAMESPACE/NAME`, or `NAME` (looked for in the
//! namespace given, then in `harvester-public`), optionally followed by
//! `:VERSION`: a version number or a version's name; without it, the
//! template's default version.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{json, Value};
use sheaf_types::template::{
    claim_templates, CreateVmRequest, VirtualMachineTemplateVersion, IMAGE_ID_ANNOTATION, PUBLIC_NAMESPACE,
};

use super::client::{encode, is_not_found, query, Client, ConnArgs};
use super::printer;

const GV: &str = "/apis/harvesterhci.io/v1beta1";

const TEMPLATE_HELP: &str = "\
Examples:
  sheaf template list                                  # templates of every namespace
  sheaf template list -n default                       # ... of one namespace
  sheaf template show harvester-public/linux-cloud-init-template
  sheaf template show web:2                            # version 2 of template web
  sheaf template show web -o yaml                      # the default version as YAML

Make a VM from one: sheaf vm create NAME --template NS/TEMPLATE[:VERSION]";

#[derive(Args, Debug)]
#[command(after_help = TEMPLATE_HELP)]
pub struct TemplateArgs {
    #[command(subcommand)]
    pub action: TemplateAction,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Subcommand, Debug)]
pub enum TemplateAction {
    /// List templates with their default and latest versions.
    List {
        /// Only this namespace (default: every namespace).
        #[arg(short, long, value_name = "NS")]
        namespace: Option<String>,
    },
    /// Show a template, its versions, and what a VM made from one gets.
    Show {
        /// NS/NAME[:VERSION] or NAME[:VERSION]; VERSION is a number or a
        /// version's name (default: the template's default version).
        #[arg(value_name = "TEMPLATE[:VERSION]")]
        template: String,
        /// Namespace of a template given without one (then harvester-public).
        #[arg(short, long, value_name = "NS")]
        namespace: Option<String>,
        /// `yaml` or `json`: print the version object instead.
        #[arg(short, long, value_name = "FORMAT")]
        output: Option<String>,
    },
}

pub const VM_CREATE_HELP: &str = "\
Makes a VirtualMachine from a VM template version (POST
.../virtualmachinetemplateversions/NAME/createvm): the version's labels,
annotations and spec, with the overrides given. Each disk the template
creates (harvesterhci.io/volumeClaimTemplates) gets a name of its own,
VM-VOLUME-XXXXX, so VMs made from one template never share a disk.

Examples:
  sheaf vm create web1 --template harvester-public/linux-cloud-init-template --image default/ubuntu-24.04
  sheaf vm create web2 --template web:2 --cpu 4 --memory 8Gi   # version 2 of template web
  sheaf vm create dev --template web --ssh-key mykey --ssh-key ops/admin --user-data cloud-init.yaml
  sheaf vm create big -n prod --template harvester-public/raw-image-base-template --image default/debian

--template NAME looks in the VM's namespace, then in harvester-public.
`sheaf template list` lists the templates, `sheaf template show T` their versions.";

#[derive(Args, Debug)]
#[command(after_help = VM_CREATE_HELP)]
pub struct VmCreateArgs {
    /// Name of the new VirtualMachine.
    pub name: String,
    /// The template: NS/NAME or NAME, and :VERSION (a number or a version's
    /// name) for another than the default version.
    #[arg(long, value_name = "NS/NAME[:VERSION]")]
    pub template: String,
    /// Namespace of the VM (default: the kubeconfig context's).
    #[arg(short, long, value_name = "NS")]
    pub namespace: Option<String>,
    /// vCPU cores, instead of the template's.
    #[arg(long, value_name = "N")]
    pub cpu: Option<u32>,
    /// Memory, instead of the template's (for example 4Gi).
    #[arg(long, value_name = "QUANTITY")]
    pub memory: Option<String>,
    /// The VirtualMachineImage of the root disk (NS/NAME), instead of the
    /// version's.
    #[arg(long, value_name = "NS/NAME")]
    pub image: Option<String>,
    /// A KeyPair whose key the guest gets (NAME or NS/NAME); repeatable.
    /// Replaces the version's key pairs.
    #[arg(long = "ssh-key", value_name = "KEYPAIR")]
    pub ssh_keys: Vec<String>,
    /// cloud-init user data from this file (`-`: standard input), instead of
    /// the template's.
    #[arg(long, value_name = "FILE")]
    pub user_data: Option<PathBuf>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// A template and the version asked for.
struct Resolved {
    template: Value,
    version: Value,
    versions: Vec<Value>,
}

fn str_at<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn number(v: &Value) -> u64 {
    v.pointer("/status/version").and_then(Value::as_u64).unwrap_or(0)
}

/// Finds `NS/NAME[:VERSION]` or `NAME[:VERSION]` (in `ns`, then
/// harvester-public).
async fn resolve(client: &Client, spec: &str, ns: &str) -> anyhow::Result<Resolved> {
    let (tref, wanted) = match spec.rsplit_once(':') {
        Some((t, v)) if !v.is_empty() => (t, Some(v)),
        Some((t, _)) => (t, None),
        None => (spec, None),
    };
    let candidates: Vec<(String, String)> = match tref.split_once('/') {
        Some((tns, name)) => vec![(tns.to_string(), name.to_string())],
        None if ns == PUBLIC_NAMESPACE => vec![(ns.to_string(), tref.to_string())],
        None => vec![(ns.to_string(), tref.to_string()), (PUBLIC_NAMESPACE.to_string(), tref.to_string())],
    };
    if tref.is_empty() || candidates.iter().any(|(n, t)| n.is_empty() || t.is_empty() || t.contains('/')) {
        bail!("{spec:?} is not a template: give NAMESPACE/NAME[:VERSION] or NAME[:VERSION]");
    }
    let mut found = None;
    for (tns, name) in &candidates {
        let path = format!("{GV}/namespaces/{}/virtualmachinetemplates/{}", encode(tns), encode(name));
        match client.get_json(&path).await {
            Ok(t) => {
                found = Some((tns.clone(), t));
                break;
            }
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(e),
        }
    }
    let Some((tns, template)) = found else {
        let looked: Vec<String> = candidates.iter().map(|(n, t)| format!("{n}/{t}")).collect();
        bail!("VM template {} not found; `sheaf template list` lists the templates", looked.join(" or "));
    };
    let id = format!("{tns}/{}", str_at(&template, "/metadata/name"));
    let path = format!(
        "{GV}/namespaces/{}/virtualmachinetemplateversions{}",
        encode(&tns),
        query(&[("fieldSelector", &format!("spec.templateId={id}"))])
    );
    let mut versions =
        client.get_json(&path).await?.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
    versions.sort_by_key(number);
    let numbers = || {
        let n: Vec<String> = versions.iter().filter(|v| number(v) > 0).map(|v| number(v).to_string()).collect();
        if n.is_empty() {
            "it has none yet".to_string()
        } else {
            format!("it has {}", n.join(", "))
        }
    };
    let version = match wanted {
        Some(w) => match w.parse::<u64>() {
            Ok(n) => versions.iter().find(|v| number(v) == n).cloned().ok_or_else(|| {
                anyhow!("template {id} has no version {n} ({}); `sheaf template show {id}` lists them", numbers())
            })?,
            Err(_) => versions.iter().find(|v| str_at(v, "/metadata/name") == w).cloned().ok_or_else(|| {
                anyhow!("template {id} has no version named {w:?}; `sheaf template show {id}` lists them")
            })?,
        },
        None => {
            let default = str_at(&template, "/spec/defaultVersionId");
            if default.is_empty() {
                bail!("template {id} has no default version yet ({}); create a version of it first", numbers());
            }
            versions
                .iter()
                .find(|v| format!("{}/{}", str_at(v, "/metadata/namespace"), str_at(v, "/metadata/name")) == default)
                .cloned()
                .ok_or_else(|| {
                    anyhow!(
                        "the default version {default} of template {id} does not exist; name a version \
                         ({id}:NUMBER) or set the template's spec.defaultVersionId"
                    )
                })?
        }
    };
    Ok(Resolved { template, version, versions })
}

pub async fn run(a: TemplateArgs) -> anyhow::Result<()> {
    let client = Client::connect(&a.conn)?;
    match a.action {
        TemplateAction::List { namespace } => list(&client, namespace.as_deref()).await,
        TemplateAction::Show { template, namespace, output } => {
            let ns = namespace.filter(|n| !n.is_empty()).unwrap_or_else(|| client.namespace.clone());
            let r = resolve(&client, &template, &ns).await?;
            match output.as_deref() {
                None => {
                    print!("{}", describe(&r));
                    Ok(())
                }
                Some("yaml") => {
                    print!("{}", printer::to_yaml(&r.version)?);
                    Ok(())
                }
                Some("json") => {
                    print!("{}", printer::to_json(&r.version)?);
                    Ok(())
                }
                Some(other) => bail!("-o {other:?}: use yaml or json"),
            }
        }
    }
}

async fn list(client: &Client, ns: Option<&str>) -> anyhow::Result<()> {
    let scope = match ns {
        Some(n) if !n.is_empty() => format!("/namespaces/{}", encode(n)),
        _ => String::new(),
    };
    let items = |v: Value| v.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
    let templates = items(client.get_json(&format!("{GV}{scope}/virtualmachinetemplates")).await?);
    let versions = items(client.get_json(&format!("{GV}{scope}/virtualmachinetemplateversions")).await?);
    if templates.is_empty() {
        eprintln!("No VM templates found");
        return Ok(());
    }
    let mut rows =
        vec![["NAMESPACE", "NAME", "DEFAULT", "LATEST", "VERSIONS", "DESCRIPTION"].map(String::from).to_vec()];
    for t in &templates {
        let (tns, name) = (str_at(t, "/metadata/namespace"), str_at(t, "/metadata/name"));
        let id = format!("{tns}/{name}");
        let count = versions.iter().filter(|v| str_at(v, "/spec/templateId") == id).count();
        let n = |p: &str| t.pointer(p).and_then(Value::as_u64).map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        rows.push(vec![
            tns.to_string(),
            name.to_string(),
            n("/status/defaultVersion"),
            n("/status/latestVersion"),
            count.to_string(),
            str_at(t, "/spec/description").to_string(),
        ]);
    }
    print!("{}", printer::align(&rows));
    Ok(())
}

/// The summary `sheaf template show` prints.
fn describe(r: &Resolved) -> String {
    let t = &r.template;
    let id = format!("{}/{}", str_at(t, "/metadata/namespace"), str_at(t, "/metadata/name"));
    let default = str_at(t, "/spec/defaultVersionId");
    let mut out = format!("Template:     {id}\n");
    if let Some(d) = t.pointer("/spec/description").and_then(Value::as_str) {
        out.push_str(&format!("Description:  {d}\n"));
    }
    out.push_str(&format!("Default:      {}\n", if default.is_empty() { "-" } else { default }));
    out.push_str("Versions:\n");
    let mut rows = vec![vec!["  VERSION".to_string(), "NAME".into(), "DESCRIPTION".into()]];
    for v in &r.versions {
        let vid = format!("{}/{}", str_at(v, "/metadata/namespace"), str_at(v, "/metadata/name"));
        let mark = if vid == default { " (default)" } else { "" };
        let n = match number(v) {
            0 => "-".to_string(),
            n => n.to_string(),
        };
        rows.push(vec![
            format!("  {n}{mark}"),
            str_at(v, "/metadata/name").into(),
            str_at(v, "/spec/description").into(),
        ]);
    }
    out.push_str(&printer::align(&rows));

    let v = &r.version;
    let n = number(v);
    out.push_str(&format!("\nVersion {n} ({}):\n", str_at(v, "/metadata/name")));
    let typed: Option<VirtualMachineTemplateVersion> = serde_json::from_value(v.clone()).ok();
    let Some(typed) = typed else { return out };
    let vm = &typed.spec.vm;
    let d = &vm.spec.template.spec.domain;
    let cores = d.cpu.as_ref().and_then(|c| c.cores).map(|c| c.to_string());
    let cpu = cores.or_else(|| d.resources.limits.get("cpu").map(|q| q.to_string())).unwrap_or_else(|| "-".into());
    let memory = d
        .memory
        .as_ref()
        .and_then(|m| m.guest.as_ref())
        .or(d.resources.requests.get("memory"))
        .or(d.resources.limits.get("memory"))
        .map(|q| q.to_string())
        .unwrap_or_else(|| "-".into());
    out.push_str(&format!("  CPU:        {cpu}\n  Memory:     {memory}\n"));
    out.push_str(&format!("  Run:        {}\n", vm.spec.effective_run_strategy().as_str()));
    let claims = claim_templates(&vm.metadata.annotations).unwrap_or_default();
    let mut needs_image = false;
    let mut first = true;
    for vol in &vm.spec.template.spec.volumes {
        let what = if let Some(c) = vol.claim_name() {
            match claims.iter().find(|x| x.pointer("/metadata/name").and_then(Value::as_str) == Some(c)) {
                Some(x) => {
                    let size = x.pointer("/spec/resources/requests/storage").and_then(Value::as_str).unwrap_or("?");
                    let image = x.pointer("/metadata/annotations").and_then(|a| a.get(IMAGE_ID_ANNOTATION));
                    match image.and_then(Value::as_str) {
                        Some("") => {
                            needs_image = true;
                            format!("new disk, {size}, from an image (give --image)")
                        }
                        Some(img) => format!("new disk, {size}, from image {img}"),
                        None => format!("new empty disk, {size}"),
                    }
                }
                None => format!("claim {c}"),
            }
        } else if let Some(cd) = &vol.container_disk {
            format!("container disk {}", cd.image)
        } else if vol.cloud_init_no_cloud.is_some() || vol.cloud_init_config_drive.is_some() {
            "cloud-init".to_string()
        } else {
            vol.sources().join(", ")
        };
        let label = if first { "  Disks:      " } else { "              " };
        first = false;
        out.push_str(&format!("{label}{}: {what}\n", vol.name));
    }
    if let Some(img) = typed.spec.image_id.as_deref().filter(|i| !i.is_empty()) {
        out.push_str(&format!("  Image:      {img}\n"));
    }
    if !typed.spec.key_pair_ids.is_empty() {
        out.push_str(&format!("  Key pairs:  {}\n", typed.spec.key_pair_ids.join(", ")));
    }
    let image_flag = if needs_image && typed.spec.image_id.is_none() { " --image NS/IMAGE" } else { "" };
    out.push_str(&format!("\nCreate a VM:  sheaf vm create NAME --template {id}:{n}{image_flag}\n"));
    out
}

/// `sheaf vm create NAME --template ...`.
pub async fn create_vm(a: &VmCreateArgs) -> anyhow::Result<()> {
    let client = Client::connect(&a.conn)?;
    let ns = a.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| client.namespace.clone());
    let r = resolve(&client, &a.template, &ns).await?;
    let user_data = match &a.user_data {
        None => None,
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("cannot read user data from stdin")?;
            Some(s)
        }
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("cannot read --user-data {}", p.display()))?)
        }
    };
    let req = CreateVmRequest {
        name: a.name.clone(),
        namespace: Some(ns.clone()),
        cpu: a.cpu,
        memory: a.memory.clone(),
        image: a.image.clone(),
        key_pairs: (!a.ssh_keys.is_empty()).then(|| a.ssh_keys.clone()),
        user_data,
    };
    let (vns, vname) = (str_at(&r.version, "/metadata/namespace"), str_at(&r.version, "/metadata/name"));
    let path = format!(
        "{GV}/namespaces/{}/virtualmachinetemplateversions/{}/{}",
        encode(vns),
        encode(vname),
        sheaf_types::template::CREATE_VM_SUBRESOURCE
    );
    let body = serde_json::to_vec(&json!(req))?;
    let vm = client.request(Method::POST, &path, "application/json", Some(("application/json", body))).await?.body;
    let disks: Vec<String> = claim_templates(
        &serde_json::from_value(vm.pointer("/metadata/annotations").cloned().unwrap_or_default()).unwrap_or_default(),
    )
    .unwrap_or_default()
    .iter()
    .filter_map(|c| c.pointer("/metadata/name").and_then(Value::as_str).map(str::to_string))
    .collect();
    println!(
        "VM {ns}/{} created from template {}/{} version {} ({vname})",
        a.name,
        str_at(&r.template, "/metadata/namespace"),
        str_at(&r.template, "/metadata/name"),
        number(&r.version)
    );
    if !disks.is_empty() {
        println!("disks (claims): {}", disks.join(", "));
    }
    Ok(())
}
