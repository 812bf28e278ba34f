//! The dpkg backend of TR-157 software modules: deployment units (DUs) that are Debian
//! packages (`.deb`), installed into an integrator-chosen root with `dpkg --root=<root>`
//! (`[software] dpkg_root`). It is the second execution environment (`ExecEnv.2`); the
//! directory backend ([`super::dir`]) stays the first and the default.
//!
//! # What a DU is here
//!
//! One binary package. Its control fields give the DU's parameters: `Package` → Name (and
//! DUID), `Version` → Version, `Maintainer` → Vendor, the synopsis (first line) of
//! `Description` → Description. A name longer than 64 or a version longer than 32 characters
//! is refused (9018); vendor and description are cut to 128 and 256 characters. A Debian
//! package has no run contract here, so a dpkg DU has **no execution units**.
//!
//! UUIDs follow the directory backend's rule: the one the ACS gives, else a name-based UUID
//! version 5 in cwmpd's namespace ([`super::manifest::derived_uuid`]) of the vendor
//! (`Maintainer`) and the name (`Package`).
//!
//! # Which packages are DUs
//!
//! Only those installed through this backend (ChangeDUState). The backend remembers them in
//! `<store>/units.json` (written atomically); packages of the root's base system, or installed
//! by another dpkg run, are not listed. A copy of each DU's current `.deb` is kept in
//! `<store>/debs/<uuid>.deb` so that a failed update can put the previous version back.
//!
//! # Running dpkg
//!
//! Every run (`dpkg`, `dpkg-deb`, `dpkg-query`) is a plain `execve` (no shell), with stdin
//! closed, `LC_ALL=C`, `DEBIAN_FRONTEND=noninteractive`, a fixed `PATH`, in a process group of
//! its own that is killed (SIGKILL) after the configured wall time, and that dies with the
//! agent (PDEATHSIG SIGKILL: a restarted agent never races a dpkg the old one left running).
//! Standard error is kept bounded (its last 4 KiB) for the fault string. The methods block:
//! the engine calls them on the blocking pool.
//!
//! The admin directory `<root>/var/lib/dpkg/` (`status`, `available`, `info/`, `updates/`)
//! is created when missing. dpkg runs maintainer scripts chrooted into the root, so a root
//! whose packages have scripts needs a shell at `<root>/bin/sh`.
//!
//! # Checks and faults
//!
//! Before anything changes: `dpkg-deb --field` must read the control fields and `dpkg-deb
//! --contents` the whole data part (not a .deb, truncated, corrupt: **9018**); the package's
//! `Architecture` must be `all`, dpkg's native one or a foreign one the root's dpkg database
//! accepts (**9025**, DU/ExecEnv mismatch); Install of a package the root already has (in any
//! state, whoever installed it) or of a UUID already used is **9026**; Update to the version
//! installed is **9032**, with a package of another name **9018**; Update or Uninstall of an
//! unknown UUID, or an Uninstall naming another version, is **9028**. dpkg failing
//! (a maintainer script, dependencies) is **9001** with dpkg's message (**9027** when it
//! reports a full disk).
//!
//! # Nothing half-installed
//!
//! Before it runs dpkg the backend records what it is about to do (the *pending* operation,
//! with the version installed before) in `units.json`. When dpkg fails, or when the agent
//! dies while dpkg runs (at the next start, [`DpkgBackend::recover`]), the package's state in
//! dpkg's own database (`dpkg-query`) decides:
//! - **Install**: installed at the new version → kept (the install happened); anything else
//!   (`half-installed`, `unpacked`, `half-configured`, `config-files`…) → purged;
//! - **Update**: installed at the new version → kept; installed at the old version → nothing
//!   to do; anything else → the kept `.deb` of the old version is installed again (a
//!   downgrade), and if even that fails the package is purged (the DU is then gone);
//! - **Uninstall**: gone → done; installed at the old version → kept; half-removed → purged.
//!
//! So a DU is always the old version, the new one, or absent after an install that did not
//! complete, and the pending record is cleared once that holds (it stays, and the next
//! operation or start retries, when even the rollback failed).

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use super::manifest;
use super::{DuError, DuInfo};

const UNITS: &str = "units.json";
const DEBS: &str = "debs";
/// How much of a run's standard error is kept (its end), and of its standard output.
const STDERR_KEEP: usize = 4096;
const STDOUT_KEEP: usize = 256 * 1024;
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const MAX_NAME: usize = 64;
const MAX_VERSION: usize = 32;
const MAX_VENDOR: usize = 128;
const MAX_DESCRIPTION: usize = 256;

/// Deployment units that are Debian packages in a dpkg root; see the module documentation.
pub struct DpkgBackend {
    root: PathBuf,
    admin: PathBuf,
    store: PathBuf,
    timeout: Duration,
    /// What the backend installed, as `units.json` says: locked only briefly (the engine's
    /// thread reads it), never while dpkg runs.
    state: Mutex<Records>,
    /// Held by an operation for its whole length (dpkg runs included).
    op: Mutex<()>,
}

impl std::fmt::Debug for DpkgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpkgBackend")
            .field("root", &self.root)
            .field("store", &self.store)
            .finish()
    }
}

/// `units.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Records {
    units: Vec<Rec>,
    #[serde(default)]
    pending: Option<Pending>,
}

/// A DU the backend installed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rec {
    uuid: String,
    package: String,
    version: String,
    vendor: String,
    description: String,
    url: String,
}

impl Rec {
    fn info(&self) -> DuInfo {
        DuInfo {
            uuid: self.uuid.clone(),
            name: self.package.clone(),
            version: self.version.clone(),
            vendor: self.vendor.clone(),
            description: self.description.clone(),
            url: self.url.clone(),
            units: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Kind {
    Install,
    Update,
    Uninstall,
}

/// The operation dpkg is (or was, when a restart finds it) running.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    kind: Kind,
    /// The DU before (Update, Uninstall).
    old: Option<Rec>,
    /// The DU after (Install, Update).
    new: Option<Rec>,
}

impl Pending {
    fn package(&self) -> &str {
        self.new
            .as_ref()
            .or(self.old.as_ref())
            .map(|r| r.package.as_str())
            .unwrap_or("")
    }

    fn uuid(&self) -> &str {
        self.new
            .as_ref()
            .or(self.old.as_ref())
            .map(|r| r.uuid.as_str())
            .unwrap_or("")
    }
}

/// The control fields of a .deb.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Fields {
    package: String,
    version: String,
    maintainer: String,
    description: String,
    architecture: String,
}

/// What a finished run left.
struct Out {
    ok: bool,
    stdout: Vec<u8>,
    stderr: String,
}

/// A package's state in dpkg's database: `db:Status-Status` and `Version`; None when dpkg
/// does not know it (or knows it as `not-installed`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct PkgState {
    status: String,
    version: String,
}

impl PkgState {
    fn installed(&self) -> bool {
        matches!(
            self.status.as_str(),
            "installed" | "triggers-pending" | "triggers-awaited"
        )
    }

    fn installed_at(st: &Option<PkgState>, version: &str) -> bool {
        st.as_ref()
            .is_some_and(|s| s.installed() && s.version == version)
    }
}

impl DpkgBackend {
    /// Opens the backend: creates the dpkg admin directory under `root` and the `store`
    /// directory when missing and reads what the backend installed. Runs no dpkg: an
    /// operation a restart cut is settled by [`DpkgBackend::recover`].
    pub fn open(root: &Path, store: &Path, timeout: Duration) -> io::Result<DpkgBackend> {
        let admin = root.join("var/lib/dpkg");
        for d in [admin.join("info"), admin.join("updates")] {
            fs::create_dir_all(&d)?;
        }
        for f in ["status", "available"] {
            let p = admin.join(f);
            if !p.exists() {
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .mode(0o644)
                    .open(&p)?;
            }
        }
        fs::create_dir_all(store.join(DEBS))?;
        let records = match fs::read(store.join(UNITS)) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", store.join(UNITS).display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Records::default(),
            Err(e) => return Err(e),
        };
        Ok(DpkgBackend {
            root: root.to_path_buf(),
            admin,
            store: store.to_path_buf(),
            timeout,
            state: Mutex::new(records),
            op: Mutex::new(()),
        })
    }

    /// Whether an operation was cut by a restart ([`DpkgBackend::recover`] settles it).
    pub fn needs_recovery(&self) -> bool {
        self.lock().pending.is_some()
    }

    /// Settles an operation a restart cut (see the module documentation). Blocks (runs dpkg).
    pub fn recover(&self) {
        let (_op, mut st) = self.begin();
        self.settle(&mut st);
    }

    /// The DUs this backend installed, sorted by UUID.
    pub fn list(&self) -> Vec<DuInfo> {
        let mut out: Vec<DuInfo> = self.lock().units.iter().map(Rec::info).collect();
        out.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        out
    }

    /// The DU with this UUID (either case).
    pub fn get(&self, uuid: &str) -> Option<DuInfo> {
        let uuid = manifest::normalize_uuid(uuid)?;
        self.lock()
            .units
            .iter()
            .find(|r| r.uuid == uuid)
            .map(Rec::info)
    }

    /// Whether `path` starts like a Debian binary package (an `ar` archive whose first member
    /// is `debian-binary`).
    pub fn looks_like_deb(path: &Path) -> bool {
        let mut head = [0u8; 24];
        File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .is_ok()
            && head.starts_with(b"!<arch>\ndebian-binary")
    }

    /// Installs the package in `deb`. `uuid` "" derives one; `taken` tells a UUID another
    /// backend uses (9026).
    pub fn install(
        &self,
        deb: &Path,
        uuid: &str,
        url: &str,
        taken: &dyn Fn(&str) -> bool,
    ) -> Result<DuInfo, DuError> {
        let (_op, mut st) = self.begin();
        self.settle(&mut st);
        if st.pending.is_some() {
            return Err(DuError::Internal(
                "an earlier dpkg operation could not be rolled back".into(),
            ));
        }
        let f = self.check_deb(deb)?;
        let uuid = if uuid.is_empty() {
            manifest::derived_uuid(&f.maintainer, &f.package)
        } else {
            manifest::normalize_uuid(uuid)
                .ok_or_else(|| DuError::InvalidUuid(format!("{uuid:?} is not a UUID")))?
        };
        if taken(&uuid) || st.units.iter().any(|r| r.uuid == uuid) {
            return Err(DuError::Duplicate(format!("{uuid} is already installed")));
        }
        if let Some(s) = self.query(&f.package)? {
            return Err(DuError::Duplicate(format!(
                "package {} {} is already in the root ({})",
                f.package, s.version, s.status
            )));
        }
        let new = Rec {
            uuid: uuid.clone(),
            package: f.package.clone(),
            version: f.version.clone(),
            vendor: f.maintainer.clone(),
            description: f.description.clone(),
            url: url.to_owned(),
        };
        self.keep_new_deb(deb, &uuid)?;
        let pending = Pending {
            kind: Kind::Install,
            old: None,
            new: Some(new.clone()),
        };
        self.apply(st, pending, &new, deb, "install")
    }

    /// Updates an installed DU to the package in `deb` (same package, another version);
    /// `url` "" keeps the URL recorded before.
    pub fn update(&self, uuid: &str, deb: &Path, url: &str) -> Result<DuInfo, DuError> {
        let (_op, mut st) = self.begin();
        self.settle(&mut st);
        let (uuid, old) = unit_of(&st, uuid)?;
        if st.pending.is_some() {
            return Err(DuError::Internal(
                "an earlier dpkg operation could not be rolled back".into(),
            ));
        }
        let f = self.check_deb(deb)?;
        if f.package != old.package {
            return Err(DuError::Corrupt(format!(
                "the package is {:?}, not {:?}",
                f.package, old.package
            )));
        }
        if f.version == old.version {
            return Err(DuError::VersionExists(format!(
                "version {:?} of {uuid} is already installed",
                f.version
            )));
        }
        let new = Rec {
            uuid: uuid.clone(),
            package: f.package.clone(),
            version: f.version.clone(),
            vendor: f.maintainer.clone(),
            description: f.description.clone(),
            url: if url.is_empty() {
                old.url.clone()
            } else {
                url.to_owned()
            },
        };
        self.keep_new_deb(deb, &uuid)?;
        info!(%uuid, package = %f.package, from = %old.version, to = %f.version, "swmod dpkg: updating");
        let pending = Pending {
            kind: Kind::Update,
            old: Some(old),
            new: Some(new.clone()),
        };
        self.apply(st, pending, &new, deb, "update")
    }

    /// Records `pending` (the commit point is dpkg's database, see `settle`), runs
    /// `dpkg --install` and commits when the root then holds `new`; otherwise rolls back.
    /// `what` ("install", "update") names the operation in the log.
    fn apply(
        &self,
        mut st: Records,
        pending: Pending,
        new: &Rec,
        deb: &Path,
        what: &str,
    ) -> Result<DuInfo, DuError> {
        let (uuid, package, version) = (&new.uuid, &new.package, &new.version);
        st.pending = Some(pending);
        if let Err(e) = self.save(&st) {
            st.pending = None;
            *self.lock() = st;
            let _ = fs::remove_file(self.new_deb(uuid));
            return Err(e);
        }
        info!(%uuid, %package, %version, "swmod dpkg: {what} starting");
        let out = self.dpkg(&[OsStr::new("--install"), deb.as_os_str()]);
        let now = self.query(package);
        if let Ok(s) = &now
            && PkgState::installed_at(s, version)
        {
            self.commit(&mut st);
            info!(%uuid, %package, %version, "swmod dpkg: {what} done");
            return Ok(new.info());
        }
        let why = failure("dpkg --install", &out, &now);
        warn!(%uuid, %package, "swmod dpkg: {what} failed: {}", why.text());
        self.settle(&mut st);
        Err(self.after_rollback(why, &st))
    }

    /// Uninstalls (purges) a DU; `version` "" means whichever is installed.
    pub fn uninstall(&self, uuid: &str, version: &str) -> Result<DuInfo, DuError> {
        let (_op, mut st) = self.begin();
        self.settle(&mut st);
        let (uuid, old) = unit_of(&st, uuid)?;
        if !version.is_empty() && version != old.version {
            return Err(DuError::Unknown(format!(
                "{uuid} has version {:?}, not {version:?}",
                old.version
            )));
        }
        if st.pending.is_some() {
            return Err(DuError::Internal(
                "an earlier dpkg operation could not be rolled back".into(),
            ));
        }
        st.pending = Some(Pending {
            kind: Kind::Uninstall,
            old: Some(old.clone()),
            new: None,
        });
        if let Err(e) = self.save(&st) {
            st.pending = None;
            *self.lock() = st;
            return Err(e);
        }
        info!(%uuid, package = %old.package, "swmod dpkg: uninstalling");
        let out = self.dpkg(&[OsStr::new("--purge"), OsStr::new(&old.package)]);
        let now = self.query(&old.package);
        if let Ok(None) = now {
            self.commit(&mut st);
            info!(%uuid, package = %old.package, "swmod dpkg: uninstalled");
            return Ok(old.info());
        }
        let why = failure("dpkg --purge", &out, &now);
        warn!(%uuid, package = %old.package, "swmod dpkg: uninstall failed: {}", why.text());
        self.settle(&mut st);
        if !st.units.iter().any(|r| r.uuid == uuid) {
            // The rollback finished the removal: the DU is gone as asked.
            return Ok(old.info());
        }
        Err(self.after_rollback(why, &st))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts an operation: its lock, and a working copy of the records ([`Self::save`]
    /// publishes it).
    fn begin(&self) -> (std::sync::MutexGuard<'_, ()>, Records) {
        let op = self.op.lock().unwrap_or_else(|e| e.into_inner());
        let st = self.lock().clone();
        (op, st)
    }

    fn new_deb(&self, uuid: &str) -> PathBuf {
        self.store.join(DEBS).join(format!("{uuid}.new.deb"))
    }

    fn kept_deb(&self, uuid: &str) -> PathBuf {
        self.store.join(DEBS).join(format!("{uuid}.deb"))
    }

    /// Copies the package about to be installed to `debs/<uuid>.new.deb` (fsynced).
    fn keep_new_deb(&self, deb: &Path, uuid: &str) -> Result<(), DuError> {
        let dest = self.new_deb(uuid);
        let r = fs::copy(deb, &dest).and_then(|_| File::open(&dest)?.sync_all());
        r.map_err(|e| io_error(format!("keeping a copy of the package: {e}"), &e))
    }

    /// The failure to report once the rollback ran: the rollback's own failure is added.
    fn after_rollback(&self, why: DuError, st: &Records) -> DuError {
        if st.pending.is_none() {
            return why;
        }
        let msg = format!(
            "{}; the rollback failed too and is retried at the next operation",
            why.text()
        );
        error!("swmod dpkg: {msg}");
        DuError::Internal(msg)
    }

    /// The pending operation took effect: records it and clears it.
    fn commit(&self, st: &mut Records) {
        let Some(p) = st.pending.take() else {
            return;
        };
        let uuid = p.uuid().to_owned();
        match p.kind {
            Kind::Install | Kind::Update => {
                let new = p.new.expect("install and update have a new version");
                if let Err(e) = fs::rename(self.new_deb(&uuid), self.kept_deb(&uuid)) {
                    warn!(%uuid, "swmod dpkg: keeping the package: {e}");
                }
                st.units.retain(|r| r.uuid != uuid);
                st.units.push(new);
            }
            Kind::Uninstall => {
                let _ = fs::remove_file(self.kept_deb(&uuid));
                st.units.retain(|r| r.uuid != uuid);
            }
        }
        if let Err(e) = self.save(st) {
            // dpkg's database holds the truth; a restart's recover() finds the same result.
            warn!(%uuid, "swmod dpkg: {}", e.text());
        }
    }

    /// Makes the pending operation (if any) old, new or absent from dpkg's own state; see the
    /// module documentation. Leaves it pending only when even the rollback failed.
    fn settle(&self, st: &mut Records) {
        let Some(p) = st.pending.clone() else {
            return;
        };
        let pkg = p.package().to_owned();
        let uuid = p.uuid().to_owned();
        let Ok(now) = self.query(&pkg) else {
            error!(%uuid, "swmod dpkg: cannot read the state of {pkg}; settled later");
            return;
        };
        let new_v = p
            .new
            .as_ref()
            .map(|r| r.version.clone())
            .unwrap_or_default();
        let old_v = p
            .old
            .as_ref()
            .map(|r| r.version.clone())
            .unwrap_or_default();
        match p.kind {
            Kind::Install | Kind::Update if PkgState::installed_at(&now, &new_v) => {
                info!(%uuid, "swmod dpkg: {pkg} {new_v} is installed: the {:?} took effect", p.kind);
                self.commit(st);
                return;
            }
            Kind::Update | Kind::Uninstall if PkgState::installed_at(&now, &old_v) => {
                info!(%uuid, "swmod dpkg: {pkg} {old_v} is still installed");
            }
            Kind::Install | Kind::Uninstall if now.is_none() => {
                if p.kind == Kind::Uninstall {
                    self.commit(st);
                    return;
                }
            }
            Kind::Install => {
                warn!(%uuid, "swmod dpkg: {pkg} left {:?}: purging it", now);
                if !self.purge(&pkg) {
                    return;
                }
            }
            Kind::Uninstall => {
                warn!(%uuid, "swmod dpkg: {pkg} left {:?}: finishing its removal", now);
                if self.purge(&pkg) {
                    self.commit(st);
                }
                return;
            }
            Kind::Update => {
                warn!(%uuid, "swmod dpkg: {pkg} left {:?}: putting {old_v} back", now);
                let kept = self.kept_deb(&uuid);
                let back = kept.exists()
                    && self
                        .dpkg(&[
                            OsStr::new("--force-downgrade"),
                            OsStr::new("--install"),
                            kept.as_os_str(),
                        ])
                        .is_ok();
                let back = back
                    && self
                        .query(&pkg)
                        .is_ok_and(|s| PkgState::installed_at(&s, &old_v));
                if !back {
                    error!(%uuid, "swmod dpkg: {pkg} {old_v} could not be put back: purging {pkg}; the DU is gone");
                    if !self.purge(&pkg) {
                        return;
                    }
                    st.units.retain(|r| r.uuid != uuid);
                    let _ = fs::remove_file(&kept);
                }
            }
        }
        st.pending = None;
        let _ = fs::remove_file(self.new_deb(&uuid));
        if let Err(e) = self.save(st) {
            warn!(%uuid, "swmod dpkg: {}", e.text());
        }
    }

    /// Purges a package, forcing past a package that needs reinstallation; true when dpkg no
    /// longer knows it.
    fn purge(&self, pkg: &str) -> bool {
        let _ = self.dpkg(&[
            OsStr::new("--force-remove-reinstreq"),
            OsStr::new("--purge"),
            OsStr::new(pkg),
        ]);
        match self.query(pkg) {
            Ok(None) => true,
            other => {
                error!("swmod dpkg: {pkg} could not be purged: {other:?}");
                false
            }
        }
    }

    /// Reads and checks a .deb before anything changes: fields, whole data part, architecture.
    fn check_deb(&self, deb: &Path) -> Result<Fields, DuError> {
        let out = self.run(
            "dpkg-deb",
            &[
                OsStr::new("--field"),
                deb.as_os_str(),
                OsStr::new("Package"),
                OsStr::new("Version"),
                OsStr::new("Maintainer"),
                OsStr::new("Description"),
                OsStr::new("Architecture"),
            ],
        )?;
        if !out.ok {
            return Err(DuError::Corrupt(format!(
                "not a readable Debian package: {}",
                out.stderr
            )));
        }
        let f = parse_fields(&String::from_utf8_lossy(&out.stdout));
        if f.package.is_empty() || f.version.is_empty() {
            return Err(DuError::Corrupt(
                "the package has no Package or Version field".into(),
            ));
        }
        if f.package.chars().count() > MAX_NAME || f.version.chars().count() > MAX_VERSION {
            return Err(DuError::Corrupt(format!(
                "package name or version too long for the data model ({MAX_NAME}, {MAX_VERSION})"
            )));
        }
        let out = self.run("dpkg-deb", &[OsStr::new("--contents"), deb.as_os_str()])?;
        if !out.ok {
            return Err(DuError::Corrupt(format!(
                "the package is damaged: {}",
                out.stderr
            )));
        }
        if f.architecture != "all" {
            let native = self.run("dpkg", &[OsStr::new("--print-architecture")])?;
            let mut admin = OsString::from("--admindir=");
            admin.push(&self.admin);
            let foreign = self.run(
                "dpkg",
                &[&admin, OsStr::new("--print-foreign-architectures")],
            )?;
            let accepted = String::from_utf8_lossy(&native.stdout).into_owned()
                + &String::from_utf8_lossy(&foreign.stdout);
            if !accepted.split_whitespace().any(|a| a == f.architecture) {
                return Err(DuError::Mismatch(format!(
                    "package architecture {:?} is not installable here ({})",
                    f.architecture,
                    accepted.split_whitespace().collect::<Vec<_>>().join(", ")
                )));
            }
        }
        Ok(f)
    }

    /// The package's state in dpkg's database.
    fn query(&self, pkg: &str) -> Result<Option<PkgState>, DuError> {
        let mut admin = OsString::from("--admindir=");
        admin.push(&self.admin);
        let out = self.run(
            "dpkg-query",
            &[
                &admin,
                OsStr::new("--show"),
                OsStr::new("--showformat=${db:Status-Status}\t${Version}\n"),
                OsStr::new("--"),
                OsStr::new(pkg),
            ],
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text.lines().next().unwrap_or("");
        match line.split_once('\t') {
            Some((status, version)) if out.ok => Ok((status != "not-installed"
                && !status.is_empty())
            .then(|| PkgState {
                status: status.to_owned(),
                version: version.to_owned(),
            })),
            _ if out.stderr.contains("no packages found") => Ok(None),
            _ => Err(DuError::Internal(format!("dpkg-query: {}", out.stderr))),
        }
    }

    /// `dpkg --root=<root> --force-confdef --force-confold <args>`.
    fn dpkg(&self, args: &[&OsStr]) -> Result<Out, DuError> {
        let mut root = OsString::from("--root=");
        root.push(&self.root);
        let mut all: Vec<&OsStr> = vec![
            &root,
            OsStr::new("--force-confdef"),
            OsStr::new("--force-confold"),
        ];
        all.extend_from_slice(args);
        self.run("dpkg", &all)
    }

    /// Runs a program (no shell) within the wall time; see the module documentation.
    fn run(&self, prog: &str, args: &[&OsStr]) -> Result<Out, DuError> {
        let mut cmd = Command::new(prog);
        cmd.args(args)
            .env("PATH", PATH)
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: the closure runs in the forked child before exec and makes one
        // async-signal-safe system call (prctl).
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(io::Error::from)
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| DuError::Internal(format!("cannot run {prog}: {e}")))?;
        let mut so = child.stdout.take().expect("piped");
        let mut se = child.stderr.take().expect("piped");
        let out_reader = std::thread::spawn(move || read_bounded(&mut so, STDOUT_KEEP, false));
        let err_reader = std::thread::spawn(move || read_bounded(&mut se, STDERR_KEEP, true));
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() >= deadline => break None,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    warn!("swmod dpkg: waiting for {prog}: {e}");
                    break None;
                }
            }
        };
        if status.is_none() {
            // The whole group: maintainer scripts included.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
        let stdout = out_reader.join().unwrap_or_default();
        let stderr = err_reader.join().unwrap_or_default();
        let stderr = String::from_utf8_lossy(&stderr).trim().to_string();
        match status {
            Some(s) => Ok(Out {
                ok: s.success(),
                stdout,
                stderr,
            }),
            None => Err(DuError::Internal(format!(
                "{prog} did not finish within {} s and was killed",
                self.timeout.as_secs()
            ))),
        }
    }

    /// Writes `units.json` atomically (temporary file fsynced, renamed, directory fsynced).
    fn save(&self, st: &Records) -> Result<(), DuError> {
        *self.lock() = st.clone();
        let json = serde_json::to_vec_pretty(st)
            .map_err(|e| DuError::Internal(format!("encoding {UNITS}: {e}")))?;
        let tmp = self.store.join(format!("{UNITS}.tmp"));
        let r = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            fs::rename(&tmp, self.store.join(UNITS))?;
            File::open(&self.store)?.sync_all()
        })();
        r.map_err(|e| io_error(format!("writing {UNITS}: {e}"), &e))
    }
}

/// A failed dpkg run as a DuError: dpkg's message (its last lines), 9027 for a full disk.
fn failure(
    what: &str,
    out: &Result<Out, DuError>,
    now: &Result<Option<PkgState>, DuError>,
) -> DuError {
    let msg = match out {
        Ok(o) => {
            let tail: Vec<&str> = o.stderr.lines().rev().take(6).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{what} failed: {}", tail.join(" | "))
        }
        Err(e) => format!("{what}: {}", e.text()),
    };
    let msg = match now {
        Ok(Some(s)) => format!("{msg} (the package was left {})", s.status),
        _ => msg,
    };
    if msg.contains("No space left on device") || msg.contains("Disk quota exceeded") {
        DuError::Resources(msg)
    } else {
        DuError::Internal(msg)
    }
}

fn io_error(msg: String, e: &io::Error) -> DuError {
    match e.raw_os_error() {
        Some(nix::libc::ENOSPC | nix::libc::EDQUOT | nix::libc::EFBIG) => DuError::Resources(msg),
        _ => DuError::Internal(msg),
    }
}

/// Reads a stream to its end, keeping its first (or, `tail`, last) `keep` bytes.
fn read_bounded(r: &mut impl Read, keep: usize, tail: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > keep {
                    if tail {
                        let cut = out.len() - keep;
                        out.drain(..cut);
                    } else {
                        out.truncate(keep);
                    }
                }
            }
        }
    }
    out
}

/// Control fields as `dpkg-deb --field` prints several: `Name: value` lines, continuation
/// lines indented. Description keeps its synopsis; vendor and description are bounded.
fn parse_fields(text: &str) -> Fields {
    let mut f = Fields::default();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) {
            continue; // the extended description
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let v = v.trim().to_owned();
        match k {
            "Package" => f.package = v,
            "Version" => f.version = v,
            "Maintainer" => f.maintainer = bounded(&v, MAX_VENDOR),
            "Description" => f.description = bounded(&v, MAX_DESCRIPTION),
            "Architecture" => f.architecture = v,
            _ => {}
        }
    }
    f
}

fn bounded(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// The recorded DU with (the normalised form of) `uuid`: 9022 for a malformed one, 9028 for
/// one the backend does not hold.
fn unit_of(st: &Records, uuid: &str) -> Result<(String, Rec), DuError> {
    let uuid = manifest::normalize_uuid(uuid)
        .ok_or_else(|| DuError::InvalidUuid(format!("{uuid:?} is not a UUID")))?;
    let rec = st
        .units
        .iter()
        .find(|r| r.uuid == uuid)
        .cloned()
        .ok_or_else(|| DuError::Unknown(format!("no deployment unit {uuid}")))?;
    Ok((uuid, rec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_as_dpkg_deb_prints_them() {
        let f = parse_fields(
            "Package: hello-du\nVersion: 1.0-2\nMaintainer: Example Co <a@example.com>\nDescription: a test\n longer text\n .\n more\nArchitecture: all\n",
        );
        assert_eq!(
            f,
            Fields {
                package: "hello-du".into(),
                version: "1.0-2".into(),
                maintainer: "Example Co <a@example.com>".into(),
                description: "a test".into(),
                architecture: "all".into(),
            }
        );
        let long = format!("Maintainer: {}\n", "x".repeat(300));
        assert_eq!(parse_fields(&long).maintainer.len(), MAX_VENDOR);
    }

    #[test]
    fn bounded_reads_keep_the_head_or_the_tail() {
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
        let head = read_bounded(&mut &data[..], 100, false);
        assert_eq!(head, data[..100]);
        let tail = read_bounded(&mut &data[..], 100, true);
        assert_eq!(tail, data[data.len() - 100..]);
    }

    #[test]
    fn a_deb_is_told_by_its_first_member() {
        let d = std::env::temp_dir().join(format!("cwmpd-dpkg-sniff-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        let deb = d.join("a.deb");
        fs::write(
            &deb,
            b"!<arch>\ndebian-binary   1342943816  0     0     100644  4         `\n2.0\n",
        )
        .unwrap();
        assert!(DpkgBackend::looks_like_deb(&deb));
        let tgz = d.join("a.tgz");
        fs::write(
            &tgz,
            [
                0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
        )
        .unwrap();
        assert!(!DpkgBackend::looks_like_deb(&tgz));
        assert!(!DpkgBackend::looks_like_deb(&d.join("none")));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn open_creates_the_admin_directory_and_keeps_records() {
        let d = std::env::temp_dir().join(format!("cwmpd-dpkg-open-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        let b =
            DpkgBackend::open(&d.join("root"), &d.join("store"), Duration::from_secs(5)).unwrap();
        for p in ["status", "available", "info", "updates"] {
            assert!(d.join("root/var/lib/dpkg").join(p).exists(), "{p}");
        }
        assert!(b.list().is_empty());
        assert!(!b.needs_recovery());
        let mut st = b.lock().clone();
        st.units.push(Rec {
            uuid: "2a7c6e0e-3f4b-4c3e-9d61-6f1f0a9b7c01".into(),
            package: "p".into(),
            version: "1".into(),
            vendor: String::new(),
            description: String::new(),
            url: "http://x/p.deb".into(),
        });
        b.save(&st).unwrap();
        let b =
            DpkgBackend::open(&d.join("root"), &d.join("store"), Duration::from_secs(5)).unwrap();
        let got = b.get("2A7C6E0E-3F4B-4C3E-9D61-6F1F0A9B7C01").unwrap();
        assert_eq!((got.name.as_str(), got.units.len()), ("p", 0));
        fs::write(d.join("store").join(UNITS), b"{").unwrap();
        assert!(
            DpkgBackend::open(&d.join("root"), &d.join("store"), Duration::from_secs(5)).is_err()
        );
        let _ = fs::remove_dir_all(&d);
    }
}
