//! `cwmpd-bench`: benchmarks that print tables.
//!
//! * `store [N]`: the data-model store on a generated 10,000-parameter model;
//! * `session [N]`: a whole-tree GPV session against the release agent;
//! * `cr [--runs N] [--idle-seconds S] [--out DIR] [--no-netns]`: connection requests by every
//!   mechanism, the physical floor and the footprint; writes `DIR/README-table.md`, `cr.csv`
//!   and `cr.svg` (default `results/`);
//! * `footprint [--out DIR] [--build-features] [--skip-idle] [--skip-hostile]
//!   [--settle-seconds S]`: stripped sizes per target and feature set, idle memory with every
//!   mechanism up, peak RSS of the 10,000-parameter GPV and of hostile/huge ACS messages, judged
//!   against the footprint targets (issue #14); writes `DIR/footprint.md` and `footprint.csv`;
//! * `diag [--runs N] [--size-mb M] [--rate-mbit R] [--out DIR]`: the TR-143 IPPing and
//!   Download diagnostics against `ping` and `curl` on the same path, and end to end through the
//!   release agent (Requested → 8 DIAGNOSTICS COMPLETE);
//! * `fleet sim [--counts N,N] [--crs N] [--concurrency K] [--out DIR] [--agents-dir DIR] [--sim-counts N,N] [--sim-wait MS]`: the fleet simulator
//!   (`cwmpd-fleet`) against the test ACS: agents per process, heap and RSS per idle agent, boot
//!   Informs/s, CR → Inform p50/p99 (`fleet_sim.rs`); writes `DIR/fleet-sim.md`;
//! * `fleet-stun [--seconds S] [--cpes N] [--sockets N] [--window N] [--crs N]
//!   [--server-core C] [--load-core C] [--out DIR]`: keep-alives per second of one STUN server
//!   instance on one core against coturn, and CR routing latency through the Redis registry
//!   (`fleet_stun.rs`);
//! * `all [cr options]`: store, session and cr.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use cwmpd::model::store::{LiveKind, LiveSource};
use cwmpd::model::{Schema, Store};

mod cr;
mod diag;
mod fleet_sim;
mod fleet_stun;
mod footprint;
mod genieacs_sim;
mod report;
mod rig;
mod session;

/// Counts live heap bytes, so the store's memory is measured exactly.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

pub(crate) struct NoLive;
impl LiveSource for NoLive {
    fn read(&mut self, _: LiveKind) -> Option<String> {
        None
    }
}

const USAGE: &str = "usage: cwmpd-bench [store [N] | session [N] | cr [--runs N] [--idle-seconds S] [--out DIR] [--no-netns] | footprint [--out DIR] [--build-features] [--skip-idle] [--skip-hostile] [--settle-seconds S] | diag [--runs N] [--size-mb M] [--rate-mbit R] [--out DIR] | fleet sim [--counts N,N] [--crs N] [--concurrency K] [--out DIR] [--agents-dir DIR] [--sim-counts N,N] [--sim-wait MS] | fleet-stun [--seconds S] [--cpes N] [--sockets N] [--window N] [--crs N] [--server-core C] [--load-core C] [--out DIR] | all [cr options]]";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("store") | None => {
            bench_store(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10_000));
            0
        }
        Some("session") => {
            let n = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10_000);
            report_err("session", session::run(n, 20))
        }
        Some("cr") => report_err("cr", bench_cr(&args[1..])),
        Some("footprint") => report_err(
            "footprint",
            footprint::Opts::parse(&args[1..])
                .map_err(|e| format!("{e}\n{USAGE}"))
                .and_then(|o| footprint::run(&o)),
        ),
        Some("diag") => report_err(
            "diag",
            diag::Opts::parse(&args[1..])
                .map_err(|e| format!("{e}\n{USAGE}"))
                .and_then(|o| diag::run(&o)),
        ),
        Some("fleet") if args.get(1).map(String::as_str) == Some("sim") => report_err(
            "fleet sim",
            fleet_sim::Opts::parse(&args[2..])
                .map_err(|e| format!("{e}\n{USAGE}"))
                .and_then(|o| fleet_sim::run(&o)),
        ),
        Some("fleet-stun") => report_err(
            "fleet-stun",
            fleet_stun::Opts::parse(&args[1..])
                .map_err(|e| format!("{e}\n{USAGE}"))
                .and_then(|o| fleet_stun::run(&o)),
        ),
        Some("all") => {
            bench_store(10_000);
            println!();
            let s = report_err("session", session::run(10_000, 20));
            println!();
            s.max(report_err("cr", bench_cr(&args[1..])))
        }
        // The middleware side of the channel-change measurement (run by the agent).
        Some("provider-relay") => match args.get(1) {
            Some(sock) => report_err("provider-relay", cr::provider_relay(sock)),
            None => 2,
        },
        Some(other) => {
            eprintln!("{USAGE}   (unknown: {other})");
            2
        }
    };
    std::process::exit(code);
}

fn report_err(what: &str, r: Result<(), String>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cwmpd-bench {what}: {e}");
            1
        }
    }
}

fn bench_cr(args: &[String]) -> Result<(), String> {
    let o = cr::Opts::parse(args).map_err(|e| format!("{e}\n{USAGE}"))?;
    let rep = cr::run(&o)?;
    println!(
        "cwmpd-bench cr: {} ({} runs per figure after {} warm-up runs)",
        rep.machine, rep.runs, rep.warmup
    );
    println!("{}", rep.latency_markdown());
    println!("{}", rep.footprint_markdown());
    for n in &rep.notes {
        println!("* {n}");
    }
    rep.write(&o.out)?;
    println!(
        "\nwrote {d}/README-table.md, {d}/cr.csv, {d}/cr.svg",
        d = o.out.display()
    );
    Ok(())
}

/// A model with `rows` instances of a 10-parameter table, all instantiated by factory values.
fn generated_model(params: usize) -> (Schema, Vec<(String, String)>) {
    let mut xml = String::from(
        "<dm:document xmlns:dm=\"urn:broadband-forum-org:cwmp:datamodel-1-14\" spec=\"urn:bench\"><model name=\"Device:2.19\">\
         <object name=\"Device.\" access=\"readOnly\" minEntries=\"1\" maxEntries=\"1\">\
         <parameter name=\"RowNumberOfEntries\" access=\"readOnly\"><syntax><unsignedInt/></syntax></parameter></object>\
         <object name=\"Device.Row.{i}.\" access=\"readWrite\" minEntries=\"0\" maxEntries=\"unbounded\" numEntriesParameter=\"RowNumberOfEntries\">",
    );
    let types = ["string", "unsignedInt", "boolean", "int", "dateTime"];
    for c in 0..10 {
        xml.push_str(&format!(
            "<parameter name=\"Column{c}\" access=\"readWrite\"><syntax><{t}/></syntax></parameter>",
            t = types[c % types.len()]
        ));
    }
    xml.push_str("</object></model></dm:document>");
    let mut schema = Schema::default();
    schema
        .load_str(&xml, std::path::Path::new("generated.xml"))
        .expect("model");
    let rows = params.div_ceil(10);
    let factory = (1..=rows)
        .map(|r| (format!("Device.Row.{r}.Column0"), format!("row {r} value")))
        .collect();
    (schema, factory)
}

fn bench_store(n: usize) {
    let (schema, factory) = generated_model(n);
    let before = LIVE.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let mut store = Store::new(schema, &factory, Box::new(NoLive)).expect("store");
    let build = t0.elapsed();
    let mem = LIVE.load(Ordering::Relaxed) - before;
    let count = store.param_count();

    let runs = 50;
    let mut get_times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let mut bytes = 0usize;
        let k = store
            .for_each_value(&[""], |e| bytes += e.name.len() + e.value.len())
            .expect("get");
        assert_eq!(k, count);
        std::hint::black_box(bytes);
        get_times.push(t.elapsed());
    }
    let mut gpn_times = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let v = store.get_names("", false).expect("gpn");
        std::hint::black_box(v.len());
        gpn_times.push(t.elapsed());
    }
    let t = Instant::now();
    let snap = store.snapshot();
    let snap_t = t.elapsed();
    get_times.sort();
    gpn_times.sort();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    println!("cwmpd-bench store: generated model, {count} parameters, {runs} runs each");
    println!("| measure | value | target |");
    println!("|---|---|---|");
    println!("| build store from definitions | {:.2} ms | - |", ms(build));
    println!(
        "| get whole tree (GPV \"\"), p50 / max | {:.2} ms / {:.2} ms | < 20 ms |",
        ms(get_times[runs / 2]),
        ms(get_times[runs - 1])
    );
    println!(
        "| names of whole tree (GPN \"\" false), p50 | {:.2} ms | - |",
        ms(gpn_times[runs / 2])
    );
    println!(
        "| snapshot for persistence | {:.2} ms ({} values) | - |",
        ms(snap_t),
        snap.values.len()
    );
    println!(
        "| store heap memory | {:.2} MB ({} B/parameter) | < 4 MB |",
        mem as f64 / 1e6,
        mem / count.max(1)
    );
}
