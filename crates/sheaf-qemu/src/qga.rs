//! A client for the QEMU guest agent (qemu-ga) on the VM's
//! `org.qemu.guest_agent.0` virtio-serial port, which QEMU exposes as a
//! unix socket in the runtime directory.
//!
//! The channel carries no framing besides newlines and may hold stale
//! replies from an earlier client, so every session starts with
//! `guest-sync` and a fresh id, and reads until that id comes back.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// What the guest agent says about the guest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GuestInfo {
    pub version: String,
    pub hostname: Option<String>,
    pub timezone: Option<(String, i64)>,
    /// `guest-get-osinfo` as returned (id, name, pretty-name, version, ...).
    pub os: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum QgaError {
    #[error("guest agent socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("the guest agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("guest agent error: {0}")]
    Agent(String),
    #[error("the guest agent closed the channel")]
    Closed,
}

struct Session {
    rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: tokio::net::unix::OwnedWriteHalf,
}

impl Session {
    async fn send(&mut self, command: &str, args: Option<Value>) -> Result<(), QgaError> {
        let mut msg = json!({ "execute": command });
        if let Some(a) = args {
            msg["arguments"] = a;
        }
        let mut line = serde_json::to_vec(&msg).unwrap_or_default();
        line.push(b'\n');
        self.wr.write_all(&line).await?;
        Ok(())
    }

    async fn reply(&mut self) -> Result<Value, QgaError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            if self.rd.read_until(b'\n', &mut line).await? == 0 {
                return Err(QgaError::Closed);
            }
            // A 0xff sync byte may precede a reply: skip anything before '{'.
            let Some(start) = line.iter().position(|b| *b == b'{') else { continue };
            let Ok(v) = serde_json::from_slice::<Value>(&line[start..]) else { continue };
            if let Some(e) = v.get("error") {
                return Err(QgaError::Agent(e.get("desc").and_then(Value::as_str).unwrap_or("unknown").into()));
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
        }
    }

    async fn execute(&mut self, command: &str, args: Option<Value>) -> Result<Value, QgaError> {
        self.send(command, args).await?;
        self.reply().await
    }

    async fn sync(&mut self) -> Result<(), QgaError> {
        let id = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
            % (i64::MAX as u128)) as i64;
        self.send("guest-sync", Some(json!({ "id": id }))).await?;
        loop {
            match self.reply().await {
                Ok(v) if v.as_i64() == Some(id) => return Ok(()),
                Ok(_) | Err(QgaError::Agent(_)) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

async fn open(socket: &Path) -> Result<Session, QgaError> {
    let (rd, wr) = UnixStream::connect(socket).await?.into_split();
    let mut s = Session { rd: BufReader::new(rd), wr };
    s.sync().await?;
    Ok(s)
}

#[derive(Deserialize)]
struct AgentInfo {
    version: String,
}

/// Asks the guest agent for its version, the OS, the host name and the
/// time zone. Fails if no agent answers within `timeout`.
pub async fn guest_info(socket: &Path, timeout: Duration) -> Result<GuestInfo, QgaError> {
    tokio::time::timeout(timeout, async {
        let mut s = open(socket).await?;
        let info: AgentInfo = serde_json::from_value(s.execute("guest-info", None).await?)
            .map_err(|e| QgaError::Agent(format!("guest-info: {e}")))?;
        let os = s.execute("guest-get-osinfo", None).await.unwrap_or(Value::Null);
        let hostname = s
            .execute("guest-get-host-name", None)
            .await
            .ok()
            .and_then(|v| v.get("host-name").and_then(Value::as_str).map(str::to_string));
        let timezone = s.execute("guest-get-timezone", None).await.ok().map(|v| {
            (
                v.get("zone").and_then(Value::as_str).unwrap_or("").to_string(),
                v.get("offset").and_then(Value::as_i64).unwrap_or(0),
            )
        });
        Ok(GuestInfo { version: info.version, hostname, timezone, os })
    })
    .await
    .map_err(|_| QgaError::Timeout(timeout))?
}

/// Freezes the guest's file systems (their writes are flushed and held
/// until [`thaw`]); returns how many were frozen.
pub async fn freeze(socket: &Path, timeout: Duration) -> Result<u64, QgaError> {
    tokio::time::timeout(timeout, async {
        let mut s = open(socket).await?;
        Ok(s.execute("guest-fsfreeze-freeze", None).await?.as_u64().unwrap_or(0))
    })
    .await
    .map_err(|_| QgaError::Timeout(timeout))?
}

/// Thaws the file systems [`freeze`] froze; returns how many.
pub async fn thaw(socket: &Path, timeout: Duration) -> Result<u64, QgaError> {
    tokio::time::timeout(timeout, async {
        let mut s = open(socket).await?;
        Ok(s.execute("guest-fsfreeze-thaw", None).await?.as_u64().unwrap_or(0))
    })
    .await
    .map_err(|_| QgaError::Timeout(timeout))?
}

/// Asks the guest to reboot itself. The agent does not answer a
/// successful shutdown, so success is the request being written.
pub async fn reboot(socket: &Path, timeout: Duration) -> Result<(), QgaError> {
    tokio::time::timeout(timeout, async {
        let mut s = open(socket).await?;
        s.send("guest-shutdown", Some(json!({ "mode": "reboot" }))).await
    })
    .await
    .map_err(|_| QgaError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake agent on a socket: answers like qemu-ga, after a stale reply
    /// and a sync byte, so the client's resynchronisation is exercised.
    async fn fake_agent(listener: UnixListener) {
        let (stream, _) = listener.accept().await.expect("accept");
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        wr.write_all(b"{\"return\": 12345}\n").await.expect("stale");
        let mut line = String::new();
        while rd.read_line(&mut line).await.expect("read") > 0 {
            let v: Value = serde_json::from_str(line.trim()).expect("json");
            let reply = match v["execute"].as_str().expect("execute") {
                "guest-sync" => json!({ "return": v["arguments"]["id"] }),
                "guest-info" => json!({ "return": { "version": "7.2.0", "supported_commands": [] } }),
                "guest-get-osinfo" => json!({ "return": { "id": "debian", "pretty-name": "Debian GNU/Linux 12" } }),
                "guest-get-host-name" => json!({ "return": { "host-name": "guest1" } }),
                "guest-get-timezone" => json!({ "error": { "class": "GenericError", "desc": "no tz" } }),
                _ => json!({ "error": { "class": "CommandNotFound", "desc": "nope" } }),
            };
            wr.write_all(b"\xff").await.expect("sync byte");
            wr.write_all(format!("{reply}\n").as_bytes()).await.expect("reply");
            line.clear();
        }
    }

    #[tokio::test]
    async fn reads_info_after_resync() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("qga.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        tokio::spawn(fake_agent(listener));
        let info = guest_info(&sock, Duration::from_secs(5)).await.expect("info");
        assert_eq!(info.version, "7.2.0");
        assert_eq!(info.hostname.as_deref(), Some("guest1"));
        assert_eq!(info.timezone, None);
        assert_eq!(info.os["id"], "debian");
    }

    #[tokio::test]
    async fn silent_agent_times_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("qga.sock");
        let _listener = UnixListener::bind(&sock).expect("bind");
        let err = guest_info(&sock, Duration::from_millis(300)).await.expect_err("no agent");
        assert!(matches!(err, QgaError::Timeout(_)), "{err}");
    }
}
