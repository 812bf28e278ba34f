//! `cwmpd-bench fleet-stun`: the STUN side of a fleet (issue #19).
//!
//! 1. Keep-alives per second of one `cwmp-connreq stun-server` instance pinned to one core
//!    (`taskset`), with and without the Redis registry, against coturn (`turnserver
//!    --stun-only`, one relay thread, pinned to the same core) under the same load: classic
//!    (RFC 3489, what the agent sends) Binding Requests with CONNECTION-REQUEST-BINDING,
//!    USERNAME and MESSAGE-INTEGRITY from a fixed
//!    set of CPEs (each username always from the same socket), a bounded window of requests
//!    in flight, answers counted. The load generator runs on another core. The server's CPU
//!    time (from /proc) gives the rate per core actually used.
//! 2. Connection-request routing through Redis: two instances and a Redis, CPEs bound to the
//!    second; `POST /cr` asked of the owner (local) and of the other instance (routed over
//!    Redis pub/sub), client round trip (a new TCP connection each, as the API is used) and the
//!    server's own `route_us`, p50 / p99; each request's datagram is checked to arrive.
//!
//! The generator is cheap per request (a prebuilt pool of signed requests with distinct
//! transaction ids, epoll, one answer in 64 checked in full) and says which side was the limit.
//!
//! Targets: ≥ 100,000 keep-alives/s on one core, ≥ 2× coturn in the same run; routed CR p50
//! ≤ 1 ms on loopback.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cwmpd::connreq::stun;

use crate::rig::{self, Proc};

pub struct Opts {
    pub seconds: f64,
    pub cpes: usize,
    pub sockets: usize,
    pub window: usize,
    pub crs: usize,
    pub server_core: usize,
    pub load_core: usize,
    pub out: Option<PathBuf>,
}

impl Opts {
    pub fn parse(args: &[String]) -> Result<Opts, String> {
        let mut o = Opts {
            seconds: 5.0,
            cpes: 20_000,
            sockets: 64,
            window: 16,
            crs: 2_000,
            server_core: 0,
            load_core: 1,
            out: None,
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut v = || it.next().ok_or_else(|| format!("{a} needs a value"));
            let num = |s: &String| {
                s.parse::<f64>()
                    .map_err(|_| format!("{a}: bad number {s:?}"))
            };
            match a.as_str() {
                "--seconds" => o.seconds = num(v()?)?,
                "--cpes" => o.cpes = num(v()?)? as usize,
                "--sockets" => o.sockets = num(v()?)? as usize,
                "--window" => o.window = num(v()?)? as usize,
                "--crs" => o.crs = num(v()?)? as usize,
                "--server-core" => o.server_core = num(v()?)? as usize,
                "--load-core" => o.load_core = num(v()?)? as usize,
                "--out" => o.out = Some(PathBuf::from(v()?)),
                _ => return Err(format!("unknown option {a:?}")),
            }
        }
        if o.sockets == 0 || o.cpes < o.sockets || o.window == 0 || o.seconds <= 0.0 {
            return Err("want --cpes ≥ --sockets ≥ 1, --window ≥ 1, --seconds > 0".into());
        }
        Ok(o)
    }
}

/// What one keep-alive run measured.
struct Rate {
    what: String,
    answers: u64,
    ok: u64,
    /// Requests sent, and given up without an answer (lost, by either side).
    sent: u64,
    lost: u64,
    /// Answers checked in full (one in [`SAMPLE`]), and how many of them were wrong.
    checked: u64,
    bad: u64,
    seconds: f64,
    /// The server's CPU time.
    cpu_s: f64,
    /// The load generator's CPU time.
    gen_cpu_s: f64,
    /// How busy each pinned core was, with anything (from /proc/stat), 0..1.
    server_core_busy: f64,
    load_core_busy: f64,
}

impl Rate {
    fn per_s(&self) -> f64 {
        self.ok as f64 / self.seconds
    }
    fn per_core_s(&self) -> f64 {
        if self.cpu_s > 0.0 {
            self.ok as f64 / self.cpu_s
        } else {
            0.0
        }
    }

    /// Which side limited the rate: the one whose CPU was saturated (≥ 90 % of its core
    /// while measuring); else other processes when a pinned core was busy all the same
    /// (a shared machine); else neither (waits).
    fn limit(&self) -> String {
        let (srv, load) = (self.cpu_s / self.seconds, self.gen_cpu_s / self.seconds);
        let side = if srv >= 0.9 && srv >= load {
            "server"
        } else if load >= 0.9 {
            "generator"
        } else if self.server_core_busy >= 0.95 || self.load_core_busy >= 0.95 {
            // A pinned core was busy, but not with the server or the generator.
            "other processes on the pinned cores"
        } else {
            "neither saturated"
        };
        format!(
            "{side} (server {:.0} % CPU, core {:.0} % busy; generator {:.0} % CPU, core {:.0} % busy)",
            srv * 100.0,
            self.server_core_busy * 100.0,
            load * 100.0,
            self.load_core_busy * 100.0
        )
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime is the 14th field.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // rest starts at field 3 (state): utime = field 14 → index 11, stime → 12.
    let hz = 100.0; // USER_HZ on Linux
    (ticks(11) + ticks(12)) / hz
}

fn pinned(core: usize, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", &core.to_string()]).arg(program);
    c
}

fn pin_self(core: usize) {
    let mut set = nix::sched::CpuSet::new();
    if set.set(core).is_ok() {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
    }
}

fn wait_udp_answer(server: SocketAddr) -> Result<(), String> {
    let s = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let txid = stun::TxId::Rfc5389([9; 12]);
    let req = stun::binding_request(txid, None, None, false).map_err(|e| format!("{e:?}"))?;
    let t0 = Instant::now();
    let mut buf = [0u8; 1500];
    while t0.elapsed() < Duration::from_secs(10) {
        let _ = s.send_to(&req, server);
        if s.recv_from(&mut buf).is_ok() {
            return Ok(());
        }
    }
    Err(format!("no STUN answer from {server}"))
}

/// Transaction ids per CPE in the request pool (each request of the pool has its own).
const ROUNDS: usize = 4;
/// One answer in this many is decoded and checked in full (transaction id, mapped address,
/// MESSAGE-INTEGRITY); the others by their type only.
const SAMPLE: u64 = 64;
/// The load generator's password (the servers' `--password`).
const PASSWORD: &str = "stun pw";

/// A classic transaction id of the pool: marker, round, CPE index.
fn pool_txid(cpe: usize, round: usize) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(b"FSTN");
    id[4..8].copy_from_slice(&(round as u32).to_be_bytes());
    id[8..].copy_from_slice(&(cpe as u64).to_be_bytes());
    id
}

/// The pool's requests, prebuilt and signed: for each socket, its CPEs' keep-alives, each CPE
/// [`ROUNDS`] times with distinct transaction ids, sent cyclically.
fn request_pool(o: &Opts) -> Vec<Vec<Vec<u8>>> {
    (0..o.sockets)
        .map(|s| {
            let cpes: Vec<usize> = (s..o.cpes).step_by(o.sockets).collect();
            (0..ROUNDS)
                .flat_map(|round| cpes.iter().map(move |&i| (i, round)))
                .map(|(i, round)| {
                    // The classic RFC 3489 form, as the agent sends its keep-alives (TR-111).
                    let user = format!("stb-{i:08}");
                    stun::binding_request(
                        stun::TxId::Classic(pool_txid(i, round)),
                        Some(&user),
                        Some(PASSWORD),
                        false,
                    )
                    .expect("binding request")
                })
                .collect()
        })
        .collect()
}

/// Whether `answer`, received on socket `sock` (bound to `local`), is a success answer to one
/// of the pool's requests from that socket, with the right mapped address and, when
/// `signed`, a valid MESSAGE-INTEGRITY.
fn answer_ok(o: &Opts, answer: &[u8], sock: usize, local: SocketAddr, signed: bool) -> bool {
    if answer.len() < 20 {
        return false;
    }
    let mut h = [0u8; 16];
    h.copy_from_slice(&answer[4..20]);
    let cpe = u64::from_be_bytes(h[8..].try_into().unwrap_or([0xff; 8])) as usize;
    let round = u32::from_be_bytes(h[4..8].try_into().unwrap_or([0xff; 4])) as usize;
    if &h[..4] != b"FSTN" || cpe >= o.cpes || cpe % o.sockets != sock || round >= ROUNDS {
        return false;
    }
    let Ok(r) = stun::parse_response(answer, &stun::TxId::Classic(h)) else {
        return false;
    };
    r.error.is_none()
        && r.mapped == Some(local)
        && (!signed
            || stun::check_integrity(answer, PASSWORD.as_bytes())
                == stun::Integrity::Valid(stun::MiLayout::Rfc3489Padded))
}

/// CPU seconds of the calling thread (user + system).
fn thread_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Busy and total jiffies of each core (/proc/stat), to tell how busy a core was with
/// anything (another process included).
fn core_jiffies() -> Vec<(u64, u64)> {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return Vec::new();
    };
    s.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let total: u64 = v.iter().take(8).sum();
            // idle + iowait
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle, total)
        })
        .collect()
}

fn core_busy(before: &[(u64, u64)], after: &[(u64, u64)], core: usize) -> f64 {
    match (before.get(core), after.get(core)) {
        (Some(b), Some(a)) if a.1 > b.1 => (a.0 - b.0) as f64 / (a.1 - b.1) as f64,
        _ => f64::NAN,
    }
}

/// Drives the keep-alive load at `server` for `o.seconds` (after a 1 s warm-up) from the
/// current thread (pinned to the load core), counting answers; `pid` is the server's.
///
/// Cheap per request, so that the server is the limit: the requests come from a prebuilt
/// pool, a socket is read only when epoll says it has answers (one recvmmsg) and its window
/// refilled at once (one sendmmsg); one answer in [`SAMPLE`] is checked in full.
fn load(o: &Opts, what: &str, server: SocketAddr, pid: u32, signed: bool) -> Result<Rate, String> {
    pin_self(o.load_core);
    let socks: Vec<UdpSocket> = (0..o.sockets)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.set_nonblocking(true)?;
            s.connect(server)?;
            set_rcvbuf(&s, 1 << 20);
            Ok(s)
        })
        .collect::<std::io::Result<_>>()
        .map_err(|e| format!("load sockets: {e}"))?;
    let locals: Vec<SocketAddr> = socks
        .iter()
        .map(|s| s.local_addr())
        .collect::<std::io::Result<_>>()
        .map_err(|e| e.to_string())?;
    let pool = request_pool(o);
    let ep = Epoll::new(&socks).map_err(|e| format!("epoll: {e}"))?;
    let mut next = vec![0usize; o.sockets];
    let mut inflight = vec![0usize; o.sockets];
    let mut last_answer = vec![Instant::now(); o.sockets];
    let mut rbufs = vec![0u8; RSLOT * BATCH];
    let mut rlens = [0usize; BATCH];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; o.sockets];
    let refill = |i: usize, next: &mut [usize], inflight: &mut [usize]| {
        let want = o.window.saturating_sub(inflight[i]).min(BATCH);
        if want == 0 {
            return 0;
        }
        let n = send_batch(&socks[i], &pool[i], next[i], want);
        next[i] = (next[i] + n) % pool[i].len();
        inflight[i] += n;
        n as u64
    };
    for i in 0..o.sockets {
        refill(i, &mut next, &mut inflight);
    }
    let start = Instant::now();
    let warm = Duration::from_secs(1);
    let end = warm + Duration::from_secs_f64(o.seconds);
    let (mut answers, mut ok, mut checked, mut bad) = (0u64, 0u64, 0u64, 0u64);
    let (mut sent, mut lost) = (0u64, 0u64);
    let mut measuring = false;
    let (mut cpu0, mut gen0) = (0.0, 0.0);
    let mut cores0 = Vec::new();
    let mut t_measure = start;
    let mut swept = start;
    loop {
        let now = Instant::now();
        let el = now - start;
        if !measuring && el >= warm {
            measuring = true;
            (answers, ok, checked, bad, sent, lost) = (0, 0, 0, 0, 0, 0);
            cpu0 = cpu_seconds(pid);
            gen0 = thread_cpu_seconds();
            cores0 = core_jiffies();
            t_measure = now;
        }
        if el >= end {
            break;
        }
        let ready = ep.wait(&mut events, 5);
        for ev in &events[..ready] {
            let i = ev.u64 as usize;
            let got = recv_batch(&socks[i], &mut rbufs, &mut rlens);
            if got == 0 {
                continue;
            }
            inflight[i] = inflight[i].saturating_sub(got);
            last_answer[i] = now;
            for (k, &n) in rlens[..got].iter().enumerate() {
                let b = &rbufs[k * RSLOT..k * RSLOT + n.min(RSLOT)];
                answers += 1;
                // Binding Success (0x0101) vs anything else (errors).
                if n >= 2 && b[0] == 0x01 && b[1] == 0x01 {
                    ok += 1;
                }
                if answers.is_multiple_of(SAMPLE) {
                    checked += 1;
                    if !answer_ok(o, b, i, locals[i], signed) {
                        bad += 1;
                    }
                }
            }
            sent += refill(i, &mut next, &mut inflight);
        }
        // Requests lost (queue overflow) are given up after 20 ms without an answer; windows a
        // full send queue left short are filled.
        if now - swept >= Duration::from_millis(5) {
            swept = now;
            for i in 0..o.sockets {
                if inflight[i] > 0 && now - last_answer[i] > Duration::from_millis(20) {
                    lost += inflight[i] as u64;
                    inflight[i] = 0;
                    last_answer[i] = now;
                }
                sent += refill(i, &mut next, &mut inflight);
            }
        }
    }
    let secs = t_measure.elapsed().as_secs_f64();
    let cores1 = core_jiffies();
    Ok(Rate {
        what: what.into(),
        answers,
        ok,
        sent,
        lost,
        checked,
        bad,
        seconds: secs,
        cpu_s: cpu_seconds(pid) - cpu0,
        gen_cpu_s: thread_cpu_seconds() - gen0,
        server_core_busy: core_busy(&cores0, &cores1, o.server_core),
        load_core_busy: core_busy(&cores0, &cores1, o.load_core),
    })
}

/// Asks for a receive buffer of `bytes` (best effort; capped by `net.core.rmem_max`).
fn set_rcvbuf(s: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor and a c_int option value of the size given.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Level-triggered epoll over the load sockets (data: the socket's index).
struct Epoll(std::os::fd::OwnedFd);

impl Epoll {
    fn new(socks: &[UdpSocket]) -> std::io::Result<Epoll> {
        use std::os::fd::{AsRawFd, FromRawFd};
        // SAFETY: plain system calls; the descriptor is owned from here on.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ep = Epoll(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        for (i, s) in socks.iter().enumerate() {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: i as u64,
            };
            // SAFETY: both descriptors are open; `ev` is valid for the call.
            let r = unsafe { libc::epoll_ctl(fd, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
            if r < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(ep)
    }

    /// Ready sockets into `events`; how many.
    fn wait(&self, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
        use std::os::fd::AsRawFd;
        // SAFETY: `events` has room for `events.len()` entries.
        let n = unsafe {
            libc::epoll_wait(
                self.0.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                timeout_ms,
            )
        };
        n.max(0) as usize
    }
}

/// Datagrams per sendmmsg / recvmmsg of the load generator.
const BATCH: usize = 32;
const RSLOT: usize = 1500;

/// Sends `n` requests of `pool` from index `from` on (cyclically) on the connected socket `s`
/// with one sendmmsg; returns how many went.
fn send_batch(s: &UdpSocket, pool: &[Vec<u8>], from: usize, n: usize) -> usize {
    use std::os::fd::AsRawFd;
    let n = n.min(BATCH);
    // SAFETY: zeroed iovec / mmsghdr are valid; the iovecs point into `pool`, read only by
    // the kernel during the call; the socket is connected (no address).
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdr: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for i in 0..n {
        let m = &pool[(from + i) % pool.len()];
        iov[i].iov_base = m.as_ptr() as *mut libc::c_void;
        iov[i].iov_len = m.len();
        hdr[i].msg_hdr.msg_iov = &mut iov[i];
        hdr[i].msg_hdr.msg_iovlen = 1;
    }
    let r = unsafe {
        libc::sendmmsg(
            s.as_raw_fd(),
            hdr.as_mut_ptr(),
            n as _,
            libc::MSG_DONTWAIT as _,
        )
    };
    r.max(0) as usize
}

/// Receives up to [`BATCH`] datagrams into `bufs` (slots of [`RSLOT`]); returns how many.
fn recv_batch(s: &UdpSocket, bufs: &mut [u8], lens: &mut [usize; BATCH]) -> usize {
    use std::os::fd::AsRawFd;
    // SAFETY: as in `send_batch`; the iovecs point into `bufs` (BATCH slots of RSLOT).
    let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
    let mut hdr: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (i, slot) in bufs.chunks_mut(RSLOT).take(BATCH).enumerate() {
        iov[i].iov_base = slot.as_mut_ptr().cast();
        iov[i].iov_len = slot.len();
        hdr[i].msg_hdr.msg_iov = &mut iov[i];
        hdr[i].msg_hdr.msg_iovlen = 1;
    }
    let r = unsafe {
        libc::recvmmsg(
            s.as_raw_fd(),
            hdr.as_mut_ptr(),
            BATCH as _,
            libc::MSG_DONTWAIT as _,
            std::ptr::null_mut(),
        )
    };
    let n = r.max(0) as usize;
    for i in 0..n {
        lens[i] = hdr[i].msg_len as usize;
    }
    n
}

fn start_redis(dir: &Path, port: u16) -> Result<Proc, String> {
    let mut c = Command::new("redis-server");
    c.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
    ]);
    let p = Proc::spawn("redis-server", c, dir.join("redis.log"))?;
    rig::wait_tcp(
        None,
        SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(10),
    )?;
    Ok(p)
}

fn start_instance(
    connreq: &Path,
    dir: &Path,
    core: Option<usize>,
    name: &str,
    redis: Option<u16>,
    auth: bool,
) -> Result<(Proc, SocketAddr, SocketAddr), String> {
    let stun = SocketAddr::from(([127, 0, 0, 1], rig::free_udp_port()));
    let api = SocketAddr::from(([127, 0, 0, 1], rig::free_port()));
    let mut c = match core {
        Some(k) => pinned(k, connreq),
        None => Command::new(connreq),
    };
    c.args([
        "stun-server",
        "--listen",
        &stun.to_string(),
        "--api",
        &api.to_string(),
        "--quiet",
    ]);
    if auth {
        c.args(["--user", "*", "--password", "stun pw"]);
    }
    if let Some(p) = redis {
        c.args([
            "--redis",
            &format!("redis://127.0.0.1:{p}"),
            "--instance-id",
            name,
            "--binding-ttl",
            "120",
        ]);
    }
    let p = Proc::spawn(name, c, dir.join(format!("{name}.log")))?;
    rig::wait_tcp(None, api, Duration::from_secs(10))?;
    Ok((p, stun, api))
}

fn start_coturn(dir: &Path, core: usize) -> Result<(Proc, SocketAddr), String> {
    let port = rig::free_udp_port();
    let conf = dir.join("turnserver.conf");
    std::fs::write(&conf, "").map_err(|e| e.to_string())?;
    let mut c = pinned(core, Path::new("turnserver"));
    c.arg("-c").arg(&conf).args([
        "--no-cli",
        "--listening-ip",
        "127.0.0.1",
        "--listening-port",
        &port.to_string(),
        "--relay-threads",
        "1",
        "--realm",
        "bench.test",
        "--no-tls",
        "--no-dtls",
        // Its TCP listener fails to bind next to the UDP one here; UDP is what is measured.
        "--no-tcp",
        "--stun-only",
        "--no-stdout-log",
        "--log-file",
        dir.join("turn.log").to_str().unwrap_or("turn.log"),
        "--pidfile",
        dir.join("turn.pid").to_str().unwrap_or("turn.pid"),
    ]);
    let p = Proc::spawn("turnserver", c, dir.join("turnserver.out"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_udp_answer(addr)?;
    Ok((p, addr))
}

/// One API request on a new connection: (status, body, client round trip).
fn api(api: SocketAddr, target: &str) -> Result<(u16, serde_json::Value, Duration), String> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect(api).map_err(|e| e.to_string())?;
    let _ = s.set_nodelay(true);
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(s, "POST {target} HTTP/1.1\r\nHost: x\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    let rtt = t0.elapsed();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|b| b.1).unwrap_or("");
    Ok((
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        rtt,
    ))
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

struct Route {
    what: &'static str,
    n: usize,
    rtt_p50: f64,
    rtt_p99: f64,
    srv_p50: f64,
    srv_p99: f64,
    received: usize,
}

fn route_bench(o: &Opts, connreq: &Path, dir: &Path) -> Result<Vec<Route>, String> {
    let rp = rig::free_port();
    let _redis = start_redis(dir, rp)?;
    let (_a, _, api_a) = start_instance(connreq, dir, None, "route-a", Some(rp), true)?;
    let (_b, stun_b, api_b) = start_instance(connreq, dir, None, "route-b", Some(rp), true)?;
    // 8 CPEs bound to b.
    let cpes: Vec<(UdpSocket, String)> = (0..8)
        .map(|i| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("cpe socket");
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            (s, format!("route-stb-{i}"))
        })
        .collect();
    let mut buf = [0u8; 1500];
    for (s, user) in &cpes {
        let txid = stun::TxId::Rfc5389([3; 12]);
        let req = stun::binding_request(txid, Some(user), Some("stun pw"), false)
            .map_err(|e| format!("{e:?}"))?;
        s.send_to(&req, stun_b).map_err(|e| e.to_string())?;
        s.recv_from(&mut buf)
            .map_err(|e| format!("no STUN answer: {e}"))?;
    }
    // Registered (the write is asynchronous).
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let (st, _, _) = api(
            api_a,
            &format!("/cr?to={}&user=u&password=p&copies=1", cpes[7].1),
        )?;
        if st == 200 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (s, _) in &cpes {
        s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
        while s.recv_from(&mut buf).is_ok() {}
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    }
    let mut out = Vec::new();
    for (what, via) in [
        ("owner local (asked of the owner)", api_b),
        ("owner remote (routed through Redis)", api_a),
    ] {
        let (mut rtt, mut srv) = (Vec::new(), Vec::new());
        let mut received = 0;
        for k in 0..o.crs {
            let (s, user) = &cpes[k % cpes.len()];
            let (st, v, d) = api(via, &format!("/cr?to={user}&user=u&password=p&copies=1"))?;
            if st != 200 {
                return Err(format!("CR via {via}: {st} {v}"));
            }
            rtt.push(d.as_secs_f64() * 1000.0);
            srv.push(v["route_us"].as_f64().unwrap_or(f64::NAN) / 1000.0);
            if s.recv_from(&mut buf).is_ok() {
                received += 1;
            }
        }
        out.push(Route {
            what,
            n: o.crs,
            rtt_p50: pct(&mut rtt, 0.5),
            rtt_p99: pct(&mut rtt, 0.99),
            srv_p50: pct(&mut srv, 0.5),
            srv_p99: pct(&mut srv, 0.99),
            received,
        });
    }
    Ok(out)
}

pub fn run(o: &Opts) -> Result<(), String> {
    let (_, connreq) = crate::session::sibling_binaries()?;
    // Before the load generator pins itself to one core.
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let base = std::env::temp_dir().join(format!("cwmpd-bench-fleet-stun-{}", std::process::id()));
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    let r = run_in(o, &connreq, &base);
    let _ = std::fs::remove_dir_all(&base);
    let (rates, routes) = r?;
    let mut md = String::new();
    md += &format!(
        "cwmpd-bench fleet-stun: {} CPEs over {} sockets, window {} per socket, {:.0} s per server (after 1 s warm-up); server pinned to core {}, load on core {} ({} cores)\n\n",
        o.cpes, o.sockets, o.window, o.seconds, o.server_core, o.load_core, cores
    );
    md += "| server (one core) | keep-alives/s | per CPU-second | answers of sent (errors, lost) | checked (bad) | limit | target |\n|---|---|---|---|---|---|---|\n";
    let coturn = rates
        .iter()
        .find(|r| r.what.starts_with("coturn"))
        .map(|r| r.per_s());
    for r in &rates {
        let target = if r.what.starts_with("coturn") {
            "anchor".to_string()
        } else {
            let x = coturn.map(|c| r.per_s() / c).unwrap_or(f64::NAN);
            format!(
                "≥ 100,000/s: {}; ≥ 2× coturn: {x:.2}× {}",
                if r.per_s() >= 100_000.0 {
                    "met"
                } else {
                    "NOT met"
                },
                if x >= 2.0 { "met" } else { "NOT met" }
            )
        };
        md += &format!(
            "| {} | {:.0} | {:.0} | {} of {} ({}, {}) | {} ({}) | {} | {target} |\n",
            r.what,
            r.per_s(),
            r.per_core_s(),
            r.answers,
            r.sent,
            r.answers - r.ok,
            r.lost,
            r.checked,
            r.bad,
            r.limit()
        );
    }
    md += &format!(
        "\nkeep-alives/s: answers per wall-clock second under the same closed-loop load (bounded by the load generator's core and by requests a server loses: a lost request idles its window slot for 20 ms; lost: requests given up so). per CPU-second: answers per second of the server's own CPU time (/proc/PID/stat), i.e. the cost of one keep-alive; on a shared machine compare servers on this column too. checked (bad): answers decoded in full (one in {SAMPLE}: transaction id of a request of the pool from that socket, mapped address, MESSAGE-INTEGRITY when signed) and how many were wrong. limit: the side whose CPU was saturated (≥ 90 %) while measuring, else \"other processes\" when a pinned core was ≥ 95 % busy all the same; with each pinned core's busy share from /proc/stat (other processes included).\n"
    );
    md += &format!(
        "\n| CR through the Redis registry ({} each) | client round trip p50 / p99 | server route_us p50 / p99 | datagrams received | target |\n|---|---|---|---|---|\n",
        o.crs
    );
    for r in &routes {
        let target = if r.what.contains("remote") {
            format!(
                "p50 ≤ 1 ms: {}",
                if r.rtt_p50 <= 1.0 { "met" } else { "NOT met" }
            )
        } else {
            "-".into()
        };
        md += &format!(
            "| {} | {:.3} ms / {:.3} ms | {:.3} ms / {:.3} ms | {}/{} | {target} |\n",
            r.what, r.rtt_p50, r.rtt_p99, r.srv_p50, r.srv_p99, r.received, r.n
        );
    }
    println!("{md}");
    if let Some(out) = &o.out {
        std::fs::create_dir_all(out).map_err(|e| e.to_string())?;
        let f = out.join("fleet-stun.md");
        std::fs::write(&f, &md).map_err(|e| e.to_string())?;
        println!("wrote {}", f.display());
    }
    Ok(())
}

type Results = (Vec<Rate>, Vec<Route>);

fn run_in(o: &Opts, connreq: &Path, dir: &Path) -> Result<Results, String> {
    for (tool, arg) in [("taskset", "-V"), ("redis-server", "--version")] {
        if Command::new(tool).arg(arg).output().is_err() {
            return Err(format!("{tool} is not installed"));
        }
    }
    let mut rates = Vec::new();
    for (auth, what) in [
        (
            false,
            "cwmp-connreq stun-server (no authentication, as coturn)",
        ),
        (
            true,
            "cwmp-connreq stun-server --user '*' (MESSAGE-INTEGRITY checked and sent)",
        ),
    ] {
        let (p, stun, _) = start_instance(connreq, dir, Some(o.server_core), "solo", None, auth)?;
        wait_udp_answer(stun)?;
        rates.push(load(o, what, stun, p.pid(), auth)?);
    }
    {
        let rp = rig::free_port();
        let _redis = start_redis(dir, rp)?;
        let (p, stun, _) = start_instance(
            connreq,
            dir,
            Some(o.server_core),
            "cluster-1",
            Some(rp),
            true,
        )?;
        wait_udp_answer(stun)?;
        rates.push(load(
            o,
            "cwmp-connreq stun-server --user '*' --redis (registry writes)",
            stun,
            p.pid(),
            true,
        )?);
    }
    match start_coturn(dir, o.server_core) {
        Ok((p, addr)) => {
            // turnserver forks nothing with these options; its PID is the child's.
            rates.push(load(
                o,
                "coturn --stun-only, 1 relay thread",
                addr,
                p.pid(),
                false,
            )?);
        }
        Err(e) => eprintln!("coturn not measured: {e}"),
    }
    let routes = route_bench(o, connreq, dir)?;
    Ok((rates, routes))
}
