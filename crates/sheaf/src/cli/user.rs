//! `sheaf user ...`: users, their tokens and roles. A user is a
//! cluster-scoped `sheaf.io/v1alpha1` User; a token is a Secret in
//! `sheaf-system` holding only the token's SHA-256; roles are granted by
//! RoleBindings (per namespace) or a ClusterRoleBinding (everywhere), all
//! owned by the User. See `docs/design/rbac.md`.

use std::io::Read as _;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Value};
use sheaf_types::rbac;

use super::client::{encode, is_not_found, query, Client, ConnArgs};

#[derive(Args, Debug)]
pub struct UserArgs {
    #[command(subcommand)]
    pub action: UserAction,
}

#[derive(Subcommand, Debug)]
pub enum UserAction {
    /// Create a user with a role and print a kubeconfig holding its first
    /// token: `sheaf user create ann --role operator --namespace team-a > ann.kubeconfig`.
    Create(CreateArgs),
    /// Issue another token for a user (printed once, kept nowhere).
    Token(TokenArgs),
    /// Grant a user a role (cluster-wide, or in the namespaces given).
    Grant(GrantArgs),
    /// Revoke a user's tokens (all of them, or one with --token ID): they
    /// are refused from the next request on.
    Revoke(RevokeArgs),
    /// List users with their roles and tokens.
    List(ListArgs),
    /// Delete a user: its tokens and bindings go with it.
    Delete(NameArgs),
}

#[derive(Args, Debug)]
pub struct RoleArgs {
    /// The ClusterRole to grant: admin, operator, viewer (built in), or any
    /// other ClusterRole.
    #[arg(long)]
    pub role: String,
    /// Grant it in this namespace only (repeatable). Without it the role
    /// applies cluster-wide.
    #[arg(long = "namespace", short = 'n', value_name = "NS")]
    pub namespaces: Vec<String>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Output {
    /// A kubeconfig for kubectl and sheaf.
    Kubeconfig,
    /// The bare token.
    Token,
}

#[derive(Args, Debug)]
pub struct IssueArgs {
    /// The token stops working after this long (`30d`, `12h`); no expiry
    /// without it.
    #[arg(long, value_parser = parse_ttl)]
    pub ttl: Option<Duration>,
    /// What to print.
    #[arg(long, short = 'o', value_enum, default_value = "kubeconfig")]
    pub output: Output,
    /// The server URL written into the kubeconfig (default: the one this
    /// command talks to).
    #[arg(long, value_name = "URL")]
    pub server_url: Option<String>,
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    pub name: String,
    #[command(flatten)]
    pub role: RoleArgs,
    /// A group the user is in (repeatable); bindings may name groups.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Who this is.
    #[arg(long)]
    pub description: Option<String>,
    #[command(flatten)]
    pub issue: IssueArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    pub name: String,
    #[command(flatten)]
    pub issue: IssueArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    pub name: String,
    #[command(flatten)]
    pub role: RoleArgs,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    pub name: String,
    /// Only this token (its id: the part between `sheaf-` and the dot).
    #[arg(long, value_name = "ID")]
    pub token: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args, Debug)]
pub struct NameArgs {
    pub name: String,
    #[command(flatten)]
    pub conn: ConnArgs,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = crate::server::parse_days(s, "30d")?;
    if d.is_zero() || d > Duration::from_secs(10 * 366 * 86400) {
        return Err(format!("{s:?} is out of range: more than 0 and at most 10 years"));
    }
    Ok(d)
}

async fn send(client: &Client, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
    let body = match body {
        Some(b) => Some(("application/json", serde_json::to_vec(b)?)),
        None => None,
    };
    Ok(client.request(method, path, "application/json", body).await?.body)
}

const USERS: &str = "/apis/sheaf.io/v1alpha1/users";
const RBAC: &str = "/apis/rbac.authorization.k8s.io/v1";

fn secrets_path() -> String {
    format!("/api/v1/namespaces/{}/secrets", rbac::TOKEN_NAMESPACE)
}

fn owner(user: &Value) -> Value {
    json!([{
        "apiVersion": "sheaf.io/v1alpha1", "kind": "User",
        "name": user.pointer("/metadata/name"), "uid": user.pointer("/metadata/uid"),
    }])
}

fn random_bytes(n: usize) -> anyhow::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).context("cannot read /dev/urandom")?;
    Ok(buf)
}

/// Makes a token for `user`, stores its digest and prints it.
async fn issue(client: &Client, user: &Value, a: &IssueArgs) -> anyhow::Result<()> {
    use base64::Engine as _;
    let name = user.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    let id: String = random_bytes(5)?.iter().map(|b| format!("{b:02x}")).collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(32)?);
    let token = format!("{}{id}.{secret}", rbac::TOKEN_PREFIX);
    let digest = sheaf_apiserver::authz::token_digest_hex(&token);
    let mut annotations = serde_json::Map::new();
    if let Some(ttl) = a.ttl {
        let at = chrono::Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::MAX);
        annotations
            .insert(rbac::EXPIRES_ANNOTATION.into(), json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)));
    }
    let body = json!({
        "apiVersion": "v1", "kind": "Secret", "type": rbac::TOKEN_SECRET_TYPE,
        "metadata": {
            "name": rbac::token_secret_name(&id), "namespace": rbac::TOKEN_NAMESPACE,
            "labels": {rbac::USER_LABEL: name}, "annotations": annotations,
            "ownerReferences": owner(user),
        },
        "stringData": {"tokenHash": digest},
    });
    send(client, Method::POST, &secrets_path(), Some(&body)).await?;
    match a.output {
        Output::Token => println!("{token}"),
        Output::Kubeconfig => {
            let ca = client.get_stream("/cacerts").await.context("cannot fetch the cluster CA for the kubeconfig")?;
            let ca = ca.text().await.context("cannot read the cluster CA")?;
            let server = a.server_url.clone().unwrap_or_else(|| client.base().to_string());
            print!("{}", sheaf_apiserver::pki::kubeconfig(&server, &ca, &token, name));
        }
    }
    eprintln!("token {id} issued for user {name}{}", if a.ttl.is_some() { " (it expires)" } else { "" });
    Ok(())
}

/// Binds `role` to `user` cluster-wide or in each namespace.
async fn grant(client: &Client, user: &Value, r: &RoleArgs) -> anyhow::Result<()> {
    let name = user.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    match send(client, Method::GET, &format!("{RBAC}/clusterroles/{}", encode(&r.role)), None).await {
        Ok(_) => {}
        Err(e) if is_not_found(&e) => {
            bail!("there is no ClusterRole {:?}: use admin, operator or viewer, or create it first", r.role)
        }
        Err(e) => return Err(e),
    }
    let binding = format!("sheaf-user-{name}-{}", r.role);
    let body = |kind: &str, ns: Option<&str>| {
        let mut meta = json!({"name": binding, "ownerReferences": owner(user), "labels": {rbac::USER_LABEL: name}});
        if let Some(ns) = ns {
            meta["namespace"] = json!(ns);
        }
        json!({
            "apiVersion": format!("{}/v1", rbac::GROUP), "kind": kind, "metadata": meta,
            "subjects": [{"kind": "User", "apiGroup": rbac::GROUP, "name": name}],
            "roleRef": {"apiGroup": rbac::GROUP, "kind": "ClusterRole", "name": r.role},
        })
    };
    let create = |path: String, b: Value| async move {
        match send(client, Method::POST, &path, Some(&b)).await {
            Err(e) if e.to_string().contains("AlreadyExists") => Ok(()),
            other => other.map(|_| ()),
        }
    };
    if r.namespaces.is_empty() {
        create(format!("{RBAC}/clusterrolebindings"), body("ClusterRoleBinding", None)).await?;
        eprintln!("user {name} is {} cluster-wide", r.role);
    }
    for ns in &r.namespaces {
        create(format!("{RBAC}/namespaces/{}/rolebindings", encode(ns)), body("RoleBinding", Some(ns))).await?;
        eprintln!("user {name} is {} in namespace {ns}", r.role);
    }
    Ok(())
}

async fn get_user(client: &Client, name: &str) -> anyhow::Result<Value> {
    match send(client, Method::GET, &format!("{USERS}/{}", encode(name)), None).await {
        Err(e) if is_not_found(&e) => bail!("there is no user {name:?} (`sheaf user list` shows them)"),
        other => other,
    }
}

async fn tokens_of(client: &Client, name: &str) -> anyhow::Result<Vec<Value>> {
    let sel = format!("{}={name}", rbac::USER_LABEL);
    let path = format!("{}{}", secrets_path(), query(&[("labelSelector", &sel)]));
    Ok(send(client, Method::GET, &path, None).await?["items"].as_array().cloned().unwrap_or_default())
}

pub async fn run(a: UserArgs) -> anyhow::Result<()> {
    match a.action {
        UserAction::Create(c) => {
            let client = Client::connect(&c.conn)?;
            for ns in &c.role.namespaces {
                send(&client, Method::GET, &format!("/api/v1/namespaces/{}", encode(ns)), None)
                    .await
                    .with_context(|| format!("namespace {ns:?}"))?;
            }
            let body = json!({
                "apiVersion": "sheaf.io/v1alpha1", "kind": "User",
                "metadata": {"name": c.name},
                "spec": {"groups": c.groups, "description": c.description},
            });
            let user = send(&client, Method::POST, USERS, Some(&body)).await?;
            grant(&client, &user, &c.role).await?;
            issue(&client, &user, &c.issue).await
        }
        UserAction::Token(t) => {
            let client = Client::connect(&t.conn)?;
            let user = get_user(&client, &t.name).await?;
            issue(&client, &user, &t.issue).await
        }
        UserAction::Grant(g) => {
            let client = Client::connect(&g.conn)?;
            let user = get_user(&client, &g.name).await?;
            grant(&client, &user, &g.role).await
        }
        UserAction::Revoke(r) => {
            let client = Client::connect(&r.conn)?;
            get_user(&client, &r.name).await?;
            let tokens = tokens_of(&client, &r.name).await?;
            let mut revoked = 0;
            for t in &tokens {
                let secret = t.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
                if r.token.as_deref().is_some_and(|id| rbac::token_secret_name(id) != secret) {
                    continue;
                }
                let path = format!("{}/{}", secrets_path(), encode(secret));
                match send(&client, Method::DELETE, &path, None).await {
                    Err(e) if !is_not_found(&e) => return Err(e),
                    _ => revoked += 1,
                }
            }
            if revoked == 0 {
                match &r.token {
                    Some(id) => bail!("user {} has no token {id}", r.name),
                    None => bail!("user {} has no tokens", r.name),
                }
            }
            println!("{revoked} token(s) of user {} revoked", r.name);
            Ok(())
        }
        UserAction::List(l) => {
            let client = Client::connect(&l.conn)?;
            let users = send(&client, Method::GET, USERS, None).await?["items"].as_array().cloned().unwrap_or_default();
            let crbs = send(&client, Method::GET, &format!("{RBAC}/clusterrolebindings"), None).await?;
            let rbs = send(&client, Method::GET, &format!("{RBAC}/rolebindings"), None).await?;
            let bindings: Vec<Value> =
                [crbs, rbs].iter().flat_map(|l| l["items"].as_array().cloned().unwrap_or_default()).collect();
            println!("{:<20} {:<20} {:<7} ROLES", "NAME", "GROUPS", "TOKENS");
            for u in users {
                let name = u.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
                let groups: Vec<&str> = u
                    .pointer("/spec/groups")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let roles: Vec<String> = bindings
                    .iter()
                    .filter(|b| {
                        b["subjects"].as_array().into_iter().flatten().any(|s| {
                            (s["kind"] == "User" && s["name"] == name)
                                || (s["kind"] == "Group" && groups.iter().any(|g| s["name"] == *g))
                        })
                    })
                    .map(|b| {
                        let role = b.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or_default();
                        match b.pointer("/metadata/namespace").and_then(Value::as_str) {
                            Some(ns) => format!("{role}@{ns}"),
                            None => role.to_string(),
                        }
                    })
                    .collect();
                let tokens = tokens_of(&client, name).await?.len();
                let disabled = if u.pointer("/spec/disabled") == Some(&json!(true)) { " (disabled)" } else { "" };
                let groups = if groups.is_empty() { "-".to_string() } else { groups.join(",") };
                let roles = if roles.is_empty() { "-".to_string() } else { roles.join(",") };
                println!("{:<20} {groups:<20} {tokens:<7} {roles}{disabled}", name);
            }
            Ok(())
        }
        UserAction::Delete(d) => {
            let client = Client::connect(&d.conn)?;
            get_user(&client, &d.name).await?;
            // Tokens first, so that none outlives its user even for a moment.
            for t in tokens_of(&client, &d.name).await? {
                let secret = t.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
                let _ = send(&client, Method::DELETE, &format!("{}/{}", secrets_path(), encode(secret)), None).await;
            }
            send(&client, Method::DELETE, &format!("{USERS}/{}", encode(&d.name)), None).await?;
            println!("user {} deleted (its bindings go with it)", d.name);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("30d"), Ok(Duration::from_secs(30 * 86400)));
        assert_eq!(parse_ttl("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("soon").is_err());
        assert!(parse_ttl("99999d").is_err());
    }
}
