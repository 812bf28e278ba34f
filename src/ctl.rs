//! The local control socket: JSON lines over a Unix socket (mode 0600).
//!
//! Each request is one JSON object on one line with an "op" (get, names, set, add, delete,
//! getattr, setattr, changes, poll, inform, status); each answer is one JSON object on one
//! line with "ok". See docs/CONTROL.md for the full list.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::engine::Command;

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 1 << 20;
/// Control connections served at once.
const MAX_CLIENTS: usize = 16;

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves control connections, forwarding each request to the engine.
pub async fn serve(listener: UnixListener, engine: mpsc::Sender<Command>) {
    let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!("too many control connections; refusing one");
            continue;
        };
        let engine = engine.clone();
        tokio::task::spawn_local(async move {
            let _permit = permit;
            if let Err(e) = client(stream, engine).await {
                tracing::debug!("control connection ended: {e}");
            }
        });
    }
}

async fn client(stream: UnixStream, engine: mpsc::Sender<Command>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut r)
            .take(MAX_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let reply = if line.len() > MAX_REQUEST {
            serde_json::json!({"ok": false, "error": "request too long"})
        } else {
            match serde_json::from_slice::<Value>(&line) {
                Ok(req) if req.is_object() => {
                    let (tx, rx) = oneshot::channel();
                    if engine.send(Command::Ctl(req, tx)).await.is_err() {
                        return Ok(());
                    }
                    rx.await.unwrap_or_else(
                        |_| serde_json::json!({"ok": false, "error": "engine stopped"}),
                    )
                }
                _ => {
                    serde_json::json!({"ok": false, "error": "request must be one JSON object per line"})
                }
            }
        };
        let mut out = reply.to_string();
        out.push('\n');
        w.write_all(out.as_bytes()).await?;
        if line.len() > MAX_REQUEST {
            return Ok(());
        }
    }
}

/// Client side: sends one request and returns the answer (blocking, for `cwmpd ctl`).
pub fn request(path: &Path, req: &Value) -> std::io::Result<Value> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut r = std::io::BufReader::new(s);
    let mut ans = String::new();
    r.read_line(&mut ans)?;
    serde_json::from_str(&ans).map_err(std::io::Error::other)
}
