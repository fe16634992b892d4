//! Serial console and VNC of running instances over WebSocket, at
//! KubeVirt's paths (`.../virtualmachineinstances/NAME/console` and
//! `/vnc`, subprotocol `plain.kubevirt.io`, raw bytes in binary frames), so
//! `virtctl console`, `virtctl vnc` and `sheaf vm console|vnc` work.
//!
//! The API server reaches the instance's sockets through a [`NodeDialer`].
//! A serial console has one reader at a time: a new connection closes the
//! previous one (a hung terminal never locks the console).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

use crate::error::{ApiError, ApiResult};
use crate::objects::Objects;

/// The WebSocket subprotocol KubeVirt's clients ask for.
pub const PROTOCOL: &str = "plain.kubevirt.io";

/// Which socket of an instance.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Channel {
    Serial,
    Vnc,
}

/// Opens an instance's console or VNC socket on the node running it.
#[async_trait::async_trait]
pub trait NodeDialer: Send + Sync {
    async fn dial(&self, node: &str, vmi_uid: &str, channel: Channel) -> Result<UnixStream, String>;

    /// The files of an instance's serial console log on the node running
    /// it, newest generation first (see [`crate::serial_log`]); empty when
    /// there is no log yet. Err: the node's files cannot be read from here.
    async fn serial_logs(&self, node: &str, vmi_uid: &str) -> Result<Vec<std::path::PathBuf>, String> {
        let _ = vmi_uid;
        Err(format!("the serial logs of node {node:?} cannot be read from this API server"))
    }
}

/// Open serial consoles, by instance uid, each with a way to close it.
#[derive(Default)]
pub struct Consoles {
    open: Mutex<HashMap<String, (u64, oneshot::Sender<()>)>>,
    next: std::sync::atomic::AtomicU64,
}

/// Handles `GET .../virtualmachineinstances/NAME/{console,vnc}`.
pub async fn connect(
    objects: &Objects,
    dialer: Option<&Arc<dyn NodeDialer>>,
    consoles: &Arc<Consoles>,
    ns: &str,
    name: &str,
    channel: Channel,
    upgrade: Option<WebSocketUpgrade>,
) -> ApiResult<Response> {
    let Some(upgrade) = upgrade else {
        return Err(ApiError::bad_request(format!(
            "{} is a WebSocket: connect with `sheaf vm {} {name}` or virtctl",
            if channel == Channel::Serial { "console" } else { "vnc" },
            if channel == Channel::Serial { "console" } else { "vnc" },
        )));
    };
    let Some(rt) = objects.registry.find("kubevirt.io", "v1", "virtualmachineinstances").cloned() else {
        return Err(ApiError::internal("VirtualMachineInstance kind is not registered"));
    };
    let vmi = objects.get(&rt, Some(ns), name).await?;
    let conflict = |m: String| ApiError::new(http::StatusCode::CONFLICT, "Conflict", m);
    if vmi.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
        return Err(conflict(format!("VMI {name:?} is not running")));
    }
    let uid = vmi.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
    let node = vmi.pointer("/status/nodeName").and_then(Value::as_str).unwrap_or_default().to_string();
    if channel == Channel::Vnc
        && vmi.pointer("/spec/domain/devices/autoattachGraphicsDevice") == Some(&Value::Bool(false))
    {
        return Err(conflict(format!("VMI {name:?} has no graphics device (autoattachGraphicsDevice: false)")));
    }
    let Some(dialer) = dialer else {
        return Err(ApiError::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!("this API server cannot reach the console of VMIs on node {node:?}"),
        ));
    };
    // Close the console's previous reader first: QEMU serves one at a time.
    let (id, closed) = if channel == Channel::Serial {
        let id = consoles.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let old = consoles.open.lock().ok().and_then(|mut m| m.insert(uid.clone(), (id, tx)));
        if let Some((_, old)) = old {
            let _ = old.send(());
        }
        (Some(id), Some(rx))
    } else {
        (None, None)
    };
    let stream = dialer.dial(&node, &uid, channel).await.map_err(|e| {
        ApiError::new(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            format!(
                "cannot connect to the {} of VMI {name:?}: {e}",
                if channel == Channel::Serial { "console" } else { "VNC server" }
            ),
        )
    })?;
    let consoles = consoles.clone();
    Ok(upgrade
        .protocols([PROTOCOL])
        .on_upgrade(move |ws| async move {
            pump(ws, stream, closed).await;
            if let Some(id) = id {
                if let Ok(mut m) = consoles.open.lock() {
                    if m.get(&uid).is_some_and(|(cur, _)| *cur == id) {
                        m.remove(&uid);
                    }
                }
            }
        })
        .into_response())
}

/// Copies bytes both ways until either side ends (or `closed` fires).
async fn pump(ws: WebSocket, stream: UnixStream, closed: Option<oneshot::Receiver<()>>) {
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (mut rd, mut wr) = stream.into_split();
    let to_ws = async {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if ws_tx.send(Message::Binary(bytes::Bytes::copy_from_slice(&buf[..n]))).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = ws_tx.send(Message::Close(None)).await;
    };
    let from_ws = async {
        while let Some(Ok(msg)) = ws_rx.next().await {
            let data = match msg {
                Message::Binary(b) => b,
                Message::Text(t) => bytes::Bytes::copy_from_slice(t.as_bytes()),
                Message::Close(_) => break,
                Message::Ping(_) | Message::Pong(_) => continue,
            };
            if wr.write_all(&data).await.is_err() {
                break;
            }
        }
    };
    let closed = async {
        match closed {
            Some(rx) => {
                let _ = rx.await;
            }
            None => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = to_ws => {}
        _ = from_ws => {}
        _ = closed => {}
    }
}
