//! External providers: one long-lived program per subtree, speaking JSON lines on stdin/stdout.
//!
//! Requests (agent → program), one JSON object per line, each with a numeric `id`:
//!   {"id":1,"op":"get","paths":["Device.Services.STBService.1.Enable", ...]}
//!   {"id":2,"op":"set","values":{"Device....X":"value", ...}}
//!   {"id":3,"op":"add","object":"Device.Services.STBService.","instance":2}
//!   {"id":4,"op":"delete","object":"Device.Services.STBService.2."}
//! Replies carry the same `id`: {"id":1,"values":{"path":"value",...}} or {"id":2,"ok":true}
//! or {"id":2,"error":"reason"}. The program may also write, at any time, a line without an
//! id to push changed values: {"notify":{"path":"value",...}}.
//! There is no fork per parameter: one process serves the whole subtree for the agent's life
//! and is restarted (with a delay) if it exits.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, oneshot};

/// Longest line accepted from a provider.
const MAX_LINE: usize = 1 << 20;
/// How long a request may take.
const TIMEOUT: Duration = Duration::from_secs(5);

type Pending = HashMap<u64, oneshot::Sender<Value>>;

/// Handle used by the engine to talk to one provider.
#[derive(Clone)]
pub struct Provider {
    pub index: usize,
    pub prefix: String,
    tx: mpsc::Sender<(Value, oneshot::Sender<Value>)>,
}

impl Provider {
    /// Starts the provider task. Pushed values arrive on `notify` as (provider index, values).
    pub fn spawn(
        index: usize,
        prefix: String,
        argv: Vec<String>,
        notify: mpsc::Sender<(usize, BTreeMap<String, String>)>,
    ) -> Provider {
        let (tx, rx) = mpsc::channel(32);
        tokio::task::spawn_local(run(index, argv, rx, notify));
        Provider { index, prefix, tx }
    }

    async fn call(&self, req: Value) -> Result<Value, String> {
        let (otx, orx) = oneshot::channel();
        self.tx
            .send((req, otx))
            .await
            .map_err(|_| "provider task ended".to_string())?;
        match tokio::time::timeout(TIMEOUT, orx).await {
            Ok(Ok(v)) => {
                if let Some(e) = v.get("error") {
                    Err(e.as_str().unwrap_or("error").to_string())
                } else {
                    Ok(v)
                }
            }
            Ok(Err(_)) => Err("provider exited".into()),
            Err(_) => Err("provider did not answer in time".into()),
        }
    }

    pub async fn get(&self, paths: &[String]) -> Result<BTreeMap<String, String>, String> {
        let v = self.call(json!({"op": "get", "paths": paths})).await?;
        Ok(string_map(v.get("values")))
    }

    pub async fn set(&self, values: &[(String, String)]) -> Result<(), String> {
        let m: serde_json::Map<String, Value> = values
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        self.call(json!({"op": "set", "values": m}))
            .await
            .map(|_| ())
    }

    pub async fn add(&self, table: &str, instance: u32) -> Result<(), String> {
        self.call(json!({"op": "add", "object": table, "instance": instance}))
            .await
            .map(|_| ())
    }

    pub async fn delete(&self, object: &str) -> Result<(), String> {
        self.call(json!({"op": "delete", "object": object}))
            .await
            .map(|_| ())
    }
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(Value::Object(m)) = v {
        for (k, v) in m {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            out.insert(k.clone(), s);
        }
    }
    out
}

async fn run(
    index: usize,
    argv: Vec<String>,
    mut rx: mpsc::Receiver<(Value, oneshot::Sender<Value>)>,
    notify: mpsc::Sender<(usize, BTreeMap<String, String>)>,
) {
    let mut next_id: u64 = 1;
    let mut backoff = Duration::from_millis(200);
    loop {
        let child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(provider = %argv[0], "cannot start provider: {e}");
                // Answer queued requests with an error while waiting to retry.
                let deadline = tokio::time::sleep(backoff);
                tokio::pin!(deadline);
                loop {
                    tokio::select! {
                        _ = &mut deadline => break,
                        r = rx.recv() => match r {
                            Some((_, reply)) => { let _ = reply.send(json!({"error": "provider not running"})); }
                            None => return,
                        }
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        tracing::info!(provider = %argv[0], pid = child.id(), "provider started");
        let mut stdin = child.stdin.take().expect("piped");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let mut pending: Pending = HashMap::new();
        let ended = loop {
            tokio::select! {
                r = rx.recv() => {
                    let Some((mut req, reply)) = r else { return };
                    let id = next_id;
                    next_id += 1;
                    req["id"] = json!(id);
                    let mut line = req.to_string();
                    line.push('\n');
                    if stdin.write_all(line.as_bytes()).await.is_err() {
                        let _ = reply.send(json!({"error": "provider stdin closed"}));
                        break "stdin closed";
                    }
                    pending.insert(id, reply);
                }
                l = lines.next_line() => {
                    match l {
                        Ok(Some(line)) => {
                            if line.len() > MAX_LINE {
                                tracing::warn!(provider = %argv[0], "line too long; ignored");
                                continue;
                            }
                            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                                tracing::warn!(provider = %argv[0], "not JSON: {line:.80}");
                                continue;
                            };
                            if let Some(id) = v.get("id").and_then(Value::as_u64) {
                                if let Some(reply) = pending.remove(&id) {
                                    let _ = reply.send(v);
                                }
                            } else if v.get("notify").is_some() {
                                let m = string_map(v.get("notify"));
                                if !m.is_empty() {
                                    let _ = notify.send((index, m)).await;
                                }
                            }
                        }
                        Ok(None) => break "exited",
                        Err(_) => break "read error",
                    }
                }
            }
        };
        for (_, reply) in pending.drain() {
            let _ = reply.send(json!({"error": "provider exited"}));
        }
        let _ = child.kill().await;
        tracing::warn!(provider = %argv[0], "provider {ended}; restarting in {:?}", backoff);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
