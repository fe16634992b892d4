//! The kubectl-like client subcommands: `sheaf get`, `sheaf apply`,
//! `sheaf delete`. They speak the Kubernetes API over HTTPS with the
//! credentials of a kubeconfig, so they work against any Sheaf server (and
//! mostly against Kubernetes too).

pub mod backup;
mod client;
mod hotplug;
pub mod image;
mod manifest;
pub mod node;
mod printer;
pub mod status;
pub mod template;
pub mod user;
pub mod vm;
pub mod volume;

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use clap::{ArgAction, Args, ValueEnum};
use reqwest::Method;
use serde_json::{json, Map, Value};

use client::{is_not_found, query, ApiResource, Client, ConnArgs, Discovery, ServerError, TABLE_ACCEPT};
use manifest::Doc;
use printer::TableOptions;

// ---------------------------------------------------------------------------
// Arguments

/// Output formats of `sheaf get`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The table, with extra columns.
    Wide,
    /// The objects as YAML.
    Yaml,
    /// The objects as JSON.
    Json,
    /// KIND.GROUP/NAME of each object.
    Name,
}

const GET_HELP: &str = "\
Examples:
  sheaf get vm                          # virtual machines in the current namespace
  sheaf get vms -A                      # ... in all namespaces
  sheaf get vm my-vm -o yaml            # one object as YAML
  sheaf get virtualmachines.kubevirt.io -o wide
  sheaf get cm -l app=web               # config maps labelled app=web
  sheaf get ns                          # namespaces
  sheaf get vm,vmi -n prod              # several kinds at once
  sheaf get vm/my-vm cm/settings        # KIND/NAME pairs

A kind may be given by its plural, singular or short name or its Kind, in any
case, optionally followed by its group (vm, vms, virtualmachine, VirtualMachine,
virtualmachines.kubevirt.io). `sheaf get no-such-kind` lists the served kinds.";

#[derive(Args, Debug)]
#[command(after_help = GET_HELP)]
pub struct GetArgs {
    /// What to show: a kind (`vm`, `cm`, `virtualmachines.kubevirt.io`), several
    /// separated by commas, or KIND/NAME.
    #[arg(value_name = "KIND[/NAME]")]
    pub kind: String,
    /// Names of the objects to show (all when omitted).
    #[arg(value_name = "NAME")]
    pub names: Vec<String>,
    /// Namespace to look in (default: the kubeconfig context's, else "default").
    #[arg(short, long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Show objects of every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Output format (default: a table).
    #[arg(short, long, value_enum, value_name = "FORMAT")]
    pub output: Option<OutputFormat>,
    /// Only objects whose labels match, e.g. `app=web,tier!=db`, `env in (a,b)`.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Only objects whose fields match, e.g. `metadata.name=x`.
    #[arg(long, value_name = "SELECTOR")]
    pub field_selector: Option<String>,
    /// Add a LABELS column to the table.
    #[arg(long)]
    pub show_labels: bool,
    /// Print the table without its header line.
    #[arg(long)]
    pub no_headers: bool,
    /// Keep metadata.managedFields in YAML and JSON output.
    #[arg(long)]
    pub show_managed_fields: bool,
    /// Print nothing, and succeed, for names that do not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// `--dry-run` values.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum DryRun {
    /// Really change objects.
    None,
    /// Let the server check and compute the change without saving it.
    Server,
}

const APPLY_HELP: &str = "\
Each object is sent with server-side apply (field manager \"sheaf\"): fields in
the file are set, fields you applied before but removed from the file are
removed, and fields set by others are kept. Unknown fields are rejected.

Examples:
  sheaf apply -f vm.yaml                # one file, any number of --- documents
  sheaf apply -f manifests/             # every .yaml, .yml and .json file in a directory
  cat vm.yaml | sheaf apply -f -        # standard input
  sheaf apply -f vm.yaml -n prod        # into namespace prod (unless the file names one)
  sheaf apply -f vm.yaml --force-conflicts   # take over fields another manager owns
  sheaf apply -f vm.yaml --dry-run=server    # validate without changing anything

Prints one line per object: `virtualmachine.kubevirt.io/NAME created`,
`configured` or `unchanged`.";

#[derive(Args, Debug)]
#[command(after_help = APPLY_HELP)]
pub struct ApplyArgs {
    /// File, directory or `-` (stdin) with YAML or JSON objects; repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-", required = true)]
    pub filenames: Vec<String>,
    /// Also read the subdirectories of directories given with -f.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Namespace for objects that do not name one (default: the kubeconfig context's).
    #[arg(short, long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Take ownership of fields that another field manager set.
    #[arg(long)]
    pub force_conflicts: bool,
    /// Field manager name recorded in managedFields.
    #[arg(long, value_name = "NAME", default_value = "sheaf")]
    pub field_manager: String,
    /// `server`: check the objects on the server without saving them.
    #[arg(long, value_enum, value_name = "MODE", default_value = "none", default_missing_value = "server", num_args = 0..=1, require_equals = true)]
    pub dry_run: DryRun,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// What happens to objects owned by a deleted one.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Cascade {
    Background,
    Foreground,
    Orphan,
}

impl Cascade {
    fn policy(self) -> &'static str {
        match self {
            Cascade::Background => "Background",
            Cascade::Foreground => "Foreground",
            Cascade::Orphan => "Orphan",
        }
    }
}

fn parse_cascade(s: &str) -> Result<Cascade, String> {
    match s.to_ascii_lowercase().as_str() {
        "background" | "true" => Ok(Cascade::Background),
        "foreground" => Ok(Cascade::Foreground),
        "orphan" | "false" => Ok(Cascade::Orphan),
        _ => Err(format!("{s:?} is not one of background, foreground, orphan")),
    }
}

const DELETE_HELP: &str = "\
Examples:
  sheaf delete vm my-vm                 # one virtual machine
  sheaf delete vm a b c -n prod         # several, in namespace prod
  sheaf delete vm/a cm/settings         # KIND/NAME pairs
  sheaf delete -f vm.yaml               # the objects a file describes
  sheaf delete cm -l app=web            # every config map labelled app=web
  sheaf delete vm --all                 # every virtual machine in the namespace
  sheaf delete vm my-vm --cascade=orphan      # keep the objects it owns
  sheaf delete vm my-vm --ignore-not-found    # succeed if it is already gone

--cascade: background (default) deletes the object now and its dependents
afterwards; foreground deletes the dependents first; orphan leaves them.";

#[derive(Args, Debug)]
#[command(after_help = DELETE_HELP)]
pub struct DeleteArgs {
    /// KIND followed by NAMEs, or KIND/NAME pairs.
    #[arg(value_name = "KIND [NAME]...")]
    pub args: Vec<String>,
    /// Delete the objects described in this file, directory or `-` (stdin); repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE|DIR|-")]
    pub filenames: Vec<String>,
    /// Also read the subdirectories of directories given with -f.
    #[arg(short = 'R', long)]
    pub recursive: bool,
    /// Namespace of the objects (default: the kubeconfig context's).
    #[arg(short, long, value_name = "NS")]
    pub namespace: Option<String>,
    /// With -l or --all: in every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    /// Delete the objects whose labels match, e.g. `app=web`.
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Delete every object of the kind in the namespace.
    #[arg(long)]
    pub all: bool,
    /// background, foreground or orphan: what happens to dependents.
    #[arg(long, value_name = "POLICY", default_value = "background", value_parser = parse_cascade)]
    pub cascade: Cascade,
    /// Succeed quietly for objects that do not exist.
    #[arg(long)]
    pub ignore_not_found: bool,
    /// Wait until the objects are gone (`--wait=false` to return at once).
    #[arg(long, value_name = "BOOL", default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub wait: bool,
    /// Give up waiting after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
    /// `server`: check the deletion on the server without doing it.
    #[arg(long, value_enum, value_name = "MODE", default_value = "none", default_missing_value = "server", num_args = 0..=1, require_equals = true)]
    pub dry_run: DryRun,
    #[command(flatten)]
    pub conn: ConnArgs,
}

// ---------------------------------------------------------------------------
// Errors and output

/// The failures were already printed; only the exit code remains.
#[derive(Debug)]
struct Reported;

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("one or more operations failed")
    }
}

impl std::error::Error for Reported {}

/// How an error is shown: `Error from server (Reason): …` for the server's
/// answers, `error: …` for everything else.
fn describe(e: &anyhow::Error) -> String {
    match e.downcast_ref::<ServerError>() {
        Some(se) if e.chain().count() == 1 => se.to_string(),
        _ => format!("error: {e:#}"),
    }
}

/// Prints the error of a command and exits non-zero; kubectl's format, no
/// backtrace.
/// `sheaf vm ...`.
pub async fn vm(a: vm::VmArgs) -> anyhow::Result<()> {
    finish(vm::run(a).await)
}

pub async fn image(a: image::ImageArgs) -> anyhow::Result<()> {
    finish(image::run(a).await)
}

pub async fn template(a: template::TemplateArgs) -> anyhow::Result<()> {
    finish(template::run(a).await)
}

pub async fn volume(a: volume::VolumeArgs) -> anyhow::Result<()> {
    finish(volume::run(a).await)
}

/// `sheaf backup ...`.
pub async fn backup(a: backup::BackupArgs) -> anyhow::Result<()> {
    finish(backup::run(a).await)
}

/// `sheaf node ...`.
pub async fn node(a: node::NodeArgs) -> anyhow::Result<()> {
    finish(node::run(a).await)
}

fn finish(r: anyhow::Result<()>) -> anyhow::Result<()> {
    if let Err(e) = r {
        let _ = std::io::stdout().flush();
        if e.downcast_ref::<Reported>().is_none() {
            eprintln!("{}", describe(&e));
        }
        std::process::exit(1);
    }
    Ok(())
}

/// Writes to stdout; a closed pipe (`| head`) is not an error.
fn emit(s: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(anyhow!("cannot write the output: {e}")),
        _ => Ok(()),
    }
}

fn same_resource(a: &ApiResource, b: &ApiResource) -> bool {
    a.group == b.group && a.plural == b.plural
}

/// Puts `apiVersion` and `kind` first in an object (list items often lack them).
fn with_type(obj: Value, r: &ApiResource) -> Value {
    match obj {
        Value::Object(m) => {
            let mut out = Map::new();
            out.insert("apiVersion".into(), m.get("apiVersion").cloned().unwrap_or_else(|| json!(r.api_version())));
            out.insert("kind".into(), m.get("kind").cloned().unwrap_or_else(|| json!(r.kind)));
            for (k, v) in m {
                if k != "apiVersion" && k != "kind" {
                    out.insert(k, v);
                }
            }
            Value::Object(out)
        }
        other => other,
    }
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

fn no_resources(ns: Option<&str>, namespaced: bool) -> String {
    match ns {
        Some(ns) if namespaced => format!("No resources found in {ns} namespace."),
        _ => "No resources found".to_string(),
    }
}

/// Lists (following `continue` tokens) a resource: Table rows when `table`,
/// else the objects. Returns (column definitions, rows or objects).
async fn list_all(
    client: &Client,
    r: &ApiResource,
    ns: Option<&str>,
    label_selector: Option<&str>,
    field_selector: Option<&str>,
    table: bool,
) -> anyhow::Result<(Vec<Value>, Vec<Value>)> {
    let mut columns = Vec::new();
    let mut out = Vec::new();
    let mut cont: Option<String> = None;
    loop {
        let mut q: Vec<(&str, &str)> = vec![("limit", "500")];
        if let Some(s) = label_selector {
            q.push(("labelSelector", s));
        }
        if let Some(s) = field_selector {
            q.push(("fieldSelector", s));
        }
        if let Some(c) = &cont {
            q.push(("continue", c));
        }
        let path = format!("{}{}", r.path(ns, None), query(&q));
        let accept = if table { TABLE_ACCEPT } else { "application/json" };
        let body = client.request(Method::GET, &path, accept, None).await?.body;
        if table && body.get("kind").and_then(Value::as_str) == Some("Table") {
            if columns.is_empty() {
                columns = body.get("columnDefinitions").and_then(Value::as_array).cloned().unwrap_or_default();
            }
            out.extend(body.get("rows").and_then(Value::as_array).cloned().unwrap_or_default());
        } else {
            let items = body.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            if table {
                let (c, rows) = printer::fallback_table(&items);
                columns = c;
                out.extend(rows);
            } else {
                out.extend(items.into_iter().map(|i| with_type(i, r)));
            }
        }
        cont = body.pointer("/metadata/continue").and_then(Value::as_str).filter(|c| !c.is_empty()).map(str::to_string);
        if cont.is_none() {
            return Ok((columns, out));
        }
    }
}

// ---------------------------------------------------------------------------
// get

/// Resolves `KIND[,KIND…] [NAME…]` or `KIND/NAME…` into resources and names.
fn targets(disc: &Discovery, first: &str, rest: &[String]) -> anyhow::Result<Vec<(ApiResource, Vec<String>)>> {
    let mut out: Vec<(ApiResource, Vec<String>)> = Vec::new();
    if first.contains('/') {
        for arg in std::iter::once(first).chain(rest.iter().map(String::as_str)) {
            let Some((kind, name)) = arg.split_once('/') else {
                bail!("{arg:?}: when one argument is KIND/NAME, all must be (there is no need to give the kind separately)");
            };
            if name.is_empty() || name.contains('/') {
                bail!("{arg:?} is not KIND/NAME");
            }
            let r = disc.resolve(kind)?;
            match out.iter_mut().find(|(x, _)| same_resource(x, r)) {
                Some((_, names)) => names.push(name.to_string()),
                None => out.push((r.clone(), vec![name.to_string()])),
            }
        }
    } else {
        if rest.iter().any(|n| n.trim().is_empty()) {
            bail!("object names cannot be empty");
        }
        if let Some(bad) = rest.iter().find(|n| n.contains('/')) {
            bail!("{bad:?}: names cannot contain '/'; give either KIND NAME... or KIND/NAME...");
        }
        for kind in first.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            let r = disc.resolve(kind)?;
            if !out.iter().any(|(x, _)| same_resource(x, r)) {
                out.push((r.clone(), rest.to_vec()));
            }
        }
    }
    if out.is_empty() {
        bail!("a kind is required, e.g. `vm`; see --help");
    }
    Ok(out)
}

pub async fn get(a: GetArgs) -> anyhow::Result<()> {
    finish(run_get(a).await)
}

async fn run_get(a: GetArgs) -> anyhow::Result<()> {
    let client = Client::connect(&a.conn)?;
    let disc = client.discover().await?;
    let targets = targets(&disc, &a.kind, &a.names)?;
    let by_name = targets.iter().any(|(_, n)| !n.is_empty());
    if by_name && (a.selector.is_some() || a.field_selector.is_some()) {
        bail!("selectors (-l, --field-selector) cannot be combined with names");
    }
    if by_name && a.all_namespaces {
        bail!("a resource cannot be retrieved by name across all namespaces; pass -n NAMESPACE instead of -A");
    }
    let ns: Option<String> = if a.all_namespaces {
        None
    } else {
        Some(a.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| client.namespace.clone()))
    };
    let ns = ns.as_deref();
    let table = matches!(a.output, None | Some(OutputFormat::Wide));
    let multi = targets.len() > 1;
    let mut errors: Vec<anyhow::Error> = Vec::new();
    let mut text = String::new();
    let mut objects: Vec<Value> = Vec::new();
    let mut total = 0usize;
    for (r, names) in &targets {
        let (columns, items) = if names.is_empty() {
            list_all(&client, r, ns, a.selector.as_deref(), a.field_selector.as_deref(), table).await?
        } else {
            let mut columns = Vec::new();
            let mut items = Vec::new();
            for name in names {
                let accept = if table { TABLE_ACCEPT } else { "application/json" };
                match client.request(Method::GET, &r.path(ns, Some(name)), accept, None).await {
                    Ok(reply) => {
                        let body = reply.body;
                        if table && body.get("kind").and_then(Value::as_str) == Some("Table") {
                            if columns.is_empty() {
                                columns = body
                                    .get("columnDefinitions")
                                    .and_then(Value::as_array)
                                    .cloned()
                                    .unwrap_or_default();
                            }
                            items.extend(body.get("rows").and_then(Value::as_array).cloned().unwrap_or_default());
                        } else if table {
                            let (c, rows) = printer::fallback_table(std::slice::from_ref(&body));
                            columns = c;
                            items.extend(rows);
                        } else {
                            items.push(with_type(body, r));
                        }
                    }
                    Err(e) if a.ignore_not_found && is_not_found(&e) => {}
                    Err(e) => errors.push(e),
                }
            }
            (columns, items)
        };
        total += items.len();
        if items.is_empty() {
            continue;
        }
        match a.output {
            None | Some(OutputFormat::Wide) => {
                let opts = TableOptions {
                    wide: a.output == Some(OutputFormat::Wide),
                    namespace_column: a.all_namespaces && r.namespaced,
                    show_labels: a.show_labels,
                    no_headers: a.no_headers,
                    name_prefix: multi.then(|| r.kind_ref()),
                };
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&printer::render_table(&columns, &items, &opts));
            }
            Some(OutputFormat::Name) => {
                for o in &items {
                    text.push_str(&format!("{}/{}\n", r.kind_ref(), name_of(o)));
                }
            }
            Some(OutputFormat::Yaml | OutputFormat::Json) => {
                for mut o in items {
                    if !a.show_managed_fields {
                        printer::strip_managed_fields(&mut o);
                    }
                    objects.push(o);
                }
            }
        }
    }
    if matches!(a.output, Some(OutputFormat::Yaml | OutputFormat::Json)) {
        let single = targets.len() == 1 && targets[0].1.len() == 1 && objects.len() == 1;
        let doc = if single {
            objects.pop()
        } else if objects.is_empty() && by_name {
            None
        } else {
            Some(printer::list_of(objects))
        };
        if let Some(doc) = doc {
            text = if a.output == Some(OutputFormat::Json) { printer::to_json(&doc)? } else { printer::to_yaml(&doc)? };
        }
    }
    emit(&text)?;
    if total == 0 && errors.is_empty() && !by_name && table {
        let namespaced = targets.iter().any(|(r, _)| r.namespaced);
        eprintln!("{}", no_resources(ns, namespaced));
    }
    if errors.is_empty() {
        return Ok(());
    }
    for e in &errors {
        eprintln!("{}", describe(e));
    }
    Err(Reported.into())
}

// ---------------------------------------------------------------------------
// apply and delete -f: objects from files

/// A document with the resource it is and the namespace it goes to.
struct Planned<'a> {
    doc: &'a Doc,
    res: ApiResource,
    ns: Option<String>,
}

/// Resolves every document's apiVersion and kind through discovery and
/// picks its namespace. Fails, naming each bad document, before anything
/// is changed.
async fn plan<'a>(client: &Client, docs: &'a [Doc], ns_flag: Option<&str>) -> anyhow::Result<Vec<Planned<'a>>> {
    let mut cache: HashMap<String, Option<Vec<ApiResource>>> = HashMap::new();
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for doc in docs {
        if let Err(e) = doc.check() {
            problems.push(format!("{e:#}"));
            continue;
        }
        let av = doc.api_version().to_string();
        if !cache.contains_key(&av) {
            let list = client.resources_in(&av).await?;
            cache.insert(av.clone(), list);
        }
        let found = cache.get(&av).and_then(Option::as_ref);
        let Some(res) = found.and_then(|list| list.iter().find(|r| r.kind == doc.kind())) else {
            let served = match found {
                Some(list) => {
                    format!("{av} serves: {}", list.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>().join(", "))
                }
                None => format!("the server does not serve {av}"),
            };
            problems.push(format!(
                "{}: no kind {:?} in version {av:?} ({served}); `sheaf get no-such-kind` lists the served kinds",
                doc.origin(),
                doc.kind()
            ));
            continue;
        };
        let ns = if res.namespaced {
            match (doc.namespace(), ns_flag) {
                (Some(d), Some(f)) if d != f => {
                    problems.push(format!(
                        "{}: the namespace of {} {:?} is {d:?} in the file but {f:?} on the command line; \
                         pass --namespace={d} or remove one of them",
                        doc.origin(),
                        res.kind_ref(),
                        doc.name()
                    ));
                    continue;
                }
                (Some(d), _) => Some(d.to_string()),
                (None, Some(f)) => Some(f.to_string()),
                (None, None) => Some(client.namespace.clone()),
            }
        } else {
            None
        };
        out.push(Planned { doc, res: res.clone(), ns });
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("error: {p}");
        }
        return Err(Reported.into());
    }
    Ok(out)
}

fn read_docs(files: &[String], recursive: bool) -> anyhow::Result<Vec<Doc>> {
    let docs = manifest::read_all(files, recursive)?;
    if docs.is_empty() {
        let names: Vec<&str> = files.iter().map(|f| if f == "-" { "STDIN" } else { f.as_str() }).collect();
        bail!("no objects in {}", names.join(", "));
    }
    Ok(docs)
}

/// Re-labels a server error with the object and file it was about.
fn about(e: anyhow::Error, what: &str, p: &Planned<'_>) -> anyhow::Error {
    match e.downcast::<ServerError>() {
        Ok(se) => ServerError {
            message: format!(
                "error when {what} {}/{} from {}: {}",
                p.res.kind_ref(),
                p.doc.name(),
                p.doc.origin(),
                se.message
            ),
            ..se
        }
        .into(),
        Err(e) => e.context(format!("{what} {}/{} from {}", p.res.kind_ref(), p.doc.name(), p.doc.origin())),
    }
}

/// An object without what changes on every write even when nothing else
/// does (resourceVersion, managedFields timestamps) and without status,
/// which controllers write and apply never does, to tell "unchanged".
fn comparable(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("status");
    }
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        for entry in m.get_mut("managedFields").and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(e) = entry.as_object_mut() {
                e.remove("time");
            }
        }
    }
    v
}

pub async fn apply(a: ApplyArgs) -> anyhow::Result<()> {
    finish(run_apply(a).await)
}

async fn run_apply(a: ApplyArgs) -> anyhow::Result<()> {
    let docs = read_docs(&a.filenames, a.recursive)?;
    let client = Client::connect(&a.conn)?;
    let ns_flag = a.namespace.as_deref().filter(|n| !n.is_empty());
    let planned = plan(&client, &docs, ns_flag).await?;
    let dry = a.dry_run == DryRun::Server;
    let mut failed = false;
    for p in &planned {
        match apply_one(&client, p, &a, dry).await {
            Ok(line) => emit(&line)?,
            Err(e) => {
                failed = true;
                eprintln!("{}", describe(&e));
            }
        }
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

async fn apply_one(client: &Client, p: &Planned<'_>, a: &ApplyArgs, dry: bool) -> anyhow::Result<String> {
    let name = p.doc.name();
    let mut body = p.doc.value.clone();
    if let Some(ns) = &p.ns {
        if let Some(meta) = body.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("namespace".into(), json!(ns));
        }
    }
    let path = p.res.path(p.ns.as_deref(), Some(name));
    let before = match client.request(Method::GET, &path, "application/json", None).await {
        Ok(r) => Some(r.body),
        Err(e) if is_not_found(&e) => None,
        Err(e) => return Err(about(e, "reading", p)),
    };
    let mut q: Vec<(&str, &str)> = vec![("fieldManager", &a.field_manager), ("fieldValidation", "Strict")];
    if a.force_conflicts {
        q.push(("force", "true"));
    }
    if dry {
        q.push(("dryRun", "All"));
    }
    let bytes = serde_json::to_vec(&body)?;
    let reply = client
        .request(
            Method::PATCH,
            &format!("{path}{}", query(&q)),
            "application/json",
            Some(("application/apply-patch+yaml", bytes)),
        )
        .await
        .map_err(|e| about(e, "applying", p))?;
    let rv = |v: &Value| v.pointer("/metadata/resourceVersion").cloned();
    let verb = match &before {
        _ if reply.status == 201 => "created",
        None => "created",
        Some(b) if !dry && rv(b).is_some() && rv(b) == rv(&reply.body) => "unchanged",
        Some(b) if comparable(b) == comparable(&reply.body) => "unchanged",
        Some(_) => "configured",
    };
    let suffix = if dry { " (server dry run)" } else { "" };
    Ok(format!("{}/{name} {verb}{suffix}\n", p.res.kind_ref()))
}

// ---------------------------------------------------------------------------
// delete

pub async fn delete(a: DeleteArgs) -> anyhow::Result<()> {
    finish(run_delete(a).await)
}

/// One object to delete.
struct Victim {
    res: ApiResource,
    ns: Option<String>,
    name: String,
}

async fn run_delete(a: DeleteArgs) -> anyhow::Result<()> {
    let client = Client::connect(&a.conn)?;
    let ns_flag = a.namespace.clone().filter(|n| !n.is_empty());
    let default_ns = ns_flag.clone().unwrap_or_else(|| client.namespace.clone());
    let mut victims: Vec<Victim> = Vec::new();
    if !a.filenames.is_empty() {
        if !a.args.is_empty() || a.selector.is_some() || a.all {
            bail!("give either -f FILE or KIND NAME... (or -l/--all), not both");
        }
        let docs = read_docs(&a.filenames, a.recursive)?;
        for p in plan(&client, &docs, ns_flag.as_deref()).await? {
            victims.push(Victim { res: p.res, ns: p.ns, name: p.doc.name().to_string() });
        }
    } else {
        let Some((first, rest)) = a.args.split_first() else {
            bail!("nothing to delete: give KIND NAME..., KIND/NAME... or -f FILE (see `sheaf delete --help`)");
        };
        let disc = client.discover().await?;
        let targets = targets(&disc, first, rest)?;
        let by_name = targets.iter().any(|(_, n)| !n.is_empty());
        if by_name && (a.selector.is_some() || a.all) {
            bail!("names cannot be combined with -l or --all");
        }
        if !by_name && a.selector.is_none() && !a.all {
            bail!(
                "no name given: `sheaf delete {first} NAME...`, or -l SELECTOR, or --all for every {} in the namespace",
                targets[0].0.singular
            );
        }
        if a.all_namespaces && by_name {
            bail!("-A works with -l or --all, not with names");
        }
        let namespaced = targets.iter().any(|(r, _)| r.namespaced);
        for (r, names) in targets {
            if by_name {
                for n in names {
                    victims.push(Victim { res: r.clone(), ns: r.namespaced.then(|| default_ns.clone()), name: n });
                }
                continue;
            }
            let list_ns = if a.all_namespaces { None } else { Some(default_ns.as_str()) };
            let (_, items) = list_all(&client, &r, list_ns, a.selector.as_deref(), None, false).await?;
            for o in items {
                let ns = o.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_string);
                victims.push(Victim { res: r.clone(), ns: ns.filter(|_| r.namespaced), name: name_of(&o).to_string() });
            }
        }
        if victims.is_empty() {
            eprintln!("{}", no_resources((!a.all_namespaces).then_some(default_ns.as_str()), namespaced));
            return Ok(());
        }
    }
    let dry = a.dry_run == DryRun::Server;
    let mut options = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": a.cascade.policy()});
    if dry {
        options["dryRun"] = json!(["All"]);
    }
    let body = serde_json::to_vec(&options)?;
    let mut failed = false;
    let mut pending: Vec<(&Victim, Option<String>)> = Vec::new();
    for v in &victims {
        let path = v.res.path(v.ns.as_deref(), Some(&v.name));
        match client.request(Method::DELETE, &path, "application/json", Some(("application/json", body.clone()))).await
        {
            Ok(reply) => {
                let suffix = if dry { " (server dry run)" } else { "" };
                emit(&format!("{} {:?} deleted{suffix}\n", v.res.kind_ref(), v.name))?;
                let uid = reply.body.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string);
                pending.push((v, uid));
            }
            Err(e) if a.ignore_not_found && is_not_found(&e) => {}
            Err(e) => {
                failed = true;
                eprintln!("{}", describe(&e));
            }
        }
    }
    if a.wait && !dry {
        let deadline = Instant::now() + Duration::from_secs(a.timeout);
        for (v, uid) in pending {
            if let Err(e) = wait_gone(&client, v, uid.as_deref(), deadline).await {
                failed = true;
                eprintln!("{}", describe(&e));
            }
        }
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

/// Polls until the object is gone (or replaced by one with another uid).
async fn wait_gone(client: &Client, v: &Victim, uid: Option<&str>, deadline: Instant) -> anyhow::Result<()> {
    let path = v.res.path(v.ns.as_deref(), Some(&v.name));
    loop {
        match client.request(Method::GET, &path, "application/json", None).await {
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => return Err(e),
            Ok(r) => {
                let now_uid = r.body.pointer("/metadata/uid").and_then(Value::as_str);
                if uid.is_some() && now_uid != uid {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out waiting for {} {:?} to go away (it may have finalizers or dependents being deleted first); \
                 it is still being deleted, or use --wait=false",
                v.res.kind_ref(),
                v.name
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cascade_values() {
        assert_eq!(parse_cascade("Background"), Ok(Cascade::Background));
        assert_eq!(parse_cascade("foreground"), Ok(Cascade::Foreground));
        assert_eq!(parse_cascade("false"), Ok(Cascade::Orphan));
        assert!(parse_cascade("maybe").is_err());
    }

    #[test]
    fn type_first() {
        let r = ApiResource {
            group: "kubevirt.io".into(),
            version: "v1".into(),
            plural: "virtualmachines".into(),
            singular: "virtualmachine".into(),
            kind: "VirtualMachine".into(),
            namespaced: true,
            short_names: vec![],
            preferred: true,
        };
        let v = with_type(json!({"metadata": {"name": "a"}}), &r);
        let keys: Vec<&String> = v.as_object().map(|m| m.keys().collect()).unwrap_or_default();
        assert_eq!(keys, ["apiVersion", "kind", "metadata"]);
        assert_eq!(v["apiVersion"], "kubevirt.io/v1");
    }

    #[test]
    fn error_text() {
        let e: anyhow::Error = ServerError {
            code: 404,
            reason: "NotFound".into(),
            message: "virtualmachines.kubevirt.io \"x\" not found".into(),
        }
        .into();
        assert_eq!(describe(&e), "Error from server (NotFound): virtualmachines.kubevirt.io \"x\" not found");
        assert_eq!(describe(&anyhow!("boom")), "error: boom");
    }
}
