//! `cwmpd-fleet`: N real agents in one process, for load tests of an ACS.
//!
//! Every simulated device is the agent's own code (`cwmpd::agent::start_with`: the engine, the
//! HTTP connection-request listener with Digest, the UDP/STUN socket, the XMPP client when the
//! template configures one), built from one TOML template in which `{n}` (the instance number),
//! `{n+K}` (the instance number plus K, e.g. a port base) and `{dir}` (the instance's own
//! directory under `--dir`) are replaced. All agents run on one current-thread runtime; the data
//! model definitions are parsed once and shared by every agent's store.
//!
//! Agents start with at most `--concurrency` boot sessions in flight; a progress line per second
//! while they ramp up; a summary (sessions, connection requests, failures) when SIGINT/SIGTERM
//! (or `--run-for`) stops them. `--json FILE` gets the figures as JSON when the ramp is done
//! and again at the end.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cwmpd::agent::Running;
use cwmpd::config::Config;
use cwmpd::engine::{Command, Engine};
use cwmpd::model::{Schema, Store};
use serde_json::{Value, json};
use tokio::sync::oneshot;

mod template;

/// Counts live heap bytes (the simulator's own measure of memory per agent).
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size(), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_add(new, Ordering::Relaxed);
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

const USAGE: &str = "\
usage: cwmpd-fleet -t TEMPLATE -n COUNT [-d DIR] [--first N] [--concurrency K]
                   [--boot-timeout SECONDS] [--run-for SECONDS] [--json FILE] [--log LEVEL]
  TEMPLATE   an agent configuration in which {n}, {n+K} and {dir} are replaced per instance
             (serial number, ports, state_dir = \"{dir}/state\", control_socket = \"\" or
             \"{dir}/ctl.sock\"); datamodel paths should be absolute
  -n COUNT   agents to run; instance numbers FIRST .. FIRST+COUNT-1 (FIRST default 1)
  -d DIR     the parent of the instances' directories (default ./fleet); {dir} = DIR/N
  --concurrency K   boot sessions in flight while ramping up (default 32)
  --boot-timeout S  how long an agent's first session may take before it counts as failed (60)
  --run-for S       stop after S seconds once all agents are up (default: until SIGINT/SIGTERM)
  --json FILE       write the figures as JSON when the ramp is done and at the end
  --log LEVEL       the agents' log level (error, warn, info, debug; default warn)";

#[derive(Debug)]
struct Opts {
    template: PathBuf,
    count: usize,
    first: usize,
    dir: PathBuf,
    concurrency: usize,
    boot_timeout: Duration,
    run_for: Option<Duration>,
    json: Option<PathBuf>,
    log: String,
}

fn parse_opts(args: &[String]) -> Result<Opts, String> {
    let mut o = Opts {
        template: PathBuf::new(),
        count: 0,
        first: 1,
        dir: PathBuf::from("fleet"),
        concurrency: 32,
        boot_timeout: Duration::from_secs(60),
        run_for: None,
        json: None,
        log: "warn".into(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        let num = |v: String| -> Result<u64, String> {
            v.parse()
                .map_err(|_| format!("{a} takes a number, not {v:?}"))
        };
        match a.as_str() {
            "-t" | "--template" => o.template = PathBuf::from(val()?),
            "-n" | "--count" => o.count = num(val()?)? as usize,
            "--first" => o.first = num(val()?)? as usize,
            "-d" | "--dir" => o.dir = PathBuf::from(val()?),
            "--concurrency" => o.concurrency = (num(val()?)? as usize).max(1),
            "--boot-timeout" => o.boot_timeout = Duration::from_secs(num(val()?)?.max(1)),
            "--run-for" => o.run_for = Some(Duration::from_secs(num(val()?)?)),
            "--json" => o.json = Some(PathBuf::from(val()?)),
            "--log" => o.log = val()?,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if o.template.as_os_str().is_empty() || o.count == 0 {
        return Err("-t TEMPLATE and -n COUNT are required".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let o = match parse_opts(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("cwmpd-fleet: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(o) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("cwmpd-fleet: {e}");
            ExitCode::from(2)
        }
    }
}

/// Each agent holds a TCP listener, a UDP socket and the ACS connection of a session: raise
/// the limit on open files to `want` (root may raise the hard limit too), else to the hard limit.
/// Returns the soft limit in force.
fn raise_nofile(want: u64) -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 0;
    };
    if soft >= want {
        return soft;
    }
    if want > hard && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return want;
    }
    let to = want.min(hard);
    if setrlimit(Resource::RLIMIT_NOFILE, to, hard).is_ok() {
        to
    } else {
        soft
    }
}

/// What the fleet counts while it runs.
#[derive(Default)]
struct Counters {
    started: usize,
    booted: usize,
    boot_failed: usize,
    start_failed: usize,
    in_flight: usize,
}

/// One agent's figures from its engine's `status`.
#[derive(Default, Clone, Copy)]
struct AgentStats {
    sessions_ok: u64,
    sessions_failed: u64,
    connection_requests: u64,
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

fn run(o: Opts) -> Result<bool, String> {
    let text = std::fs::read_to_string(&o.template)
        .map_err(|e| format!("{}: {e}", o.template.display()))?;
    let nofile = raise_nofile(o.count as u64 * 4 + 1024);
    if nofile < o.count as u64 * 3 {
        eprintln!(
            "cwmpd-fleet: warning: the open-file limit {nofile} is low for {} agents (3 per agent)",
            o.count
        );
    }
    cwmpd::logging::init(&o.log);
    let _ = rustls::crypto::ring::default_provider().install_default();
    std::fs::create_dir_all(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    let dir = std::fs::canonicalize(&o.dir).map_err(|e| format!("{}: {e}", o.dir.display()))?;
    // The first instance's configuration checks the template and names the data model.
    let first = instance_config(&text, o.first, &dir)?;
    let before = LIVE.load(Ordering::Relaxed);
    let schema = load_schema(&first)?;
    let defs = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    let schema = std::sync::Arc::new(schema);
    // One agent's store alone (the rest of an agent's heap is its engine, tasks and sockets).
    let before = LIVE.load(Ordering::Relaxed);
    let live = Box::new(cwmpd::model::store::ProcfsLive::default());
    let store = Store::new(schema.clone(), &first.parameters, live)?;
    let store_heap = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    println!(
        "cwmpd-fleet: {} agents (instances {}..={}), {} parameters defined ({:.1} KB of shared definitions), {} instantiated ({:.1} KB per agent's store), open-file limit {nofile}",
        o.count,
        o.first,
        o.first + o.count - 1,
        schema.params.len(),
        defs as f64 / 1024.0,
        store.param_count(),
        store_heap as f64 / 1024.0
    );
    drop(store);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, fleet(o, text, dir, schema))
}

/// The agent configuration of instance `n`.
fn instance_config(template: &str, n: usize, dir: &Path) -> Result<Config, String> {
    let own = dir.join(n.to_string());
    let text = template::instantiate(template, n, &own)?;
    Config::parse(&text, &own.join("cwmpd.toml")).map_err(|e| format!("instance {n}: {e}"))
}

fn load_schema(cfg: &Config) -> Result<Schema, String> {
    let schema = Schema::load_dirs(&cfg.agent.datamodel).map_err(|e| e.to_string())?;
    schema.validate()?;
    Ok(schema)
}

/// Builds instance `n`'s engine on a copy of the shared definitions.
fn build_engine(cfg: &Config, schema: &std::sync::Arc<Schema>) -> Result<Engine, String> {
    cfg.check_against(schema).map_err(|e| e.to_string())?;
    let live = Box::new(cwmpd::model::store::ProcfsLive::default());
    let mut store = Store::new(std::sync::Arc::clone(schema), &cfg.parameters, live)
        .map_err(|m| m.to_string())?;
    for (i, p) in cfg.providers.iter().enumerate() {
        let g = cwmpd::model::schema::generic_path(&p.prefix).into_owned();
        store.set_external_source(&g, i);
    }
    Engine::with_store(cfg.clone(), store).map_err(|e| e.to_string())
}

/// Asks an engine for its `status` (the control socket's answer), bounded in time.
async fn status(tx: &tokio::sync::mpsc::Sender<Command>) -> Option<AgentStats> {
    let (rtx, rrx) = oneshot::channel();
    tx.send(Command::Ctl(json!({"op": "status"}), rtx))
        .await
        .ok()?;
    let v: Value = tokio::time::timeout(Duration::from_secs(5), rrx)
        .await
        .ok()?
        .ok()?;
    Some(AgentStats {
        sessions_ok: v["sessions_ok"].as_u64().unwrap_or(0),
        sessions_failed: v["sessions_failed"].as_u64().unwrap_or(0),
        connection_requests: v["connection_requests"].as_u64().unwrap_or(0),
    })
}

type Agents = Rc<RefCell<Vec<Option<Running>>>>;

async fn fleet(
    o: Opts,
    text: String,
    dir: PathBuf,
    schema: std::sync::Arc<Schema>,
) -> Result<bool, String> {
    let heap0 = LIVE.load(Ordering::Relaxed);
    let rss0 = rss_bytes();
    let t0 = Instant::now();
    let agents: Agents = Rc::new(RefCell::new((0..o.count).map(|_| None).collect()));
    let counters = Rc::new(RefCell::new(Counters::default()));
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(o.concurrency));
    let mut stop = std::pin::pin!(cwmpd::util::signals::wait_for_shutdown());
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut ramp = tokio::task::JoinSet::new();
    let mut next = 0usize;
    let mut interrupted = false;
    // Ramp up: start an agent whenever a boot slot is free.
    while next < o.count || !ramp.is_empty() {
        tokio::select! {
            biased;
            _ = &mut stop => { interrupted = true; break; }
            _ = tick.tick() => progress(&counters, o.count, t0, heap0),
            permit = slots.clone().acquire_owned(), if next < o.count => {
                let permit = permit.map_err(|e| e.to_string())?;
                let i = next;
                next += 1;
                let n = o.first + i;
                // Configuration and store are built here, one at a time (CPU work on this thread).
                let cfg = instance_config(&text, n, &dir);
                let engine = cfg.and_then(|c| build_engine(&c, &schema).map(|e| (c, e)));
                let (cfg, engine) = match engine {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!("instance {n}: {e}");
                        counters.borrow_mut().start_failed += 1;
                        continue;
                    }
                };
                let (agents, counters, timeout) = (agents.clone(), counters.clone(), o.boot_timeout);
                counters.borrow_mut().in_flight += 1;
                ramp.spawn_local(async move {
                    let _permit = permit;
                    boot_one(i, n, cfg, engine, agents, counters.clone(), timeout).await;
                    counters.borrow_mut().in_flight -= 1;
                });
            }
            Some(_) = ramp.join_next(), if !ramp.is_empty() => {}
        }
    }
    ramp.abort_all();
    let ramp_time = t0.elapsed();
    progress(&counters, o.count, t0, heap0);
    cwmpd::util::trim_heap();
    let up = figures(&o, &counters, heap0, rss0, ramp_time);
    {
        let c = counters.borrow();
        println!(
            "cwmpd-fleet: up: {} of {} agents started, {} booted, {} boot failures in {:.1} s ({:.0} boots/s); heap {:.1} KB per agent, RSS {:.1} MB",
            c.started,
            o.count,
            c.booted,
            c.boot_failed + c.start_failed,
            ramp_time.as_secs_f64(),
            c.booted as f64 / ramp_time.as_secs_f64().max(1e-3),
            up["heap_per_agent_bytes"].as_f64().unwrap_or(0.0) / 1024.0,
            up["rss_bytes"].as_f64().unwrap_or(0.0) / 1e6,
        );
    }
    write_json(&o, "up", &up, None);
    if !interrupted {
        match o.run_for {
            Some(d) => {
                tokio::select! {
                    _ = &mut stop => {}
                    _ = tokio::time::sleep(d) => {}
                }
            }
            None => stop.await,
        }
    }
    // Summary: every engine's counters, then every agent stops (saving its state).
    let list: Vec<Running> = agents
        .borrow_mut()
        .iter_mut()
        .filter_map(Option::take)
        .collect();
    let mut total = AgentStats::default();
    let mut unanswered = 0usize;
    let mut with_session = 0usize;
    for a in &list {
        match status(a.commands()).await {
            Some(s) => {
                with_session += usize::from(s.sessions_ok > 0);
                total.sessions_ok += s.sessions_ok;
                total.sessions_failed += s.sessions_failed;
                total.connection_requests += s.connection_requests;
            }
            None => unanswered += 1,
        }
    }
    let stopping = Instant::now();
    let mut stops = tokio::task::JoinSet::new();
    for a in list {
        stops.spawn_local(a.stop());
    }
    while stops.join_next().await.is_some() {}
    let c = counters.borrow();
    println!(
        "cwmpd-fleet: summary: agents {}, started {}, booted {} (with a successful session at the end: {}), start failures {}, boot failures {}, sessions ok {}, sessions failed {}, connection requests answered {}, status unanswered {}, stopped in {:.1} s",
        o.count,
        c.started,
        c.booted,
        with_session,
        c.start_failed,
        c.boot_failed,
        total.sessions_ok,
        total.sessions_failed,
        total.connection_requests,
        unanswered,
        stopping.elapsed().as_secs_f64()
    );
    let ok = c.start_failed == 0 && c.boot_failed == 0 && unanswered == 0;
    drop(c);
    write_json(
        &o,
        "stopped",
        &up,
        Some(json!({
            "with_session": with_session,
            "sessions_ok": total.sessions_ok,
            "sessions_failed": total.sessions_failed,
            "connection_requests": total.connection_requests,
            "status_unanswered": unanswered,
        })),
    );
    Ok(ok)
}

/// Starts one agent and waits (bounded) until its first session has ended.
async fn boot_one(
    i: usize,
    n: usize,
    cfg: Config,
    engine: Engine,
    agents: Agents,
    counters: Rc<RefCell<Counters>>,
    timeout: Duration,
) {
    let running = match cwmpd::agent::start_with(cfg, engine).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("instance {n}: {e}");
            counters.borrow_mut().start_failed += 1;
            return;
        }
    };
    let tx = running.commands().clone();
    agents.borrow_mut()[i] = Some(running);
    counters.borrow_mut().started += 1;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut wait = Duration::from_millis(5);
    loop {
        if let Some(s) = status(&tx).await {
            if s.sessions_ok > 0 {
                counters.borrow_mut().booted += 1;
                return;
            }
            if s.sessions_failed > 0 {
                break;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_millis(100));
    }
    tracing::warn!("instance {n}: the boot session did not succeed");
    counters.borrow_mut().boot_failed += 1;
}

fn progress(counters: &Rc<RefCell<Counters>>, count: usize, t0: Instant, heap0: usize) {
    let c = counters.borrow();
    let heap = LIVE.load(Ordering::Relaxed).saturating_sub(heap0);
    println!(
        "[{:7.1}s] started {}/{count}  booted {}  failed {}  booting {}  heap {:.1} MB ({:.1} KB/agent)  RSS {:.1} MB",
        t0.elapsed().as_secs_f64(),
        c.started,
        c.booted,
        c.boot_failed + c.start_failed,
        c.in_flight,
        heap as f64 / 1e6,
        heap as f64 / 1024.0 / c.started.max(1) as f64,
        rss_bytes() as f64 / 1e6
    );
}

fn figures(
    o: &Opts,
    counters: &Rc<RefCell<Counters>>,
    heap0: usize,
    rss0: u64,
    ramp: Duration,
) -> Value {
    let c = counters.borrow();
    let heap = LIVE.load(Ordering::Relaxed).saturating_sub(heap0);
    let rss = rss_bytes();
    let per = |v: f64| v / c.started.max(1) as f64;
    json!({
        "agents": o.count,
        "started": c.started,
        "booted": c.booted,
        "start_failures": c.start_failed,
        "boot_failures": c.boot_failed,
        "ramp_seconds": ramp.as_secs_f64(),
        "boots_per_second": c.booted as f64 / ramp.as_secs_f64().max(1e-3),
        "heap_bytes": heap,
        "heap_per_agent_bytes": per(heap as f64),
        "rss_bytes": rss,
        "rss_per_agent_bytes": per(rss.saturating_sub(rss0) as f64),
    })
}

fn write_json(o: &Opts, phase: &str, up: &Value, end: Option<Value>) {
    let Some(path) = &o.json else { return };
    let mut v = up.clone();
    v["phase"] = json!(phase);
    if let Some(Value::Object(m)) = end {
        for (k, x) in m {
            v[k] = x;
        }
    }
    let tmp = path.with_extension("tmp");
    let r = std::fs::write(&tmp, format!("{v}\n")).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = r {
        eprintln!("cwmpd-fleet: {}: {e}", path.display());
    }
}
