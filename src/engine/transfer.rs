//! File transfers requested by the ACS: Download, Upload, ScheduleDownload, the queued-transfer
//! queries and CancelTransfer, and the TransferComplete bookkeeping.
//!
//! State machine of one [`Transfer`] (persisted in the agent state under `"transfers"` on every
//! change, so a pending TransferComplete survives a restart or power loss):
//!
//! ```text
//!   Queued ──(due, after the session that requested it)──▶ Running ──(downloaded)──▶ Installing
//!     │ CancelTransfer                                       │ failure                  │ command done
//!     ▼                                                      ▼                          ▼
//!  (removed)                                             Completed ◀────────────────────┘
//!                                                            │ TransferCompleteResponse received
//!                                                            ▼
//!                                                        (removed)
//! ```
//!
//! * Queued: waits for `not_before` (RPC time + DelaySeconds, or the start of the first time
//!   window of a ScheduleDownload). Only one transfer runs at a time.
//! * Running: the download (or the export + upload) runs in a task; its outcome comes back to
//!   the engine through a channel. At start-up a transfer found Running was interrupted by the
//!   restart and completes with fault 9017 (download) / 9011 (upload).
//! * Installing: the install command runs. It is persisted before the command starts (for
//!   firmware together with the running `Device.DeviceInfo.SoftwareVersion`), so when the
//!   command takes the box (and the agent) down, as a firmware install does, the transfer is
//!   found Installing at start-up and completes then, with the verdict described below.
//! * Completed: the result (fault, start and complete times) waits for delivery. While any
//!   exists, the Inform carries `7 TRANSFER COMPLETE` and `M Download`/`M Upload`/
//!   `M ScheduleDownload` with the CommandKey; after the InformResponse the session sends one
//!   TransferComplete per completed transfer before the empty POST, and forgets each one when
//!   its TransferCompleteResponse arrives. A session that fails before that re-sends both the
//!   events and the TransferComplete next time.
//!
//! Time windows of ScheduleDownload: the transfer starts at the first window's WindowStart and
//! must start before the last window's WindowEnd (else fault 9020). WindowMode and UserMessage
//! are not interpreted (every mode behaves as `1 At Any Time`), MaxRetries is ignored.
//!
//! FileSize (TR-069 A.3.2.8: the size the CPE uses "to determine whether it has sufficient
//! space") is an upper bound, never an exact size; 0 means unknown:
//!
//! * before a download starts, the free space of the download directory's file system
//!   (statvfs, space available to unprivileged users) must hold min(FileSize, max_download)
//!   bytes, else the transfer fails with 9010 and the file server is not contacted. With
//!   FileSize 0 there is no up-front check; running out of space while writing is 9010 too;
//! * a smaller body (a stale or approximate FileSize) is accepted;
//! * a body larger than a non-zero FileSize is refused with 9017 and nothing is installed: a
//!   Content-Length above it before any byte is written, a body without one as soon as it
//!   passes it. This is the safer of the two possible rules: the space check was made for
//!   FileSize bytes, so the download must not overrun it, and a file other than the one the
//!   ACS described must not be flashed; the ACS can repeat the Download with a corrected (or
//!   zero) FileSize. TR-069 leaves the case open.
//!
//! The verdict on a firmware install found Installing at start-up (the install command took
//! the agent down, normally by rebooting into the new image):
//!
//! * `[actions] install_result`, when configured, decides: it runs with `CWMPD_COMMAND_KEY`,
//!   `CWMPD_SOFTWARE_VERSION_BEFORE` (empty when none was recorded) and
//!   `CWMPD_SOFTWARE_VERSION` (running now) in its environment. Exit status 0 is success;
//!   any other status is a failure whose first stdout line gives the fault: `CODE text` with
//!   CODE one of 9001, 9002, 9010, 9018, 9019, or just text (fault 9010). A hook that cannot
//!   be started, is killed by a signal or runs longer than 60 s does not decide: the rule below
//!   applies. The hook runs after start-up, so its TransferComplete goes in a session of its
//!   own after the boot session;
//! * otherwise the SoftwareVersion recorded before the install is compared with the running
//!   one (asked from the provider first when a provider serves it): changed is success, the
//!   same version is fault 9010 (the download failed to take effect; 9018 "file corrupted"
//!   would claim more than the agent knows);
//! * no recorded version (a state written by an older agent, or an empty SoftwareVersion):
//!   success, as before. A configuration file install found Installing is a success too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::Engine;
use crate::cwmp::events::EventCode;
use crate::cwmp::soap::{
    AllQueuedTransfer, Download, QueuedTransfer, ScheduleDownload, TransferComplete, TransferFault,
    Upload, cpe_fault,
};
use crate::model::store::Source;
use crate::net::files::{self, Target};
use crate::util::time::{format_datetime, now_unix};

/// "Unknown time" of CWMP.
pub use crate::util::time::UNKNOWN_TIME;
/// Most transfers kept at once (queued, running or awaiting delivery).
const MAX_TRANSFERS: usize = 16;
/// Idle timeout of the file server connections.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// The running firmware's version, recorded before a firmware install.
const SOFTWARE_VERSION: &str = "Device.DeviceInfo.SoftwareVersion";
/// Longest run of the `install_result` command.
const HOOK_TIMEOUT: Duration = Duration::from_secs(60);
/// Most stdout read from the `install_result` command.
const HOOK_OUTPUT_MAX: u64 = 4096;
/// Fault codes the `install_result` command may give (TransferComplete codes that fit an
/// install: request denied, internal error, download failure, file corrupted, file
/// authentication failure).
const HOOK_FAULTS: [u32; 5] = [9001, 9002, 9010, 9018, 9019];
/// Longest FaultString taken from the `install_result` command (characters).
const HOOK_FAULT_STRING_MAX: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XferState {
    Queued,
    Running,
    Installing,
    Completed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Firmware,
    Config,
    ConfigExport,
    LogExport,
}

/// One ACS-requested transfer (persisted as JSON; the password is kept there, the state file
/// being 0600, but never logged).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub id: u64,
    pub command_key: String,
    pub is_download: bool,
    /// Which "M ..." event reports it: "M Download", "M Upload" or "M ScheduleDownload".
    pub method_event: String,
    pub kind: Kind,
    pub file_type: String,
    pub url: String,
    pub username: String,
    pub password: String,
    pub file_size: u32,
    pub target_file_name: String,
    /// Unix time before which it must not start.
    pub not_before: i64,
    /// Unix time after which it may no longer start (ScheduleDownload windows).
    pub deadline: Option<i64>,
    pub state: XferState,
    /// The downloaded file while Installing.
    pub file: Option<PathBuf>,
    /// Firmware: `Device.DeviceInfo.SoftwareVersion` just before the install command ran
    /// (None: not recorded, as in a state written by an older agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sw_version_before: Option<String>,
    pub fault_code: u32,
    pub fault_string: String,
    pub start_time: String,
    pub complete_time: String,
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is deliberately left out.
        f.debug_struct("Transfer")
            .field("id", &self.id)
            .field("command_key", &self.command_key)
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("state", &self.state)
            .field("fault_code", &self.fault_code)
            .finish_non_exhaustive()
    }
}

impl Transfer {
    fn queued_state(&self) -> i32 {
        match self.state {
            XferState::Queued => 1,
            XferState::Running | XferState::Installing => 2,
            XferState::Completed => 3,
        }
    }
}

/// What a transfer task reports back to the engine.
#[derive(Debug)]
pub enum XferMsg {
    Downloaded { id: u64, file: PathBuf },
    Finished { id: u64, code: u32, msg: String },
}

/// The engine's transfer bookkeeping.
#[derive(Debug, Default)]
pub struct Transfers {
    pub list: Vec<Transfer>,
    next_id: u64,
    tx: Option<mpsc::UnboundedSender<XferMsg>>,
    /// Taken by the engine's main loop.
    pub rx: Option<mpsc::UnboundedReceiver<XferMsg>>,
}

#[derive(Serialize, Deserialize, Default)]
struct Persisted {
    next_id: u64,
    list: Vec<Transfer>,
}

fn download_kind(file_type: &str) -> Option<Kind> {
    let ft = file_type.trim();
    if ft == "1 Firmware Upgrade Image" {
        Some(Kind::Firmware)
    } else if ft == "3 Vendor Configuration File" {
        Some(Kind::Config)
    } else {
        None
    }
}

/// Upload file types: `1 Vendor Configuration File`, `2 Vendor Log File` and their instance
/// forms `3 Vendor Configuration File <i>`, `4 Vendor Log File <i>` (the instance is ignored:
/// there is one configuration and one log).
fn upload_kind(file_type: &str) -> Option<Kind> {
    let ft = file_type.trim();
    let (n, rest) = ft.split_once(' ')?;
    match (n, rest) {
        ("1", "Vendor Configuration File") => Some(Kind::ConfigExport),
        ("2", "Vendor Log File") => Some(Kind::LogExport),
        ("3", r) if r.starts_with("Vendor Configuration File") => Some(Kind::ConfigExport),
        ("4", r) if r.starts_with("Vendor Log File") => Some(Kind::LogExport),
        _ => None,
    }
}

fn check_url(url: &str) -> Result<(), u32> {
    if url.trim().is_empty() {
        return Err(cpe_fault::INVALID_ARGUMENTS);
    }
    if !files::supported_scheme(url) {
        return Err(cpe_fault::UNSUPPORTED_TRANSFER_PROTOCOL);
    }
    Ok(())
}

/// Largest body accepted: `max_download`, and a non-zero FileSize below it.
fn download_limit(file_size: u32, max: u64) -> u64 {
    match u64::from(file_size) {
        0 => max,
        n => n.min(max),
    }
}

/// Bytes an unprivileged writer may still put on the file system holding `dir`.
// u64 on x86_64, but the fragment size is a 32-bit c_ulong on armhf and mipsel: keep the
// conversions.
#[allow(clippy::useless_conversion)]
fn free_space(dir: &Path) -> std::io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(dir)?;
    Ok(u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size())))
}

/// A download bounded by FileSize was refused for going over the bound: say so in the terms
/// of the ACS. `files::download` only knows its bound as `max_download`, and names it in the
/// reasons of the two "too long" checks; every other failure is passed on unchanged.
fn explain_file_size_limit(f: files::Fail, file_size: u32) -> files::Fail {
    if f.code == 9017 && f.msg.contains("max_download") {
        files::Fail {
            code: 9017,
            msg: format!("the file is larger than the announced FileSize ({file_size} bytes)"),
        }
    } else {
        f
    }
}

/// The outcome of a firmware install found Installing at start-up, from the SoftwareVersion
/// recorded before it and the one running now (module documentation).
fn firmware_verdict(before: Option<&str>, running: &str) -> (u32, String) {
    match before {
        Some(b) if !b.is_empty() && b == running => (
            9010,
            format!("the new firmware did not take effect: SoftwareVersion is still {running}"),
        ),
        _ => (0, String::new()),
    }
}

/// The outcome given by the `install_result` command: its exit status and stdout.
fn hook_verdict(success: bool, stdout: &str, default_text: &str) -> (u32, String) {
    if success {
        return (0, String::new());
    }
    let line = stdout.lines().next().unwrap_or("").trim();
    let (code, text) = match line.split_once(char::is_whitespace) {
        Some((c, rest)) => (c, rest.trim()),
        None => (line, ""),
    };
    let (code, text) = match code.parse::<u32>() {
        Ok(c) if HOOK_FAULTS.contains(&c) => (c, text),
        _ => (9010, line),
    };
    let text = if text.is_empty() { default_text } else { text };
    (code, text.chars().take(HOOK_FAULT_STRING_MAX).collect())
}

/// Runs `argv` (`{file}` replaced by `file`) with `env`, keeping at most [`HOOK_OUTPUT_MAX`]
/// bytes of its stdout; killed after `timeout` when one is given. None when it could not be
/// started or ran out of time.
async fn run_capturing(
    argv: &[String],
    file: Option<&str>,
    env: &[(&str, &str)],
    timeout: Option<Duration>,
) -> Option<(std::process::ExitStatus, String)> {
    use tokio::io::AsyncReadExt;
    let args = super::session::action_args(argv, file);
    let mut child = tokio::process::Command::new(&args[0])
        .args(&args[1..])
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(timeout.is_some())
        .spawn()
        .map_err(|e| tracing::error!("cannot run {}: {e}", args[0]))
        .ok()?;
    let stdout = child.stdout.take();
    let mut out = Vec::new();
    let run = async {
        if let Some(s) = stdout {
            // Bounded; dropping the pipe afterwards lets a chatty command end (EPIPE).
            let _ = s.take(HOOK_OUTPUT_MAX).read_to_end(&mut out).await;
        }
        child.wait().await
    };
    let waited = match timeout {
        Some(t) => tokio::time::timeout(t, run).await,
        None => Ok(run.await),
    };
    let status = match waited {
        Ok(Ok(st)) => st,
        Ok(Err(e)) => {
            tracing::error!("{}: {e}", args[0]);
            return None;
        }
        Err(_) => {
            tracing::error!(
                "{} still running after {} s: killed",
                args[0],
                timeout.unwrap_or_default().as_secs()
            );
            let _ = child.kill().await;
            return None;
        }
    };
    Some((status, String::from_utf8_lossy(&out).into_owned()))
}

/// Runs the `install_result` command with `env`; None when it does not decide (cannot be
/// started, killed by a signal, or still running after [`HOOK_TIMEOUT`]).
async fn run_install_result(argv: &[String], env: &[(&str, &str)]) -> Option<(u32, String)> {
    let (status, out) = run_capturing(argv, None, env, Some(HOOK_TIMEOUT)).await?;
    if status.code().is_none() {
        tracing::error!("{} ended by {status}: SoftwareVersion decides", argv[0]);
        return None;
    }
    Some(hook_verdict(
        status.success(),
        &out,
        "the install_result command reported a failure",
    ))
}

/// Runs the install command on `file`: exit status 0 is success (or the box goes down before
/// it ends); otherwise the first line of its stdout may give the fault as for
/// `install_result` (`9018 checksum mismatch`: the image is refused, nothing was installed).
async fn run_install(argv: &[String], file: &str) -> (u32, String) {
    match run_capturing(argv, Some(file), &[], None).await {
        None => (9010, "the install command could not be run".into()),
        Some((st, _)) if st.success() => (0, String::new()),
        Some((st, _)) if st.code().is_none() => {
            (9010, format!("the install command was ended by {st}"))
        }
        Some((st, out)) => {
            tracing::error!("{} exited with {st}: {}", argv[0], out.trim());
            hook_verdict(false, &out, "the install command failed")
        }
    }
}

impl Engine {
    fn download_dir(&self) -> PathBuf {
        self.cfg
            .actions
            .download_dir
            .clone()
            .unwrap_or_else(|| self.cfg.agent.state_dir.join("downloads"))
    }

    fn save_transfers(&mut self) {
        let p = Persisted {
            next_id: self.cwmp.xfer.next_id,
            list: self.cwmp.xfer.list.clone(),
        };
        self.agent_state.transfers = Some(serde_json::to_value(p).unwrap_or_default());
        let _ = self.persist();
    }

    /// At start: restores the transfers and settles those a restart interrupted.
    pub fn transfers_boot(&mut self) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.cwmp.xfer.tx = Some(tx);
        self.cwmp.xfer.rx = Some(rx);
        if let Some(v) = &self.agent_state.transfers {
            match serde_json::from_value::<Persisted>(v.clone()) {
                Ok(p) => {
                    self.cwmp.xfer.list = p.list;
                    self.cwmp.xfer.next_id = p.next_id;
                }
                Err(e) => tracing::error!("unreadable transfer state dropped: {e}"),
            }
        }
        let now = format_datetime(now_unix());
        let mut changed = false;
        let running = self.store.get(SOFTWARE_VERSION).unwrap_or_default();
        let sw_provider = match self.store.source(SOFTWARE_VERSION) {
            Some(Source::External(i)) => self.providers.get(i).cloned(),
            _ => None,
        };
        let hook = self.cfg.actions.install_result.clone();
        let mut verify = Vec::new();
        for t in &mut self.cwmp.xfer.list {
            match t.state {
                XferState::Running => {
                    tracing::warn!(
                        "transfer {} ({}) was interrupted by a restart",
                        t.id,
                        t.command_key
                    );
                    t.state = XferState::Completed;
                    (t.fault_code, t.fault_string) = if t.is_download {
                        (9017, "interrupted by a restart".into())
                    } else {
                        (9011, "interrupted by a restart".into())
                    };
                    t.complete_time = now.clone();
                    changed = true;
                }
                XferState::Installing => {
                    // The install command took the agent down (firmware upgrade and reboot).
                    if let Some(f) = t.file.take() {
                        let _ = std::fs::remove_file(f);
                        changed = true;
                    }
                    if t.kind == Kind::Firmware && (!hook.is_empty() || sw_provider.is_some()) {
                        // Decided by a task (the hook, or the provider's value); the transfer
                        // stays Installing until then, so a restart meanwhile decides again.
                        verify.push((t.id, t.command_key.clone(), t.sw_version_before.clone()));
                        continue;
                    }
                    let (code, msg) = if t.kind == Kind::Firmware {
                        firmware_verdict(t.sw_version_before.as_deref(), &running)
                    } else {
                        (0, String::new())
                    };
                    tracing::info!(
                        "transfer {} ({}): the install ended with a restart: {}",
                        t.id,
                        t.command_key,
                        if code == 0 { "success" } else { msg.as_str() }
                    );
                    t.state = XferState::Completed;
                    t.fault_code = code;
                    t.fault_string = msg;
                    t.complete_time = now.clone();
                    changed = true;
                }
                _ => {}
            }
        }
        if changed {
            self.save_transfers();
        }
        self.ensure_transfer_events();
        for (id, command_key, before) in verify {
            let tx = self.cwmp.xfer.tx.clone().expect("set above");
            let (hook, provider, cached) = (hook.clone(), sw_provider.clone(), running.clone());
            tokio::spawn(async move {
                let running = match provider {
                    Some(p) => match p.get(&[SOFTWARE_VERSION.to_string()]).await {
                        Ok(mut v) => v.remove(SOFTWARE_VERSION).unwrap_or(cached),
                        Err(e) => {
                            tracing::warn!("{SOFTWARE_VERSION} from its provider: {e}");
                            cached
                        }
                    },
                    None => cached,
                };
                let before = before.unwrap_or_default();
                let mut verdict = None;
                if !hook.is_empty() {
                    let env = [
                        ("CWMPD_COMMAND_KEY", command_key.as_str()),
                        ("CWMPD_SOFTWARE_VERSION_BEFORE", before.as_str()),
                        ("CWMPD_SOFTWARE_VERSION", running.as_str()),
                    ];
                    verdict = run_install_result(&hook, &env).await;
                }
                let (code, msg) =
                    verdict.unwrap_or_else(|| firmware_verdict(Some(&before), &running));
                let _ = tx.send(XferMsg::Finished { id, code, msg });
            });
        }
    }

    /// Makes sure the event queue holds `7 TRANSFER COMPLETE` and the method event of every
    /// completed transfer awaiting delivery. Returns true when it added one.
    pub fn ensure_transfer_events(&mut self) -> bool {
        let mut added = false;
        let done: Vec<(String, String)> = self
            .cwmp
            .xfer
            .list
            .iter()
            .filter(|t| t.state == XferState::Completed)
            .map(|t| (t.method_event.clone(), t.command_key.clone()))
            .collect();
        if done.is_empty() {
            return false;
        }
        if !self.cwmp.sched.queue.contains(&EventCode::TransferComplete) {
            self.cwmp.sched.queue.push(EventCode::TransferComplete, "");
            added = true;
        }
        for (code, key) in done {
            if !self
                .cwmp
                .sched
                .queue
                .events
                .iter()
                .any(|e| e.code.as_str() == code && e.command_key == key)
            {
                self.cwmp.sched.queue.push(EventCode::parse(&code), &key);
                added = true;
            }
        }
        added
    }

    /// The TransferCompletes to send in this session: (transfer id, message).
    pub fn pending_transfer_completes(&self) -> Vec<(u64, TransferComplete)> {
        self.cwmp
            .xfer
            .list
            .iter()
            .filter(|t| t.state == XferState::Completed)
            .map(|t| {
                (
                    t.id,
                    TransferComplete {
                        command_key: t.command_key.clone(),
                        fault: TransferFault {
                            code: t.fault_code,
                            string: t.fault_string.clone(),
                        },
                        start_time: t.start_time.clone(),
                        complete_time: t.complete_time.clone(),
                    },
                )
            })
            .collect()
    }

    /// The ACS acknowledged the TransferComplete of `id`.
    pub fn transfer_delivered(&mut self, id: u64) {
        self.cwmp.xfer.list.retain(|t| t.id != id);
        self.save_transfers();
    }

    fn add_transfer(&mut self, mut t: Transfer) -> Result<(), u32> {
        if self.cwmp.xfer.list.len() >= MAX_TRANSFERS {
            tracing::warn!("transfer refused: {MAX_TRANSFERS} transfers already queued");
            return Err(cpe_fault::RESOURCES_EXCEEDED);
        }
        self.cwmp.xfer.next_id += 1;
        t.id = self.cwmp.xfer.next_id;
        tracing::info!(
            "{} {} queued: {} {} (CommandKey {:?}), not before {}",
            t.method_event.trim_start_matches("M "),
            t.id,
            t.file_type,
            t.url,
            t.command_key,
            format_datetime(t.not_before)
        );
        self.cwmp.xfer.list.push(t);
        self.save_transfers();
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn new_transfer(
        command_key: &str,
        is_download: bool,
        method_event: &str,
        kind: Kind,
        file_type: &str,
        url: &str,
        username: &str,
        password: &str,
        file_size: u32,
        target_file_name: &str,
        not_before: i64,
    ) -> Transfer {
        Transfer {
            id: 0,
            command_key: command_key.into(),
            is_download,
            method_event: method_event.into(),
            kind,
            file_type: file_type.into(),
            url: url.trim().into(),
            username: username.into(),
            password: password.into(),
            file_size,
            target_file_name: target_file_name.into(),
            not_before,
            deadline: None,
            state: XferState::Queued,
            file: None,
            sw_version_before: None,
            fault_code: 0,
            fault_string: String::new(),
            start_time: UNKNOWN_TIME.into(),
            complete_time: UNKNOWN_TIME.into(),
        }
    }

    /// Download RPC: queues the transfer (answered with Status 1) or returns the fault code.
    pub fn accept_download(&mut self, d: &Download) -> Result<(), u32> {
        let Some(kind) = download_kind(&d.file_type) else {
            tracing::info!("Download refused: unsupported file type {:?}", d.file_type);
            return Err(cpe_fault::INVALID_ARGUMENTS);
        };
        check_url(&d.url)?;
        let t = Self::new_transfer(
            &d.command_key,
            true,
            "M Download",
            kind,
            &d.file_type,
            &d.url,
            &d.username,
            &d.password,
            d.file_size,
            &d.target_file_name,
            now_unix() + d.delay_seconds as i64,
        );
        self.add_transfer(t)
    }

    /// Upload RPC.
    pub fn accept_upload(&mut self, u: &Upload) -> Result<(), u32> {
        let Some(kind) = upload_kind(&u.file_type) else {
            tracing::info!("Upload refused: unsupported file type {:?}", u.file_type);
            return Err(cpe_fault::INVALID_ARGUMENTS);
        };
        check_url(&u.url)?;
        let t = Self::new_transfer(
            &u.command_key,
            false,
            "M Upload",
            kind,
            &u.file_type,
            &u.url,
            &u.username,
            &u.password,
            0,
            "",
            now_unix() + u.delay_seconds as i64,
        );
        self.add_transfer(t)
    }

    /// ScheduleDownload RPC (see the module documentation for the time windows).
    pub fn accept_schedule_download(&mut self, d: &ScheduleDownload) -> Result<(), u32> {
        let Some(kind) = download_kind(&d.file_type) else {
            tracing::info!(
                "ScheduleDownload refused: unsupported file type {:?}",
                d.file_type
            );
            return Err(cpe_fault::INVALID_ARGUMENTS);
        };
        check_url(&d.url)?;
        let w = &d.time_windows;
        let valid = !w.is_empty()
            && w.len() <= 2
            && w.iter().all(|x| x.window_end > x.window_start)
            && (w.len() == 1 || w[1].window_start >= w[0].window_end);
        if !valid {
            tracing::info!("ScheduleDownload refused: bad time windows");
            return Err(cpe_fault::INVALID_ARGUMENTS);
        }
        let now = now_unix();
        let mut t = Self::new_transfer(
            &d.command_key,
            true,
            "M ScheduleDownload",
            kind,
            &d.file_type,
            &d.url,
            &d.username,
            &d.password,
            d.file_size,
            &d.target_file_name,
            now + w[0].window_start as i64,
        );
        t.deadline = Some(now + w[w.len() - 1].window_end as i64);
        self.add_transfer(t)
    }

    /// CancelTransfer RPC: only a transfer that has not started can be cancelled (9021
    /// otherwise); an unknown CommandKey is 9003.
    pub fn cancel_transfer(&mut self, command_key: &str) -> Result<(), u32> {
        let mine: Vec<&Transfer> = self
            .cwmp
            .xfer
            .list
            .iter()
            .filter(|t| t.command_key == command_key)
            .collect();
        if mine.is_empty() {
            return Err(cpe_fault::INVALID_ARGUMENTS);
        }
        if mine.iter().any(|t| t.state != XferState::Queued) {
            return Err(cpe_fault::CANCEL_NOT_PERMITTED);
        }
        tracing::info!("transfer(s) with CommandKey {command_key:?} cancelled");
        self.cwmp.xfer.list.retain(|t| t.command_key != command_key);
        self.save_transfers();
        Ok(())
    }

    pub fn queued_transfers(&self) -> Vec<QueuedTransfer> {
        self.cwmp
            .xfer
            .list
            .iter()
            .map(|t| QueuedTransfer {
                command_key: t.command_key.clone(),
                state: t.queued_state(),
            })
            .collect()
    }

    pub fn all_queued_transfers(&self) -> Vec<AllQueuedTransfer> {
        self.cwmp
            .xfer
            .list
            .iter()
            .map(|t| AllQueuedTransfer {
                command_key: t.command_key.clone(),
                state: t.queued_state(),
                is_download: t.is_download,
                file_type: t.file_type.clone(),
                file_size: t.file_size,
                target_file_name: t.target_file_name.clone(),
            })
            .collect()
    }

    fn transfer_busy(&self) -> bool {
        self.cwmp
            .xfer
            .list
            .iter()
            .any(|t| matches!(t.state, XferState::Running | XferState::Installing))
    }

    /// When the next queued transfer may start (None: nothing to start, or one is running).
    pub fn transfer_wakeup(&self) -> Option<Instant> {
        if self.transfer_busy() {
            return None;
        }
        let nb = self
            .cwmp
            .xfer
            .list
            .iter()
            .filter(|t| t.state == XferState::Queued)
            .map(|t| t.not_before)
            .min()?;
        let d = (nb - now_unix()).max(0) as u64;
        Some(Instant::now() + Duration::from_secs(d))
    }

    /// Starts the next due transfer (never during a session; one at a time).
    pub fn transfer_tick(&mut self, now: Instant) {
        if self.cwmp.sched.in_session() || self.transfer_busy() {
            return;
        }
        let t_now = now_unix();
        let Some(i) = self
            .cwmp
            .xfer
            .list
            .iter()
            .enumerate()
            .filter(|(_, t)| t.state == XferState::Queued && t.not_before <= t_now)
            .min_by_key(|(_, t)| (t.not_before, t.id))
            .map(|(i, _)| i)
        else {
            return;
        };
        let t = self.cwmp.xfer.list[i].clone();
        if t.deadline.is_some_and(|d| t_now > d) {
            self.finish_transfer(
                t.id,
                cpe_fault::DOWNLOAD_WINDOW_FAILURE,
                "the time windows passed before the download could start".into(),
                now,
            );
            return;
        }
        let a = &self.cfg.actions;
        let command = match t.kind {
            Kind::Firmware => ("firmware_install", a.firmware_install.clone()),
            Kind::Config => ("config_install", a.config_install.clone()),
            Kind::ConfigExport => ("config_export", a.config_export.clone()),
            Kind::LogExport => ("log_export", a.log_export.clone()),
        };
        if command.1.is_empty() {
            tracing::error!(
                "transfer {} ({}) cannot be carried out: [actions] {} is not configured",
                t.id,
                t.file_type,
                command.0
            );
            let code = if t.is_download { 9010 } else { 9011 };
            self.finish_transfer(
                t.id,
                code,
                format!("{} is not configured on this device", command.0),
                now,
            );
            return;
        }
        let dir = self.download_dir();
        if let Err(e) = crate::util::fsutil::ensure_private_dir(&dir) {
            tracing::error!("cannot create {}: {e}", dir.display());
            let code = if t.is_download { 9010 } else { 9011 };
            self.finish_transfer(
                t.id,
                code,
                "cannot create the download directory".into(),
                now,
            );
            return;
        }
        let max = self.cfg.actions.max_download;
        let limit = download_limit(t.file_size, max);
        if t.is_download && t.file_size != 0 {
            match free_space(&dir) {
                Ok(free) if free < limit => {
                    tracing::error!(
                        "download {} refused: {limit} bytes needed, {free} free in {}",
                        t.id,
                        dir.display()
                    );
                    self.finish_transfer(
                        t.id,
                        9010,
                        format!("insufficient space: {limit} bytes needed, {free} available"),
                        now,
                    );
                    return;
                }
                Ok(_) => {}
                // Not knowing is no reason to refuse: a full disk still fails the write (9010).
                Err(e) => tracing::warn!("free space of {}: {e}", dir.display()),
            }
        }
        {
            let e = &mut self.cwmp.xfer.list[i];
            e.state = XferState::Running;
            e.start_time = format_datetime(t_now);
        }
        self.save_transfers();
        let target = Target {
            url: t.url.clone(),
            username: t.username.clone(),
            password: t.password.clone(),
            tls: self.tls_settings(),
            idle_timeout: IDLE_TIMEOUT,
        };
        let tx = self.cwmp.xfer.tx.clone().expect("transfers_boot ran");
        let id = t.id;
        if t.is_download {
            let file = dir.join(format!("download-{id}"));
            tracing::info!("download {id} starting: {}", t.url);
            // FileSize is only a bound (module documentation): the body is checked against
            // `limit`, never for an exact length.
            let bound_by_file_size = t.file_size != 0 && u64::from(t.file_size) <= max;
            let file_size = t.file_size;
            tokio::spawn(async move {
                let msg = match files::download(&target, &file, limit, 0).await {
                    Ok(n) => {
                        tracing::info!("download {id}: {n} bytes");
                        XferMsg::Downloaded { id, file }
                    }
                    Err(f) => {
                        let f = if bound_by_file_size {
                            explain_file_size_limit(f, file_size)
                        } else {
                            f
                        };
                        XferMsg::Finished {
                            id,
                            code: f.code,
                            msg: f.msg,
                        }
                    }
                };
                let _ = tx.send(msg);
            });
        } else {
            let file = dir.join(format!("upload-{id}"));
            let argv = command.1;
            tracing::info!("upload {id} starting: {}", t.url);
            tokio::spawn(async move {
                let r = export_and_upload(&argv, &file, &target, max).await;
                let _ = tokio::fs::remove_file(&file).await;
                let (code, msg) = match r {
                    Ok(()) => (0, String::new()),
                    Err(f) => (f.code, f.msg),
                };
                let _ = tx.send(XferMsg::Finished { id, code, msg });
            });
        }
    }

    /// An outcome from a transfer task.
    pub fn transfer_msg(&mut self, m: XferMsg, now: Instant) {
        match m {
            XferMsg::Finished { id, code, msg } => self.finish_transfer(id, code, msg, now),
            XferMsg::Downloaded { id, file } => {
                let Some(i) = self.cwmp.xfer.list.iter().position(|t| t.id == id) else {
                    let _ = std::fs::remove_file(&file);
                    return;
                };
                let kind = self.cwmp.xfer.list[i].kind;
                // What runs now, to tell after the restart whether the new image took over.
                let sw = match kind {
                    Kind::Firmware => self.store.get(SOFTWARE_VERSION).filter(|v| !v.is_empty()),
                    _ => None,
                };
                let t = &mut self.cwmp.xfer.list[i];
                t.state = XferState::Installing;
                t.file = Some(file.clone());
                t.sw_version_before = sw;
                // Persisted before the command runs: a firmware install may never return.
                self.save_transfers();
                let argv = match kind {
                    Kind::Firmware => self.cfg.actions.firmware_install.clone(),
                    _ => self.cfg.actions.config_install.clone(),
                };
                let tx = self.cwmp.xfer.tx.clone().expect("transfers_boot ran");
                tracing::info!("transfer {id}: installing with {}", argv.join(" "));
                tokio::spawn(async move {
                    let f = file.to_string_lossy().into_owned();
                    let (code, msg) = run_install(&argv, &f).await;
                    let _ = tokio::fs::remove_file(&file).await;
                    let _ = tx.send(XferMsg::Finished { id, code, msg });
                });
            }
        }
    }

    fn finish_transfer(&mut self, id: u64, code: u32, msg: String, now: Instant) {
        let Some(t) = self.cwmp.xfer.list.iter_mut().find(|t| t.id == id) else {
            return;
        };
        if code == 0 {
            tracing::info!("transfer {id} ({:?}) completed", t.command_key);
        } else {
            tracing::warn!(
                "transfer {id} ({:?}) failed: {msg} (fault {code})",
                t.command_key
            );
        }
        if let Some(f) = t.file.take() {
            let _ = std::fs::remove_file(f);
        }
        t.state = XferState::Completed;
        t.fault_code = code;
        t.fault_string = if code == 0 {
            String::new()
        } else if msg.is_empty() {
            crate::cwmp::soap::fault_string(code)
                .unwrap_or("")
                .to_string()
        } else {
            msg
        };
        t.complete_time = format_datetime(now_unix());
        self.ensure_transfer_events();
        // One write for the transfer and its events.
        let p = Persisted {
            next_id: self.cwmp.xfer.next_id,
            list: self.cwmp.xfer.list.clone(),
        };
        self.agent_state.transfers = Some(serde_json::to_value(p).unwrap_or_default());
        self.save_events();
        self.cwmp.sched.request_session(now);
    }
}

/// Runs the export command into `file`, then PUTs it.
async fn export_and_upload(
    argv: &[String],
    file: &std::path::Path,
    target: &Target,
    max: u64,
) -> Result<(), files::Fail> {
    let _ = tokio::fs::remove_file(file).await;
    let f = file.to_string_lossy().into_owned();
    if !super::session::run_action(argv, Some(&f)).await {
        return Err(files::Fail {
            code: 9011,
            msg: "the export command failed".into(),
        });
    }
    let meta = tokio::fs::metadata(file).await.map_err(|e| files::Fail {
        code: 9011,
        msg: format!("the export command wrote no file: {e}"),
    })?;
    if meta.len() > max {
        return Err(files::Fail {
            code: 9011,
            msg: format!("exported file exceeds max_download ({max} bytes)"),
        });
    }
    let data = tokio::fs::read(file).await.map_err(|e| files::Fail {
        code: 9011,
        msg: format!("cannot read the exported file: {e}"),
    })?;
    files::upload(target, data.into()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_types() {
        assert_eq!(
            download_kind("1 Firmware Upgrade Image"),
            Some(Kind::Firmware)
        );
        assert_eq!(
            download_kind("3 Vendor Configuration File"),
            Some(Kind::Config)
        );
        assert_eq!(download_kind("2 Web Content"), None);
        assert_eq!(
            upload_kind("1 Vendor Configuration File"),
            Some(Kind::ConfigExport)
        );
        assert_eq!(upload_kind("2 Vendor Log File"), Some(Kind::LogExport));
        assert_eq!(
            upload_kind("3 Vendor Configuration File 1"),
            Some(Kind::ConfigExport)
        );
        assert_eq!(upload_kind("4 Vendor Log File 2"), Some(Kind::LogExport));
        assert_eq!(upload_kind("X 00D09E Thing"), None);
        assert_eq!(check_url("ftp://x/y"), Err(9013));
        assert_eq!(check_url(""), Err(9003));
        assert_eq!(check_url("HTTPS://x/y"), Ok(()));
    }

    #[test]
    fn debug_hides_the_password() {
        let t = Engine::new_transfer(
            "k",
            true,
            "M Download",
            Kind::Firmware,
            "1 Firmware Upgrade Image",
            "http://h/f",
            "u",
            "sekrit",
            0,
            "",
            0,
        );
        assert!(!format!("{t:?}").contains("sekrit"));
    }
}
