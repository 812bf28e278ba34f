//! `cwmpd-demo`: the agent and the project's test ACS on loopback (built with the `tools`
//! feature; never part of the shipped agent). The ACS reads and changes
//! the box in the boot session, then sends an HTTP connection request, and the demo prints
//! what crossed the wire, readable by a newcomer.

use std::path::Path;
use std::time::{Duration, Instant};

use cwmp_testacs::{AcsOptions, SessionRecord, datamodel_dir, spawn_in_thread};
use cwmpd::cwmp::soap::{AcsRequest, CpeMessage, ParamValue};

const CHANNEL: &str = "Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_CurrentChannel";

fn demo_config(dir: &Path, acs_url: &str) -> String {
    format!(
        r#"[agent]
state_dir = "{d}/state"
datamodel = ["{m}"]
control_socket = "{d}/ctl.sock"
log_level = "warn"

[connreq]
http_listen = ["127.0.0.1:0"]
udp_listen = "127.0.0.1:0"

[parameters]
"Device.DeviceInfo.Manufacturer" = "Demo STB Co"
"Device.DeviceInfo.ManufacturerOUI" = "00D09E"
"Device.DeviceInfo.ModelName" = "STB-Demo"
"Device.DeviceInfo.ProductClass" = "STB"
"Device.DeviceInfo.SerialNumber" = "DEMO0001"
"Device.ManagementServer.URL" = "{acs_url}"
"Device.ManagementServer.ConnectionRequestUsername" = "acs"
"Device.ManagementServer.ConnectionRequestPassword" = "demo-secret"
"Device.Services.STBService.1.Enable" = true
"{CHANNEL}" = "101"
"#,
        d = dir.display(),
        m = datamodel_dir().display()
    )
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

fn show_session(n: usize, s: &SessionRecord) {
    let Some(inf) = &s.inform else {
        println!("  session {n}: no Inform ({:?})", s.errors);
        return;
    };
    let events: Vec<&str> = inf.events.iter().map(|e| e.event_code.as_str()).collect();
    println!(
        "  session {n}: Inform from {} {} with events {events:?}",
        inf.device_id.oui, inf.device_id.serial_number
    );
    for (req, resp) in s.sent.iter().zip(s.received.iter()) {
        println!("    ACS -> {}", req.method_name());
        println!("    CPE <- {}", describe(resp));
    }
    if let (Some(a), Some(b)) = (s.inform_at, s.ended_at) {
        println!(
            "    (session took {:.1} ms)",
            (b - a).as_secs_f64() * 1000.0
        );
    }
}

/// Sends an HTTP connection request as an ACS does: GET, 401 with a Digest challenge, GET
/// with the answer on the same connection. Returns the final status line.
fn http_connection_request(url: &str, user: &str, pass: &str) -> Result<String, String> {
    use std::io::{BufRead, BufReader, Read, Write};
    let rest = url.strip_prefix("http://").ok_or("not an http URL")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let stream =
        std::net::TcpStream::connect(authority).map_err(|e| format!("{authority}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let _ = stream.set_nodelay(true);
    let mut w = stream.try_clone().map_err(|e| e.to_string())?;
    let mut r = BufReader::new(stream);
    // Reads one response head (the CR listener answers with empty bodies).
    let mut read_head = || -> Result<(String, Option<String>), String> {
        let mut status = String::new();
        r.read_line(&mut status).map_err(|e| e.to_string())?;
        let mut challenge = None;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("www-authenticate") {
                    challenge = Some(v.trim().to_string());
                } else if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length.min(4096)];
        r.read_exact(&mut body).map_err(|e| e.to_string())?;
        Ok((status.trim_end().to_string(), challenge))
    };
    w.write_all(format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let (_, challenge) = read_head()?;
    let challenge = challenge.ok_or("no Digest challenge")?;
    let cnonce = cwmpd::util::codec::to_hex(&cwmpd::util::codec::random_bytes::<8>());
    let auth = cwmpd::connreq::digest::DigestClient::respond(
        &challenge, "GET", path, user, pass, &cnonce, 1,
    )
    .map_err(|e| e.to_string())?;
    let second =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: {auth}\r\n\r\n");
    w.write_all(second.as_bytes()).map_err(|e| e.to_string())?;
    Ok(read_head()?.0)
}

fn run() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("cwmpd-demo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let acs = spawn_in_thread(AcsOptions::default());
    let cfg_path = dir.join("cwmpd.toml");
    std::fs::write(&cfg_path, demo_config(&dir, &acs.url())).map_err(|e| e.to_string())?;
    println!("cwmpd demo");
    println!("  test ACS listening at {}", acs.url());
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
    // The agent runs in this process, on a thread of its own (the library's `agent::run`, what
    // the `cwmpd` binary runs), until the demo tells it to stop.
    let cfg = cwmpd::config::Config::load(&cfg_path).map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = std::thread::spawn(move || {
        cwmpd::agent::run(cfg, async move {
            let _ = stop_rx.await;
        })
    });
    let result = (|| {
        println!("1. the agent boots and calls the ACS (events 0 BOOTSTRAP, 1 BOOT):");
        let s = acs.wait_sessions(1, Duration::from_secs(20));
        let first = s.first().ok_or("no session within 20 s")?;
        show_session(1, first);

        // The ConnectionRequestURL the agent published, read through the control socket.
        let sock = dir.join("ctl.sock");
        let ans = cwmpd::ctl::request(
            &sock,
            &serde_json::json!({"op": "get", "names": ["Device.ManagementServer.ConnectionRequestURL", CHANNEL]}),
        )
        .map_err(|e| e.to_string())?;
        let url = ans["values"][0]["value"].as_str().unwrap_or("").to_string();
        println!(
            "\n2. the middleware sees the channel the ACS set: {} = {}",
            CHANNEL, ans["values"][1]["value"]
        );
        println!("\n3. the ACS wants the box now: HTTP connection request to {url}");
        let t0 = Instant::now();
        let status = http_connection_request(&url, "acs", "demo-secret")?;
        println!(
            "   the ACS's GET, 401 challenge, Digest GET: {status} after {:.1} ms",
            t0.elapsed().as_secs_f64() * 1000.0
        );
        let s = acs.wait_sessions(2, Duration::from_secs(20));
        let second = s.get(1).ok_or("no session after the connection request")?;
        if let Some(at) = second.inform_at {
            println!(
                "   Inform with \"6 CONNECTION REQUEST\" arrived {:.1} ms after the request was sent",
                (at - t0).as_secs_f64() * 1000.0
            );
        }
        show_session(2, second);
        Ok::<_, String>(())
    })();
    let _ = stop_tx.send(());
    if let Ok(Err(e)) = agent.join() {
        println!("agent: {e}");
    }
    acs.stop();
    let _ = std::fs::remove_dir_all(&dir);
    match &result {
        Ok(()) => println!("\ndemo finished: the agent stopped, its temporary state removed."),
        Err(e) => println!("\ndemo failed: {e}"),
    }
    result
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}
