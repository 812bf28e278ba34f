//! Crash-safe file writes: temp file, fsync, rename, fsync the directory; mode 0600.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes `parts` (concatenated) to `path` so that after a crash the file holds either the old or the new
/// content, never a mix. When `keep_previous` is set the old content is first renamed to
/// `<path>.prev`, so a reader has a second good copy to fall back to.
pub fn write_atomic(path: &Path, parts: &[&[u8]], keep_previous: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?
        .to_string_lossy()
        .into_owned();
    let tmp = dir.join(format!(".{name}.tmp"));
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            for data in parts {
                f.write_all(data)?;
            }
            f.sync_all()
        });
    if let Err(e) = written {
        // A full disk: do not leave a partial copy taking the space that is left.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if keep_previous && path.exists() {
        fs::rename(path, dir.join(format!("{name}.prev")))?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// Creates a directory (and parents) with mode 0700 if it does not exist.
pub fn ensure_private_dir(path: &Path) -> io::Result<()> {
    if !path.exists() {
        fs::create_dir_all(path)?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
