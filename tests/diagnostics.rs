//! The device's network objects and the TR-143 diagnostics against real targets (issue #16),
//! in network namespaces the tests create (root; `CI=true` makes a missing peer a failure):
//!
//! ```text
//!  cpe (agent + test ACS on its loopback) ── r1 ── r2 ── srv (HTTP GET/PUT, UDP echo)
//!  10.81.1.2                  10.81.1.1 10.81.2.1 10.81.2.2 10.81.3.1   10.81.3.2
//! ```
//!
//! r1 and r2 are real kernel routers (TTL expiry answers the trace), srv's uplink is rate
//! limited by a tbf qdisc (8 Mbit/s) so the download's timing fields can be checked against
//! a rate the measurement cannot beat. The ACS reads everything with GetParameterValues; every
//! message the agent sent is validated against the CWMP schema.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::netns::{Rig, missing, unavailable};
use common::*;
use cwmp_testacs::{AcsOptions, SessionRecord, TestAcsHandle};
use cwmpd::cwmp::soap::{AcsRequest, CpeMessage, SetAttr};

const WAIT: Duration = Duration::from_secs(60);
const SRV: &str = "10.81.3.2";
/// The rate limit of srv's uplink, bits per second.
#[cfg(feature = "diagnostics")]
const RATE: u64 = 8_000_000;

fn prereqs() -> Option<String> {
    unavailable().or_else(|| missing(&[("tc", "-V"), ("python3", "--version")]))
}

/// The routed path, the targets on srv, the test ACS and the agent in cpe.
struct Net {
    rig: Rig,
    cpe: String,
    dir: TempDir,
    acs: TestAcsHandle,
    agent: Option<Agent>,
    /// Sessions seen so far (the next one to wait for is `seen + 1`).
    seen: usize,
    etc: std::path::PathBuf,
}

impl Drop for Net {
    fn drop(&mut self) {
        if let Some(a) = self.agent.take() {
            a.stop();
        }
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

impl Net {
    fn new(tag: &str, extra: &str) -> Net {
        let mut rig = Rig::new(tag, &["cpe", "r1", "r2", "srv"]);
        rig.link("cpe", "10.81.1.2/24", "r1", "10.81.1.1/24");
        rig.link("r1", "10.81.2.1/24", "r2", "10.81.2.2/24");
        rig.link("r2", "10.81.3.1/24", "srv", "10.81.3.2/24");
        // No default route on the box: 10.99.0.0/16 has no route at all.
        rig.exec("cpe", "ip route add 10.81.0.0/16 via 10.81.1.1");
        rig.exec("r1", "sysctl -qw net.ipv4.ip_forward=1");
        rig.exec("r1", "ip route add 10.81.3.0/24 via 10.81.2.2");
        rig.exec("r2", "sysctl -qw net.ipv4.ip_forward=1");
        rig.exec("r2", "ip route add 10.81.1.0/24 via 10.81.2.1");
        rig.exec("srv", "ip route add 10.81.0.0/16 via 10.81.3.1");
        rig.exec(
            "srv",
            "tc qdisc add dev v-r2 root tbf rate 8mbit burst 32kbit latency 400ms",
        );
        let cpe = rig.name("cpe");
        // The box's resolver (`ip netns exec` binds /etc/netns/NS/resolv.conf over
        // /etc/resolv.conf): a name server that does not answer, tried once.
        let etc = Path::new("/etc/netns").join(&cpe);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(
            etc.join("resolv.conf"),
            format!("nameserver {SRV}\noptions timeout:1 attempts:1\n"),
        )
        .unwrap();
        let dir = TempDir::new(&format!("diag-{tag}"));
        let extra = extra.replace("{dir}", &dir.path().display().to_string());
        let mut c = rig.command("srv", "python3");
        c.arg(manifest().join("tests/fixtures/diag_targets.py"))
            .args([SRV, "8080", "7"])
            .arg(dir.path().join("targets.log"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = c.spawn().expect("diag_targets.py");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        rig.own(child);
        let acs = cwmp_testacs::try_spawn_in_netns(
            &cpe,
            "127.0.0.1:0".parse().unwrap(),
            AcsOptions::default(),
        )
        .expect("test ACS");
        let cfg = write_config(
            dir.path(),
            &format!(
                "{extra}\n[parameters]\n\"Device.ManagementServer.URL\" = \"{}\"\n\"Device.ManagementServer.PeriodicInformEnable\" = \"false\"\n",
                acs.url()
            ),
        );
        let agent = Agent::start_in(&cfg, Some(&cpe));
        let mut net = Net {
            rig,
            cpe,
            dir,
            acs,
            agent: Some(agent),
            seen: 0,
            etc,
        };
        let boot = net.next_session();
        assert!(events(&boot).contains(&"1 BOOT".to_string()));
        net
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().unwrap()
    }

    /// Waits for the next session to end and returns it.
    fn next_session(&mut self) -> SessionRecord {
        common::next_session(&self.acs, &mut self.seen, self.agent.as_ref().unwrap())
    }

    /// Runs `rpcs` in a session the test asks for (a local `inform`).
    fn session(&mut self, rpcs: Vec<AcsRequest>) -> SessionRecord {
        self.acs.queue(rpcs);
        self.agent()
            .ctl(serde_json::json!({"op": "inform", "event": "6 CONNECTION REQUEST"}));
        self.next_session()
    }

    /// Sets a diagnostic's parameters with DiagnosticsState = Requested, waits for the
    /// `8 DIAGNOSTICS COMPLETE` session, then reads the whole object back.
    #[cfg(feature = "diagnostics")]
    fn diagnose(&mut self, object: &str, params: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut list: Vec<(String, String)> = params
            .iter()
            .map(|(n, v)| (format!("{object}{n}"), v.to_string()))
            .collect();
        list.push((format!("{object}DiagnosticsState"), "Requested".into()));
        let s = self.session(vec![spv(&list)]);
        assert!(
            matches!(
                s.received.first(),
                Some(CpeMessage::SetParameterValuesResponse { status: 0 })
            ),
            "{:?}",
            s.received
        );
        let done = self.next_session();
        assert!(
            events(&done).contains(&"8 DIAGNOSTICS COMPLETE".to_string()),
            "{:?}",
            events(&done)
        );
        self.read(&[object])
    }

    /// Reads a subtree through the ACS.
    fn read(&mut self, names: &[&str]) -> BTreeMap<String, String> {
        let s = self.session(vec![gpv(names)]);
        gpv_values(&s)
    }

    fn validate(&self, test: &str) {
        let all = self.acs.wait_sessions(self.seen, WAIT);
        let n = common::xsd::validate_sessions(test, &all);
        assert!(n.is_none_or(|n| n > 0));
    }
}

/// A SetParameterValues without a ParameterKey.
fn spv(list: &[(String, String)]) -> AcsRequest {
    common::spv(list, "")
}

/// The SetParameterValues fault of a session: (overall code, [(parameter, code)]).
fn spv_fault(s: &SessionRecord) -> Option<(u32, Vec<(String, u32)>)> {
    s.received.iter().find_map(|r| match r {
        CpeMessage::Fault(f) => Some((
            f.code,
            f.set_parameter_values_faults
                .iter()
                .map(|p| (p.name.clone(), p.code))
                .collect(),
        )),
        _ => None,
    })
}

/// The instance path (`Device.IP.Interface.3.`) whose `Name` is `name`.
fn row_named(v: &BTreeMap<String, String>, table: &str, name: &str) -> Option<String> {
    v.iter()
        .find(|(k, val)| {
            k.starts_with(table) && k.ends_with(".Name") && val.as_str() == name && {
                let rest = &k[table.len()..k.len() - ".Name".len()];
                !rest.contains('.')
            }
        })
        .map(|(k, _)| k[..k.len() - "Name".len()].to_string())
}

fn num(v: &BTreeMap<String, String>, k: &str) -> u64 {
    v.get(k)
        .unwrap_or_else(|| panic!("{k} missing"))
        .parse()
        .unwrap_or_else(|_| panic!("{k} = {:?}", v[k]))
}

/// Seconds since the epoch of a TR-181 dateTime with microseconds.
#[cfg(feature = "diagnostics")]
fn secs(t: &str) -> f64 {
    let (date, time) = t.trim_end_matches('Z').split_once('T').expect("dateTime");
    let d: Vec<i64> = date.split('-').map(|x| x.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let h: Vec<i64> = hms.split(':').map(|x| x.parse().unwrap()).collect();
    // Days from civil (proleptic Gregorian), good for the test's own dates.
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let f: f64 = format!("0.{frac}").parse().unwrap();
    (days * 86_400 + h[0] * 3600 + h[1] * 60 + h[2]) as f64 + f
}

#[test]
fn netns_interfaces_addresses_and_routes_follow_the_system() {
    if let Some(why) = prereqs() {
        common::skip("(network namespaces)", &why);
        return;
    }
    // The time client's hook gets the values as arguments of its own (never through a shell
    // command line: NTPServerN is whatever the ACS sent).
    let mut net = Net::new(
        "dsys",
        "[system]\ninterface_writes = true\n\
         time_apply = [\"sh\", \"-c\", \"echo \\\"$0 $1\\\" >> {dir}/time.log\", \"{enable}\", \"{servers}\"]\n",
    );
    let v = net.read(&[
        "Device.IP.Interface.",
        "Device.Ethernet.",
        "Device.Routing.",
        "Device.DNS.Client.",
    ]);
    let lo = row_named(&v, "Device.IP.Interface.", "lo").expect("lo");
    let up = row_named(&v, "Device.IP.Interface.", "v-r1").expect("v-r1");
    assert_eq!(v[&format!("{lo}Type")], "Loopback");
    assert_eq!(v[&format!("{lo}IPv4Address.1.IPAddress")], "127.0.0.1");
    assert_eq!(v[&format!("{up}Status")], "Up");
    assert_eq!(v[&format!("{up}IPv4Address.1.IPAddress")], "10.81.1.2");
    assert_eq!(v[&format!("{up}IPv4Address.1.SubnetMask")], "255.255.255.0");
    assert_eq!(v[&format!("{up}IPv4Address.1.AddressingType")], "Static");
    // The session with the ACS runs over lo: its counters moved.
    assert!(num(&v, &format!("{lo}Stats.PacketsReceived")) > 0);
    assert!(num(&v, &format!("{lo}Stats.BytesSent")) > 0);
    // The IP interface stacks on the Ethernet link of the same device, which stacks on the
    // Ethernet interface whose MAC address is the kernel's.
    let link = v[&format!("{up}LowerLayers")].clone();
    assert!(link.starts_with("Device.Ethernet.Link."), "{link}");
    let eth = v[&format!("{link}.LowerLayers")].clone();
    assert!(eth.starts_with("Device.Ethernet.Interface."), "{eth}");
    let out = Command::new("ip")
        .args(["-n", &net.cpe, "-o", "link", "show", "v-r1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let kernel_mac = text
        .split("link/ether ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap()
        .to_lowercase();
    assert_eq!(v[&format!("{eth}.MACAddress")].to_lowercase(), kernel_mac);
    // The route the test added, through r1, on the uplink.
    let route = v
        .iter()
        .find(|(k, val)| k.ends_with(".GatewayIPAddress") && val.as_str() == "10.81.1.1")
        .map(|(k, _)| k[..k.len() - "GatewayIPAddress".len()].to_string())
        .expect("the route via 10.81.1.1");
    assert_eq!(v[&format!("{route}DestIPAddress")], "10.81.0.0");
    assert_eq!(v[&format!("{route}DestSubnetMask")], "255.255.0.0");
    assert_eq!(v[&format!("{route}Interface")], up.trim_end_matches('.'));
    assert_eq!(v["Device.DNS.Client.Server.1.DNSServer"], SRV);

    // An interface appears: a number never used before; the others keep theirs.
    net.rig.exec("cpe", "ip link add x1 type veth peer name x2");
    net.rig.exec("cpe", "ip addr add 192.168.77.1/24 dev x1");
    net.rig.exec("cpe", "ip link set x1 up");
    net.rig.exec("cpe", "ip link set x2 up");
    let v2 = net.read(&["Device.IP.Interface."]);
    let x1 = row_named(&v2, "Device.IP.Interface.", "x1").expect("x1 appears");
    assert_eq!(row_named(&v2, "Device.IP.Interface.", "lo").unwrap(), lo);
    assert_eq!(row_named(&v2, "Device.IP.Interface.", "v-r1").unwrap(), up);
    let n_x1: u32 = x1
        .trim_end_matches('.')
        .rsplit('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let max_before = v
        .keys()
        .filter_map(|k| k.strip_prefix("Device.IP.Interface."))
        .filter_map(|r| r.split('.').next()?.parse::<u32>().ok())
        .max()
        .unwrap();
    assert!(n_x1 > max_before);

    // The ACS watches x1's address; the address changes; a VALUE CHANGE session reports it.
    let addr_param = format!("{x1}IPv4Address.1.IPAddress");
    let s = net.session(vec![AcsRequest::SetParameterAttributes {
        list: vec![SetAttr {
            name: addr_param.clone(),
            notification_change: true,
            notification: Some(2),
            ..Default::default()
        }],
    }]);
    assert!(
        matches!(
            s.received.first(),
            Some(CpeMessage::SetParameterAttributesResponse)
        ),
        "{:?}",
        s.received
    );
    net.rig.exec("cpe", "ip addr add 192.168.78.9/24 dev x1");
    net.rig.exec("cpe", "ip addr del 192.168.77.1/24 dev x1");
    let vc = net.next_session();
    assert!(
        events(&vc).contains(&"4 VALUE CHANGE".to_string()),
        "{:?}",
        events(&vc)
    );
    assert_eq!(
        inform_param(&vc, &addr_param).as_deref(),
        Some("192.168.78.9")
    );

    // The ACS brings x1 down (the integrator allowed interface writes): the kernel's link is
    // down and the model says so.
    let s = net.session(vec![
        spv(&[(format!("{x1}Enable"), "false".into())]),
        gpv(&[&format!("{x1}Enable")]),
    ]);
    assert!(
        matches!(
            s.received.first(),
            Some(CpeMessage::SetParameterValuesResponse { .. })
        ),
        "{:?}",
        s.received
    );
    let out = Command::new("ip")
        .args(["-n", &net.cpe, "-o", "link", "show", "x1"])
        .output()
        .unwrap();
    let flags = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!flags.contains(",UP") && !flags.contains("<UP"), "{flags}");
    assert_eq!(gpv_values(&s)[&format!("{x1}Enable")], "false");

    // The ACS points the time client elsewhere: the integrator's hook runs with the servers.
    let s = net.session(vec![spv(&[
        (
            "Device.Time.NTPServer1".into(),
            "ntp1.example; reboot".into(),
        ),
        ("Device.Time.NTPServer2".into(), "ntp2.example".into()),
    ])]);
    assert!(spv_fault(&s).is_none(), "{:?}", s.received);
    let time_log = net.dir.path().join("time.log");
    let want = "true ntp1.example; reboot,ntp2.example";
    assert!(
        common::wait_until(WAIT, || std::fs::read_to_string(&time_log)
            .is_ok_and(|t| t.lines().any(|l| l == want))),
        "{:?}",
        std::fs::read_to_string(&time_log)
    );
    // Turned off: the hook hears it, and Status says Disabled whatever the kernel's clock does.
    let s = net.session(vec![
        spv(&[("Device.Time.Enable".into(), "false".into())]),
        gpv(&["Device.Time.Status"]),
    ]);
    assert_eq!(gpv_values(&s)["Device.Time.Status"], "Disabled");
    let want = "false ntp1.example; reboot,ntp2.example";
    assert!(
        common::wait_until(WAIT, || std::fs::read_to_string(&time_log)
            .is_ok_and(|t| t.lines().any(|l| l == want))),
        "{:?}",
        std::fs::read_to_string(&time_log)
    );

    // x1 goes: its row goes. x3 comes: a new number, not x1's.
    net.rig.exec("cpe", "ip link del x1");
    net.rig
        .exec("cpe", "ip link add x3 type veth peer name x3p");
    net.rig.exec("cpe", "ip addr add 192.168.79.1/24 dev x3");
    net.rig.exec("cpe", "ip link set x3 up");
    let v3 = net.read(&["Device.IP.Interface."]);
    assert!(row_named(&v3, "Device.IP.Interface.", "x1").is_none());
    let x3 = row_named(&v3, "Device.IP.Interface.", "x3").expect("x3 appears");
    let n_x3: u32 = x3
        .trim_end_matches('.')
        .rsplit('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(n_x3 > n_x1);

    // After a restart the rows keep their numbers (the keys are persisted).
    let cfg = net.dir.path().join("cwmpd.toml");
    net.agent.take().unwrap().stop();
    net.agent = Some(Agent::start_in(&cfg, Some(&net.cpe.clone())));
    let _boot = net.next_session();
    let v4 = net.read(&["Device.IP.Interface."]);
    assert_eq!(row_named(&v4, "Device.IP.Interface.", "lo").unwrap(), lo);
    assert_eq!(row_named(&v4, "Device.IP.Interface.", "v-r1").unwrap(), up);
    assert_eq!(row_named(&v4, "Device.IP.Interface.", "x3").unwrap(), x3);
    net.validate("netns_interfaces_addresses_and_routes_follow_the_system");
}

#[test]
#[cfg(feature = "diagnostics")]
fn netns_diagnostics_against_real_targets() {
    if let Some(why) = prereqs() {
        common::skip("(network namespaces)", &why);
        return;
    }
    let mut net = Net::new("ddiag", "");
    const PING: &str = "Device.IP.Diagnostics.IPPing.";
    const TRACE: &str = "Device.IP.Diagnostics.TraceRoute.";
    const DL: &str = "Device.IP.Diagnostics.DownloadDiagnostics.";
    const UL: &str = "Device.IP.Diagnostics.UploadDiagnostics.";
    const ECHO: &str = "Device.IP.Diagnostics.UDPEchoDiagnostics.";
    const SEL: &str = "Device.IP.Diagnostics.ServerSelectionDiagnostics.";

    // Ping across two routers.
    let v = net.diagnose(
        PING,
        &[
            ("Host", SRV),
            ("NumberOfRepetitions", "3"),
            ("Timeout", "2000"),
            ("DataBlockSize", "64"),
        ],
    );
    assert_eq!(v[&format!("{PING}DiagnosticsState")], "Complete", "{v:?}");
    assert_eq!(num(&v, &format!("{PING}SuccessCount")), 3);
    assert_eq!(num(&v, &format!("{PING}FailureCount")), 0);
    assert_eq!(v[&format!("{PING}IPAddressUsed")], SRV);
    let (mn, avg, mx) = (
        num(&v, &format!("{PING}MinimumResponseTimeDetailed")),
        num(&v, &format!("{PING}AverageResponseTimeDetailed")),
        num(&v, &format!("{PING}MaximumResponseTimeDetailed")),
    );
    assert!(mn > 0 && mn <= avg && avg <= mx, "{mn} {avg} {mx}");

    // Trace: each router's TTL expiry, then the target.
    let v = net.diagnose(
        TRACE,
        &[("Host", SRV), ("NumberOfTries", "1"), ("Timeout", "2000")],
    );
    assert_eq!(v[&format!("{TRACE}DiagnosticsState")], "Complete", "{v:?}");
    assert_eq!(num(&v, &format!("{TRACE}RouteHopsNumberOfEntries")), 3);
    for (i, hop) in ["10.81.1.1", "10.81.2.2", SRV].iter().enumerate() {
        assert_eq!(v[&format!("{TRACE}RouteHops.{}.HostAddress", i + 1)], *hop);
    }

    // No route, no name.
    let v = net.diagnose(PING, &[("Host", "10.99.0.1"), ("NumberOfRepetitions", "1")]);
    assert_eq!(v[&format!("{PING}DiagnosticsState")], "Error_NoRouteToHost");
    assert_eq!(num(&v, &format!("{PING}SuccessCount")), 0);
    let v = net.diagnose(PING, &[("Host", "nonexistent.invalid")]);
    assert_eq!(
        v[&format!("{PING}DiagnosticsState")],
        "Error_CannotResolveHostName"
    );

    // Download 2 MB through the 8 Mbit/s limit.
    let size: u64 = 2_000_000;
    let v = net.diagnose(
        DL,
        &[
            ("DownloadURL", &format!("http://{SRV}:8080/blob/{size}")),
            ("EnablePerConnectionResults", "true"),
        ],
    );
    assert_eq!(v[&format!("{DL}DiagnosticsState")], "Complete", "{v:?}");
    let test_bytes = num(&v, &format!("{DL}TestBytesReceived"));
    assert!(
        test_bytes >= size && test_bytes < size + 1024,
        "{test_bytes}"
    );
    assert!(num(&v, &format!("{DL}TotalBytesReceived")) >= test_bytes);
    let (rom, bom, eom) = (
        secs(&v[&format!("{DL}ROMTime")]),
        secs(&v[&format!("{DL}BOMTime")]),
        secs(&v[&format!("{DL}EOMTime")]),
    );
    let (open_req, open_resp) = (
        secs(&v[&format!("{DL}TCPOpenRequestTime")]),
        secs(&v[&format!("{DL}TCPOpenResponseTime")]),
    );
    assert!(open_req <= open_resp && open_resp <= rom && rom <= bom && bom < eom);
    // The bytes cannot have come faster than the link allows (10 % for the bucket's burst).
    let bps = (test_bytes * 8) as f64 / (eom - bom);
    assert!(
        bps < RATE as f64 * 1.1,
        "{bps} bit/s through an 8 Mbit/s link"
    );
    assert_eq!(
        v[&format!("{DL}PerConnectionResult.1.TestBytesReceived")],
        test_bytes.to_string()
    );

    // Upload 500 kB: the server counted every byte.
    let v = net.diagnose(
        UL,
        &[
            ("UploadURL", &format!("http://{SRV}:8080/up")),
            ("TestFileLength", "500000"),
        ],
    );
    assert_eq!(v[&format!("{UL}DiagnosticsState")], "Complete", "{v:?}");
    // TR-181 counts the request line and headers in TestBytesSent.
    let sent = num(&v, &format!("{UL}TestBytesSent"));
    assert!((500_000..501_024).contains(&sent), "TestBytesSent {sent}");
    let log = std::fs::read_to_string(net.dir.path().join("targets.log")).unwrap();
    assert!(log.lines().any(|l| l == "put 500000"), "{log}");

    // UDP echo (Echo Plus fields filled by the server).
    let v = net.diagnose(
        ECHO,
        &[
            ("Host", SRV),
            ("Port", "7"),
            ("NumberOfRepetitions", "4"),
            ("Timeout", "2000"),
            ("InterTransmissionTime", "10"),
            ("EnableIndividualPacketResults", "true"),
        ],
    );
    assert_eq!(v[&format!("{ECHO}DiagnosticsState")], "Complete", "{v:?}");
    assert_eq!(num(&v, &format!("{ECHO}SuccessCount")), 4);
    assert_eq!(
        num(&v, &format!("{ECHO}IndividualPacketResultNumberOfEntries")),
        4
    );
    assert_eq!(
        v[&format!("{ECHO}IndividualPacketResult.4.TestRespSN")],
        "4"
    );

    // Server selection: the unreachable host cannot be the fastest.
    let v = net.diagnose(
        SEL,
        &[
            ("HostList", &format!("10.99.0.1,{SRV}")),
            ("Protocol", "ICMP"),
            ("NumberOfRepetitions", "2"),
            ("Timeout", "1000"),
        ],
    );
    assert_eq!(v[&format!("{SEL}DiagnosticsState")], "Complete", "{v:?}");
    assert_eq!(v[&format!("{SEL}FastestHost")], SRV);

    // Bad input is refused at SetParameterValues time, nothing changes.
    let s = net.session(vec![spv(&[
        (format!("{DL}DownloadURL"), "ftp://10.81.3.2/x".into()),
        (format!("{PING}NumberOfRepetitions"), "0".into()),
        (format!("{PING}DiagnosticsState"), "Complete".into()),
    ])]);
    let (code, per) = spv_fault(&s).expect("a fault");
    assert_eq!(code, 9003);
    assert!(per.iter().all(|(_, c)| *c == 9007), "{per:?}");
    assert_eq!(per.len(), 3, "{per:?}");

    // This integrator allows neither interface nor time-client writes: 9008 each, nothing
    // changes.
    let s = net.session(vec![spv(&[
        ("Device.IP.Interface.1.Enable".into(), "false".into()),
        ("Device.Time.NTPServer1".into(), "ntp.example".into()),
    ])]);
    let (code, per) = spv_fault(&s).expect("a fault");
    assert_eq!(code, 9003);
    assert_eq!(
        per,
        [
            ("Device.IP.Interface.1.Enable".to_string(), 9008),
            ("Device.Time.NTPServer1".to_string(), 9008)
        ]
    );
    let v = net.read(&["Device.IP.Interface.1.Enable", "Device.Time.NTPServer1"]);
    assert_eq!(v["Device.IP.Interface.1.Enable"], "true");
    assert_eq!(v["Device.Time.NTPServer1"], "");

    // A running download is cancelled by a change of its parameters (state back to None);
    // the ping requested next runs at once (diagnostics run one at a time).
    let s = net.session(vec![spv(&[
        (
            format!("{DL}DownloadURL"),
            format!("http://{SRV}:8080/blob/50000000"),
        ),
        (format!("{DL}DiagnosticsState"), "Requested".into()),
    ])]);
    assert!(spv_fault(&s).is_none());
    let s = net.session(vec![spv(&[
        (
            format!("{DL}DownloadURL"),
            format!("http://{SRV}:8080/blob/1000"),
        ),
        (format!("{PING}Host"), SRV.into()),
        (format!("{PING}NumberOfRepetitions"), "1".into()),
        (format!("{PING}DiagnosticsState"), "Requested".into()),
    ])]);
    assert!(spv_fault(&s).is_none());
    let done = net.next_session();
    assert!(events(&done).contains(&"8 DIAGNOSTICS COMPLETE".to_string()));
    let v = net.read(&[&format!("{DL}DiagnosticsState"), PING]);
    assert_eq!(v[&format!("{DL}DiagnosticsState")], "None");
    assert_eq!(v[&format!("{PING}DiagnosticsState")], "Complete");
    // The server saw the 50 MB transfer cut short.
    let log = net.dir.path().join("targets.log");
    assert!(
        common::wait_until(WAIT, || std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.starts_with("get 50000000 cut after"))),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    net.validate("netns_diagnostics_against_real_targets");
}
