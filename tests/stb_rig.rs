//! The emulated set-top box (issue #15): the firmware image that `cross/stb-image.sh ARCH`
//! builds, booted under qemu-system with user-mode networking, managed end to end by a test ACS
//! on the host. The box is configured only through its kernel command line (`cwmpd.acs=`,
//! `cwmpd.param.*=`, `cwmpd.external_port=`): the ACS, the CR credentials, STUN and XMPP (on
//! MIPS Malta, whose command line QEMU cuts at 256 bytes, all but the ACS URL go into the
//! flash's `config/bootargs`, which the box appends to it).
//!
//! One box walks the whole life an operator gives it, in order: boot (`0 BOOTSTRAP`, `1 BOOT`);
//! an HTTP connection request through the emulator's port forward (the published URL is the
//! forwarded one: STUN's public address with `external_port`); a UDP connection request sent
//! by `cwmp-connreq stun-server` from its STUN socket through the emulator's NAT; an XMPP
//! connection request through a Prosody on the host; a channel change (SPV → the middleware
//! provider); the Reboot RPC (`M Reboot` + `1 BOOT`, no new bootstrap, the channel kept on the
//! flash); firmware Downloads: a corrupt image (refused with 9018, no reboot), the next version
//! (written to the other slot, the box reboots into it, SoftwareVersion changes, TransferComplete
//! 0), an image that does not come up (rolled back, TransferComplete 9010); and FactoryReset
//! (`0 BOOTSTRAP`, the channel back to its default). Every message the box sent is
//! schema-validated. The figures (boot to first Inform, CR to Inform per mechanism, channel
//! change) are printed for the README.
//!
//! Needs the image (`bash cross/stb-image.sh armhf`, which .ci/run does), qemu-system, Prosody,
//! openssl and debugfs. `CWMPD_STB_ARCH` picks the architecture (armhf by default; arm64 and
//! mipsel by the command in the README), `CWMPD_STB_DIR` the image directory
//! (default `target/stb/ARCH`); `CWMPD_STB_ARCH=none` turns the test off explicitly.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::prosody::{DOMAIN, Prosody, free_port, have};
use common::*;
use cwmp_testacs::{AcsAuth, AcsOptions, ServedFile, SessionRecord, TestAcsHandle};
use cwmpd::cwmp::soap::{AcsRequest, CpeMessage, Download, ParamValue, TransferComplete};

const CR_USER: &str = "stb-cr";
const CR_PASS: &str = "stb-cr-pw";
const CHANNEL: &str = "Device.Services.STBService.1.Components.FrontEnd.1.X_00D09E_CurrentChannel";
/// stb-middleware's channel on a box without state, and the one the test tunes to.
const DEFAULT_CHANNEL: &str = "101";
const TUNED: &str = "107";
const SW: &str = "Device.DeviceInfo.SoftwareVersion";
const CR_URL: &str = "Device.ManagementServer.ConnectionRequestURL";
/// A boot under TCG emulation takes 5-10 s on the 2-core machine; generous for slow hosts and
/// for the broken-firmware case (two boots and the boot check in between).
const BOOT_WAIT: Duration = Duration::from_secs(150);
const WAIT: Duration = Duration::from_secs(45);
/// The kernel's command-line limit on 32-bit ARM (COMMAND_LINE_SIZE); arm64 allows more.
const CMDLINE_MAX: usize = 1024;
/// QEMU's Malta board hands the command line to the kernel as one 256-byte firmware argument
/// that also carries the initrd's `rd_start=… rd_size=…` (about 40 bytes).
const MALTA_CMDLINE_MAX: usize = 256 - 40;

/// The emulated box: qemu-system started by the image's boot.sh, its serial console captured.
/// Killed (by its PID) when dropped.
struct Stb {
    child: Child,
    /// Kept open: the console's shell prompt reads stdin; EOF would make it spin.
    _stdin: ChildStdin,
    console: Arc<Mutex<Vec<u8>>>,
    started: Instant,
}

impl Stb {
    fn boot(image: &Path, flash: &Path, append: &str, hostfwd: &str, log: PathBuf) -> Stb {
        let mut child = Command::new("sh")
            .arg(image.join("boot.sh"))
            .env("STB_FLASH", flash)
            .env("STB_APPEND", append)
            .env("STB_HOSTFWD", hostfwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the emulated STB (boot.sh)");
        let started = Instant::now();
        let console = Arc::new(Mutex::new(Vec::new()));
        let mut file = std::fs::File::create(log).unwrap();
        for mut src in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let console = console.clone();
            let mut file = file.try_clone().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = src.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = file.write_all(&buf[..n]);
                    let mut c = console.lock().unwrap();
                    c.extend_from_slice(&buf[..n]);
                    // Bounded: the last 256 KiB are enough to explain a failure.
                    if c.len() > 512 * 1024 {
                        let cut = c.len() - 256 * 1024;
                        c.drain(..cut);
                    }
                }
            });
        }
        let _ = file.flush();
        let stdin = child.stdin.take().unwrap();
        Stb {
            child,
            _stdin: stdin,
            console,
            started,
        }
    }

    /// The end of the console, for failure messages.
    fn tail(&self) -> String {
        let c = self.console.lock().unwrap();
        let from = c.len().saturating_sub(6000);
        String::from_utf8_lossy(&c[from..]).into_owned()
    }

    fn assert_running(&mut self) {
        if let Ok(Some(st)) = self.child.try_wait() {
            panic!("the emulator exited ({st}); console:\n{}", self.tail());
        }
    }
}

impl Drop for Stb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn has_event(s: &SessionRecord, code: &str) -> bool {
    events_with_keys(s).iter().any(|(c, _)| c == code)
}

/// What the rig drives: the box, the ACS and the peers on the host.
struct Rig {
    stb: Stb,
    acs: TestAcsHandle,
    prosody: Prosody,
    stun_api: String,
    image: PathBuf,
    /// What the published CR URL must start with: `http://127.0.0.1:<forwarded port>/`.
    forwarded: String,
}

impl Rig {
    /// Polls the ACS's sessions every 20 ms until `f` finds what it wants; fails, with the
    /// events of the sessions since `from` and the console, when the box stops or after
    /// `timeout` ("no {what}").
    fn wait_for<T>(
        &mut self,
        from: usize,
        timeout: Duration,
        what: &str,
        mut f: impl FnMut(&[SessionRecord]) -> Option<T>,
    ) -> T {
        let t0 = Instant::now();
        loop {
            let all = self.acs.sessions();
            if let Some(v) = f(&all) {
                return v;
            }
            self.stb.assert_running();
            if t0.elapsed() > timeout {
                let seen: Vec<_> = all.iter().skip(from).map(events).collect();
                panic!(
                    "no {what} within {timeout:?} (sessions since: {seen:?}); console:\n{}",
                    self.stb.tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the first ended session at index `from` or later that satisfies `f`.
    fn session(
        &mut self,
        from: usize,
        timeout: Duration,
        what: &str,
        f: impl Fn(&SessionRecord) -> bool,
    ) -> (usize, SessionRecord) {
        self.wait_for(from, timeout, &format!("session with {what}"), |all| {
            (all.iter().enumerate().skip(from))
                .find(|(_, s)| s.ended && f(s))
                .map(|(i, s)| (i, s.clone()))
        })
    }

    /// Waits until no session is open and returns how many there were.
    fn idle(&mut self) -> usize {
        self.wait_for(0, WAIT, "moment without an open session", |all| {
            all.iter().all(|s| s.ended).then_some(all.len())
        })
    }

    /// The ConnectionRequestURL of the latest Inform, once it is the forwarded one: after a
    /// boot the box informs with its local URL and, once STUN has learned the public address,
    /// with the forwarded one (4 VALUE CHANGE).
    fn cr_url(&mut self) -> String {
        let forwarded = self.forwarded.clone();
        let what = format!("Inform with a ConnectionRequestURL under {forwarded}");
        self.wait_for(0, WAIT, &what, |all| {
            (all.iter().rev())
                .find_map(|s| inform_param(s, CR_URL))
                .filter(|url| url.starts_with(&forwarded))
        })
    }

    /// An HTTP connection request (Digest) to the published URL; the time it was sent.
    fn http_cr(&mut self, url: &str) -> Instant {
        let t0 = Instant::now();
        let out = Command::new(connreq_bin())
            .args(["http", url, "--user", CR_USER, "--password", CR_PASS])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "HTTP CR to {url}: {}{}\nconsole:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.stb.tail()
        );
        t0
    }

    /// Queues `rpcs`, sends an HTTP CR and returns the CR session (and when the CR was sent).
    fn managed(&mut self, rpcs: Vec<AcsRequest>) -> (usize, SessionRecord, Instant) {
        // Wait until the box has had its say after a boot (the Inform with the forwarded URL)
        // and no session is open; the RPCs go to the CR's session only.
        let url = self.cr_url();
        let from = self.idle();
        self.acs.queue_on_event("6 CONNECTION REQUEST", rpcs);
        let t0 = self.http_cr(&url);
        let (i, s) = self.session(from, WAIT, "6 CONNECTION REQUEST", |s| {
            has_event(s, "6 CONNECTION REQUEST")
        });
        assert!(s.succeeded(), "{s:?}");
        (i, s, t0)
    }

    fn channel(&mut self) -> String {
        let (_, s, _) = self.managed(vec![AcsRequest::GetParameterValues {
            names: vec![CHANNEL.into()],
        }]);
        match s.received.first() {
            Some(CpeMessage::GetParameterValuesResponse { list }) => list
                .iter()
                .find(|p| p.name == CHANNEL)
                .map(|p| p.value.clone())
                .expect("the channel in the answer"),
            other => panic!("GetParameterValues answered {other:?}"),
        }
    }

    /// A firmware Download of `body` served by the ACS (the box fetches it from 10.0.2.2).
    fn download(&mut self, key: &str, name: &str, body: Vec<u8>) -> usize {
        let path = format!("/fw/{name}");
        let size = body.len() as u32;
        self.acs.serve_file(
            &path,
            ServedFile {
                body,
                auth: AcsAuth::None,
                content_length: None,
            },
        );
        let url = format!("http://10.0.2.2:{}{path}", self.acs.addr.port());
        let (i, s, _) = self.managed(vec![AcsRequest::Download(Download {
            command_key: key.into(),
            file_type: "1 Firmware Upgrade Image".into(),
            url,
            file_size: size,
            target_file_name: name.into(),
            ..Default::default()
        })]);
        match s.received.first() {
            Some(CpeMessage::DownloadResponse { status, .. }) => {
                assert_eq!(*status, 1, "a firmware download completes later")
            }
            other => panic!("Download answered {other:?}"),
        }
        i + 1
    }

    /// The TransferComplete for `key` (waiting for the session that carries it), and whether
    /// the box booted since session `from`.
    fn transfer_complete(
        &mut self,
        from: usize,
        key: &str,
        timeout: Duration,
    ) -> (SessionRecord, TransferComplete, bool) {
        let (i, s) = self.session(from, timeout, "TransferComplete", |s| {
            tcs(s).iter().any(|t| t.command_key == key)
        });
        let tc = tcs(&s).into_iter().find(|t| t.command_key == key).unwrap();
        let booted = self.acs.sessions()[from..=i]
            .iter()
            .any(|s| has_event(s, "1 BOOT"));
        (s, tc, booted)
    }

    fn reads(&self, file: &str) -> Vec<u8> {
        std::fs::read(self.image.join(file)).unwrap()
    }
}

/// Writes `file` into the (unmounted) ext4 flash image at `dest`.
fn debugfs_write(flash: &Path, file: &Path, dest: &str) {
    let out = Command::new("debugfs")
        .arg("-w")
        .arg("-R")
        .arg(format!("write {} {dest}", file.display()))
        .arg(flash)
        .output()
        .unwrap();
    assert!(out.status.success(), "debugfs: {out:?}");
}

fn print_figure(what: &str, d: Duration) {
    println!("FIGURE stb {what}: {:.1} ms", d.as_secs_f64() * 1000.0);
}

/// The architecture and image directory to test (`CWMPD_STB_ARCH`, `CWMPD_STB_DIR`), or None
/// (after saying why: a failure in CI) when the test cannot run here.
fn image_dir(test: &str) -> Option<(String, PathBuf)> {
    let arch = std::env::var("CWMPD_STB_ARCH").unwrap_or_else(|_| "armhf".into());
    if arch == "none" {
        println!("{test}: turned off (CWMPD_STB_ARCH=none)");
        return None;
    }
    let image = std::env::var_os("CWMPD_STB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| manifest().join("target"));
            target.join("stb").join(&arch)
        });
    if !image.join("boot.sh").exists() {
        let why = format!(
            "no image in {} (bash cross/stb-image.sh {arch})",
            image.display()
        );
        skip(test, &why);
        return None;
    }
    if !have("debugfs") || !have("e2fsck") {
        skip(test, "debugfs/e2fsck not installed (e2fsprogs)");
        return None;
    }
    Some((arch, image))
}

/// A private copy of the image's flash in `dir`.
fn flash_copy(image: &Path, dir: &Path) -> PathBuf {
    let flash = dir.join("flash.img");
    std::fs::copy(image.join("flash.img"), &flash).unwrap();
    // debugfs does not replay the journal: a flash that was booted by hand (boot.sh writes to
    // the image's own flash.img by default) is first made consistent.
    let fsck = Command::new("e2fsck")
        .arg("-fp")
        .arg(&flash)
        .output()
        .unwrap();
    assert!(
        matches!(fsck.status.code(), Some(0 | 1)),
        "e2fsck of the flash: {fsck:?}"
    );
    flash
}

#[test]
fn emulated_stb_is_managed_end_to_end() {
    let Some((arch, image)) = image_dir("emulated STB") else {
        return;
    };
    let d = TempDir::new("stb");
    let Some(prosody) = Prosody::setup(&d) else {
        return;
    };

    // The box's own flash, with the operator's XMPP CA provisioned on it.
    let flash = flash_copy(&image, d.path());
    debugfs_write(&flash, &prosody.ca(), "/config/xmpp-ca.pem");

    let acs = cwmp_testacs::spawn_in_thread(AcsOptions::default());
    let stun_port = free_udp_port();
    let stun_api = format!("127.0.0.1:{}", free_port());
    let mut stun_cmd = Command::new(connreq_bin());
    stun_cmd.args([
        "stun-server",
        "--listen",
        &format!("127.0.0.1:{stun_port}"),
        "--api",
        &stun_api,
        "--max-seconds",
        "900",
    ]);
    let stun = Proc::spawn(stun_cmd, d.path().join("stun-server.log"));
    assert!(
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(
            &stun_api
        )
        .is_ok()),
        "stun server did not start: {}",
        stun.text()
    );

    // Everything the box needs, on its kernel command line.
    let fwd_port = free_port();
    let ms = "cwmpd.param.Device.ManagementServer.";
    let xc = "cwmpd.param.Device.XMPP.Connection.1.";
    let append = [
        format!("cwmpd.acs=http://10.0.2.2:{}/acs", acs.addr.port()),
        format!("cwmpd.external_port={fwd_port}"),
        format!("{ms}ConnectionRequestUsername={CR_USER}"),
        format!("{ms}ConnectionRequestPassword={CR_PASS}"),
        format!("{ms}STUNEnable=true"),
        format!("{ms}STUNServerAddress=10.0.2.2"),
        format!("{ms}STUNServerPort={stun_port}"),
        format!("{ms}ConnReqAllowedJabberIDs=acs@{DOMAIN}"),
        format!("{xc}Enable=true"),
        format!("{xc}Username=cpe1"),
        format!("{xc}Password=cpe1-pw"),
        format!("{xc}Domain={DOMAIN}"),
        format!("{xc}Server.1.ServerAddress=10.0.2.2"),
        format!("{xc}Server.1.Port={}", prosody.port),
    ];
    // On the kernel command line when it fits the board's limit; else the ACS there and the
    // rest in the flash's config/bootargs (QEMU's Malta board passes at most 256 bytes).
    let boot_sh = std::fs::read_to_string(image.join("boot.sh")).unwrap();
    let fixed = boot_sh
        .split("-append \"")
        .nth(1)
        .and_then(|s| s.split("${STB_APPEND").next())
        .unwrap_or("");
    let limit = if boot_sh.contains("-M malta") {
        MALTA_CMDLINE_MAX
    } else {
        CMDLINE_MAX
    };
    let append = if fixed.len() + append.join(" ").len() < limit {
        append.join(" ")
    } else {
        let bootargs = d.path().join("bootargs");
        std::fs::write(&bootargs, append[1..].join("\n") + "\n").unwrap();
        debugfs_write(&flash, &bootargs, "/config/bootargs");
        append[0].clone()
    };
    let hostfwd = format!(",hostfwd=tcp:127.0.0.1:{fwd_port}-:7547");
    let stb = Stb::boot(
        &image,
        &flash,
        &append,
        &hostfwd,
        d.path().join("console.log"),
    );
    let mut rig = Rig {
        stb,
        acs,
        prosody,
        stun_api,
        image: image.clone(),
        forwarded: format!("http://127.0.0.1:{fwd_port}/"),
    };

    // 1. Boot: the first Inform is the bootstrap.
    let (_, first) = rig.session(0, BOOT_WAIT, "0 BOOTSTRAP", |s| has_event(s, "0 BOOTSTRAP"));
    assert!(first.succeeded(), "{first:?}");
    assert!(has_event(&first, "1 BOOT"), "{:?}", events(&first));
    print_figure(
        &format!("{arch} boot to first Inform"),
        first.inform_at.unwrap() - rig.stb.started,
    );
    let sw1 = inform_param(&first, SW).unwrap();
    assert!(sw1.ends_with("-stb.1"), "running firmware {sw1}");
    assert_eq!(
        first.inform.as_ref().unwrap().device_id.product_class,
        "STB"
    );

    // 2. HTTP CR to the published URL: the forwarded one (STUN's public address with
    // external_port), reachable through the emulator's port forward.
    let (_, s, t0) = rig.managed(vec![]);
    print_figure(
        &format!("{arch} HTTP CR to Inform"),
        s.inform_at.unwrap() - t0,
    );

    // 3. UDP CR through the emulator's NAT, sent from the STUN server's socket.
    let from = rig.idle();
    let t0 = Instant::now();
    let out = Command::new(connreq_bin())
        .args([
            "udp",
            "last",
            "--user",
            CR_USER,
            "--password",
            CR_PASS,
            "--via",
            &rig.stun_api,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "UDP CR: {}{}\nSTUN server: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        stun.text()
    );
    let (_, s) = rig.session(from, WAIT, "6 CONNECTION REQUEST (UDP)", |s| {
        has_event(s, "6 CONNECTION REQUEST")
    });
    print_figure(
        &format!("{arch} UDP CR to Inform"),
        s.inform_at.unwrap() - t0,
    );

    // 4. XMPP CR through Prosody on the host: retried until the box is online (it connects
    // after boot; the server answers service-unavailable before that).
    let from = rig.idle();
    let t0 = Instant::now();
    let mut last = String::new();
    let mut sent = None;
    while t0.elapsed() < WAIT {
        let out = Command::new(connreq_bin())
            .args([
                "xmpp",
                "--jid",
                &format!("acs@{DOMAIN}"),
                "--password",
                "acs-pw",
                "--server",
                &format!("127.0.0.1:{}", rig.prosody.port),
                "--to",
                &format!("cpe1@{DOMAIN}/cwmp"),
                "--user",
                CR_USER,
                "--cr-password",
                CR_PASS,
            ])
            .arg("--ca")
            .arg(rig.prosody.ca())
            .output()
            .unwrap();
        if out.status.success() {
            // When the IQ left: the tool's login is not part of the CR.
            let rtt = String::from_utf8_lossy(&out.stdout)
                .split("rtt=")
                .nth(1)
                .and_then(|r| r.trim().trim_end_matches("ms").parse::<f64>().ok())
                .expect("the tool prints the IQ's round trip");
            sent = Some(Instant::now() - Duration::from_secs_f64(rtt / 1000.0));
            break;
        }
        last = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let Some(t0) = sent else {
        let (_, st, _) = rig.managed(vec![AcsRequest::GetParameterValues {
            names: vec!["Device.XMPP.Connection.1.".into()],
        }]);
        panic!(
            "XMPP CR never answered: {last}\nthe box's XMPP connection: {:?}\nprosody: {}\nconsole:\n{}",
            st.received.first(),
            rig.prosody.log(),
            rig.stb.tail()
        );
    };
    let (_, s) = rig.session(from, WAIT, "6 CONNECTION REQUEST (XMPP)", |s| {
        has_event(s, "6 CONNECTION REQUEST")
    });
    print_figure(
        &format!("{arch} XMPP CR to Inform"),
        s.inform_at.unwrap() - t0,
    );

    // 5. A channel change: SPV → the middleware provider tunes → the session ends; the value
    // read back in the same session. (One CR for all of it: the box allows a burst of 5 CRs,
    // then one per 2 s, and answers 503 beyond that.)
    let (_, s, t0) = rig.managed(vec![
        AcsRequest::SetParameterValues {
            list: vec![ParamValue {
                name: CHANNEL.into(),
                value: TUNED.into(),
                xsi_type: Some("xsd:string".into()),
            }],
            parameter_key: "tune-1".into(),
        },
        AcsRequest::GetParameterValues {
            names: vec![CHANNEL.into()],
        },
    ]);
    match &s.received[..] {
        [
            CpeMessage::SetParameterValuesResponse { status: 0 },
            CpeMessage::GetParameterValuesResponse { list },
        ] => assert_eq!(list[0].value, TUNED),
        other => panic!("SetParameterValues, GetParameterValues answered {other:?}"),
    }
    print_figure(
        &format!("{arch} channel change (CR to the end of the session that tunes)"),
        s.ended_at.unwrap() - t0,
    );

    // 6. Reboot: the machine really restarts; the state on the flash survives.
    let (i, _, t0) = rig.managed(vec![AcsRequest::Reboot {
        command_key: "rb-1".into(),
    }]);
    let (_, s) = rig.session(i + 1, BOOT_WAIT, "1 BOOT after Reboot", |s| {
        has_event(s, "1 BOOT")
    });
    print_figure(
        &format!("{arch} Reboot (CR to the Inform after the reboot)"),
        s.inform_at.unwrap() - t0,
    );
    let ev = events_with_keys(&s);
    assert!(ev.contains(&("M Reboot".into(), "rb-1".into())), "{ev:?}");
    assert!(!has_event(&s, "0 BOOTSTRAP"), "{ev:?}");
    assert_eq!(rig.channel(), TUNED, "the channel survives the reboot");

    // 7. A corrupt image is refused (9018) and the box keeps running its firmware.
    let mut corrupt = rig.reads("firmware-next.img");
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x5a;
    let from = rig.download("fw-corrupt", "corrupt.img", corrupt);
    let (s, tc, booted) = rig.transfer_complete(from, "fw-corrupt", WAIT);
    assert_eq!(tc.fault.code, 9018, "{tc:?}");
    assert!(!booted, "no reboot");
    assert_eq!(inform_param(&s, SW).as_deref(), Some(sw1.as_str()));

    // 8. The next firmware: written to the other slot, booted, confirmed, reported.
    let next_img = rig.reads("firmware-next.img");
    let t0 = Instant::now();
    let from = rig.download("fw-next", "next.img", next_img);
    let (s, tc, booted) = rig.transfer_complete(from, "fw-next", BOOT_WAIT);
    print_figure(
        &format!("{arch} firmware upgrade (CR to TransferComplete)"),
        s.inform_at.unwrap() - t0,
    );
    assert_eq!(tc.fault.code, 0, "{tc:?}");
    assert!(booted, "the box rebooted into the new firmware");
    assert!(has_event(&s, "M Download"), "{:?}", events(&s));
    assert!(has_event(&s, "7 TRANSFER COMPLETE"), "{:?}", events(&s));
    let sw2 = inform_param(&s, SW).unwrap();
    assert!(sw2.ends_with("-stb.2"), "after the upgrade: {sw2}");

    // 9. A firmware that does not come up: the box rolls back, TransferComplete says so.
    let broken = rig.reads("firmware-broken.img");
    let t0 = Instant::now();
    let from = rig.download("fw-broken", "broken.img", broken);
    let (s, tc, booted) = rig.transfer_complete(from, "fw-broken", BOOT_WAIT);
    print_figure(
        &format!("{arch} failed upgrade and rollback (CR to TransferComplete)"),
        s.inform_at.unwrap() - t0,
    );
    assert_eq!(tc.fault.code, 9010, "{tc:?}");
    assert!(
        booted,
        "the box rebooted (into the broken firmware, then back)"
    );
    assert!(
        tc.fault.string.contains("did not come up"),
        "{:?}",
        tc.fault
    );
    assert_eq!(inform_param(&s, SW).as_deref(), Some(sw2.as_str()));

    // 10. FactoryReset: the agent's state and the middleware's are wiped; a new bootstrap.
    let (i, _, t0) = rig.managed(vec![AcsRequest::FactoryReset]);
    let (_, s) = rig.session(i + 1, BOOT_WAIT, "0 BOOTSTRAP after FactoryReset", |s| {
        has_event(s, "0 BOOTSTRAP")
    });
    print_figure(
        &format!("{arch} FactoryReset (CR to the bootstrap Inform)"),
        s.inform_at.unwrap() - t0,
    );
    assert!(has_event(&s, "1 BOOT"), "{:?}", events(&s));
    assert_eq!(inform_param(&s, SW).as_deref(), Some(sw2.as_str()));
    assert_eq!(
        rig.channel(),
        DEFAULT_CHANNEL,
        "the channel is back to its default"
    );

    // Everything the box sent is valid CWMP.
    rig.idle();
    let all = rig.acs.sessions();
    assert!(all.iter().all(|s| s.errors.is_empty()), "{all:?}");
    if let Some(n) = common::xsd::validate_sessions("emulated STB", &all) {
        println!("{n} messages from the box validate against the CWMP schema");
    }
}

/// A bad `cwmpd.*` boot argument stops the agent with a message naming it on the console
/// (never a silent default): the box does not call the ACS.
#[test]
fn bad_boot_argument_stops_the_agent_with_a_message() {
    let Some((_, image)) = image_dir("emulated STB, bad boot argument") else {
        return;
    };
    let d = TempDir::new("stb-bad");
    let flash = flash_copy(&image, d.path());
    let acs = cwmp_testacs::spawn_in_thread(AcsOptions::default());
    let append = format!(
        "cwmpd.acs=http://10.0.2.2:{}/acs cwmpd.colour=blue",
        acs.addr.port()
    );
    let mut stb = Stb::boot(&image, &flash, &append, "", d.path().join("console.log"));
    let t0 = Instant::now();
    let want = "\"cwmpd.colour=blue\": unknown key";
    // The end of start-up: init offers the console once rcS (and the init scripts) are done.
    let done = "Please press Enter to activate this console";
    while !(stb.tail().contains(want) && stb.tail().contains(done)) {
        stb.assert_running();
        assert!(
            t0.elapsed() < BOOT_WAIT,
            "no message about the bad word; console:\n{}",
            stb.tail()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The init script's check-config refused the configuration: the agent was not started.
    assert!(!stb.tail().contains("Starting cwmpd"), "{}", stb.tail());
    assert_eq!(acs.session_count(), 0);
}
