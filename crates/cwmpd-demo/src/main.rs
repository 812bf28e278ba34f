//! `cwmpd-demo`: the whole mission on one machine, readable by a newcomer. On loopback, in this
//! process: the agent (the library's `agent::run`, what the `cwmpd` binary runs), the project's
//! test ACS, the project's TR-111 STUN server (`cwmp-connreq`'s library), and a throw-away
//! Prosody XMPP server when Prosody is installed.
//!
//! 1. the box boots and calls the ACS, which reads and changes it;
//! 2. the middleware sees the channel the ACS set;
//! 3. the ACS wakes the box with an HTTP connection request (Digest);
//! 4. ... with a UDP connection request, sent by the STUN server from the socket the box keeps
//!    its binding with (what gets through a NAT);
//! 5. ... with an XMPP connection request through Prosody.
//!
//! Every wake-up ends in a session whose Inform carries "6 CONNECTION REQUEST"; the demo prints
//! what crossed the wire and the time from the request to that Inform. Never part of the
//! shipped agent (`cargo run --release -p cwmpd-demo`).

mod prosody;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cwmp_connreq::{http, stunsrv, xmpp};
use cwmp_testacs::{AcsOptions, SessionRecord, TestAcsHandle, datamodel_dir, spawn_in_thread};
use cwmpd::cwmp::soap::{AcsRequest, CpeMessage, ParamValue};
use prosody::Prosody;

const CHANNEL: &str = "Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_CurrentChannel";
/// The box's ConnectionRequestUsername / Password: every mechanism authenticates with them.
const CR_USER: &str = "acs";
const CR_PASS: &str = "demo-secret";
const WAIT: Duration = Duration::from_secs(20);

fn demo_config(
    dir: &Path,
    acs_url: &str,
    stun: &stunsrv::StunServer,
    xmpp: Option<&Prosody>,
) -> String {
    let mut cfg = format!(
        r#"[agent]
state_dir = "{d}/state"
datamodel = ["{m}"]
control_socket = "{d}/ctl.sock"
log_level = "warn"

[connreq]
http_listen = ["127.0.0.1:0"]
udp_listen = "127.0.0.1:0"
"#,
        d = dir.display(),
        m = datamodel_dir().display()
    );
    if let Some(p) = xmpp {
        cfg.push_str(&format!("\n[xmpp]\nca_file = \"{}\"\n", p.ca.display()));
    }
    cfg.push_str(&format!(
        r#"
[parameters]
"Device.DeviceInfo.Manufacturer" = "Demo STB Co"
"Device.DeviceInfo.ManufacturerOUI" = "00D09E"
"Device.DeviceInfo.ModelName" = "STB-Demo"
"Device.DeviceInfo.ProductClass" = "STB"
"Device.DeviceInfo.SerialNumber" = "DEMO0001"
"Device.ManagementServer.URL" = "{acs_url}"
"Device.ManagementServer.ConnectionRequestUsername" = "{CR_USER}"
"Device.ManagementServer.ConnectionRequestPassword" = "{CR_PASS}"
"Device.Services.STBService.1.Enable" = true
"{CHANNEL}" = "101"
# UDP connection requests (TR-111): keep a binding with the STUN server, a keep-alive every 30 s.
"Device.ManagementServer.STUNEnable" = true
"Device.ManagementServer.STUNServerAddress" = "{stun_ip}"
"Device.ManagementServer.STUNServerPort" = {stun_port}
"Device.ManagementServer.STUNMinimumKeepAlivePeriod" = 30
"Device.ManagementServer.STUNMaximumKeepAlivePeriod" = 30
"#,
        stun_ip = stun.stun_addr().ip(),
        stun_port = stun.stun_addr().port(),
    ));
    if let Some(p) = xmpp {
        let (user, pw) = prosody::CPE;
        cfg.push_str(&format!(
            r#"# XMPP connection requests (Annex K): log in to Prosody; only the ACS's JID may wake the box.
"Device.ManagementServer.ConnReqXMPPConnection" = "Device.XMPP.Connection.1"
"Device.ManagementServer.ConnReqAllowedJabberIDs" = "{acs}@{domain}"
"Device.XMPP.Connection.1.Enable" = true
"Device.XMPP.Connection.1.Username" = "{user}"
"Device.XMPP.Connection.1.Password" = "{pw}"
"Device.XMPP.Connection.1.Domain" = "{domain}"
"Device.XMPP.Connection.1.Resource" = "cwmp"
"Device.XMPP.Connection.1.UseTLS" = true
"Device.XMPP.Connection.1.ServerConnectAlgorithm" = "ServerTable"
"Device.XMPP.Connection.1.Server.1.Enable" = true
"Device.XMPP.Connection.1.Server.1.ServerAddress" = "127.0.0.1"
"Device.XMPP.Connection.1.Server.1.Port" = {port}
"#,
            acs = prosody::ACS.0,
            domain = prosody::DOMAIN,
            port = p.port,
        ));
    }
    cfg
}

fn describe(m: &CpeMessage) -> String {
    match m {
        CpeMessage::GetParameterValuesResponse { list } => {
            let mut s = format!("GetParameterValuesResponse ({} values)", list.len());
            for p in list.iter().take(6) {
                s.push_str(&format!("\n        {} = {:?}", p.name, p.value));
            }
            if list.len() > 6 {
                s.push_str("\n        ...");
            }
            s
        }
        CpeMessage::SetParameterValuesResponse { status } => {
            format!("SetParameterValuesResponse (status {status}: applied)")
        }
        CpeMessage::AddObjectResponse {
            instance_number, ..
        } => format!("AddObjectResponse (new instance {instance_number})"),
        CpeMessage::Fault(f) => {
            let mut s = format!("Fault {} {}", f.code, f.string);
            for x in &f.set_parameter_values_faults {
                s.push_str(&format!("\n        {}: {} {}", x.name, x.code, x.string));
            }
            s
        }
        other => other.method_name().to_string(),
    }
}

fn events(s: &SessionRecord) -> Vec<String> {
    s.inform
        .iter()
        .flat_map(|i| i.events.iter().map(|e| e.event_code.clone()))
        .collect()
}

/// Waits until no session is running and none has started for a moment (so that a connection
/// request is not merged into a session the agent opened on its own, e.g. a "4 VALUE CHANGE").
fn settle(acs: &TestAcsHandle) {
    let t0 = Instant::now();
    let (mut count, mut since) = (acs.session_count(), Instant::now());
    while t0.elapsed() < WAIT {
        let s = acs.sessions();
        if s.len() != count {
            (count, since) = (s.len(), Instant::now());
        }
        if s.iter().all(|s| s.ended) && since.elapsed() > Duration::from_millis(300) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The sessions the ACS has seen that the demo has not shown yet.
struct Sessions<'a> {
    acs: &'a TestAcsHandle,
    shown: usize,
    /// The parameter values the Informs shown so far carried.
    informed: BTreeMap<String, String>,
}

impl Sessions<'_> {
    /// Prints session `n`: its Inform's events, what a "4 VALUE CHANGE" reports, the ACS's
    /// requests and the CPE's answers.
    fn show(&mut self, n: usize, s: &SessionRecord) {
        let Some(inf) = &s.inform else {
            println!("   session {n}: no Inform ({:?})", s.errors);
            return;
        };
        let events = events(s);
        println!(
            "   session {n}: Inform from {} {} with events {events:?}",
            inf.device_id.oui, inf.device_id.serial_number
        );
        for p in &inf.params {
            let old = self.informed.insert(p.name.clone(), p.value.clone());
            // ParameterKey is in every Inform; the ACS set it itself (SetParameterValues).
            if events.iter().any(|e| e == "4 VALUE CHANGE")
                && old.as_ref() != Some(&p.value)
                && p.name != "Device.ManagementServer.ParameterKey"
            {
                println!("     changed: {} = {:?}", p.name, p.value);
            }
        }
        for (req, resp) in s.sent.iter().zip(s.received.iter()) {
            println!("     ACS -> {}", req.method_name());
            println!("     CPE <- {}", describe(resp));
        }
        if let (Some(a), Some(b)) = (s.inform_at, s.ended_at) {
            println!("     (session took {:.1} ms)", ms(b - a));
        }
    }

    /// Waits for quiet, then shows the sessions the agent opened on its own since the last call
    /// (e.g. "4 VALUE CHANGE" for its new ConnReqJabberID, a parameter the ACS is always told).
    fn show_others(&mut self) {
        settle(self.acs);
        let s = self.acs.sessions();
        if s.len() > self.shown {
            println!("   meanwhile, the agent called the ACS on its own:");
        }
        for (i, x) in s.iter().enumerate().skip(self.shown) {
            self.show(i + 1, x);
        }
        self.shown = s.len();
    }

    /// Waits for the first new session (ended) whose events satisfy `want`; shows every new one.
    fn wait_for(&mut self, want: &str) -> Result<SessionRecord, String> {
        let t0 = Instant::now();
        loop {
            let s = self.acs.sessions();
            if let Some(i) = (self.shown..s.len())
                .find(|&i| s[i].ended && events(&s[i]).iter().any(|e| e == want))
            {
                for (j, x) in s.iter().enumerate().take(i + 1).skip(self.shown) {
                    self.show(j + 1, x);
                }
                self.shown = i + 1;
                return Ok(s[i].clone());
            }
            if t0.elapsed() > WAIT {
                return Err(format!("no session with \"{want}\" within {WAIT:?}"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Sends a connection request with `send` (which prints what happened) and waits for the
    /// session it starts; returns the time from the request to that session's Inform.
    fn connection_request(
        &mut self,
        send: impl FnOnce() -> Result<(), String>,
    ) -> Result<Duration, String> {
        self.show_others();
        let t0 = Instant::now();
        send()?;
        let s = self.wait_for("6 CONNECTION REQUEST")?;
        let at = s.inform_at.ok_or("no Inform")?;
        let took = at.saturating_duration_since(t0);
        println!(
            "   CR -> Inform with \"6 CONNECTION REQUEST\": {:.1} ms",
            ms(took)
        );
        Ok(took)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Reads parameters through the agent's control socket (what the middleware does).
fn ctl_get(sock: &Path, names: &[&str]) -> Result<Vec<String>, String> {
    let ans = cwmpd::ctl::request(sock, &serde_json::json!({"op": "get", "names": names}))
        .map_err(|e| e.to_string())?;
    Ok((0..names.len())
        .map(|i| ans["values"][i]["value"].as_str().unwrap_or("").to_string())
        .collect())
}

/// Polls `f` until it gives a value, up to [`WAIT`].
fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if t0.elapsed() > WAIT {
            return Err(format!("{what}: not within {WAIT:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("cwmpd-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let r = run_in(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    match &r {
        Ok(()) => println!(
            "\ndemo finished: everything it started has stopped, its temporary files are removed."
        ),
        Err(e) => println!("\ndemo failed: {e}"),
    }
    r
}

fn run_in(dir: &Path) -> Result<(), String> {
    println!("cwmpd demo");
    // The ACS side: the test ACS, the STUN server, Prosody. Each stops when dropped.
    let acs = spawn_in_thread(AcsOptions::default());
    println!("  test ACS listening at {}", acs.url());
    let stun = stunsrv::spawn(stunsrv::Options {
        api: Some("127.0.0.1:0".parse().expect("address")),
        // Its log shows what it sends; the bindings and keep-alives are read through its API.
        log: Arc::new(|line: &str| {
            if line.starts_with("udp cr") {
                println!("   STUN server: {line}");
            }
        }),
        ..stunsrv::Options::new("127.0.0.1:0".parse().expect("address"))
    })?;
    let api = stun.api_addr().ok_or("no API")?.to_string();
    println!(
        "  STUN server (cwmp-connreq) at {}, its API at {api}",
        stun.stun_addr()
    );
    // Prosody, or why there is none (then the demo skips the XMPP connection request).
    let xmpp_server = match prosody::unavailable() {
        Some(why) => Err(why),
        None => {
            Prosody::start(&dir.join("prosody")).map_err(|e| format!("Prosody did not start: {e}"))
        }
    };
    match &xmpp_server {
        Ok(p) => println!(
            "  Prosody (XMPP) at 127.0.0.1:{} (pid {}, throw-away CA and accounts)",
            p.port,
            p.pid()
        ),
        Err(why) => println!("  no XMPP server: {why}"),
    }
    let cfg_path = dir.join("cwmpd.toml");
    std::fs::write(
        &cfg_path,
        demo_config(dir, &acs.url(), &stun, xmpp_server.as_ref().ok()),
    )
    .map_err(|e| e.to_string())?;
    println!("  agent config and state in {}", dir.display());
    println!("  data model from {}\n", datamodel_dir().display());

    // What the ACS will do in the first session.
    acs.queue(vec![
        AcsRequest::GetParameterValues {
            names: vec!["Device.DeviceInfo.".into()],
        },
        AcsRequest::SetParameterValues {
            list: vec![
                ParamValue::new(
                    "Device.ManagementServer.PeriodicInformInterval",
                    "3600",
                    "xsd:unsignedInt",
                ),
                ParamValue::new(CHANNEL, "205", "xsd:string"),
            ],
            parameter_key: "demo-1".into(),
        },
        AcsRequest::SetParameterValues {
            list: vec![ParamValue::new(
                "Device.DeviceInfo.Manufacturer",
                "Evil",
                "xsd:string",
            )],
            parameter_key: "demo-2".into(),
        },
        AcsRequest::AddObject {
            object_name: "Device.XMPP.Connection.".into(),
            parameter_key: "demo-3".into(),
        },
    ]);
    // The agent runs in this process, on a thread of its own, until the demo tells it to stop.
    let cfg = cwmpd::config::Config::load(&cfg_path).map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = std::thread::spawn(move || {
        cwmpd::agent::run(cfg, async move {
            let _ = stop_rx.await;
        })
    });
    let result = story(
        dir,
        &acs,
        &api,
        xmpp_server.as_ref().map_err(String::as_str),
    );
    let _ = stop_tx.send(());
    if let Ok(Err(e)) = agent.join() {
        println!("agent: {e}");
    }
    drop(xmpp_server);
    stun.stop()?;
    acs.stop();
    result
}

fn story(
    dir: &Path,
    acs: &TestAcsHandle,
    api: &str,
    xmpp_server: Result<&Prosody, &str>,
) -> Result<(), String> {
    let sock = dir.join("ctl.sock");
    let mut sessions = Sessions {
        acs,
        shown: 0,
        informed: BTreeMap::new(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let mut summary: Vec<(&str, Duration)> = Vec::new();

    println!("1. the agent boots and calls the ACS (events 0 BOOTSTRAP, 1 BOOT):");
    sessions.wait_for("1 BOOT")?;

    let channel = wait_until("the control socket", || ctl_get(&sock, &[CHANNEL]).ok())?;
    println!(
        "\n2. the middleware sees the channel the ACS set: {CHANNEL} = {:?}",
        channel[0]
    );
    sessions.show_others();

    let url = wait_until("ConnectionRequestURL", || {
        ctl_get(&sock, &["Device.ManagementServer.ConnectionRequestURL"])
            .ok()
            .filter(|v| !v[0].is_empty())
    })?[0]
        .clone();
    println!("\n3. HTTP connection request: the ACS wants the box now, at {url}");
    let took = sessions.connection_request(|| {
        let a = rt.block_on(http::connection_request(&url, CR_USER, CR_PASS))?;
        println!(
            "   the ACS's GET, 401 with a Digest challenge, GET with the answer: {} {} after {:.1} ms",
            a.status,
            a.reason,
            ms(a.took)
        );
        if a.accepted() { Ok(()) } else { Err(format!("HTTP CR refused: {}", a.status)) }
    })?;
    summary.push(("HTTP (Digest)", took));

    println!("\n4. UDP connection request (TR-111) through the STUN server:");
    // The agent keeps a binding with the STUN server; the server knows the box's address (behind
    // a NAT: the NAT's mapping) and sends the request from the same socket, so it gets through.
    let binding = wait_until("the agent's STUN binding", || {
        let b = rt.block_on(stunsrv::bindings(api)).ok()?;
        let b0 = b["bindings"].get(0)?.clone();
        b0["connection_request_binding"].as_bool()?.then_some(b0)
    })?;
    let udp_addr = ctl_get(
        &sock,
        &["Device.ManagementServer.UDPConnectionRequestAddress"],
    )?;
    println!(
        "   the STUN server has the box's binding (CONNECTION-REQUEST-BINDING): {}; \
         the box's UDPConnectionRequestAddress: {}",
        binding["addr"].as_str().unwrap_or("?"),
        udp_addr[0]
    );
    let took = sessions.connection_request(|| {
        let a = rt.block_on(stunsrv::request_cr(api, "last", CR_USER, CR_PASS, 3))?;
        println!("   the ACS asked the STUN server (POST /cr): {}", a.body);
        if a.ok {
            Ok(())
        } else {
            Err("the STUN server did not send the UDP CR".into())
        }
    })?;
    summary.push(("UDP via the STUN server", took));

    println!("\n5. XMPP connection request (Annex K) through Prosody:");
    match xmpp_server {
        Err(why) => println!("   XMPP CR: skipped — {why}"),
        Ok(p) => {
            let conn = "Device.XMPP.Connection.1.";
            let jid = wait_until("the agent's XMPP login", || {
                let v = ctl_get(
                    &sock,
                    &[&format!("{conn}Status"), &format!("{conn}JabberID")],
                )
                .ok()?;
                (v[0] == "Enabled").then(|| v[1].clone())
            })?;
            println!("   the box is logged in to Prosody as {jid} (TLS, SASL)");
            let (acs_user, acs_pw) = prosody::ACS;
            let params = xmpp::connect_params(
                &format!("{acs_user}@{}/acs", prosody::DOMAIN),
                acs_pw,
                &format!("127.0.0.1:{}", p.port),
                Some(&p.ca),
            )?;
            let mut client = rt.block_on(xmpp::AcsClient::login(&params))?;
            println!("   the ACS is logged in as {}", client.jid);
            let to = xmpp::Jid::new(&jid).map_err(|e| e.to_string())?;
            let took = sessions.connection_request(|| {
                let (answer, rtt) = rt.block_on(client.connection_request(
                    &to,
                    CR_USER,
                    CR_PASS,
                    Duration::from_secs(5),
                ))?;
                println!(
                    "   connectionRequest IQ to {jid}: {answer:?} after {:.1} ms",
                    ms(rtt)
                );
                match answer {
                    xmpp::Answer::Result => Ok(()),
                    other => Err(format!("XMPP CR: {other:?}")),
                }
            })?;
            rt.block_on(client.close());
            summary.push(("XMPP via Prosody", took));
        }
    }

    println!("\nconnection request -> Inform with \"6 CONNECTION REQUEST\":");
    for (what, took) in &summary {
        println!("  {what:<25} {:>7.1} ms", ms(*took));
    }
    if xmpp_server.is_err() {
        println!("  {:<25} skipped", "XMPP via Prosody");
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}
