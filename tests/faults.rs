//! Faults around the agent (issue #9, part 3): an ACS that is down, resets, closes, trickles
//! one byte a second or answers 500 (retries follow the TR-069 formula and no event is lost);
//! power loss (kill -9 at random points of sessions that set parameters and add objects: the
//! state is always an acknowledged one and no event disappears); a full disk (a clear error, a
//! fault to the ACS, no change and no corruption); and the wall clock jumping (libfaketime).

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::rawacs::{RawAcs, RawReq, RawResp, envelope, inform_response};
use common::*;
use cwmpd::connreq::backoff::cwmp_retry_range;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(40);

fn config(d: &TempDir, acs_url: &str, extra: &str) -> std::path::PathBuf {
    write_config(
        d.path(),
        &format!(
            "[acs]\nresponse_timeout = 3\n[parameters]\n\"Device.ManagementServer.URL\" = \"{acs_url}\"\n\"Device.ManagementServer.CWMPRetryMinimumWaitInterval\" = \"1\"\n\"Device.ManagementServer.CWMPRetryIntervalMultiplier\" = \"2000\"\n\"Device.DeviceInfo.ManufacturerOUI\" = \"00D09E\"\n\"Device.DeviceInfo.SerialNumber\" = \"FAULT1\"\n{extra}"
        ),
    )
}

fn tag(r: &RawReq, name: &str) -> Option<String> {
    let t = r.text();
    let open = format!("<{name}>");
    let i = t.find(&open)? + open.len();
    Some(t[i..].split('<').next()?.to_string())
}

fn event_codes(r: &RawReq) -> Vec<String> {
    r.text()
        .split("<EventCode>")
        .skip(1)
        .filter_map(|s| s.split('<').next().map(str::to_string))
        .collect()
}

fn informs(reqs: &[RawReq]) -> Vec<RawReq> {
    reqs.iter().filter(|r| r.is_inform()).cloned().collect()
}

fn sessions_ok(a: &Agent) -> u64 {
    a.ctl(json!({"op": "status"}))["sessions_ok"]
        .as_u64()
        .unwrap()
}

fn wait_ok(a: &Agent, n: u64) {
    let t0 = Instant::now();
    while sessions_ok(a) < n {
        assert!(
            t0.elapsed() < WAIT,
            "no successful session: {}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Checks the wait before each retry against [m·k^(n-1), m·k^n] (m = 1 s, k = 2), n being the
/// RetryCount of the retry's Inform; `extra` is how long each failure itself takes.
fn check_waits(fail_ends: &[Instant], retries: &[RawReq]) {
    for (end, r) in fail_ends.iter().zip(retries) {
        let n: u32 = tag(r, "RetryCount").unwrap().parse().unwrap();
        assert!(n >= 1, "a retry carries RetryCount ≥ 1");
        let (lo, hi) = cwmp_retry_range(n, 1, 2000);
        let gap = r.at.saturating_duration_since(*end);
        assert!(
            gap + Duration::from_millis(50) >= lo && gap <= hi + Duration::from_millis(700),
            "retry {n} after {gap:?}, formula [{lo:?}, {hi:?}]"
        );
    }
}

/// The ACS fails the first `fails` Informs with `fail()`; then behaves. Returns the Informs.
fn failing_acs(fails: usize, fail: fn() -> RawResp) -> RawAcs {
    let n = Arc::new(Mutex::new(0usize));
    RawAcs::start(move |r: &RawReq| {
        if r.is_inform() {
            let mut n = n.lock().unwrap();
            *n += 1;
            if *n <= fails {
                return fail();
            }
            return inform_response();
        }
        RawResp::end()
    })
}

fn run_failing(what: &str, fails: usize, fail: fn() -> RawResp, failure_takes: Duration) {
    let acs = failing_acs(fails, fail);
    let d = TempDir::new(what);
    let a = Agent::start(&config(&d, &acs.url(), ""));
    wait_ok(&a, 1);
    let inf = informs(&acs.requests());
    assert_eq!(inf.len(), fails + 1, "{what}: one Inform per attempt");
    let retry_counts: Vec<String> = inf.iter().map(|r| tag(r, "RetryCount").unwrap()).collect();
    let want: Vec<String> = (0..=fails).map(|i| i.to_string()).collect();
    assert_eq!(retry_counts, want, "{what}: RetryCount");
    let ends: Vec<Instant> = inf[..fails].iter().map(|r| r.at + failure_takes).collect();
    check_waits(&ends, &inf[1..]);
    // No event lost: the delivered Inform still carries BOOTSTRAP and BOOT.
    let ev = event_codes(inf.last().unwrap());
    assert!(
        ev.contains(&"0 BOOTSTRAP".to_string()) && ev.contains(&"1 BOOT".to_string()),
        "{what}: {ev:?}"
    );
    a.stop();
}

#[test]
fn acs_answering_500_retries_by_the_formula() {
    run_failing("fault-500", 3, || RawResp::status(500), Duration::ZERO);
}

#[test]
fn acs_resetting_the_connection_retries_by_the_formula() {
    run_failing("fault-rst", 2, || RawResp::Reset, Duration::ZERO);
}

#[test]
fn acs_closing_without_answer_retries_by_the_formula() {
    run_failing("fault-fin", 2, || RawResp::Close, Duration::ZERO);
}

/// One byte a second: the InformResponse never completes within the response timeout (3 s).
#[test]
fn acs_trickling_one_byte_a_second_times_out_and_retries() {
    run_failing(
        "fault-slow",
        1,
        || RawResp::Trickle(Box::new(inform_response()), Duration::from_secs(1)),
        Duration::from_secs(3),
    );
}

/// Reset after the InformResponse, mid-session: retried by the formula; what the Inform
/// delivered is not sent again, and the session then completes.
#[test]
fn acs_reset_mid_session_retries() {
    let n = Arc::new(Mutex::new(0usize));
    let acs = RawAcs::start(move |r: &RawReq| {
        if r.is_inform() {
            return inform_response();
        }
        let mut n = n.lock().unwrap();
        *n += 1;
        if *n <= 2 {
            RawResp::Reset
        } else {
            RawResp::end()
        }
    });
    let d = TempDir::new("fault-mid");
    let a = Agent::start(&config(&d, &acs.url(), ""));
    wait_ok(&a, 1);
    let reqs = acs.requests();
    let inf = informs(&reqs);
    assert_eq!(inf.len(), 3);
    // The reset empty POSTs end the failed sessions.
    let resets: Vec<Instant> = reqs
        .iter()
        .filter(|r| r.is_empty_post())
        .take(2)
        .map(|r| r.at)
        .collect();
    check_waits(&resets, &inf[1..]);
    assert!(event_codes(&inf[0]).contains(&"0 BOOTSTRAP".to_string()));
    for r in &inf[1..] {
        assert!(
            !event_codes(r).contains(&"0 BOOTSTRAP".to_string()),
            "BOOTSTRAP was acknowledged by the InformResponse: {:?}",
            event_codes(r)
        );
    }
    a.stop();
}

/// The ACS is down (nothing listens), then comes up on the same port.
#[test]
fn acs_down_then_up() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let d = TempDir::new("fault-down");
    let a = Agent::start(&config(&d, &format!("http://{addr}/acs"), ""));
    let t0 = Instant::now();
    while a.ctl(json!({"op": "status"}))["retry_count"]
        .as_u64()
        .unwrap()
        < 2
    {
        assert!(t0.elapsed() < WAIT, "{}", a.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let acs = RawAcs::start_on(TcpListener::bind(addr).unwrap(), |r: &RawReq| {
        if r.is_inform() {
            inform_response()
        } else {
            RawResp::end()
        }
    });
    wait_ok(&a, 1);
    let inf = informs(&acs.requests());
    assert_eq!(inf.len(), 1);
    assert_eq!(tag(&inf[0], "RetryCount").as_deref(), Some("2"));
    let ev = event_codes(&inf[0]);
    assert!(ev.contains(&"0 BOOTSTRAP".to_string()) && ev.contains(&"1 BOOT".to_string()));
    // The wait before the third attempt followed the formula: [2 s, 4 s] after the second.
    assert!(t0.elapsed() >= Duration::from_secs(2), "{:?}", t0.elapsed());
    a.stop();
}

// ---------------------------------------------------------------------------------------------
// Power loss.

/// What the data model holds that the sessions change.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Model {
    key: String,
    prov: String,
    instances: BTreeSet<u32>,
}

/// The step in flight and the model after it.
#[derive(Default)]
struct Ledger {
    acked: Option<Model>,
    /// The state if the last RPC sent was applied (its answer not yet received).
    pending: Option<Model>,
    run: usize,
    step: usize,
    /// Informs seen, with whether the agent went on after the InformResponse (empty POST).
    informs: Vec<Vec<String>>,
    bootstrap_answered: bool,
    bootstrap_acked: bool,
    /// Hold the ACS's answers (while the test reads the state).
    paused: bool,
    /// What the ACS found wrong (its handler runs on other threads).
    errors: Vec<String>,
}

fn ip_path(n: u32) -> String {
    format!("Device.ManagementServer.InformParameter.{n}.")
}

/// The power-loss ACS: per session SPV(ProvisioningCode, key s-R), AddObject (key a-R),
/// DeleteObject of the oldest instance when there are more than 3 (key d-R), then the end.
fn power_acs(ledger: Arc<Mutex<Ledger>>) -> RawAcs {
    RawAcs::start(move |r: &RawReq| {
        // While the test reads the state after a restart, the boot session waits here.
        while ledger.lock().unwrap().paused {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut l = ledger.lock().unwrap();
        if r.is_inform() {
            let ev = event_codes(r);
            let has = ev.contains(&"0 BOOTSTRAP".to_string());
            let i = l.informs.len();
            // No event lost: BOOTSTRAP stays in every Inform until one carrying it got an
            // InformResponse; once the agent went on after that (it saved its queue before the
            // empty POST) it is never sent again. Every boot's Inform has BOOT.
            if !ev.contains(&"1 BOOT".to_string()) {
                l.errors.push(format!("Inform {i} has no BOOT: {ev:?}"));
            }
            if !l.bootstrap_answered && !has {
                l.errors.push(format!(
                    "Inform {i} lost BOOTSTRAP before any InformResponse: {ev:?}"
                ));
            }
            if l.bootstrap_acked && has {
                l.errors.push(format!(
                    "Inform {i} repeats an acknowledged BOOTSTRAP: {ev:?}"
                ));
            }
            // An InformResponse to a BOOTSTRAP Inform delivers it (the power cut may have come
            // before the empty POST reached us): an Inform without it after that is the agent
            // having moved on, so the event counts as acknowledged from here.
            if l.bootstrap_answered && !has {
                l.bootstrap_acked = true;
            }
            l.informs.push(ev);
            l.step = 0;
            // Every third Inform is refused (connection reset): the events must stay queued.
            if i % 3 == 2 {
                return RawResp::Reset;
            }
            if has {
                l.bootstrap_answered = true;
            }
            return inform_response();
        }
        // The answer to the previous step, if any: acknowledged.
        let text = r.text();
        if l.step > 0 && !text.contains("<FaultCode>") && !r.is_empty_post() {
            let Some(mut m) = l.pending.take() else {
                l.errors
                    .push(format!("an answer without a request: {text}"));
                return RawResp::end();
            };
            if text.contains("AddObjectResponse") {
                let n: u32 = tag(r, "InstanceNumber").unwrap().parse().unwrap();
                m.instances.insert(n);
            }
            l.acked = Some(m);
        } else if l.step > 0 && text.contains("<FaultCode>") {
            l.errors.push(format!("unexpected fault: {text}"));
        }
        if l.step == 0
            && l.informs
                .last()
                .is_some_and(|e| e.contains(&"0 BOOTSTRAP".into()))
        {
            l.bootstrap_acked = true;
        }
        let Some(acked) = l.acked.clone() else {
            return RawResp::end();
        };
        let run = l.run;
        let step = l.step;
        l.step += 1;
        let (resp, pending) = match step {
            0 => {
                let key = format!("s-{run}");
                let m = Model {
                    key: key.clone(),
                    prov: format!("p-{run}"),
                    ..acked.clone()
                };
                (
                    envelope(
                        &format!("s{run}"),
                        &format!(
                            "<cwmp:SetParameterValues><ParameterList><ParameterValueStruct><Name>Device.DeviceInfo.ProvisioningCode</Name><Value xsi:type=\"xsd:string\">p-{run}</Value></ParameterValueStruct></ParameterList><ParameterKey>{key}</ParameterKey></cwmp:SetParameterValues>"
                        ),
                    ),
                    m,
                )
            }
            1 => {
                let key = format!("a-{run}");
                (
                    envelope(
                        &format!("a{run}"),
                        &format!(
                            "<cwmp:AddObject><ObjectName>Device.ManagementServer.InformParameter.</ObjectName><ParameterKey>{key}</ParameterKey></cwmp:AddObject>"
                        ),
                    ),
                    // The instance number is only known from the answer; see `consistent`.
                    Model {
                        key,
                        ..acked.clone()
                    },
                )
            }
            2 if acked.instances.len() > 3 => {
                let key = format!("d-{run}");
                let oldest = *acked.instances.iter().next().unwrap();
                let mut m = Model {
                    key: key.clone(),
                    ..acked.clone()
                };
                m.instances.remove(&oldest);
                (
                    envelope(
                        &format!("d{run}"),
                        &format!(
                            "<cwmp:DeleteObject><ObjectName>{}</ObjectName><ParameterKey>{key}</ParameterKey></cwmp:DeleteObject>",
                            ip_path(oldest)
                        ),
                    ),
                    m,
                )
            }
            _ => return RawResp::end(),
        };
        l.pending = Some(pending);
        RawResp::ok_xml(resp)
    })
}

fn read_model(a: &Agent) -> Model {
    let names = a.ctl(json!({"op": "names", "path": "Device.ManagementServer.InformParameter.", "next_level": true}));
    let instances = names["names"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| {
            n["name"]
                .as_str()?
                .trim_end_matches('.')
                .rsplit('.')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    Model {
        key: a.get("Device.ManagementServer.ParameterKey"),
        prov: a.get("Device.DeviceInfo.ProvisioningCode"),
        instances,
    }
}

/// The state after a power cut is the acknowledged one, or the one after the step in flight
/// (applied, answer lost); an AddObject in flight may have created any one new instance.
fn consistent(actual: &Model, l: &Ledger) -> Option<Model> {
    let acked = l.acked.as_ref().unwrap();
    if actual == acked {
        return Some(acked.clone());
    }
    let p = l.pending.as_ref()?;
    if actual == p {
        return Some(p.clone());
    }
    if p.key.starts_with("a-")
        && actual.key == p.key
        && actual.prov == p.prov
        && actual.instances.is_superset(&p.instances)
        && actual.instances.len() == p.instances.len() + 1
    {
        return Some(actual.clone());
    }
    None
}

#[test]
fn power_loss_kill9_at_random_points() {
    let runs: usize = std::env::var("CWMPD_KILL_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let acs = power_acs(ledger.clone());
    let d = TempDir::new("power");
    let cfg = config(&d, &acs.url(), "");
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id());
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let t0 = Instant::now();
    let mut mid_session = 0;
    for run in 0..runs {
        ledger.lock().unwrap().paused = true;
        let a = Agent::start(&cfg);
        {
            let mut l = ledger.lock().unwrap();
            assert!(l.errors.is_empty(), "run {run}: {:?}", l.errors);
            let actual = read_model(&a);
            if l.acked.is_none() {
                l.acked = Some(actual.clone());
            }
            match consistent(&actual, &l) {
                Some(m) => l.acked = Some(m),
                None => panic!(
                    "run {run}: state {actual:?} is neither the acknowledged {:?} nor the one in flight {:?}\n{}",
                    l.acked,
                    l.pending,
                    a.log_text()
                ),
            }
            l.pending = None;
            l.run = run;
            l.step = 0;
            l.paused = false;
        }
        // Power cut somewhere in the boot session (it takes a few ms to ~100 ms here).
        let delay = Duration::from_micros(next() % 60_000);
        std::thread::sleep(delay);
        if ledger.lock().unwrap().step > 0 {
            mid_session += 1;
        }
        a.kill9();
        // What the agent sent before the power cut reaches the ACS now, and counts for this run.
        acs.drain(Duration::from_secs(5));
    }
    // A last boot without a power cut: the session completes.
    let a = Agent::start(&cfg);
    let t1 = Instant::now();
    while !ledger.lock().unwrap().bootstrap_acked || sessions_ok(&a) < 1 {
        assert!(t1.elapsed() < WAIT, "{}", a.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    let l = ledger.lock().unwrap();
    assert!(l.errors.is_empty(), "{:?}", l.errors);
    assert!(l.bootstrap_acked);
    let informs = l.informs.len();
    drop(l);
    println!(
        "power loss: {runs} kill -9 runs survived ({mid_session} inside a session, {informs} Informs) in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    a.stop();
}

// ---------------------------------------------------------------------------------------------
// Full disk.

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn full_disk_gives_a_clear_error_and_no_corruption() {
    if !is_root() {
        eprintln!("SKIP full_disk: needs root to mount a tmpfs");
        return;
    }
    let d = TempDir::new("fulldisk");
    let state = d.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(&state)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("SKIP full_disk: cannot mount a tmpfs here");
        return;
    }
    let _m = Mount(state.clone());
    let spv_step = Arc::new(Mutex::new(Vec::<String>::new()));
    let q = spv_step.clone();
    let acs = RawAcs::start(move |r: &RawReq| {
        if r.is_inform() {
            return inform_response();
        }
        match q.lock().unwrap().pop() {
            Some(body) if r.is_empty_post() => RawResp::ok_xml(body),
            _ => RawResp::end(),
        }
    });
    let a = Agent::start(&config(&d, &acs.url(), ""));
    wait_ok(&a, 1);
    let prov0 = a.get("Device.DeviceInfo.ProvisioningCode");
    // Fill the file system.
    let filler = state.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let _ = f.sync_all();
    }
    // An SPV from the ACS: fault 9002, value unchanged.
    spv_step.lock().unwrap().push(envelope(
        "full1",
        "<cwmp:SetParameterValues><ParameterList><ParameterValueStruct><Name>Device.DeviceInfo.ProvisioningCode</Name><Value xsi:type=\"xsd:string\">full</Value></ParameterValueStruct></ParameterList><ParameterKey>kf</ParameterKey></cwmp:SetParameterValues>",
    ));
    a.ctl(json!({"op": "inform"}));
    wait_ok(&a, 2);
    let reqs = acs.requests();
    let answer = reqs
        .iter()
        .find(|r| {
            r.text().contains("<FaultCode>") || r.text().contains("SetParameterValuesResponse")
        })
        .expect("an answer to the SPV");
    assert!(
        answer.text().contains("<FaultCode>9002</FaultCode>"),
        "{}",
        answer.text()
    );
    assert_eq!(
        a.get("Device.DeviceInfo.ProvisioningCode"),
        prov0,
        "value rolled back"
    );
    assert_eq!(
        a.get("Device.ManagementServer.ParameterKey"),
        "",
        "ParameterKey unchanged"
    );
    // Local changes: a clear error, nothing changed.
    let r = a.ctl(json!({"op": "set", "values": {"Device.DeviceInfo.ProvisioningCode": "x"}}));
    assert_eq!(r["ok"], false, "{r}");
    let r = a.ctl(json!({"op": "add", "path": "Device.ManagementServer.InformParameter."}));
    assert_eq!(r["ok"], false, "{r}");
    let n = a.ctl(json!({"op": "names", "path": "Device.ManagementServer.InformParameter.", "next_level": true}));
    assert_eq!(n["names"].as_array().map(Vec::len), Some(0), "{n}");
    let st = a.ctl(json!({"op": "status"}));
    assert!(
        st["last_persist_error"]
            .as_str()
            .is_some_and(|e| e.contains("No space left on device")),
        "the cause is reported: {st}"
    );
    // Space again: changes work, and survive a power cut.
    std::fs::remove_file(&filler).unwrap();
    let r = a.ctl(json!({"op": "set", "values": {"Device.DeviceInfo.ProvisioningCode": "after"}}));
    assert_eq!(r["ok"], true, "{r}");
    a.kill9();
    let a = Agent::start(&config(&d, &acs.url(), ""));
    assert_eq!(a.get("Device.DeviceInfo.ProvisioningCode"), "after");
    let st = a.ctl(json!({"op": "status"}));
    assert_eq!(st["state_loaded"], "current", "{st}");
    a.stop();
}

// ---------------------------------------------------------------------------------------------
// Wall-clock jumps.

/// The wall clock jumps a day forward, then two days back, while periodic informs run every
/// 2 s with a PeriodicInformTime phase: informs keep their rhythm (timers are monotonic), with
/// neither a burst nor a stall. The machine's clock is not touched: libfaketime (LD_PRELOAD)
/// moves only the agent's CLOCK_REALTIME, from a file it re-reads.
#[test]
fn wall_clock_jumps_do_not_disturb_periodic_informs() {
    let Some(lib) = faketime_lib() else {
        eprintln!("SKIP wall_clock_jumps: libfaketime not installed (apt-get install libfaketime)");
        return;
    };
    let acs = RawAcs::start(|r: &RawReq| {
        if r.is_inform() {
            inform_response()
        } else {
            RawResp::end()
        }
    });
    let d = TempDir::new("clock");
    let ft = d.path().join("faketime");
    std::fs::write(&ft, "+0\n").unwrap();
    let cfg = config(
        &d,
        &acs.url(),
        "\"Device.ManagementServer.PeriodicInformEnable\" = \"true\"\n\"Device.ManagementServer.PeriodicInformInterval\" = \"2\"\n\"Device.ManagementServer.PeriodicInformTime\" = \"2020-01-01T00:00:01Z\"\n\"Device.ManagementServer.ConnectionRequestUsername\" = \"cr\"\n\"Device.ManagementServer.ConnectionRequestPassword\" = \"cr-pw\"\n",
    );
    let child_env = [
        ("LD_PRELOAD", lib.display().to_string()),
        ("FAKETIME_TIMESTAMP_FILE", ft.display().to_string()),
        ("FAKETIME_NO_CACHE", "1".to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".to_string()),
    ];
    let a = Agent::start_with_env(&cfg, &child_env);
    let periodic = |acs: &RawAcs| {
        informs(&acs.requests())
            .into_iter()
            .filter(|r| event_codes(r).contains(&"2 PERIODIC".to_string()))
            .map(|r| r.at)
            .collect::<Vec<_>>()
    };
    let phase = |secs: u64| {
        let t0 = Instant::now();
        let n0 = periodic(&acs).len();
        std::thread::sleep(Duration::from_secs(secs));
        (periodic(&acs).len() - n0, t0)
    };
    let (n_before, _) = phase(5);
    std::fs::write(&ft, "+1d\n").unwrap();
    let (n_fwd, _) = phase(6);
    std::fs::write(&ft, "-2d\n").unwrap();
    let (n_back, _) = phase(6);
    let times = periodic(&acs);
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    println!(
        "periodic informs: {n_before} before, {n_fwd} after +1 day, {n_back} after -2 days; gaps {gaps:.2?}"
    );
    assert!((2..=3).contains(&n_before), "{n_before}");
    assert!(
        (2..=4).contains(&n_fwd),
        "forward jump: {n_fwd} informs in 6 s"
    );
    assert!(
        (2..=4).contains(&n_back),
        "backward jump: {n_back} informs in 6 s"
    );
    for g in &gaps {
        assert!(*g > 0.5 && *g < 4.5, "gap {g:.2} s: {gaps:?}");
    }
    // Digest nonces carry the (jumped) wall clock: a connection request after the jumps works.
    let url = a.get("Device.ManagementServer.ConnectionRequestURL");
    assert_eq!(digest_cr(&url, "cr", "cr-pw"), 200, "{}", a.log_text());
    a.stop();
}

/// An HTTP connection request with Digest (challenge, then the answer); returns the final status.
fn digest_cr(url: &str, user: &str, pass: &str) -> u16 {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").unwrap();
    let (hp, path) = rest.split_at(rest.find('/').unwrap());
    let get = |auth: Option<&str>| -> String {
        let mut s = std::net::TcpStream::connect(hp).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let a = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {hp}\r\nConnection: close\r\n{a}\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    let first = get(None);
    let ch = first
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("www-authenticate")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no challenge: {first}"));
    let auth =
        cwmpd::connreq::digest::DigestClient::respond(&ch, "GET", path, user, pass, "0badc0de", 1)
            .unwrap();
    get(Some(&auth))
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}
