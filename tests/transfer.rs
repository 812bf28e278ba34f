//! File transfers of the real agent against the test ACS acting as file server: Download with
//! install, a firmware install that takes the agent down (and the verdict after the restart:
//! SoftwareVersion changed or not, the install_result hook), truncated and oversized downloads,
//! FileSize as an upper bound and the free-space check, Upload, the queued-transfer queries and
//! CancelTransfer.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use cwmp_testacs::{
    AcsAuth, AcsOptions, ServedFile, SessionRecord, TestAcsHandle, spawn_in_thread,
};
use cwmpd::cwmp::soap::{
    AcsRequest, CpeMessage, Download, ScheduleDownload, TimeWindow, TransferComplete, Upload,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "file-pass-s3cret";

fn config_for(dir: &Path, acs: &TestAcsHandle, actions: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            "[connreq]\nhttp_listen = [\"127.0.0.1:0\"]\n[actions]\n{actions}\n[parameters]\n\"Device.ManagementServer.URL\" = \"{url}\"\n\"Device.DeviceInfo.Manufacturer\" = \"Test Co\"\n\"Device.DeviceInfo.ManufacturerOUI\" = \"00D09E\"\n\"Device.DeviceInfo.ProductClass\" = \"STB\"\n\"Device.DeviceInfo.SerialNumber\" = \"SN0001\"\n",
            url = acs.url()
        ),
    )
}

/// Like [`config_for`], with the running firmware's `Device.DeviceInfo.SoftwareVersion`: a
/// test "boots a new image" by writing the config again with another version.
fn config_sw(dir: &Path, acs: &TestAcsHandle, actions: &str, sw: &str) -> std::path::PathBuf {
    let p = config_for(dir, acs, actions);
    let mut text = std::fs::read_to_string(&p).unwrap();
    text.push_str(&format!(
        "\"Device.DeviceInfo.SoftwareVersion\" = \"{sw}\"\n"
    ));
    std::fs::write(&p, text).unwrap();
    p
}

/// Waits until the agent has exited (a firmware install command killed it: the "reboot").
fn wait_killed(a: &mut Agent) {
    let t0 = Instant::now();
    loop {
        if let Ok(Some(_)) = a.child.try_wait() {
            return;
        }
        assert!(t0.elapsed() < WAIT, "agent not killed: {}", a.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn served(body: &[u8]) -> ServedFile {
    ServedFile {
        body: body.to_vec(),
        auth: AcsAuth::None,
        content_length: None,
    }
}

fn has_event(s: &SessionRecord, code: &str, key: &str) -> bool {
    events_with_keys(s)
        .iter()
        .any(|(c, k)| c == code && k == key)
}

/// Waits until `n` TransferCompletes arrived in total; returns them all.
fn wait_tcs(acs: &TestAcsHandle, n: usize) -> Vec<TransferComplete> {
    let t0 = Instant::now();
    loop {
        let all: Vec<TransferComplete> = acs.sessions().iter().flat_map(tcs).collect();
        if all.len() >= n || t0.elapsed() > WAIT {
            return all;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn download(key: &str, file_type: &str, url: String, size: usize, delay: u32) -> AcsRequest {
    AcsRequest::Download(Download {
        command_key: key.into(),
        file_type: file_type.into(),
        url,
        username: "fu".into(),
        password: SECRET.into(),
        file_size: size as u32,
        target_file_name: "target.bin".into(),
        delay_seconds: delay,
        ..Default::default()
    })
}

fn sh(cmd: &str) -> String {
    format!("[\"sh\", \"-c\", \"{cmd}\"]")
}

#[test]
fn config_download_is_installed_and_reported() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("xfer-cfg");
    let body = b"<config>hello</config>\n".repeat(50);
    acs.serve_file(
        "/files/cfg.xml",
        ServedFile {
            body: body.clone(),
            auth: AcsAuth::Digest {
                user: "fu".into(),
                pass: SECRET.into(),
            },
            content_length: None,
        },
    );
    acs.queue(vec![download(
        "dl-1",
        "3 Vendor Configuration File",
        acs.file_url("/files/cfg.xml"),
        body.len(),
        0,
    )]);
    let inst = d.path().join("installed");
    let a = Agent::start(&config_for(
        d.path(),
        &acs,
        &format!(
            "config_install = {}",
            sh(&format!("cp {{file}} {}", inst.display()))
        ),
    ));
    let s = acs.wait_sessions(2, WAIT);
    assert!(s.len() >= 2, "{}", a.log_text());
    match &s[0].received[0] {
        CpeMessage::DownloadResponse { status, .. } => assert_eq!(*status, 1),
        m => panic!("{m:?}"),
    }
    assert!(s[1].succeeded(), "{:?}", s[1].errors);
    assert!(
        has_event(&s[1], "7 TRANSFER COMPLETE", ""),
        "{:?}",
        events_with_keys(&s[1])
    );
    assert!(
        has_event(&s[1], "M Download", "dl-1"),
        "{:?}",
        events_with_keys(&s[1])
    );
    let t = tcs(&s[1]);
    assert_eq!(t.len(), 1, "{:?}", s[1].received);
    assert_eq!(t[0].command_key, "dl-1");
    assert_eq!(t[0].fault.code, 0, "{:?}", t[0].fault);
    assert!(matches!(s[1].received[0], CpeMessage::TransferComplete(_)));
    assert_ne!(t[0].start_time, "0001-01-01T00:00:00Z");
    assert_ne!(t[0].complete_time, "0001-01-01T00:00:00Z");
    assert_eq!(std::fs::read(&inst).unwrap(), body);
    assert_eq!(acs.file_gets(), vec!["/files/cfg.xml".to_string()]);
    // The staged file is gone, and the password never reached the log.
    let staged: Vec<_> = std::fs::read_dir(d.path().join("state/downloads"))
        .unwrap()
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
    assert!(!a.log_text().contains(SECRET));
    common::xsd::validate_sessions("config_download_is_installed_and_reported", &acs.sessions());
}

#[test]
fn firmware_install_that_kills_the_agent_is_reported_once_after_restart() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("xfer-fw");
    let body = vec![0x5au8; 20_000];
    acs.serve_file(
        "/fw.bin",
        ServedFile {
            body: body.clone(),
            auth: AcsAuth::Basic {
                user: "fu".into(),
                pass: SECRET.into(),
            },
            content_length: None,
        },
    );
    acs.queue(vec![download(
        "fw-7",
        "1 Firmware Upgrade Image",
        acs.file_url("/fw.bin"),
        body.len(),
        0,
    )]);
    let flashed = d.path().join("flashed");
    let actions = format!(
        "firmware_install = {}",
        sh(&format!(
            "cp {{file}} {} && kill -9 $PPID",
            flashed.display()
        ))
    );
    let cfg = config_sw(d.path(), &acs, &actions, "1.0");
    let mut a = Agent::start(&cfg);
    // The "reboot": the install command kills the agent.
    wait_killed(&mut a);
    assert_eq!(std::fs::read(&flashed).unwrap(), body);
    let s = acs.wait_sessions(1, WAIT);
    assert_eq!(s.len(), 1, "no TransferComplete session before the restart");
    drop(a);
    // The new image boots: it runs another SoftwareVersion.
    let cfg = config_sw(d.path(), &acs, &actions, "2.0");
    let a = Agent::start(&cfg);
    let s = acs.wait_sessions(2, WAIT);
    assert!(s[1].succeeded(), "{:?}", s[1].errors);
    let ev = events_with_keys(&s[1]);
    assert!(has_event(&s[1], "1 BOOT", ""), "{ev:?}");
    assert!(has_event(&s[1], "7 TRANSFER COMPLETE", ""), "{ev:?}");
    assert!(has_event(&s[1], "M Download", "fw-7"), "{ev:?}");
    let t = tcs(&s[1]);
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].command_key.as_str(), t[0].fault.code), ("fw-7", 0));
    // The next session carries neither the events nor a TransferComplete.
    let v = a.ctl(json!({"op": "inform"}));
    assert_eq!(v["ok"], true);
    let s = acs.wait_sessions(3, WAIT);
    assert!(s[2].succeeded(), "{:?}", s[2].errors);
    assert!(tcs(&s[2]).is_empty());
    assert!(
        !has_event(&s[2], "7 TRANSFER COMPLETE", ""),
        "{:?}",
        events_with_keys(&s[2])
    );
    assert!(!a.log_text().contains(SECRET));
    common::xsd::validate_sessions(
        "firmware_install_that_kills_the_agent_is_reported_once_after_restart",
        &acs.sessions(),
    );
}

#[test]
fn truncated_and_oversized_downloads_are_refused_and_not_installed() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("xfer-trunc");
    let body = vec![7u8; 3000];
    let serve = |path: &str, body: Vec<u8>, cl: Option<u64>| {
        acs.serve_file(
            path,
            ServedFile {
                body,
                auth: AcsAuth::None,
                content_length: cl,
            },
        )
    };
    // The connection closes before Content-Length bytes.
    serve("/lying", body.clone(), Some(5000));
    serve("/ok", body.clone(), None);
    serve("/big", vec![1u8; 10_000], None);
    acs.queue(vec![
        download(
            "lying-cl",
            "1 Firmware Upgrade Image",
            acs.file_url("/lying"),
            0,
            0,
        ),
        // FileSize smaller than the body: refused, not installed (FileSize is an upper bound;
        // see download_with_an_approximate_file_size_is_installed for the other side).
        download(
            "long",
            "1 Firmware Upgrade Image",
            acs.file_url("/ok"),
            1000,
            0,
        ),
        // Over max_download.
        download(
            "huge",
            "1 Firmware Upgrade Image",
            acs.file_url("/big"),
            0,
            0,
        ),
    ]);
    let ran = d.path().join("install-ran");
    let _a = Agent::start(&config_for(
        d.path(),
        &acs,
        &format!(
            "max_download = 8192\nfirmware_install = {}",
            sh(&format!("touch {}", ran.display()))
        ),
    ));
    let t = wait_tcs(&acs, 3);
    assert_eq!(t.len(), 3, "{t:?}");
    for tc in &t {
        assert_eq!(tc.fault.code, 9017, "{tc:?}");
        assert!(!tc.fault.string.is_empty());
    }
    let mut keys: Vec<&str> = t.iter().map(|t| t.command_key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["huge", "long", "lying-cl"]);
    assert!(!ran.exists(), "the install command must not run");
    let staged: Vec<_> = std::fs::read_dir(d.path().join("state/downloads"))
        .unwrap()
        .collect();
    assert!(staged.is_empty(), "{staged:?}");
    common::xsd::validate_sessions(
        "truncated_and_oversized_downloads_are_refused_and_not_installed",
        &acs.sessions(),
    );
}

#[test]
fn log_upload_is_put_to_the_server() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("xfer-up");
    acs.accept_uploads(
        "/up/log.txt",
        AcsAuth::Digest {
            user: "fu".into(),
            pass: SECRET.into(),
        },
    );
    let up = |key: &str, ft: &str, url: String| {
        AcsRequest::Upload(Upload {
            command_key: key.into(),
            file_type: ft.into(),
            url,
            username: "fu".into(),
            password: SECRET.into(),
            delay_seconds: 0,
        })
    };
    acs.queue(vec![
        up("log-1", "2 Vendor Log File", acs.file_url("/up/log.txt")),
        // config_export is not configured.
        up(
            "cfg-1",
            "1 Vendor Configuration File",
            acs.file_url("/up/log.txt"),
        ),
        up("bad", "9 Nothing", acs.file_url("/up/log.txt")),
    ]);
    let a = Agent::start(&config_for(
        d.path(),
        &acs,
        &format!(
            "log_export = {}",
            sh("printf 'line one\\\\nline two\\\\n' > {file}")
        ),
    ));
    let t = wait_tcs(&acs, 2);
    assert_eq!(t.len(), 2, "{t:?} {}", a.log_text());
    let s = acs.sessions();
    match &s[0].received[0] {
        CpeMessage::UploadResponse { status, .. } => assert_eq!(*status, 1),
        m => panic!("{m:?}"),
    }
    match &s[0].received[2] {
        CpeMessage::Fault(f) => assert_eq!(f.code, 9003),
        m => panic!("{m:?}"),
    }
    let log = t.iter().find(|t| t.command_key == "log-1").unwrap();
    assert_eq!(log.fault.code, 0, "{log:?}");
    let cfg = t.iter().find(|t| t.command_key == "cfg-1").unwrap();
    assert_eq!(cfg.fault.code, 9011, "{cfg:?}");
    assert!(s.iter().any(|s| has_event(s, "M Upload", "log-1")));
    let ups = acs.uploads();
    assert_eq!(ups.len(), 1, "{ups:?}");
    assert_eq!(ups[0].0, "/up/log.txt");
    assert_eq!(ups[0].1, b"line one\nline two\n");
    assert!(!a.log_text().contains(SECRET));
    common::xsd::validate_sessions("log_upload_is_put_to_the_server", &acs.sessions());
}

#[test]
fn queued_transfers_listing_and_cancel() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("xfer-queue");
    let body = vec![3u8; 1000];
    acs.serve_file(
        "/fw.bin",
        ServedFile {
            body: body.clone(),
            auth: AcsAuth::None,
            content_length: None,
        },
    );
    acs.queue(vec![
        download(
            "later",
            "3 Vendor Configuration File",
            acs.file_url("/fw.bin"),
            0,
            3600,
        ),
        AcsRequest::ScheduleDownload(ScheduleDownload {
            command_key: "sched".into(),
            file_type: "1 Firmware Upgrade Image".into(),
            url: acs.file_url("/fw.bin"),
            file_size: 1000,
            time_windows: vec![TimeWindow {
                window_start: 7200,
                window_end: 9000,
                window_mode: "1 At Any Time".into(),
                user_message: String::new(),
                max_retries: -1,
            }],
            ..Default::default()
        }),
        download("web", "2 Web Content", acs.file_url("/fw.bin"), 0, 0),
        download(
            "ftp",
            "1 Firmware Upgrade Image",
            "ftp://127.0.0.1/fw.bin".into(),
            0,
            0,
        ),
        AcsRequest::GetQueuedTransfers,
        AcsRequest::GetAllQueuedTransfers,
        AcsRequest::CancelTransfer {
            command_key: "later".into(),
        },
        AcsRequest::CancelTransfer {
            command_key: "nope".into(),
        },
        AcsRequest::GetQueuedTransfers,
        // Starts right after this session; its install takes a while.
        download(
            "now",
            "1 Firmware Upgrade Image",
            acs.file_url("/fw.bin"),
            1000,
            0,
        ),
    ]);
    let done = d.path().join("done");
    let a = Agent::start(&config_for(
        d.path(),
        &acs,
        &format!(
            "firmware_install = {}",
            sh(&format!("sleep 3; cp {{file}} {}", done.display()))
        ),
    ));
    let s = acs.wait_sessions(1, WAIT);
    let r = &s[0].received;
    assert!(
        matches!(r[0], CpeMessage::DownloadResponse { status: 1, .. }),
        "{r:?}"
    );
    assert!(
        matches!(r[1], CpeMessage::ScheduleDownloadResponse),
        "{r:?}"
    );
    assert!(
        matches!(&r[2], CpeMessage::Fault(f) if f.code == 9003),
        "{r:?}"
    );
    assert!(
        matches!(&r[3], CpeMessage::Fault(f) if f.code == 9013),
        "{r:?}"
    );
    match &r[4] {
        CpeMessage::GetQueuedTransfersResponse { list } => {
            let l: Vec<(&str, i32)> = list
                .iter()
                .map(|q| (q.command_key.as_str(), q.state))
                .collect();
            assert_eq!(l, [("later", 1), ("sched", 1)]);
        }
        m => panic!("{m:?}"),
    }
    match &r[5] {
        CpeMessage::GetAllQueuedTransfersResponse { list } => {
            assert_eq!(list.len(), 2);
            assert!(list[0].is_download);
            assert_eq!(list[0].file_type, "3 Vendor Configuration File");
            assert_eq!(list[1].file_type, "1 Firmware Upgrade Image");
            assert_eq!(list[1].file_size, 1000);
            assert_eq!(list[0].target_file_name, "target.bin");
        }
        m => panic!("{m:?}"),
    }
    assert!(matches!(r[6], CpeMessage::CancelTransferResponse), "{r:?}");
    assert!(
        matches!(&r[7], CpeMessage::Fault(f) if f.code == 9003),
        "{r:?}"
    );
    match &r[8] {
        CpeMessage::GetQueuedTransfersResponse { list } => {
            let l: Vec<&str> = list.iter().map(|q| q.command_key.as_str()).collect();
            assert_eq!(l, ["sched"]);
        }
        m => panic!("{m:?}"),
    }
    // "now" is being installed: it cannot be cancelled.
    let t0 = Instant::now();
    while acs.file_gets().is_empty() {
        assert!(t0.elapsed() < WAIT);
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    acs.queue(vec![
        AcsRequest::GetQueuedTransfers,
        AcsRequest::CancelTransfer {
            command_key: "now".into(),
        },
    ]);
    assert_eq!(a.ctl(json!({"op": "inform"}))["ok"], true);
    let s = acs.wait_sessions(2, WAIT);
    let r = &s[1].received;
    match &r[0] {
        CpeMessage::GetQueuedTransfersResponse { list } => {
            let l: Vec<(&str, i32)> = list
                .iter()
                .map(|q| (q.command_key.as_str(), q.state))
                .collect();
            assert_eq!(l, [("sched", 1), ("now", 2)]);
        }
        m => panic!("{m:?}"),
    }
    assert!(
        matches!(&r[1], CpeMessage::Fault(f) if f.code == 9021),
        "{r:?}"
    );
    let t = wait_tcs(&acs, 1);
    assert_eq!((t[0].command_key.as_str(), t[0].fault.code), ("now", 0));
    assert_eq!(std::fs::read(&done).unwrap(), body);
    common::xsd::validate_sessions("queued_transfers_listing_and_cancel", &acs.sessions());
}

// ---------------------------------------------------------------------------------------------
// FileSize is an upper bound and the basis of the free-space check, not an exact size.

#[test]
fn download_with_an_approximate_file_size_is_installed() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("xfer-approx");
    let body_a = vec![b'a'; 3000];
    let body_b = vec![b'b'; 2000];
    acs.serve_file("/a.cfg", served(&body_a));
    acs.serve_file("/b.cfg", served(&body_b));
    acs.queue(vec![
        // A stale FileSize, larger than the file the server has now.
        download(
            "stale",
            "3 Vendor Configuration File",
            acs.file_url("/a.cfg"),
            4000,
            0,
        ),
        // FileSize 0: unknown.
        download(
            "unknown",
            "3 Vendor Configuration File",
            acs.file_url("/b.cfg"),
            0,
            0,
        ),
    ]);
    let inst = d.path().join("installed");
    let a = Agent::start(&config_for(
        d.path(),
        &acs,
        &format!(
            "config_install = {}",
            sh(&format!("cat {{file}} >> {}", inst.display()))
        ),
    ));
    let t = wait_tcs(&acs, 2);
    assert_eq!(t.len(), 2, "{t:?} {}", a.log_text());
    let stale = t.iter().find(|t| t.command_key == "stale").unwrap();
    assert_eq!(stale.fault.code, 0, "{stale:?}");
    let unknown = t.iter().find(|t| t.command_key == "unknown").unwrap();
    assert_eq!(unknown.fault.code, 0, "{unknown:?}");
    // Installed in the order requested, each exactly as served.
    assert_eq!(std::fs::read(&inst).unwrap(), [body_a, body_b].concat());
    common::xsd::validate_sessions(
        "download_with_an_approximate_file_size_is_installed",
        &acs.sessions(),
    );
}

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
fn download_that_cannot_fit_is_refused_before_it_starts() {
    if !is_root() {
        common::skip(
            "transfer",
            "download_that_cannot_fit_is_refused_before_it_starts needs root to mount a tmpfs",
        );
        return;
    }
    let d = TempDir::new("xfer-space");
    let dl = d.path().join("dl");
    std::fs::create_dir_all(&dl).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs"])
        .arg(&dl)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        common::skip(
            "transfer",
            "download_that_cannot_fit_is_refused_before_it_starts: cannot mount a tmpfs here",
        );
        return;
    }
    let _m = Mount(dl.clone());
    let acs = spawn_in_thread(AcsOptions::default());
    let big = vec![b'B'; 1024 * 1024];
    let small = vec![b's'; 100_000];
    acs.serve_file("/big.cfg", served(&big));
    acs.serve_file("/small.cfg", served(&small));
    acs.queue(vec![
        download(
            "big",
            "3 Vendor Configuration File",
            acs.file_url("/big.cfg"),
            big.len(),
            0,
        ),
        download(
            "small",
            "3 Vendor Configuration File",
            acs.file_url("/small.cfg"),
            small.len(),
            0,
        ),
    ]);
    let inst = d.path().join("installed");
    let a = Agent::start(&config_for(
        d.path(),
        &acs,
        &format!(
            "download_dir = \"{}\"\nconfig_install = {}",
            dl.display(),
            sh(&format!("cat {{file}} >> {}", inst.display()))
        ),
    ));
    let t = wait_tcs(&acs, 2);
    assert_eq!(t.len(), 2, "{t:?} {}", a.log_text());
    let b = t.iter().find(|t| t.command_key == "big").unwrap();
    assert_eq!(b.fault.code, 9010, "{b:?}");
    assert!(!b.fault.string.is_empty(), "{b:?}");
    let s = t.iter().find(|t| t.command_key == "small").unwrap();
    assert_eq!(s.fault.code, 0, "{s:?}");
    // The big file was never fetched: the space check comes first.
    assert_eq!(acs.file_gets(), vec!["/small.cfg".to_string()]);
    assert_eq!(std::fs::read(&inst).unwrap(), small);
    common::xsd::validate_sessions(
        "download_that_cannot_fit_is_refused_before_it_starts",
        &acs.sessions(),
    );
}

// ---------------------------------------------------------------------------------------------
// The outcome of a firmware install that restarted the agent.

/// Serves `/fw.bin`, has `key` downloaded as firmware, waits until its install command (copy
/// to `flashed`, then kill the agent) ran. Returns the body.
fn flash_and_kill(acs: &TestAcsHandle, a: &mut Agent, key: &str) -> Vec<u8> {
    let body = vec![0xa5u8; 5000];
    acs.serve_file("/fw.bin", served(&body));
    acs.queue(vec![download(
        key,
        "1 Firmware Upgrade Image",
        acs.file_url("/fw.bin"),
        body.len(),
        0,
    )]);
    assert_eq!(a.ctl(json!({"op": "inform"}))["ok"], true);
    wait_killed(a);
    body
}

fn flash_actions(flashed: &Path, extra: &str) -> String {
    format!(
        "firmware_install = {}\n{extra}",
        sh(&format!(
            "cp {{file}} {} && kill -9 $PPID",
            flashed.display()
        ))
    )
}

#[test]
fn firmware_that_did_not_take_effect_is_reported_as_failure() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("xfer-fw-same");
    let flashed = d.path().join("flashed");
    let cfg = config_sw(d.path(), &acs, &flash_actions(&flashed, ""), "1.0");
    let mut a = Agent::start(&cfg);
    acs.wait_sessions(1, WAIT);
    let body = flash_and_kill(&acs, &mut a, "fw-same");
    assert_eq!(std::fs::read(&flashed).unwrap(), body);
    let n = acs.session_count();
    drop(a);
    // The old image came back: the same SoftwareVersion runs.
    let _a = Agent::start(&cfg);
    let s = acs.wait_sessions(n + 1, WAIT);
    let boot = &s[n];
    assert!(boot.succeeded(), "{:?}", boot.errors);
    assert!(
        has_event(boot, "1 BOOT", ""),
        "{:?}",
        events_with_keys(boot)
    );
    assert!(
        has_event(boot, "M Download", "fw-same"),
        "{:?}",
        events_with_keys(boot)
    );
    let t = tcs(boot);
    assert_eq!(t.len(), 1, "{:?}", boot.received);
    assert_eq!(t[0].command_key, "fw-same");
    assert_eq!(t[0].fault.code, 9010, "{:?}", t[0].fault);
    assert!(!t[0].fault.string.is_empty());
    common::xsd::validate_sessions(
        "firmware_that_did_not_take_effect_is_reported_as_failure",
        &acs.sessions(),
    );
}

#[test]
fn install_result_hook_decides_the_firmware_outcome() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("xfer-fw-hook");
    let flashed = d.path().join("flashed");
    let verdict = d.path().join("verdict");
    let calls = d.path().join("hook-calls");
    let hook = d.path().join("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "echo \"$CWMPD_COMMAND_KEY $CWMPD_SOFTWARE_VERSION_BEFORE $CWMPD_SOFTWARE_VERSION\" >> {calls}\n\
             [ \"$(cat {verdict})\" = ok ] && exit 0\n\
             echo '9018 image rejected by the bootloader'\n\
             exit 1\n",
            calls = calls.display(),
            verdict = verdict.display()
        ),
    )
    .unwrap();
    let actions = flash_actions(
        &flashed,
        &format!("install_result = [\"sh\", \"{}\"]", hook.display()),
    );
    // 1: the version changed, but the hook says the install failed: the hook decides.
    std::fs::write(&verdict, "fail").unwrap();
    let mut a = Agent::start(&config_sw(d.path(), &acs, &actions, "1.0"));
    acs.wait_sessions(1, WAIT);
    flash_and_kill(&acs, &mut a, "fw-1");
    drop(a);
    let mut a = Agent::start(&config_sw(d.path(), &acs, &actions, "2.0"));
    let t = wait_tcs(&acs, 1);
    assert_eq!(t.len(), 1, "{}", a.log_text());
    assert_eq!(t[0].command_key, "fw-1");
    assert_eq!(t[0].fault.code, 9018, "{:?}", t[0].fault);
    assert_eq!(t[0].fault.string, "image rejected by the bootloader");
    // 2: the version did not change, but the hook says the install worked.
    std::fs::write(&verdict, "ok").unwrap();
    flash_and_kill(&acs, &mut a, "fw-2");
    drop(a);
    let _a = Agent::start(&config_sw(d.path(), &acs, &actions, "2.0"));
    let t = wait_tcs(&acs, 2);
    assert_eq!(t.len(), 2);
    assert_eq!(t[1].command_key, "fw-2");
    assert_eq!(t[1].fault.code, 0, "{:?}", t[1].fault);
    // What the hook was told: CommandKey, version before the install, version running.
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "fw-1 1.0 2.0\nfw-2 2.0 2.0\n"
    );
    common::xsd::validate_sessions(
        "install_result_hook_decides_the_firmware_outcome",
        &acs.sessions(),
    );
}

#[test]
fn firmware_version_served_by_a_provider_is_asked_after_the_restart() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("xfer-fw-prov");
    let flashed = d.path().join("flashed");
    let sw = "Device.DeviceInfo.SoftwareVersion";
    let values = d.path().join("device.json");
    std::fs::write(&values, json!({sw: "1.0"}).to_string()).unwrap();
    let prov = format!(
        "[[provider]]\nprefix = \"Device.DeviceInfo.\"\ncommand = [\"python3\", \"{}\", \"{}\"]",
        common::manifest()
            .join("tests/fixtures/file_provider.py")
            .display(),
        values.display()
    );
    // The factory value differs from what the device (the provider) says: only the provider's
    // value after the restart tells whether the image changed.
    let cfg = config_sw(d.path(), &acs, &flash_actions(&flashed, &prov), "0-factory");
    let mut a = Agent::start(&cfg);
    acs.wait_sessions(1, WAIT);
    assert_eq!(a.get(sw), "1.0");
    flash_and_kill(&acs, &mut a, "fw-prov");
    drop(a);
    // The old image came back: the provider still says 1.0.
    let a = Agent::start(&cfg);
    let t = wait_tcs(&acs, 1);
    assert_eq!(t.len(), 1, "{}", a.log_text());
    assert_eq!(t[0].command_key, "fw-prov");
    assert_eq!(t[0].fault.code, 9010, "{:?}", t[0].fault);
}

#[test]
fn installing_state_without_a_recorded_version_is_reported_as_before() {
    use cwmpd::model::persist::StateFile;
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("xfer-fw-old");
    let flashed = d.path().join("flashed");
    let cfg = config_sw(d.path(), &acs, &flash_actions(&flashed, ""), "1.0");
    let mut a = Agent::start(&cfg);
    acs.wait_sessions(1, WAIT);
    flash_and_kill(&acs, &mut a, "fw-old");
    drop(a);
    // Make the state what an older agent wrote: no recorded SoftwareVersion.
    let mut sf = StateFile::new(&d.path().join("state"));
    let (mut st, _) = sf.load();
    let t = &mut st.agent.transfers.as_mut().expect("transfers saved")["list"][0];
    assert_eq!(t["state"], "installing", "{t}");
    assert_eq!(t["sw_version_before"], "1.0", "{t}");
    t.as_object_mut().unwrap().remove("sw_version_before");
    sf.save(&st).unwrap();
    // Same version after the restart; without a recorded version this is success, as before.
    let a = Agent::start(&cfg);
    let t = wait_tcs(&acs, 1);
    assert_eq!(t.len(), 1, "{}", a.log_text());
    assert_eq!((t[0].command_key.as_str(), t[0].fault.code), ("fw-old", 0));
}

/// An install command that refuses the image (checksum, wrong model) names the fault on the
/// first line of its stdout: the TransferComplete carries it (9018 "file corrupted"), the agent
/// keeps running and nothing else happens; a failure without a code is 9010.
#[test]
fn install_command_refusal_gives_its_fault() {
    let acs = spawn_in_thread(AcsOptions::default());
    let d = TempDir::new("xfer-refuse");
    let img = b"not a firmware image".to_vec();
    acs.serve_file("/bad.img", served(&img));
    acs.serve_file("/odd.img", served(&img));
    acs.queue(vec![
        download(
            "bad",
            "1 Firmware Upgrade Image",
            acs.file_url("/bad.img"),
            img.len(),
            0,
        ),
        download(
            "odd",
            "1 Firmware Upgrade Image",
            acs.file_url("/odd.img"),
            img.len(),
            0,
        ),
    ]);
    // The first image is refused with a code, the second without one.
    let script = "case {file} in *-1) echo '9018 checksum mismatch: image corrupted'; exit 1;; *) echo 'flash busy'; exit 3;; esac";
    let a = Agent::start(&config_for(
        d.path(),
        &acs,
        &format!("firmware_install = {}", sh(script)),
    ));
    let t = wait_tcs(&acs, 2);
    assert_eq!(t.len(), 2, "{t:?} {}", a.log_text());
    let bad = t.iter().find(|t| t.command_key == "bad").unwrap();
    assert_eq!(bad.fault.code, 9018, "{bad:?}");
    assert_eq!(bad.fault.string, "checksum mismatch: image corrupted");
    let odd = t.iter().find(|t| t.command_key == "odd").unwrap();
    assert_eq!(odd.fault.code, 9010, "{odd:?}");
    assert_eq!(odd.fault.string, "flash busy");
    common::xsd::validate_sessions("install_command_refusal_gives_its_fault", &acs.sessions());
    a.stop();
}
