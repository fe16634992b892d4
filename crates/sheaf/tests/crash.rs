//! Crash safety: kill -9 the server while 8 clients write; after a restart
//! every write that was acknowledged with a 2xx is there.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::Server;

fn client(s: &Server) -> reqwest::Client {
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&s.ca_pem()).expect("ca"))
        .tls_built_in_root_certs(false)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

#[derive(Default)]
struct Acked {
    /// ConfigMaps whose create got a 2xx.
    created: Vec<String>,
    /// Per writer: the last counter value whose update got a 2xx.
    counters: Vec<(String, u64)>,
}

async fn writer(id: usize, base: String, token: String, http: reqwest::Client, acked: Arc<Mutex<Acked>>) {
    let coll = format!("{base}/api/v1/namespaces/default/configmaps");
    let counter = format!("counter-{id}");
    let mut rv: Option<String> = None;
    let mut value = 0u64;
    for n in 0.. {
        // A new object ...
        let name = format!("w{id}-{n}");
        let body =
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"n": n.to_string()}});
        match http.post(&coll).bearer_auth(&token).json(&body).send().await {
            Ok(r) if r.status().is_success() => acked.lock().expect("lock").created.push(name),
            Ok(_) => {}
            Err(_) => return, // server gone
        }
        // ... and a compare-and-swap update of this writer's counter.
        let next = value + 1;
        let mut obj = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": counter}, "data": {"value": next.to_string()}});
        let resp = match &rv {
            None => http.post(&coll).bearer_auth(&token).json(&obj).send().await,
            Some(rv) => {
                obj["metadata"]["resourceVersion"] = json!(rv);
                http.put(format!("{coll}/{counter}")).bearer_auth(&token).json(&obj).send().await
            }
        };
        match resp {
            Ok(r) if r.status().is_success() => {
                let v: Value = r.json().await.unwrap_or_default();
                rv = v.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
                value = next;
                let mut a = acked.lock().expect("lock");
                a.counters.retain(|(c, _)| *c != counter);
                a.counters.push((counter.clone(), value));
            }
            Ok(r) => panic!("counter update refused: {}", r.status()),
            Err(_) => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill_9() {
    let mut s = Server::start();
    let token = s.token();
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut tasks = Vec::new();
    for id in 0..8 {
        tasks.push(tokio::spawn(writer(id, s.url(), token.clone(), client(&s), acked.clone())));
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.kill9();
    for t in tasks {
        t.await.expect("writer task");
    }
    let acked = std::mem::take(&mut *acked.lock().expect("lock"));
    assert!(acked.created.len() > 100, "too few writes before the kill: {}", acked.created.len());

    s.restart();
    let http = client(&s);
    let list: Value = http
        .get(format!("{}/api/v1/namespaces/default/configmaps", s.url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let items = list["items"].as_array().expect("items");
    let present: std::collections::HashMap<&str, &Value> =
        items.iter().map(|o| (o["metadata"]["name"].as_str().unwrap_or(""), o)).collect();
    let missing: Vec<&String> = acked.created.iter().filter(|n| !present.contains_key(n.as_str())).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged creates lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    for (counter, value) in &acked.counters {
        let stored: u64 = present
            .get(counter.as_str())
            .and_then(|o| o["data"]["value"].as_str())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // The write in flight at the kill may have landed without its reply.
        assert!(stored == *value || stored == value + 1, "{counter}: acknowledged {value}, stored {stored}");
    }
}
