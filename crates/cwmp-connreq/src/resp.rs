//! A small Redis client (RESP2) for the STUN server's shared binding registry: commands are
//! arrays of bulk strings, replies are read with bounds (line length, bulk size, array length,
//! nesting), so a misbehaving peer cannot make it allocate without limit. Only what the
//! registry needs: one pipelined command connection ([`Link`]) and one subscriber connection
//! ([`subscribe`]).

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// Longest line (simple string, error, integer, length header) accepted.
const MAX_LINE: usize = 64 * 1024;
/// Largest bulk string accepted.
const MAX_BULK: usize = 1024 * 1024;
/// Longest array accepted.
const MAX_ARRAY: usize = 4096;
/// Deepest nesting of arrays accepted.
const MAX_DEPTH: u32 = 4;
/// Commands written to the server in one go (then their replies read in order).
const MAX_PIPELINE: usize = 512;
/// Longest wait for a connection, or for the replies of one pipeline.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    /// `None`: the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// `None`: the null array.
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text (simple or bulk string).
    pub fn text(&self) -> Option<String> {
        match self {
            Resp::Simple(s) => Some(s.clone()),
            Resp::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

/// Appends `args` as a RESP command (an array of bulk strings) to `out`.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn bad(why: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.into())
}

async fn read_line<R: tokio::io::AsyncRead + Unpin>(
    r: &mut BufReader<R>,
) -> std::io::Result<Vec<u8>> {
    let mut line = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64 + 2)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if !line.ends_with(b"\r\n") {
        return Err(bad("RESP line too long or not terminated"));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

fn int(b: &[u8]) -> std::io::Result<i64> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("RESP: bad integer"))
}

/// Reads one reply.
pub async fn read<R: tokio::io::AsyncRead + Unpin>(r: &mut BufReader<R>) -> std::io::Result<Resp> {
    read_depth(r, 0).await
}

fn read_depth<'a, R: tokio::io::AsyncRead + Unpin>(
    r: &'a mut BufReader<R>,
    depth: u32,
) -> std::pin::Pin<Box<dyn Future<Output = std::io::Result<Resp>> + 'a>> {
    Box::pin(async move {
        let line = read_line(r).await?;
        let (&kind, rest) = line.split_first().ok_or_else(|| bad("RESP: empty line"))?;
        match kind {
            b'+' => Ok(Resp::Simple(String::from_utf8_lossy(rest).into_owned())),
            b'-' => Ok(Resp::Error(String::from_utf8_lossy(rest).into_owned())),
            b':' => Ok(Resp::Int(int(rest)?)),
            b'$' => {
                let n = int(rest)?;
                if n < 0 {
                    return Ok(Resp::Bulk(None));
                }
                let n = n as usize;
                if n > MAX_BULK {
                    return Err(bad("RESP: bulk string too large"));
                }
                let mut b = vec![0u8; n + 2];
                r.read_exact(&mut b).await?;
                if !b.ends_with(b"\r\n") {
                    return Err(bad("RESP: bulk string not terminated"));
                }
                b.truncate(n);
                Ok(Resp::Bulk(Some(b)))
            }
            b'*' => {
                let n = int(rest)?;
                if n < 0 {
                    return Ok(Resp::Array(None));
                }
                if n as usize > MAX_ARRAY || depth >= MAX_DEPTH {
                    return Err(bad("RESP: array too large or too deep"));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(read_depth(r, depth + 1).await?);
                }
                Ok(Resp::Array(Some(v)))
            }
            _ => Err(bad("RESP: unknown reply type")),
        }
    })
}

/// Where Redis is: `HOST:PORT`, and the password to send with `AUTH` (with a user name: Redis 6
/// ACL), if any. Its `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "(hidden)"))
            .finish()
    }
}

impl std::fmt::Display for Target {
    /// `HOST:PORT`, with ` (AUTH)` when a password is sent (never the password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)?;
        if self.password.is_some() {
            f.write_str(" (AUTH)")?;
        }
        Ok(())
    }
}

fn pct_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let v = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("--redis: bad %-escape in the credentials")?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "--redis: credentials are not UTF-8".to_string())
}

/// `redis://[[USER]:PASSWORD@]HOST:PORT[/]` (or plain `HOST:PORT`) → the [`Target`]; the port
/// defaults to 6379; USER and PASSWORD may be %-escaped.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url.strip_prefix("redis://").unwrap_or(url);
    let rest = rest.trim_end_matches('/');
    let (creds, rest) = match rest.rsplit_once('@') {
        Some((c, r)) => (Some(c), r),
        None => (None, rest),
    };
    if rest.is_empty() || rest.contains('/') {
        return Err(format!(
            "--redis: want redis://[:PASSWORD@]HOST:PORT (no database) in {:?}",
            url.rsplit_once('@').map_or(url, |(_, r)| r)
        ));
    }
    let (user, password) = match creds {
        None => (None, None),
        Some(c) => {
            let (u, p) = c
                .split_once(':')
                .ok_or("--redis: want :PASSWORD@ or USER:PASSWORD@ before the host")?;
            let u = (!u.is_empty()).then(|| pct_decode(u)).transpose()?;
            (u, Some(pct_decode(p)?))
        }
    };
    let addr = if rest.starts_with('[')
        || rest
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        rest.to_string()
    } else {
        format!("{rest}:6379")
    };
    Ok(Target {
        addr,
        user,
        password,
    })
}

/// Connects, and authenticates when the target has a password (a refusal is an error that
/// does not quote the password).
async fn connect(t: &Target) -> std::io::Result<TcpStream> {
    let mut s = tokio::time::timeout(IO_TIMEOUT, TcpStream::connect(&t.addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let _ = s.set_nodelay(true);
    if let Some(p) = &t.password {
        let mut cmd = Vec::new();
        match &t.user {
            Some(u) => encode(&[b"AUTH", u.as_bytes(), p.as_bytes()], &mut cmd),
            None => encode(&[b"AUTH", p.as_bytes()], &mut cmd),
        }
        let reply = tokio::time::timeout(IO_TIMEOUT, async {
            s.write_all(&cmd).await?;
            // Nothing else is sent before this reply: the reader buffers nothing more.
            read(&mut BufReader::new(&mut s)).await
        })
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if reply != Resp::Simple("OK".into()) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "Redis refused AUTH",
            ));
        }
    }
    Ok(s)
}

/// A command for the [`Link`]; `reply` (if any) gets the server's answer, or why there is none.
pub struct Cmd {
    pub args: Vec<Vec<u8>>,
    pub reply: Option<oneshot::Sender<Result<Resp, String>>>,
}

/// The pipelined command connection, run by [`Link::start`] as a local task: commands queue in
/// a bounded channel ([`Link::try_send`] drops when it is full), are written in batches and
/// their replies read in order. When Redis is down, queued commands are answered with an error
/// at once and the connection is tried again (backoff 100 ms doubling to 2 s); `connected`
/// counts successful connections (the server re-registers its bindings after each).
#[derive(Clone)]
pub struct Link {
    tx: mpsc::Sender<Cmd>,
    pub connections: Rc<Cell<u64>>,
    pub up: Rc<Cell<bool>>,
}

impl Link {
    /// Starts the connection task (in the current `LocalSet`); `queue` bounds the commands
    /// waiting.
    pub fn start(addr: Target, queue: usize) -> Link {
        let (tx, rx) = mpsc::channel(queue);
        let link = Link {
            tx,
            connections: Rc::new(Cell::new(0)),
            up: Rc::new(Cell::new(false)),
        };
        tokio::task::spawn_local(link_task(
            addr,
            rx,
            link.connections.clone(),
            link.up.clone(),
        ));
        link
    }

    /// Queues a command whose reply nobody waits for; false when the queue is full.
    pub fn try_send(&self, args: Vec<Vec<u8>>) -> bool {
        self.tx.try_send(Cmd { args, reply: None }).is_ok()
    }

    /// Runs a command and waits for its reply (at most [`IO_TIMEOUT`] plus the queue).
    pub async fn call(&self, args: Vec<Vec<u8>>) -> Result<Resp, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .try_send(Cmd {
                args,
                reply: Some(tx),
            })
            .map_err(|_| "registry queue full".to_string())?;
        match tokio::time::timeout(IO_TIMEOUT * 2, rx).await {
            Ok(Ok(r)) => r,
            _ => Err("no answer from Redis".into()),
        }
    }
}

async fn link_task(
    addr: Target,
    mut rx: mpsc::Receiver<Cmd>,
    connections: Rc<Cell<u64>>,
    up: Rc<Cell<bool>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let stream = match connect(&addr).await {
            Ok(s) => s,
            Err(_) => {
                up.set(false);
                // Redis is away: whoever waits is told at once, writes are lost (the bindings
                // are written again after the reconnection).
                let until = tokio::time::Instant::now() + backoff;
                loop {
                    tokio::select! {
                        c = rx.recv() => match c {
                            Some(c) => {
                                if let Some(r) = c.reply {
                                    let _ = r.send(Err("registry unavailable".into()));
                                }
                            }
                            None => return,
                        },
                        _ = tokio::time::sleep_until(until) => break,
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        up.set(true);
        connections.set(connections.get() + 1);
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(64 * 1024, rd);
        let mut out = Vec::with_capacity(64 * 1024);
        let mut batch: Vec<Option<oneshot::Sender<Result<Resp, String>>>> = Vec::new();
        'conn: loop {
            // Idle: a command to send, or the server closing the connection (a Redis restart,
            // noticed at once so that the bindings are written again).
            let first = tokio::select! {
                c = rx.recv() => c,
                _ = rd.fill_buf() => {
                    up.set(false);
                    break 'conn;
                }
            };
            let Some(first) = first else {
                return;
            };
            out.clear();
            batch.clear();
            let mut next = Some(first);
            while let Some(c) = next.take() {
                let args: Vec<&[u8]> = c.args.iter().map(|a| a.as_slice()).collect();
                encode(&args, &mut out);
                batch.push(c.reply);
                if batch.len() < MAX_PIPELINE {
                    next = rx.try_recv().ok();
                }
            }
            let r = tokio::time::timeout(IO_TIMEOUT, async {
                wr.write_all(&out).await?;
                let mut replies = Vec::with_capacity(batch.len());
                for _ in 0..batch.len() {
                    replies.push(read(&mut rd).await?);
                }
                Ok::<_, std::io::Error>(replies)
            })
            .await;
            match r {
                Ok(Ok(replies)) => {
                    for (reply, to) in replies.into_iter().zip(batch.drain(..)) {
                        if let Some(to) = to {
                            let _ = to.send(Ok(reply));
                        }
                    }
                }
                _ => {
                    for to in batch.drain(..).flatten() {
                        let _ = to.send(Err("registry connection lost".into()));
                    }
                    up.set(false);
                    break 'conn;
                }
            }
        }
    }
}

/// Subscribes to `channel` and calls `on_message` with each message's payload, reconnecting
/// (and subscribing again) whenever the connection is lost; runs until the task is dropped.
pub async fn subscribe(addr: Target, channel: String, mut on_message: impl FnMut(&[u8])) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if let Ok(s) = connect(&addr).await {
            let (rd, mut wr) = s.into_split();
            let mut rd = BufReader::new(rd);
            let mut cmd = Vec::new();
            encode(&[b"SUBSCRIBE", channel.as_bytes()], &mut cmd);
            if wr.write_all(&cmd).await.is_ok() {
                backoff = Duration::from_millis(100);
                while let Ok(m) = read(&mut rd).await {
                    if let Resp::Array(Some(v)) = m
                        && v.len() == 3
                        && v[0] == Resp::Bulk(Some(b"message".to_vec()))
                        && let Resp::Bulk(Some(payload)) = &v[2]
                    {
                        on_message(payload);
                    }
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> std::io::Result<Resp> {
        read(&mut BufReader::new(bytes)).await
    }

    #[test]
    fn encodes_and_parses_bounded() {
        let mut out = Vec::new();
        encode(&[b"SET", b"k", b"a b"], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\na b\r\n");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            assert_eq!(parse(b"+OK\r\n").await.unwrap(), Resp::Simple("OK".into()));
            assert_eq!(parse(b":3\r\n").await.unwrap(), Resp::Int(3));
            assert_eq!(parse(b"$-1\r\n").await.unwrap(), Resp::Bulk(None));
            assert_eq!(
                parse(b"*2\r\n$1\r\nx\r\n-ERR no\r\n").await.unwrap(),
                Resp::Array(Some(vec![
                    Resp::Bulk(Some(b"x".to_vec())),
                    Resp::Error("ERR no".into())
                ]))
            );
            assert!(parse(b"$99999999\r\n").await.is_err());
            assert!(parse(b"*99999999\r\n").await.is_err());
            assert!(
                parse(b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n")
                    .await
                    .is_err()
            );
            assert!(parse(b"?x\r\n").await.is_err());
            assert!(parse(b"+no end").await.is_err());
        });
        let t = |a: &str, u: Option<&str>, p: Option<&str>| Target {
            addr: a.into(),
            user: u.map(Into::into),
            password: p.map(Into::into),
        };
        assert_eq!(
            parse_url("redis://127.0.0.1:6380").unwrap(),
            t("127.0.0.1:6380", None, None)
        );
        assert_eq!(
            parse_url("redis://localhost/").unwrap(),
            t("localhost:6379", None, None)
        );
        assert_eq!(
            parse_url("redis://:s3cr%40t@h:1").unwrap(),
            t("h:1", None, Some("s3cr@t"))
        );
        assert_eq!(
            parse_url("redis://u:p@w@[::1]:7").unwrap(),
            t("[::1]:7", Some("u"), Some("p@w"))
        );
        assert!(parse_url("redis://nocolon@h:1").is_err());
        assert!(parse_url("redis://h:1/0").is_err());
        let e = parse_url("redis://:hunter2@h:1/0").unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
        let shown = parse_url("redis://:hunter2@h:1").unwrap();
        assert_eq!(shown.to_string(), "h:1 (AUTH)");
        assert!(!format!("{shown:?}").contains("hunter2"));
    }

    /// A real `redis-server --requirepass` (skipped when it is not installed, outside CI):
    /// the link authenticates and is served; a wrong password, or none, is not.
    #[test]
    fn link_authenticates_with_the_url_password() {
        use std::process::{Command, Stdio};
        let installed = Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but redis-server is not installed"
            );
            eprintln!("SKIPPED: redis-server is not installed");
            return;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        struct Kid(std::process::Child);
        impl Drop for Kid {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _redis = Kid(Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--requirepass", "p@ss word"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server"));
        let t0 = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let ping = |url: String| {
            let target = parse_url(&url).unwrap();
            tokio::task::LocalSet::new().block_on(&rt, async move {
                let link = Link::start(target, 8);
                link.call(vec![b"PING".to_vec()]).await
            })
        };
        assert_eq!(
            ping(format!("redis://:p%40ss%20word@127.0.0.1:{port}")),
            Ok(Resp::Simple("PONG".into()))
        );
        assert_eq!(
            ping(format!("redis://default:p%40ss%20word@127.0.0.1:{port}")),
            Ok(Resp::Simple("PONG".into()))
        );
        // Refused: the link counts Redis as away, and says so without the password.
        let e = ping(format!("redis://:wrong@127.0.0.1:{port}")).unwrap_err();
        assert!(!e.contains("wrong"), "{e}");
        // No password: Redis answers NOAUTH.
        assert!(matches!(
            ping(format!("redis://127.0.0.1:{port}")),
            Ok(Resp::Error(e)) if e.starts_with("NOAUTH")
        ));
    }
}
