//! File transfers of the real agent against the test ACS acting as file server: Download with
//! install, a firmware install that takes the agent down, truncated and oversized downloads,
//! Upload, the queued-transfer queries and CancelTransfer.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use cwmpd::cwmp::soap::{
    AcsRequest, CpeMessage, Download, ScheduleDownload, TimeWindow, TransferComplete, Upload,
};
use cwmpd::testacs::{
    AcsAuth, AcsOptions, ServedFile, SessionRecord, TestAcsHandle, spawn_in_thread,
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

fn events(s: &SessionRecord) -> Vec<(String, String)> {
    s.inform
        .as_ref()
        .map(|i| {
            i.events
                .iter()
                .map(|e| (e.event_code.clone(), e.command_key.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn has_event(s: &SessionRecord, code: &str, key: &str) -> bool {
    events(s).iter().any(|(c, k)| c == code && k == key)
}

fn tcs(s: &SessionRecord) -> Vec<TransferComplete> {
    s.received
        .iter()
        .filter_map(|m| match m {
            CpeMessage::TransferComplete(t) => Some(t.clone()),
            _ => None,
        })
        .collect()
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
        events(&s[1])
    );
    assert!(
        has_event(&s[1], "M Download", "dl-1"),
        "{:?}",
        events(&s[1])
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
    let cfg = config_for(
        d.path(),
        &acs,
        &format!(
            "firmware_install = {}",
            sh(&format!(
                "cp {{file}} {} && kill -9 $PPID",
                flashed.display()
            ))
        ),
    );
    let mut a = Agent::start(&cfg);
    // The "reboot": the install command kills the agent.
    let t0 = Instant::now();
    loop {
        if let Ok(Some(_)) = a.child.try_wait() {
            break;
        }
        assert!(t0.elapsed() < WAIT, "agent not killed: {}", a.log_text());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(std::fs::read(&flashed).unwrap(), body);
    let s = acs.wait_sessions(1, WAIT);
    assert_eq!(s.len(), 1, "no TransferComplete session before the restart");
    drop(a);
    let a = Agent::start(&cfg);
    let s = acs.wait_sessions(2, WAIT);
    assert!(s[1].succeeded(), "{:?}", s[1].errors);
    let ev = events(&s[1]);
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
        events(&s[2])
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
        // FileSize larger than what the server has.
        download(
            "short",
            "1 Firmware Upgrade Image",
            acs.file_url("/ok"),
            4000,
            0,
        ),
        // FileSize smaller than the body.
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
    let t = wait_tcs(&acs, 4);
    assert_eq!(t.len(), 4, "{t:?}");
    for tc in &t {
        assert_eq!(tc.fault.code, 9017, "{tc:?}");
        assert!(!tc.fault.string.is_empty());
    }
    let mut keys: Vec<&str> = t.iter().map(|t| t.command_key.as_str()).collect();
    keys.sort();
    assert_eq!(keys, ["huge", "long", "lying-cl", "short"]);
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
