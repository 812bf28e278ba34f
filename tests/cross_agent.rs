//! The agent as a black box from the ACS side, for cross builds: cross/qemu-test.sh runs this file
//! with `CWMPD_AGENT_CMD="qemu-arm -L /usr/arm-linux-gnueabihf …/cwmpd"` (and
//! `CWMPD_CONNREQ_CMD` for the cross-built cwmp-connreq), so the agent runs under qemu-user
//! against the host's test ACS. Without those variables it runs the native binaries, which keeps
//! the test itself checked by every `cargo test`.
//!
//! Covered: boot Inform, HTTP and UDP connection requests (host cwmp-connreq, and the cross-built
//! one when given) → Inform with "6 CONNECTION REQUEST", GPV/SPV round trip, control socket,
//! SIGTERM. Not yet: STUN binding and XMPP CR (marked places below).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use cwmp_testacs::{AcsOptions, SessionRecord, spawn_in_thread};
use cwmpd::cwmp::soap::{AcsRequest, CpeMessage, ParamValue};

const USER: &str = "acs-user";
const PASS: &str = "cr-secret";
/// Generous: an emulated agent is several times slower than a native one.
const WAIT: Duration = Duration::from_secs(60);
const CR_URL: &str = "Device.ManagementServer.ConnectionRequestURL";
const INTERVAL: &str = "Device.ManagementServer.PeriodicInformInterval";
const UDP_ADDR: &str = "Device.ManagementServer.UDPConnectionRequestAddress";

fn wait_nonempty(a: &Agent, name: &str) -> String {
    let t = Instant::now();
    loop {
        let v = a.get(name);
        if !v.is_empty() {
            return v;
        }
        assert!(
            t.elapsed() < WAIT,
            "{name} stayed empty; log:\n{}",
            a.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends an HTTP CR with `argv` (a cwmp-connreq command line).
fn send_http_cr(argv: &[String], url: &str) {
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .args(["http", url, "--user", USER, "--password", PASS])
        .output()
        .expect("run cwmp-connreq");
    assert!(
        out.status.success(),
        "{argv:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for session `n` (1-based) and checks it was started by a connection request.
fn wait_cr_session(acs: &cwmp_testacs::TestAcsHandle, a: &Agent, n: usize) -> SessionRecord {
    let s = acs.wait_sessions(n, WAIT);
    assert!(
        s.len() >= n,
        "session {n} did not come; agent log:\n{}",
        a.log_text()
    );
    let s = s[n - 1].clone();
    assert!(
        events(&s).iter().any(|e| e == "6 CONNECTION REQUEST"),
        "session {n}: {:?}",
        events(&s)
    );
    assert!(s.succeeded(), "session {n}: {:?}", s.errors);
    s
}

#[test]
fn http_cr_and_gpv_spv_round_trip() {
    let agent = agent_argv().join(" ");
    eprintln!("agent command: {agent}");
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("cross");
    let udp_port = free_udp_port();
    let cfg = write_config(
        d.path(),
        &format!(
            "[connreq]\nhttp_listen = [\"127.0.0.1:0\"]\nudp_listen = \"127.0.0.1:{udp_port}\"\nrate_burst = 100\nrate_per_minute = 6000\n[parameters]\n\"Device.ManagementServer.URL\" = \"{}\"\n\"Device.ManagementServer.ConnectionRequestUsername\" = \"{USER}\"\n\"Device.ManagementServer.ConnectionRequestPassword\" = \"{PASS}\"\n\"Device.DeviceInfo.ManufacturerOUI\" = \"00D09E\"\n\"Device.DeviceInfo.SerialNumber\" = \"QEMU0001\"\n",
            acs.url()
        ),
    );
    let t0 = Instant::now();
    let a = Agent::start(&cfg);

    // Boot session.
    let s = acs.wait_sessions(1, WAIT);
    assert!(!s.is_empty(), "no boot Inform; log:\n{}", a.log_text());
    assert!(
        events(&s[0]).iter().any(|e| e == "1 BOOT"),
        "{:?}",
        events(&s[0])
    );
    eprintln!("boot Inform after {:?}", t0.elapsed());

    // HTTP CR from the host's cwmp-connreq.
    let url = wait_nonempty(&a, CR_URL);
    let host_connreq = vec![connreq_path()];
    send_http_cr(&host_connreq, &url);
    wait_cr_session(&acs, &a, 2);
    eprintln!("HTTP CR session after {:?}", t0.elapsed());

    // GPV/SPV round trip in the session of the next CR.
    acs.queue(vec![
        AcsRequest::SetParameterValues {
            list: vec![ParamValue {
                name: INTERVAL.into(),
                value: "1234".into(),
                xsi_type: Some("xsd:unsignedInt".into()),
            }],
            parameter_key: "qemu-1".into(),
        },
        AcsRequest::GetParameterValues {
            names: vec![INTERVAL.into(), "Device.DeviceInfo.SerialNumber".into()],
        },
    ]);
    send_http_cr(&host_connreq, &url);
    let s = wait_cr_session(&acs, &a, 3);
    assert_eq!(s.received.len(), 2, "{:?}", s.received);
    match &s.received[0] {
        CpeMessage::SetParameterValuesResponse { status } => assert_eq!(*status, 0),
        m => panic!("{m:?}"),
    }
    match &s.received[1] {
        CpeMessage::GetParameterValuesResponse { list } => {
            let v = |n: &str| list.iter().find(|p| p.name == n).map(|p| p.value.clone());
            assert_eq!(v(INTERVAL).as_deref(), Some("1234"), "{list:?}");
            assert_eq!(
                v("Device.DeviceInfo.SerialNumber").as_deref(),
                Some("QEMU0001")
            );
        }
        m => panic!("{m:?}"),
    }
    assert_eq!(a.get(INTERVAL), "1234");
    assert_eq!(a.get("Device.ManagementServer.ParameterKey"), "qemu-1");
    eprintln!("GPV/SPV session after {:?}", t0.elapsed());

    // The cross-built cwmp-connreq (under qemu too), when given.
    let mut n = 3;
    if let Some(connreq) = external_argv("CWMPD_CONNREQ_CMD") {
        send_http_cr(&connreq, &url);
        n += 1;
        wait_cr_session(&acs, &a, n);
        eprintln!("HTTP CR from {connreq:?} after {:?}", t0.elapsed());
    }

    // UDP CR (TR-111 / Annex G), STUN off: UDPConnectionRequestAddress is the local socket's
    // address; a signed CR from the host's cwmp-connreq, then from the cross-built one.
    let want = wait_nonempty(&a, UDP_ADDR);
    assert_eq!(want, format!("127.0.0.1:{udp_port}"));
    let mut udp_senders = vec![host_connreq.clone()];
    udp_senders.extend(external_argv("CWMPD_CONNREQ_CMD"));
    for argv in udp_senders {
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .args(["udp", &want, "--user", USER, "--password", PASS])
            .output()
            .expect("run cwmp-connreq udp");
        assert!(
            out.status.success(),
            "{argv:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
        wait_cr_session(&acs, &a, n);
        eprintln!("UDP CR from {argv:?} after {:?}", t0.elapsed());
    }
    // ---- STUN binding under emulation: to be added here (a host `cwmp-connreq stun-server`
    // as in tests/stun_cr.rs, STUNEnable, then a UDP CR `--via` the server's API) ----

    // ---- XMPP CR (Annex K): to be added here ----
    // Needs the Prosody that tests/xmpp_cr.rs starts (its setup would move to tests/common);
    // send the connection-request IQ with `cwmp-connreq xmpp …` (host, then CWMPD_CONNREQ_CMD)
    // and expect the next CR session with wait_cr_session(&acs, &a, n + 1).

    a.stop();
}
