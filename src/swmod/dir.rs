//! The directory backend of TR-157 software modules: deployment units (DUs) delivered as
//! checksummed, optionally signed archives, unpacked under a root directory, and installed,
//! updated and uninstalled atomically: after a power cut at any instant, [`DirBackend::list`]
//! shows the state before the operation or the state after it, never a mix.
//!
//! # Archive format
//!
//! A DU is a **tar** archive, optionally **gzip**-compressed (recognised by its first two bytes,
//! `1f 8b`; concatenated gzip members are read as one stream). Headers read: POSIX ustar (with
//! its `prefix` field), GNU long names (`L`), PAX extended headers (`x`, whose `path=` and
//! `size=` are used); PAX global headers (`g`) are ignored. The archive ends with its zero
//! blocks (only zero bytes, at most 1 MiB, may follow them, and a gzip stream must end with a
//! good CRC) or at end of input where a header would start. `tar -czf app.tar.gz -C build .`
//! (GNU tar or bsdtar, any of their formats) makes such an archive.
//!
//! At the top of the archive (`manifest.toml` or `./manifest.toml`):
//!
//! ```toml
//! name = "weather"           # DeploymentUnit.Name: 1..64 characters
//! version = "1.2.0"          # DeploymentUnit.Version: 1..32 characters
//! vendor = "Example Co"      # optional, at most 128 characters
//! description = "Weather"    # optional, at most 256 characters
//! uuid = "…"                 # optional, RFC 4122 text form (either case; stored lower-case)
//!
//! [[unit]]                   # 0..16 execution units
//! name = "weather"           # 1..32 of A-Z a-z 0-9 . _ - (not "." or ".."), unique in the DU
//! exec = ["bin/weather", "--port", "8080"]   # argv, at most 64 arguments and 4096 bytes
//! autostart = true           # default false
//!
//! [sha256]                   # lower- or upper-case hexadecimal
//! "bin/weather" = "<64 hex digits>"
//! ```
//!
//! Name, version, vendor and description contain no control characters; unknown keys are
//! refused (a misspelt `autostart` must not pass silently). `[sha256]` lists **every regular
//! file** of the archive except `manifest.toml` and `manifest.sig`, **and nothing else**, by the
//! path it has in the archive without a leading `./`. Each file's SHA-256 is computed while
//! it is unpacked; a mismatch, a listed file missing, or a file not listed is refused.
//!
//! **Signature**: the optional top-level `manifest.sig` holds a raw Ed25519 signature, exactly
//! **64 bytes** (binary, not base64), over the exact bytes of `manifest.toml`; the checksums
//! then make the whole archive signed. For example, with OpenSSL 3:
//! `openssl pkeyutl -sign -rawin -inkey key.pem -in manifest.toml -out manifest.sig`.
//! [`DirBackend::open`] takes the trusted public keys (32 raw bytes each). With one or more
//! keys, an archive whose `manifest.sig` is missing or verifies with none of them is refused.
//! With no keys, signatures are not required; a `manifest.sig` that is there must still be
//! 64 bytes, but it cannot be verified and is otherwise ignored.
//!
//! **What an archive may hold**: regular files and directories only (symbolic links, hard
//! links, devices, FIFOs and any other entry type are refused); relative paths (a leading `./`
//! is dropped, and the entry `./` itself is skipped) with no empty, `.` or `..` component, at
//! most 255 bytes, UTF-8; no path twice (but a directory may repeat), no file where a
//! directory is needed. Files are written 0755 when the archive gives the owner the execute
//! bit, 0644 otherwise; directories 0755; never setuid, setgid or sticky; owned by the agent's
//! user. `exec[0]` of every unit must be a listed file with the execute bit.
//!
//! **Limits** (given to [`DirBackend::open`]): the sum of the sizes of the regular files
//! (manifest and signature included) at most `max_bytes`, the number of file and directory
//! entries at most `max_entries`; both are checked from the headers before data is written.
//! `manifest.toml` is at most 1 MiB.
//!
//! # Run contract
//!
//! What an execution unit can rely on (the engine starts the processes and keeps this side
//! of the contract; this backend provides the directories):
//! - its program is `exec[0]`, a path relative to the **unit directory**
//!   ([`DirBackend::unit_dir`]), which is also its working directory; the arguments are the
//!   rest of `exec`, passed as they are (no shell);
//! - the unit directory holds the archive's files (not the manifest or its signature) and is
//!   **read-only by contract**: it is replaced as a whole by an update, and an update leaves
//!   no file of the old version in it;
//! - persistent state goes to the **data directory** ([`DirBackend::data_dir`]), created empty
//!   (0700) at install, kept as it is across updates, removed at uninstall;
//! - `autostart = true` units are started by the agent after the DU is installed or updated
//!   and at boot; the others only when the ACS asks (ExecutionUnit.RequestedState);
//! - an update or uninstall stops the DU's units first.
//!
//! # UUIDs
//!
//! A DU's UUID is, in this order: the one the ACS gives in ChangeDUState (which must equal the
//! manifest's `uuid` when the manifest has one), the manifest's `uuid`, or a name-based UUID
//! version 5 (SHA-1), namespace [`manifest::UUID_NAMESPACE`]
//! (`70338d78-dbc5-42dc-b79f-5ce896533069`, cwmpd's own) and name `vendor + "\n" + name`
//! (UTF-8). UUIDs are kept lower-case; the nil UUID is refused.
//!
//! # On-disk layout
//!
//! ```text
//! root/                        0700, created by open()
//!   du/<uuid>/                 one installed DU
//!     current -> v-<n>         symbolic link naming the active version: the commit point
//!     v-<n>/info.json          the DuInfo and URL of that version (JSON)
//!     v-<n>/files/…            the unpacked archive: the unit directory
//!     data/                    the data directory
//!   tmp/<random>/              operations in progress
//!   trash/<random>/            uninstalled DUs being deleted
//! ```
//!
//! A version directory is complete (every file and directory fsynced) before it gets its
//! final name and is never changed afterwards. The operations:
//! - **install**: the whole `du/<uuid>` tree (`v-1/`, `data/`, `current -> v-1`) is built in
//!   `tmp/<random>/`, fsynced, then renamed to `du/<uuid>` (one atomic rename; `du/` fsynced);
//! - **update**: the new version is built in `tmp/<random>/`, fsynced, renamed to
//!   `du/<uuid>/v-<n+1>`; then a symbolic link `du/<uuid>/.current.tmp -> v-<n+1>` is renamed
//!   over `current` (atomic) and `du/<uuid>` fsynced; then the old version is deleted;
//! - **uninstall**: `du/<uuid>` is renamed to `trash/<random>` (atomic), then deleted.
//!
//! [`DirBackend::open`] finishes or rolls back what a crash interrupted: it deletes everything
//! in `tmp/` and `trash/`, and in each `du/<uuid>/` everything but `current`, `data` and the
//! version `current` names. A `du/<uuid>` without a valid `current` (which no operation
//! leaves, so only damage makes one) is moved to the trash with a warning. Entries of `du/`
//! that are not lower-case UUIDs are left alone and not listed.
//!
//! # Errors
//!
//! [`DuError`]: a bad archive, checksum, signature or manifest is `Corrupt` (9018); a limit,
//! or a full disk (ENOSPC, EDQUOT, EFBIG), is `Resources` (9027); other IO failures are
//! `Internal` (9001: the schema allows no 9002 in a result). A failed operation removes what it wrote and leaves the tree exactly
//! as it was.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ring::signature::{ED25519, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use super::manifest::{self, MANIFEST, Manifest, SIGNATURE};
use super::tar;
use super::{DuError, DuInfo, EuInfo};

const DU: &str = "du";
const TMP: &str = "tmp";
const TRASH: &str = "trash";
const CURRENT: &str = "current";
const CURRENT_TMP: &str = ".current.tmp";
const DATA: &str = "data";
const FILES: &str = "files";
const INFO: &str = "info.json";
/// Largest `manifest.toml`.
const MAX_MANIFEST: u64 = 1 << 20;
/// Length of an Ed25519 signature (`manifest.sig`).
const SIG_LEN: u64 = 64;

/// Deployment units installed as directories under a root; see the module documentation.
/// Operations that change the tree are serialised by a lock; reads need none.
pub struct DirBackend {
    root: PathBuf,
    max_bytes: u64,
    max_entries: usize,
    keys: Vec<[u8; 32]>,
    lock: Mutex<()>,
}

impl std::fmt::Debug for DirBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirBackend")
            .field("root", &self.root)
            .field("max_bytes", &self.max_bytes)
            .field("max_entries", &self.max_entries)
            .field("trusted_keys", &self.keys.len())
            .finish()
    }
}

/// `info.json` of a version directory.
#[derive(Serialize, Deserialize)]
struct StoredInfo {
    uuid: String,
    name: String,
    version: String,
    vendor: String,
    description: String,
    url: String,
    units: Vec<StoredUnit>,
}

#[derive(Serialize, Deserialize)]
struct StoredUnit {
    name: String,
    exec: Vec<String>,
    autostart: bool,
}

impl From<&DuInfo> for StoredInfo {
    fn from(d: &DuInfo) -> StoredInfo {
        StoredInfo {
            uuid: d.uuid.clone(),
            name: d.name.clone(),
            version: d.version.clone(),
            vendor: d.vendor.clone(),
            description: d.description.clone(),
            url: d.url.clone(),
            units: d
                .units
                .iter()
                .map(|u| StoredUnit {
                    name: u.name.clone(),
                    exec: u.exec.clone(),
                    autostart: u.autostart,
                })
                .collect(),
        }
    }
}

impl From<StoredInfo> for DuInfo {
    fn from(s: StoredInfo) -> DuInfo {
        DuInfo {
            uuid: s.uuid,
            name: s.name,
            version: s.version,
            vendor: s.vendor,
            description: s.description,
            url: s.url,
            units: s
                .units
                .into_iter()
                .map(|u| EuInfo {
                    name: u.name,
                    exec: u.exec,
                    autostart: u.autostart,
                })
                .collect(),
        }
    }
}

/// What the unpacker saw at a path under `files/`.
enum Seen {
    Dir,
    File { digest: [u8; 32], exec: bool },
}

impl DirBackend {
    /// Opens (creating it 0700 if needed) the root and cleans up after interrupted operations.
    /// `max_bytes` and `max_entries` limit every archive; with `trusted_keys` non-empty, every
    /// archive must be signed by one of them.
    pub fn open(
        root: &Path,
        max_bytes: u64,
        max_entries: usize,
        trusted_keys: Vec<[u8; 32]>,
    ) -> io::Result<DirBackend> {
        if !root.exists() {
            DirBuilder::new().recursive(true).mode(0o700).create(root)?;
            fs::set_permissions(root, fs::Permissions::from_mode(0o700))?;
        }
        for sub in [DU, TMP, TRASH] {
            let p = root.join(sub);
            if !p.is_dir() {
                DirBuilder::new().mode(0o755).create(&p)?;
            }
        }
        let b = DirBackend {
            root: root.to_path_buf(),
            max_bytes,
            max_entries,
            keys: trusted_keys,
            lock: Mutex::new(()),
        };
        b.recover()?;
        Ok(b)
    }

    /// The installed DUs, sorted by UUID.
    pub fn list(&self) -> Vec<DuInfo> {
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.root.join(DU)) else {
            return out;
        };
        for e in rd.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if manifest::normalize_uuid(&name).as_deref() == Some(name.as_str())
                && let Some(d) = self.read_info(&name)
            {
                out.push(d);
            }
        }
        out.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        out
    }

    /// The installed DU with this UUID (either case).
    pub fn get(&self, uuid: &str) -> Option<DuInfo> {
        self.read_info(&manifest::normalize_uuid(uuid)?)
    }

    /// Installs a DU from `archive`. `uuid` "" takes the manifest's, else derives one (see
    /// the module documentation); a given `uuid` must equal the manifest's when it has one.
    pub fn install(&self, archive: &Path, uuid: &str, url: &str) -> Result<DuInfo, DuError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let wanted = if uuid.is_empty() {
            None
        } else {
            Some(parse_uuid(uuid)?)
        };
        if let Some(u) = &wanted
            && self.installed(u)
        {
            return Err(DuError::Duplicate(format!("{u} is already installed")));
        }
        let work = self.new_work_dir()?;
        let result = self.install_in(&work, archive, wanted, url);
        if result.is_err() {
            remove_quietly(&work);
        }
        let d = result?;
        info!(uuid = %d.uuid, name = %d.name, version = %d.version, "swmod: installed");
        Ok(d)
    }

    fn install_in(
        &self,
        work: &Path,
        archive: &Path,
        wanted: Option<String>,
        url: &str,
    ) -> Result<DuInfo, DuError> {
        let version_dir = work.join("v-1");
        make_dir(&version_dir, 0o755)?;
        let m = self.unpack(archive, &version_dir)?;
        let uuid = match (wanted, &m.uuid) {
            (Some(w), Some(mu)) if w != *mu => {
                return Err(DuError::Corrupt(format!("archive is for UUID {mu}")));
            }
            (Some(w), _) => w,
            (None, Some(mu)) => mu.clone(),
            (None, None) => manifest::derived_uuid(&m.vendor, &m.name),
        };
        if self.installed(&uuid) {
            return Err(DuError::Duplicate(format!("{uuid} is already installed")));
        }
        let d = du_info(&m, &uuid, url);
        write_info(&version_dir, &d)?;
        fsync_dir(&version_dir)?;
        make_dir(&work.join(DATA), 0o700)?;
        fsync_dir(&work.join(DATA))?;
        symlink("v-1", work.join(CURRENT)).map_err(io_fail("linking the version"))?;
        fsync_dir(work)?;
        let dest = self.du_dir(&uuid);
        fs::rename(work, &dest).map_err(io_fail("moving the DU into place"))?;
        // Committed (durable once du/ is synced).
        self.sync_after_commit(&[&self.root.join(DU), &self.root.join(TMP)]);
        Ok(d)
    }

    /// Updates an installed DU to the version in `archive`: same name, another version. The
    /// data directory is kept; `url` "" keeps the URL recorded before.
    pub fn update(&self, uuid: &str, archive: &Path, url: &str) -> Result<DuInfo, DuError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let uuid = parse_uuid(uuid)?;
        let old = self
            .read_info(&uuid)
            .ok_or_else(|| DuError::Unknown(format!("no deployment unit {uuid}")))?;
        let du = self.du_dir(&uuid);
        let old_version = current_version(&du)
            .ok_or_else(|| DuError::Internal(format!("{uuid}: no current version")))?;
        let n = next_version_number(&du);
        let new_version = format!("v-{n}");
        let work = self.new_work_dir()?;
        let prepared = self.update_in(&work, archive, &uuid, &old, url);
        let d = match prepared {
            Ok(d) => d,
            Err(e) => {
                remove_quietly(&work);
                return Err(e);
            }
        };
        // Move the version into place and switch `current` to it.
        let switched = fs::rename(&work, du.join(&new_version))
            .map_err(io_fail("moving the version into place"))
            .and_then(|()| fsync_dir(&du))
            .and_then(|()| switch_current(&du, &new_version));
        if let Err(e) = switched {
            remove_quietly(&work);
            remove_quietly(&du.join(&new_version));
            remove_quietly(&du.join(CURRENT_TMP));
            return Err(e);
        }
        // Committed: the rest is clean-up that open() would redo.
        self.sync_after_commit(&[&du, &self.root.join(TMP)]);
        if let Err(e) = fs::remove_dir_all(du.join(&old_version)) {
            warn!(%uuid, "swmod: removing the old version {old_version}: {e}");
        }
        info!(%uuid, name = %d.name, from = %old.version, to = %d.version, "swmod: updated");
        Ok(d)
    }

    fn update_in(
        &self,
        work: &Path,
        archive: &Path,
        uuid: &str,
        old: &DuInfo,
        url: &str,
    ) -> Result<DuInfo, DuError> {
        let m = self.unpack(archive, work)?;
        if m.name != old.name {
            return Err(DuError::Corrupt(format!(
                "archive is for {:?}, not {:?}",
                m.name, old.name
            )));
        }
        if let Some(mu) = &m.uuid
            && mu != uuid
        {
            return Err(DuError::Corrupt(format!("archive is for UUID {mu}")));
        }
        if m.version == old.version {
            return Err(DuError::VersionExists(format!(
                "version {:?} of {uuid} is already installed",
                m.version
            )));
        }
        let d = du_info(&m, uuid, if url.is_empty() { &old.url } else { url });
        write_info(work, &d)?;
        fsync_dir(work)?;
        Ok(d)
    }

    /// Uninstalls a DU; `version` "" means whichever is installed. Returns what was removed.
    pub fn uninstall(&self, uuid: &str, version: &str) -> Result<DuInfo, DuError> {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let uuid = parse_uuid(uuid)?;
        let d = self
            .read_info(&uuid)
            .ok_or_else(|| DuError::Unknown(format!("no deployment unit {uuid}")))?;
        if !version.is_empty() && version != d.version {
            return Err(DuError::Unknown(format!(
                "{uuid} has version {:?}, not {version:?}",
                d.version
            )));
        }
        let trash = self.root.join(TRASH).join(random_name());
        fs::rename(self.du_dir(&uuid), &trash).map_err(io_fail("moving the DU to the trash"))?;
        self.sync_after_commit(&[&self.root.join(DU), &self.root.join(TRASH)]);
        if let Err(e) = fs::remove_dir_all(&trash) {
            warn!(%uuid, "swmod: deleting the uninstalled DU: {e}");
        }
        info!(%uuid, name = %d.name, version = %d.version, "swmod: uninstalled");
        Ok(d)
    }

    /// The current version's directory of a DU (the working directory of its units). For a
    /// DU that is not installed, a path that does not exist.
    pub fn unit_dir(&self, uuid: &str) -> PathBuf {
        let Some(uuid) = manifest::normalize_uuid(uuid) else {
            return self.root.join(DU).join("invalid-uuid").join(FILES);
        };
        let du = self.du_dir(&uuid);
        match current_version(&du) {
            Some(v) => du.join(v).join(FILES),
            None => du.join(CURRENT).join(FILES),
        }
    }

    /// The data directory of a DU: kept across updates, removed at uninstall. For a DU that
    /// is not installed, a path that does not exist.
    pub fn data_dir(&self, uuid: &str) -> PathBuf {
        match manifest::normalize_uuid(uuid) {
            Some(u) => self.du_dir(&u).join(DATA),
            None => self.root.join(DU).join("invalid-uuid").join(DATA),
        }
    }

    fn du_dir(&self, uuid: &str) -> PathBuf {
        self.root.join(DU).join(uuid)
    }

    fn installed(&self, uuid: &str) -> bool {
        fs::symlink_metadata(self.du_dir(uuid)).is_ok()
    }

    /// `du/<uuid>/current/info.json`, if it is there and names this UUID.
    fn read_info(&self, uuid: &str) -> Option<DuInfo> {
        let du = self.du_dir(uuid);
        let v = current_version(&du)?;
        let path = du.join(v).join(INFO);
        let bytes = fs::read(&path).ok()?;
        match serde_json::from_slice::<StoredInfo>(&bytes) {
            Ok(s) if s.uuid == uuid => Some(s.into()),
            Ok(_) => {
                warn!("swmod: {} names another UUID", path.display());
                None
            }
            Err(e) => {
                warn!("swmod: {}: {e}", path.display());
                None
            }
        }
    }

    /// A fresh `tmp/<random>` directory.
    fn new_work_dir(&self) -> Result<PathBuf, DuError> {
        let p = self.root.join(TMP).join(random_name());
        make_dir(&p, 0o755)?;
        Ok(p)
    }

    /// After the commit point: makes it durable; a failure can no longer undo the operation.
    fn sync_after_commit(&self, dirs: &[&Path]) {
        for d in dirs {
            if let Err(e) = fsync_dir(d) {
                warn!("swmod: {}", e.text());
            }
        }
    }

    /// Deletes what interrupted operations left; see the module documentation.
    fn recover(&self) -> io::Result<()> {
        for sub in [TMP, TRASH] {
            for e in fs::read_dir(self.root.join(sub))? {
                let p = e?.path();
                info!("swmod: removing {} (interrupted operation)", p.display());
                remove_quietly(&p);
            }
        }
        for e in fs::read_dir(self.root.join(DU))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if manifest::normalize_uuid(&name).as_deref() != Some(name.as_str()) {
                warn!(
                    "swmod: {}: not a DU directory, left alone",
                    e.path().display()
                );
                continue;
            }
            let du = e.path();
            if self.read_info(&name).is_none() {
                warn!("swmod: {}: no valid current version, removed", du.display());
                let trash = self.root.join(TRASH).join(random_name());
                match fs::rename(&du, &trash) {
                    Ok(()) => remove_quietly(&trash),
                    Err(e) => warn!("swmod: moving {} to the trash: {e}", du.display()),
                }
                continue;
            }
            let keep = current_version(&du);
            for v in fs::read_dir(&du)? {
                let v = v?;
                let n = v.file_name();
                let n = n.to_string_lossy();
                if n == CURRENT || n == DATA || Some(n.as_ref()) == keep.as_deref() {
                    continue;
                }
                info!(
                    "swmod: removing {} (interrupted operation)",
                    v.path().display()
                );
                remove_quietly(&v.path());
            }
        }
        Ok(())
    }

    /// Unpacks `archive` into `dest/files/` (`dest` exists), checking everything the module
    /// documentation lists; every file and directory is fsynced before this returns.
    fn unpack(&self, archive: &Path, dest: &Path) -> Result<Manifest, DuError> {
        let file = File::open(archive)
            .map_err(|e| DuError::Internal(format!("opening the archive: {e}")))?;
        let mut input = BufReader::with_capacity(64 * 1024, file);
        let head = input
            .fill_buf()
            .map_err(|e| DuError::Internal(format!("reading the archive: {e}")))?;
        let stream: Box<dyn Read> = if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(input))
        } else {
            Box::new(input)
        };
        let mut reader = tar::Reader::new(stream);

        let files = dest.join(FILES);
        make_dir(&files, 0o755)?;
        let mut dirs = vec![dest.to_path_buf(), files.clone()];
        let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
        let mut manifest_bytes: Option<Vec<u8>> = None;
        let mut signature: Option<Vec<u8>> = None;
        let mut entries = 0usize;
        let mut bytes = 0u64;
        let mut buf = vec![0u8; 64 * 1024];

        while let Some(e) = reader.next_entry().map_err(tar_error)? {
            let shown = String::from_utf8_lossy(&e.path).into_owned();
            if !matches!(e.kind, tar::Kind::File | tar::Kind::Dir) {
                return Err(DuError::Corrupt(format!(
                    "{shown:?}: {} not allowed in a DU archive",
                    e.kind.describe()
                )));
            }
            entries += 1;
            if entries > self.max_entries {
                return Err(DuError::Resources(format!(
                    "archive has more than {} entries",
                    self.max_entries
                )));
            }
            if e.kind == tar::Kind::File {
                bytes = bytes.saturating_add(e.size);
                if bytes > self.max_bytes {
                    return Err(DuError::Resources(format!(
                        "archive unpacks to more than {} bytes",
                        self.max_bytes
                    )));
                }
            }
            let Some(path) = clean_name(&e.path)? else {
                if e.kind == tar::Kind::Dir {
                    continue; // "./": the top directory itself
                }
                return Err(DuError::Corrupt(format!("file entry named {shown:?}")));
            };

            if path == MANIFEST || path == SIGNATURE {
                let (slot, max) = if path == MANIFEST {
                    (&mut manifest_bytes, MAX_MANIFEST)
                } else {
                    (&mut signature, SIG_LEN)
                };
                if e.kind != tar::Kind::File {
                    return Err(DuError::Corrupt(format!("{path} is not a regular file")));
                }
                if slot.is_some() {
                    return Err(DuError::Corrupt(format!("{path} appears twice")));
                }
                if path == SIGNATURE && e.size != SIG_LEN {
                    return Err(DuError::Corrupt(format!(
                        "{SIGNATURE} must be a raw Ed25519 signature of {SIG_LEN} bytes (has {})",
                        e.size
                    )));
                }
                if e.size > max {
                    return Err(DuError::Corrupt(format!(
                        "{path} is larger than {max} bytes"
                    )));
                }
                let mut data = Vec::with_capacity(e.size as usize);
                loop {
                    let n = reader.read_data(&mut buf).map_err(tar_error)?;
                    if n == 0 {
                        break;
                    }
                    data.extend_from_slice(&buf[..n]);
                }
                *slot = Some(data);
                continue;
            }

            // Parent directories the archive did not list.
            for (i, _) in path.match_indices('/') {
                let parent = &path[..i];
                match seen.get(parent) {
                    Some(Seen::Dir) => {}
                    Some(Seen::File { .. }) => {
                        return Err(DuError::Corrupt(format!("{path:?}: {parent:?} is a file")));
                    }
                    None => {
                        let p = files.join(parent);
                        make_dir(&p, 0o755)?;
                        seen.insert(parent.to_owned(), Seen::Dir);
                        dirs.push(p);
                    }
                }
            }
            match (seen.get(&path), e.kind) {
                (None, _) => {}
                (Some(Seen::Dir), tar::Kind::Dir) => continue,
                (Some(_), _) => {
                    return Err(DuError::Corrupt(format!("{path:?} appears twice")));
                }
            }
            let target = files.join(&path);
            if e.kind == tar::Kind::Dir {
                make_dir(&target, 0o755)?;
                seen.insert(path, Seen::Dir);
                dirs.push(target);
                continue;
            }
            let exec = e.mode & 0o100 != 0;
            let digest = write_file(&mut reader, &target, &path, exec, &mut buf)?;
            seen.insert(path, Seen::File { digest, exec });
        }
        reader.finish().map_err(tar_error)?;

        let manifest_bytes = manifest_bytes
            .ok_or_else(|| DuError::Corrupt(format!("no {MANIFEST} at the top of the archive")))?;
        self.check_signature(&manifest_bytes, signature.as_deref())?;
        let m = manifest::parse(&manifest_bytes).map_err(DuError::Corrupt)?;
        for (path, s) in &seen {
            if let Seen::File { digest, .. } = s {
                match m.sha256.get(path) {
                    None => {
                        return Err(DuError::Corrupt(format!(
                            "{path:?} is not listed in {MANIFEST}"
                        )));
                    }
                    Some(want) if want != digest => {
                        return Err(DuError::Corrupt(format!("{path:?}: SHA-256 mismatch")));
                    }
                    Some(_) => {}
                }
            }
        }
        for path in m.sha256.keys() {
            if !matches!(seen.get(path), Some(Seen::File { .. })) {
                return Err(DuError::Corrupt(format!(
                    "{path:?} is listed in {MANIFEST} but not in the archive"
                )));
            }
        }
        for u in &m.units {
            if !matches!(seen.get(&u.exec[0]), Some(Seen::File { exec: true, .. })) {
                return Err(DuError::Corrupt(format!(
                    "unit {:?}: {:?} is not executable",
                    u.name, u.exec[0]
                )));
            }
        }
        for d in dirs.iter().rev() {
            fsync_dir(d)?;
        }
        Ok(m)
    }

    fn check_signature(&self, manifest: &[u8], signature: Option<&[u8]>) -> Result<(), DuError> {
        match signature {
            None if self.keys.is_empty() => Ok(()),
            None => Err(DuError::Corrupt(format!(
                "archive is not signed ({SIGNATURE} missing) and a signature is required"
            ))),
            Some(_) if self.keys.is_empty() => {
                debug!("swmod: {SIGNATURE} present but no trusted keys: not checked");
                Ok(())
            }
            Some(sig) => {
                let good = self.keys.iter().any(|k| {
                    UnparsedPublicKey::new(&ED25519, k)
                        .verify(manifest, sig)
                        .is_ok()
                });
                if good {
                    Ok(())
                } else {
                    Err(DuError::Corrupt(format!(
                        "{SIGNATURE} does not verify with any trusted key"
                    )))
                }
            }
        }
    }
}

/// The DuInfo of a manifest.
fn du_info(m: &Manifest, uuid: &str, url: &str) -> DuInfo {
    DuInfo {
        uuid: uuid.to_owned(),
        name: m.name.clone(),
        version: m.version.clone(),
        vendor: m.vendor.clone(),
        description: m.description.clone(),
        url: url.to_owned(),
        units: m.units.clone(),
    }
}

fn parse_uuid(uuid: &str) -> Result<String, DuError> {
    manifest::normalize_uuid(uuid)
        .ok_or_else(|| DuError::InvalidUuid(format!("{uuid:?} is not a UUID")))
}

/// An archive name as a path under `files/`: UTF-8, one leading `./` and a trailing `/`
/// dropped, then [`manifest::check_rel_path`]. None for the top directory (`./`, `.`).
fn clean_name(raw: &[u8]) -> Result<Option<String>, DuError> {
    let s = std::str::from_utf8(raw).map_err(|_| {
        DuError::Corrupt(format!(
            "entry name {:?} is not UTF-8",
            String::from_utf8_lossy(raw)
        ))
    })?;
    let s = s.strip_prefix("./").unwrap_or(s);
    if s.is_empty() || s == "." {
        return Ok(None);
    }
    let s = s.strip_suffix('/').unwrap_or(s);
    manifest::check_rel_path(s).map_err(|e| DuError::Corrupt(format!("archive entry: {e}")))?;
    Ok(Some(s.to_owned()))
}

/// `v-<n>` (no leading zero) → n.
fn version_number(name: &str) -> Option<u64> {
    let n: u64 = name.strip_prefix("v-")?.parse().ok()?;
    (format!("v-{n}") == name).then_some(n)
}

/// The version directory `du/<uuid>/current` names, if it is a valid one.
fn current_version(du: &Path) -> Option<String> {
    let target = fs::read_link(du.join(CURRENT)).ok()?;
    let target = target.to_str()?;
    version_number(target)?;
    Some(target.to_owned())
}

/// One more than the highest `v-<n>` in `du`.
fn next_version_number(du: &Path) -> u64 {
    fs::read_dir(du)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| version_number(e.file_name().to_str()?))
        .max()
        .unwrap_or(0)
        + 1
}

/// Points `du/current` at `version` atomically: a new link, renamed over the old one.
fn switch_current(du: &Path, version: &str) -> Result<(), DuError> {
    let tmp = du.join(CURRENT_TMP);
    let _ = fs::remove_file(&tmp);
    symlink(version, &tmp).map_err(io_fail("linking the new version"))?;
    fs::rename(&tmp, du.join(CURRENT)).map_err(io_fail("switching to the new version"))
}

fn write_info(dir: &Path, d: &DuInfo) -> Result<(), DuError> {
    let json = serde_json::to_vec_pretty(&StoredInfo::from(d))
        .map_err(|e| DuError::Internal(format!("encoding {INFO}: {e}")))?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(dir.join(INFO))
        .map_err(io_fail(format!("writing {INFO}")))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(io_fail(format!("writing {INFO}")))
}

/// Creates a directory with exactly this mode, whatever the umask.
fn make_dir(p: &Path, mode: u32) -> Result<(), DuError> {
    let fail = || io_fail(format!("creating {}", p.display()));
    DirBuilder::new().mode(mode).create(p).map_err(fail())?;
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(fail())
}

/// Writes the current entry's data to `target` (0755 or 0644), hashing it; fsynced.
fn write_file<R: Read>(
    reader: &mut tar::Reader<R>,
    target: &Path,
    path: &str,
    exec: bool,
    buf: &mut [u8],
) -> Result<[u8; 32], DuError> {
    let mode = if exec { 0o755 } else { 0o644 };
    let fail = || io_fail(format!("writing {path:?}"));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)
        .map_err(fail())?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    loop {
        let n = reader.read_data(buf).map_err(tar_error)?;
        if n == 0 {
            break;
        }
        ctx.update(&buf[..n]);
        f.write_all(&buf[..n]).map_err(fail())?;
    }
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(fail())?;
    f.sync_all().map_err(fail())?;
    let mut digest = [0u8; 32];
    digest.copy_from_slice(ctx.finish().as_ref());
    Ok(digest)
}

fn fsync_dir(p: &Path) -> Result<(), DuError> {
    File::open(p)
        .and_then(|f| f.sync_all())
        .map_err(io_fail(format!("syncing {}", p.display())))
}

/// Removes a file or a directory tree, logging (not returning) a failure.
fn remove_quietly(p: &Path) {
    let r = match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        warn!("swmod: removing {}: {e}", p.display());
    }
}

/// 16 random hexadecimal digits.
fn random_name() -> String {
    let mut b = [0u8; 8];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).is_err() {
        // No randomness: unique enough within this process and across restarts.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b = (t ^ u64::from(std::process::id())).to_be_bytes();
    }
    manifest::hex(&b)
}

/// An IO failure as a DuError: a full disk or quota is Resources, the rest Internal.
fn io_fail(what: impl Display) -> impl Fn(io::Error) -> DuError {
    move |e| {
        let msg = format!("{what}: {e}");
        match e.raw_os_error() {
            Some(nix::libc::ENOSPC | nix::libc::EDQUOT | nix::libc::EFBIG) => {
                DuError::Resources(msg)
            }
            _ => DuError::Internal(msg),
        }
    }
}

/// A read failure: bad or cut data (tar or gzip) is Corrupt, other IO errors Internal.
fn tar_error(e: tar::Error) -> DuError {
    match e {
        tar::Error::Corrupt(m) => DuError::Corrupt(m),
        tar::Error::Io(e) => match e.kind() {
            io::ErrorKind::UnexpectedEof
            | io::ErrorKind::InvalidData
            | io::ErrorKind::InvalidInput => DuError::Corrupt(format!("bad archive: {e}")),
            _ => DuError::Internal(format!("reading the archive: {e}")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swmod::tar::testwriter::{Long, Writer};
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    const MB: u64 = 1 << 20;

    /// A scratch directory: `root/` for the backend, `in/` for the archives.
    struct T {
        dir: PathBuf,
    }

    impl T {
        fn new(name: &str) -> T {
            let dir =
                std::env::temp_dir().join(format!("cwmpd-swmod-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(dir.join("in")).unwrap();
            T { dir }
        }

        fn root(&self) -> PathBuf {
            self.dir.join("root")
        }

        fn open(&self) -> DirBackend {
            self.open_with(8 * MB, 100, vec![])
        }

        fn open_with(&self, bytes: u64, entries: usize, keys: Vec<[u8; 32]>) -> DirBackend {
            DirBackend::open(&self.root(), bytes, entries, keys).unwrap()
        }

        fn archive(&self, name: &str, bytes: &[u8]) -> PathBuf {
            let p = self.dir.join("in").join(name);
            fs::write(&p, bytes).unwrap();
            p
        }

        /// Every path under the root with its type, mode, content hash or link target.
        fn snapshot(&self) -> BTreeMap<String, String> {
            let mut out = BTreeMap::new();
            walk(&self.root(), &self.root(), &mut out);
            out
        }

        fn du(&self, uuid: &str) -> PathBuf {
            self.root().join(DU).join(uuid)
        }
    }

    impl Drop for T {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                let _ = fs::remove_dir_all(&self.dir);
            }
        }
    }

    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut paths: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for p in paths {
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let mode = m.permissions().mode() & 0o7777;
            if m.file_type().is_symlink() {
                out.insert(rel, format!("-> {}", fs::read_link(&p).unwrap().display()));
            } else if m.is_dir() {
                out.insert(rel, format!("dir {mode:o}"));
                walk(base, &p, out);
            } else {
                out.insert(
                    rel,
                    format!("file {mode:o} {}", sha(&fs::read(&p).unwrap())),
                );
            }
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn sha(data: &[u8]) -> String {
        manifest::hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// A test DU: the manifest's head (all but [sha256]) and its files.
    #[derive(Clone)]
    struct App {
        head: String,
        files: Vec<(String, u32, Vec<u8>)>,
    }

    fn head(name: &str, version: &str, extra: &str) -> String {
        format!(
            "name = \"{name}\"\nversion = \"{version}\"\nvendor = \"Example Co\"\n\
             description = \"Weather widget\"\n{extra}\n\
             [[unit]]\nname = \"weather\"\nexec = [\"bin/weather\", \"--port\", \"8080\"]\n\
             autostart = true\n"
        )
    }

    fn app(version: &str) -> App {
        App {
            head: head("weather", version, ""),
            files: vec![
                (
                    "bin/weather".into(),
                    0o755,
                    format!("#!/bin/sh\necho {version}\n").into_bytes(),
                ),
                ("share/data.txt".into(), 0o644, b"sunny\n".to_vec()),
            ],
        }
    }

    impl App {
        /// The manifest with the checksums of the files as they are now.
        fn manifest(&self) -> String {
            let mut m = format!("{}\n[sha256]\n", self.head);
            for (p, _, d) in &self.files {
                m.push_str(&format!("{p:?} = \"{}\"\n", sha(d)));
            }
            m
        }

        fn tar(&self) -> Vec<u8> {
            self.tar_with(&self.manifest(), None)
        }

        fn tgz(&self) -> Vec<u8> {
            gz(&self.tar())
        }

        /// The archive with this manifest and signature, then the files.
        fn tar_with(&self, manifest: &str, sig: Option<&[u8]>) -> Vec<u8> {
            let mut w = Writer::new();
            w.file("manifest.toml", 0o644, manifest.as_bytes());
            if let Some(s) = sig {
                w.file("manifest.sig", 0o644, s);
            }
            for (p, mode, d) in &self.files {
                w.file(p, *mode, d);
            }
            w.finish()
        }

        fn signed(&self, key: &Ed25519KeyPair) -> Vec<u8> {
            let m = self.manifest();
            let sig = key.sign(m.as_bytes());
            self.tar_with(&m, Some(sig.as_ref()))
        }
    }

    fn keypair() -> (Ed25519KeyPair, [u8; 32]) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let pk: [u8; 32] = kp.public_key().as_ref().try_into().unwrap();
        (kp, pk)
    }

    fn weather_uuid() -> String {
        manifest::derived_uuid("Example Co", "weather")
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn error_codes() {
        let cases = [
            (DuError::Corrupt("a".into()), 9018),
            (DuError::Duplicate("a".into()), 9026),
            (DuError::VersionExists("a".into()), 9032),
            (DuError::Unknown("a".into()), 9028),
            (DuError::InvalidUuid("a".into()), 9022),
            (DuError::Resources("a".into()), 9027),
            (DuError::Internal("a".into()), 9001),
        ];
        for (e, code) in cases {
            assert_eq!(e.code(), code);
            assert_eq!(e.text(), "a");
        }
    }

    #[test]
    fn install_update_uninstall() {
        let t = T::new("lifecycle");
        let b = t.open();
        assert_eq!(mode(&t.root()), 0o700);
        assert!(b.list().is_empty());
        assert_eq!(names(&t.root()), ["du", "tmp", "trash"]);

        // Install: the UUID derived from vendor and name; setuid dropped.
        let mut a1 = app("1.0");
        a1.files[0].1 = 0o4775;
        let d1 = b
            .install(&t.archive("v1.tgz", &a1.tgz()), "", "http://acs/v1.tgz")
            .unwrap();
        let uuid = weather_uuid();
        let want = DuInfo {
            uuid: uuid.clone(),
            name: "weather".into(),
            version: "1.0".into(),
            vendor: "Example Co".into(),
            description: "Weather widget".into(),
            url: "http://acs/v1.tgz".into(),
            units: vec![EuInfo {
                name: "weather".into(),
                exec: vec!["bin/weather".into(), "--port".into(), "8080".into()],
                autostart: true,
            }],
        };
        assert_eq!(d1, want);
        assert_eq!(b.list(), vec![want.clone()]);
        assert_eq!(b.get(&uuid.to_uppercase()), Some(want.clone()));
        let du = t.du(&uuid);
        assert_eq!(names(&du), ["current", "data", "v-1"]);
        let unit = b.unit_dir(&uuid);
        assert_eq!(unit, du.join("v-1").join("files"));
        assert_eq!(names(&unit), ["bin", "share"]);
        assert_eq!(
            fs::read(unit.join("bin/weather")).unwrap(),
            b"#!/bin/sh\necho 1.0\n"
        );
        assert_eq!(mode(&unit.join("bin/weather")), 0o755);
        assert_eq!(mode(&unit.join("share/data.txt")), 0o644);
        assert_eq!(mode(&unit.join("bin")), 0o755);
        let data = b.data_dir(&uuid);
        assert_eq!(data, du.join("data"));
        assert_eq!(mode(&data), 0o700);
        assert!(names(&data).is_empty());
        fs::write(data.join("state"), b"kept").unwrap();

        // A new open (a restart) sees the same.
        drop(b);
        let b = t.open();
        assert_eq!(b.list(), vec![want.clone()]);

        // Update: new version directory, old one gone, data kept, URL kept when "" is given.
        let d2 = b
            .update(&uuid, &t.archive("v2.tar", &app("2.0").tar()), "")
            .unwrap();
        assert_eq!(d2.version, "2.0");
        assert_eq!(d2.url, "http://acs/v1.tgz");
        assert_eq!(b.list(), vec![d2.clone()]);
        assert_eq!(names(&du), ["current", "data", "v-2"]);
        let unit = b.unit_dir(&uuid);
        assert_eq!(unit, du.join("v-2").join("files"));
        assert_eq!(
            fs::read(unit.join("bin/weather")).unwrap(),
            b"#!/bin/sh\necho 2.0\n"
        );
        assert_eq!(fs::read(data.join("state")).unwrap(), b"kept");

        // Another update, with a URL and fewer files.
        let mut a3 = app("3.0-beta");
        a3.files.pop();
        let d3 = b
            .update(&uuid, &t.archive("v3.tgz", &a3.tgz()), "http://acs/v3")
            .unwrap();
        assert_eq!(
            (d3.version.as_str(), d3.url.as_str()),
            ("3.0-beta", "http://acs/v3")
        );
        assert_eq!(names(&b.unit_dir(&uuid)), ["bin"]);
        assert_eq!(names(&du), ["current", "data", "v-3"]);

        // Uninstall: everything of the DU is gone, nothing left in tmp/ or trash/.
        assert_eq!(b.uninstall(&uuid, "3.0-beta").unwrap(), d3);
        assert!(b.list().is_empty());
        assert!(b.get(&uuid).is_none());
        assert!(!du.exists());
        assert!(!b.unit_dir(&uuid).exists());
        assert!(!b.data_dir(&uuid).exists());
        assert_eq!(
            t.snapshot().into_keys().collect::<Vec<_>>(),
            ["du", "tmp", "trash"]
        );

        // A UUID given by the ACS (upper case: normalised), and the manifest's own.
        let given = "ABCDEF01-2345-6789-ABCD-EF0123456789";
        let d = b
            .install(&t.archive("v1b", &app("1.0").tar()), given, "")
            .unwrap();
        assert_eq!(d.uuid, given.to_lowercase());
        let mut other = app("1");
        other.head = head(
            "other",
            "1",
            "uuid = \"11111111-2222-3333-4444-555555555555\"",
        );
        let d = b.install(&t.archive("o", &other.tar()), "", "u").unwrap();
        assert_eq!(d.uuid, "11111111-2222-3333-4444-555555555555");
        let d = b
            .update(
                &d.uuid,
                &t.archive("o2", &{
                    let mut o = other.clone();
                    o.head = head(
                        "other",
                        "2",
                        "uuid = \"11111111-2222-3333-4444-555555555555\"",
                    );
                    o.tgz()
                }),
                "",
            )
            .unwrap();
        assert_eq!(d.version, "2");
        let listed: Vec<String> = b.list().into_iter().map(|d| d.uuid).collect();
        assert_eq!(
            listed,
            [
                "11111111-2222-3333-4444-555555555555",
                "abcdef01-2345-6789-abcd-ef0123456789"
            ]
        );
        // Version "" uninstalls whatever is there.
        b.uninstall("11111111-2222-3333-4444-555555555555", "")
            .unwrap();
        b.uninstall(given, "1.0").unwrap();
        assert!(b.list().is_empty());
    }

    #[test]
    fn tar_variants_are_unpacked() {
        let t = T::new("variants");
        let b = t.open();
        let long = format!("share/{}/{}", "d".repeat(100), "f".repeat(100));
        let mut a = app("1");
        a.files.push((long.clone(), 0o600, b"long".to_vec()));
        for (i, style) in [Long::Gnu, Long::Pax].into_iter().enumerate() {
            // `tar -C dir .` style: "./" first, "./" prefixes, directory entries.
            let mut w = Writer::new();
            w.long = style;
            w.dir("./");
            w.dir("./share/");
            w.file("./manifest.toml", 0o644, a.manifest().as_bytes());
            w.dir("./bin/");
            w.dir("./bin"); // a repeated directory is fine
            for (p, mode, d) in &a.files {
                w.file(&format!("./{p}"), *mode, d);
            }
            let data = w.finish();
            let data = if i == 0 { data } else { gz(&data) };
            let d = b.install(&t.archive("v", &data), "", "").unwrap();
            let unit = b.unit_dir(&d.uuid);
            assert_eq!(fs::read(unit.join(&long)).unwrap(), b"long");
            assert_eq!(mode(&unit.join(&long)), 0o644);
            assert_eq!(mode(&unit.join("share").join("d".repeat(100))), 0o755);
            b.uninstall(&d.uuid, "").unwrap();
        }
        // No zero blocks at the end: accepted.
        let mut data = a.tar();
        data.truncate(data.len() - 1024);
        let d = b.install(&t.archive("v", &data), "", "").unwrap();
        b.uninstall(&d.uuid, "").unwrap();
    }

    /// Archives made by GNU tar, in each of its formats (skipped where `tar` is missing).
    #[test]
    fn gnu_tar_archives() {
        if std::process::Command::new("tar")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!("tar not found: skipped");
            return;
        }
        let t = T::new("gnutar");
        let b = t.open();
        let build = t.dir.join("build");
        let long = format!("share/{}/{}", "d".repeat(90), "f".repeat(90));
        let mut a = app("1");
        a.files.push((long.clone(), 0o644, b"long".to_vec()));
        fs::create_dir_all(build.join(&long).parent().unwrap()).unwrap();
        fs::create_dir_all(build.join("bin")).unwrap();
        fs::write(build.join("manifest.toml"), a.manifest()).unwrap();
        for (p, mode, d) in &a.files {
            fs::write(build.join(p), d).unwrap();
            fs::set_permissions(build.join(p), fs::Permissions::from_mode(*mode)).unwrap();
        }
        for (format, z) in [
            ("gnu", "-czf"),
            ("posix", "-czf"),
            ("ustar", "-cf"),
            ("gnu", "-cf"),
        ] {
            let out = t.dir.join("in").join(format!("{format}.tar"));
            let st = std::process::Command::new("tar")
                .args([&format!("--format={format}"), z])
                .arg(&out)
                .arg("-C")
                .arg(&build)
                .arg(".")
                .status()
                .unwrap();
            assert!(st.success());
            let d = b.install(&out, "", "").unwrap();
            let unit = b.unit_dir(&d.uuid);
            assert_eq!(fs::read(unit.join(&long)).unwrap(), b"long", "{format}");
            assert_eq!(mode(&unit.join("bin/weather")), 0o755, "{format}");
            b.uninstall(&d.uuid, "").unwrap();
        }
    }

    /// An operation that must fail with `code` (and a text containing `needle`) and leave
    /// the tree exactly as it was.
    fn fails(
        t: &T,
        what: &str,
        code: u32,
        needle: &str,
        op: impl FnOnce() -> Result<DuInfo, DuError>,
    ) {
        let before = t.snapshot();
        match op() {
            Ok(d) => panic!("{what}: succeeded: {d:?}"),
            Err(e) => {
                println!("{what}: {e:?}");
                assert_eq!(e.code(), code, "{what}: {e:?}");
                assert!(e.text().contains(needle), "{what}: {e:?} lacks {needle:?}");
            }
        }
        assert_eq!(t.snapshot(), before, "{what}: the tree changed");
    }

    /// Archives that are refused, each tried as an install and as an update.
    #[test]
    fn bad_archives_change_nothing() {
        let t = T::new("bad");
        let b = t.open();
        let uuid = weather_uuid();
        b.install(&t.archive("v1", &app("1.0").tgz()), "", "")
            .unwrap();
        fs::write(b.data_dir(&uuid).join("state"), b"kept").unwrap();

        let v2 = app("2.0");
        let mut cases: Vec<(&str, Vec<u8>, u32, &str)> = Vec::new();
        {
            let mut a = v2.clone();
            let m = a.manifest();
            a.files[1].2 = b"rainy\n".to_vec();
            cases.push((
                "wrong checksum",
                a.tar_with(&m, None),
                9018,
                "SHA-256 mismatch",
            ));
        }
        {
            let mut a = v2.clone();
            let m = a.manifest();
            a.files.push(("extra".into(), 0o644, b"x".to_vec()));
            cases.push((
                "unlisted file",
                a.tar_with(&m, None),
                9018,
                "\"extra\" is not listed",
            ));
        }
        {
            let mut a = v2.clone();
            let m = a.manifest();
            a.files.pop();
            cases.push((
                "missing file",
                a.tar_with(&m, None),
                9018,
                "not in the archive",
            ));
        }
        {
            // A listed path that is a directory in the archive.
            let mut a = v2.clone();
            let m = a.manifest();
            a.files.pop();
            let mut data = a.tar_with(&m, None);
            data.truncate(data.len() - 1024);
            let mut w = Writer::new();
            w.out = data;
            w.dir("share/data.txt");
            cases.push(("listed dir", w.finish(), 9018, "not in the archive"));
        }
        let tgz = v2.tgz();
        cases.push(("truncated gzip", tgz[..tgz.len() / 2].to_vec(), 9018, ""));
        cases.push((
            "gzip without trailer",
            tgz[..tgz.len() - 6].to_vec(),
            9018,
            "",
        ));
        let mut bad_crc = tgz.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 1;
        cases.push(("gzip bad CRC", bad_crc, 9018, ""));
        let mut bad_deflate = tgz.clone();
        for b in &mut bad_deflate[12..40] {
            *b = 0xff;
        }
        cases.push(("gzip bad data", bad_deflate, 9018, ""));
        let tar = v2.tar();
        // manifest.toml (header, one block of data), then bin/weather's header and data.
        cases.push((
            "truncated tar",
            tar[..1024 + 512 + 10].to_vec(),
            9018,
            "inside an entry",
        ));
        cases.push((
            "truncated header",
            tar[..1024 + 100].to_vec(),
            9018,
            "inside a header",
        ));
        let mut junk = tar.clone();
        junk.extend_from_slice(b"junk");
        cases.push(("data after the end", junk, 9018, "after the end"));
        cases.push(("not an archive", vec![b'x'; 3000], 9018, "checksum"));
        cases.push(("empty file", Vec::new(), 9018, "no manifest.toml"));

        let with = |f: &dyn Fn(&mut Writer)| {
            let mut w = Writer::new();
            w.file("manifest.toml", 0o644, v2.manifest().as_bytes());
            f(&mut w);
            for (p, mode, d) in &v2.files {
                w.file(p, *mode, d);
            }
            w.finish()
        };
        cases.push((
            "traversal",
            with(&|w| w.file("../x", 0o644, b"x")),
            9018,
            "\"..\"",
        ));
        cases.push((
            "inner traversal",
            with(&|w| w.file("bin/../../x", 0o644, b"x")),
            9018,
            "\"..\"",
        ));
        cases.push((
            "absolute",
            with(&|w| w.file("/etc/x", 0o644, b"x")),
            9018,
            "absolute",
        ));
        cases.push((
            "empty component",
            with(&|w| w.file("a//x", 0o644, b"x")),
            9018,
            "empty",
        ));
        cases.push((
            "long path",
            with(&|w| w.file(&"x".repeat(256), 0o644, b"x")),
            9018,
            "256 bytes",
        ));
        cases.push((
            "symlink",
            with(&|w| w.entry("bin/sh", b'2', 0o777, b"", "/bin/sh")),
            9018,
            "symbolic link",
        ));
        cases.push((
            "hard link",
            with(&|w| w.entry("bin/x", b'1', 0o644, b"", "bin/weather")),
            9018,
            "hard link",
        ));
        cases.push((
            "fifo",
            with(&|w| w.entry("p", b'6', 0o644, b"", "")),
            9018,
            "FIFO",
        ));
        cases.push((
            "device",
            with(&|w| w.entry("dev", b'3', 0o644, b"", "")),
            9018,
            "character device",
        ));
        cases.push((
            "duplicate file",
            with(&|w| w.file("bin/weather", 0o755, b"other")),
            9018,
            "appears twice",
        ));
        cases.push((
            "file as a parent",
            with(&|w| {
                w.file("a", 0o644, b"");
                w.file("a/b", 0o644, b"");
            }),
            9018,
            "is a file",
        ));
        cases.push((
            "manifest twice",
            with(&|w| w.file("manifest.toml", 0o644, b"")),
            9018,
            "appears twice",
        ));
        cases.push((
            "manifest a directory",
            {
                let mut w = Writer::new();
                w.dir("manifest.toml");
                w.finish()
            },
            9018,
            "not a regular file",
        ));
        {
            let mut a = v2.clone();
            a.head = a.head.replace("name = \"weather\"\nversion", "version");
            cases.push((
                "manifest without name",
                a.tar(),
                9018,
                "missing field `name`",
            ));
            let mut a = v2.clone();
            a.head = head("weather", &"1".repeat(33), "");
            cases.push((
                "version too long",
                a.tar(),
                9018,
                "version must have 1 to 32",
            ));
            let mut a = v2.clone();
            a.files[0].1 = 0o644;
            cases.push(("program not executable", a.tar(), 9018, "not executable"));
            let mut a = v2.clone();
            a.head = head("weather", "2", "vendor = \"twice\"");
            cases.push(("bad TOML", a.tar(), 9018, "manifest.toml"));
        }
        cases.push((
            "no manifest",
            {
                let mut w = Writer::new();
                w.file("bin/weather", 0o755, b"x");
                w.finish()
            },
            9018,
            "no manifest.toml",
        ));
        cases.push((
            "signature of the wrong size",
            v2.tar_with(&v2.manifest(), Some(b"0123")),
            9018,
            "64 bytes",
        ));

        for (what, data, code, needle) in &cases {
            let p = t.archive("bad", data);
            fails(&t, &format!("install: {what}"), *code, needle, || {
                b.install(&p, "", "")
            });
            fails(&t, &format!("update: {what}"), *code, needle, || {
                b.update(&uuid, &p, "")
            });
        }
        fails(
            &t,
            "missing archive file",
            9001,
            "opening the archive",
            || b.install(&t.dir.join("in/none"), "", ""),
        );

        // Limits: entries (files and directories) and bytes.
        let mut many = v2.clone();
        for i in 0..10 {
            many.files.push((format!("f/{i}"), 0o644, vec![]));
        }
        let p = t.archive("many", &many.tgz());
        let small = t.open_with(8 * MB, 12, vec![]);
        fails(&t, "too many entries", 9027, "more than 12 entries", || {
            small.install(&p, "", "")
        });
        fails(&t, "too many entries", 9027, "more than 12 entries", || {
            small.update(&uuid, &p, "")
        });
        let mut big = v2.clone();
        big.files.push(("big".into(), 0o644, vec![0u8; 200_000]));
        let p = t.archive("big", &big.tgz());
        let small = t.open_with(100_000, 100, vec![]);
        fails(&t, "too many bytes", 9027, "more than 100000 bytes", || {
            small.install(&p, "", "")
        });
        fails(&t, "too many bytes", 9027, "more than 100000 bytes", || {
            small.update(&uuid, &p, "")
        });

        // The installed DU is untouched and still works.
        assert_eq!(b.list().len(), 1);
        assert_eq!(b.get(&uuid).unwrap().version, "1.0");
        b.update(&uuid, &t.archive("v2", &v2.tar()), "").unwrap();
        assert_eq!(fs::read(b.data_dir(&uuid).join("state")).unwrap(), b"kept");
    }

    #[test]
    fn refused_operations_change_nothing() {
        let t = T::new("refused");
        let b = t.open();
        let uuid = weather_uuid();
        let v1 = t.archive("v1", &app("1.0").tgz());
        b.install(&v1, "", "").unwrap();
        let unknown = "abcdef01-2345-6789-abcd-ef0123456789";
        let v2 = t.archive("v2", &app("2.0").tar());

        fails(&t, "duplicate", 9026, "already installed", || {
            b.install(&v1, "", "")
        });
        fails(&t, "duplicate by UUID", 9026, "already installed", || {
            b.install(&v2, &uuid.to_uppercase(), "")
        });
        fails(&t, "same version", 9032, "already installed", || {
            b.update(&uuid, &v1, "")
        });
        fails(&t, "update unknown", 9028, unknown, || {
            b.update(unknown, &v2, "")
        });
        fails(&t, "uninstall unknown", 9028, unknown, || {
            b.uninstall(unknown, "")
        });
        fails(&t, "uninstall wrong version", 9028, "not \"2.0\"", || {
            b.uninstall(&uuid, "2.0")
        });
        fails(&t, "install bad UUID", 9022, "not a UUID", || {
            b.install(&v2, "not-a-uuid", "")
        });
        fails(&t, "update bad UUID", 9022, "not a UUID", || {
            b.update("", &v2, "")
        });
        fails(&t, "uninstall bad UUID", 9022, "not a UUID", || {
            b.uninstall("../../etc", "")
        });

        // The manifest names a UUID: the ACS's must be the same.
        let mut a = app("1.0");
        a.head = head(
            "weather2",
            "1.0",
            &format!("uuid = \"{}\"", unknown.to_uppercase()),
        );
        let p = t.archive("m", &a.tar());
        fails(
            &t,
            "UUID mismatch",
            9018,
            &format!("archive is for UUID {unknown}"),
            || b.install(&p, "11111111-2222-3333-4444-555555555555", ""),
        );
        // An update whose manifest names another UUID, or another name.
        let mut a = app("2.0");
        a.head = head("weather", "2.0", &format!("uuid = \"{unknown}\""));
        let p = t.archive("m2", &a.tar());
        fails(
            &t,
            "update UUID mismatch",
            9018,
            "archive is for UUID",
            || b.update(&uuid, &p, ""),
        );
        let mut a = app("2.0");
        a.head = head("rain", "2.0", "");
        let p = t.archive("m3", &a.tar());
        fails(
            &t,
            "update other name",
            9018,
            "\"rain\", not \"weather\"",
            || b.update(&uuid, &p, ""),
        );

        // Installing with the ACS's UUID when the manifest has the same one (either case).
        let mut a = app("1.0");
        a.head = head("weather2", "1.0", &format!("uuid = \"{unknown}\""));
        let p = t.archive("ok", &a.tar());
        assert_eq!(
            b.install(&p, &unknown.to_uppercase(), "").unwrap().uuid,
            unknown
        );
    }

    #[test]
    fn signatures() {
        let t = T::new("sig");
        let (key, pk) = keypair();
        let (other, other_pk) = keypair();
        let b = t.open_with(8 * MB, 100, vec![other_pk, pk]);
        let uuid = weather_uuid();

        let a1 = app("1.0");
        fails(&t, "unsigned", 9018, "manifest.sig missing", || {
            b.install(&t.archive("u", &a1.tgz()), "", "")
        });
        // Signed by a key that is not trusted.
        let (stranger, _) = keypair();
        fails(&t, "untrusted key", 9018, "does not verify", || {
            b.install(&t.archive("s", &a1.signed(&stranger)), "", "")
        });
        // A signature over other bytes (the manifest was changed after signing).
        let sig = key.sign(a1.manifest().as_bytes());
        let changed = a1.manifest().replace("Weather widget", "Weather widgets");
        fails(&t, "changed manifest", 9018, "does not verify", || {
            b.install(
                &t.archive("c", &a1.tar_with(&changed, Some(sig.as_ref()))),
                "",
                "",
            )
        });
        // Good: either trusted key.
        b.install(&t.archive("g", &gz(&a1.signed(&key))), "", "")
            .unwrap();
        fails(&t, "unsigned update", 9018, "manifest.sig missing", || {
            b.update(&uuid, &t.archive("u2", &app("2.0").tar()), "")
        });
        let d = b
            .update(&uuid, &t.archive("g2", &app("2.0").signed(&other)), "")
            .unwrap();
        assert_eq!(d.version, "2.0");

        // No trusted keys: not required, and one that is there is not checked.
        let t = T::new("sig-none");
        let b = t.open();
        b.install(&t.archive("g", &a1.signed(&stranger)), "", "")
            .unwrap();
        b.update(&uuid, &t.archive("u", &app("2.0").tar()), "")
            .unwrap();
    }

    #[test]
    fn open_cleans_up_interrupted_operations() {
        let t = T::new("recover");
        let b = t.open();
        let uuid = weather_uuid();
        b.install(&t.archive("v1", &app("1.0").tgz()), "", "")
            .unwrap();
        fs::write(b.data_dir(&uuid).join("state"), b"kept").unwrap();
        let clean = t.snapshot();
        let du = t.du(&uuid);

        // An update cut off at every step: unpacking in tmp/, the new version moved into
        // place without its info.json, the temporary link made but not renamed.
        let r = t.root();
        fs::create_dir_all(r.join("tmp/0123/files/bin")).unwrap();
        fs::write(r.join("tmp/0123/files/bin/weather"), b"half").unwrap();
        fs::create_dir_all(du.join("v-2/files/bin")).unwrap();
        fs::write(du.join("v-2/files/bin/weather"), b"half").unwrap();
        symlink("v-2", du.join(CURRENT_TMP)).unwrap();
        // An install cut off before its rename, an uninstall before its deletion.
        fs::create_dir_all(r.join("tmp/4567/v-1/files")).unwrap();
        symlink("v-1", r.join("tmp/4567/current")).unwrap();
        fs::create_dir_all(r.join("trash/89ab/v-1/files")).unwrap();
        fs::write(r.join("trash/89ab/v-1/info.json"), b"{}").unwrap();
        fs::write(r.join("tmp/stray-file"), b"").unwrap();
        drop(b);
        let b = t.open();
        assert_eq!(t.snapshot(), clean);
        assert_eq!(b.get(&uuid).unwrap().version, "1.0");
        assert_eq!(b.unit_dir(&uuid), du.join("v-1/files"));

        // Cut off after the switch, before the old version was deleted: the new one stays.
        b.update(&uuid, &t.archive("v2", &app("2.0").tar()), "")
            .unwrap();
        let clean = t.snapshot();
        fs::create_dir_all(du.join("v-1/files")).unwrap();
        fs::write(du.join("v-1/info.json"), b"{}").unwrap();
        drop(b);
        let b = t.open();
        assert_eq!(t.snapshot(), clean);
        assert_eq!(b.get(&uuid).unwrap().version, "2.0");
        // The next update does not reuse a number still on disk.
        fs::create_dir_all(du.join("v-7")).unwrap();
        b.update(&uuid, &t.archive("v3", &app("3.0").tar()), "")
            .unwrap();
        assert_eq!(b.unit_dir(&uuid), du.join("v-8/files"));
        assert_eq!(fs::read(b.data_dir(&uuid).join("state")).unwrap(), b"kept");

        // A damaged DU (no current version) is removed; foreign entries are left alone.
        let damaged = t.du("11111111-2222-3333-4444-555555555555");
        fs::create_dir_all(damaged.join("v-1/files")).unwrap();
        fs::create_dir_all(r.join("du/lost+found")).unwrap();
        drop(b);
        let b = t.open();
        assert!(!damaged.exists());
        assert!(r.join("du/lost+found").exists());
        assert_eq!(b.list().len(), 1);
    }

    #[test]
    fn paths_of_unknown_dus_do_not_exist() {
        let t = T::new("paths");
        let b = t.open();
        for u in ["../../etc", "abcdef01-2345-6789-abcd-ef0123456789", ""] {
            assert!(!b.unit_dir(u).exists());
            assert!(!b.data_dir(u).exists());
            assert!(b.unit_dir(u).starts_with(t.root().join(DU)));
            assert!(b.data_dir(u).starts_with(t.root().join(DU)));
            assert!(b.get(u).is_none());
        }
    }
}
