//! The workspace's binaries for tests, the demo and the benchmark: a binary of another package
//! is not a `CARGO_BIN_EXE_*` of the package that needs it, so it is found next to one that is
//! (`target/<profile>/NAME`) and built there with cargo when it is missing or older than its
//! sources.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The workspace root (this crate is `crates/cwmp-testacs`).
pub fn workspace_root() -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    p.canonicalize().unwrap_or(p)
}

/// Where cargo put `exe`: (target directory, target triple when cross-built, profile name).
fn layout(exe: &Path) -> Option<(PathBuf, Option<String>, String)> {
    let profile_dir = exe.parent()?;
    let dir_name = profile_dir.file_name()?.to_str()?;
    // target/<profile>/ or target/<triple>/<profile>/. Cargo keeps `.rustc_info.json` in the
    // target directory itself (CACHEDIR.TAG only when cargo created the directory: a CI script
    // that made `target/` first leaves it out).
    let up = profile_dir.parent()?;
    let is_target_dir =
        |d: &Path| d.join(".rustc_info.json").exists() || d.join("CACHEDIR.TAG").exists();
    let (target_dir, triple) = if is_target_dir(up) || !up.parent().is_some_and(is_target_dir) {
        (up.to_path_buf(), None)
    } else {
        let t = up.file_name()?.to_str()?.to_string();
        (up.parent()?.to_path_buf(), Some(t))
    };
    let profile = if dir_name == "debug" { "dev" } else { dir_name };
    Some((target_dir, triple, profile.to_string()))
}

/// The command that builds `packages` the way `exe` was built (for messages).
pub fn build_command(exe: &Path, packages: &[&str]) -> String {
    let mut s = String::from("cargo build");
    if let Some((_, triple, profile)) = layout(exe) {
        match profile.as_str() {
            "dev" => {}
            "release" => s.push_str(" --release"),
            p => s.push_str(&format!(" --profile {p}")),
        }
        if let Some(t) = triple {
            s.push_str(&format!(" --target {t}"));
        }
    }
    for p in packages {
        s.push_str(&format!(" -p {p}"));
    }
    s
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The newest modification time of the files under `p`.
fn newest(p: &Path) -> Option<SystemTime> {
    let mut t = mtime(p)?;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            if let Some(x) = newest(&e.path()) {
                t = t.max(x);
            }
        }
    }
    Some(t)
}

/// Binary `name`, next to `exe` (a binary cargo built), built first with `cargo build -p
/// PACKAGE...` (the profile, target and target directory of `exe`) when it is missing or older
/// than one of `sources` (paths relative to the workspace root: its crate's `src`,
/// `Cargo.toml`). `packages` are built together, so that their features unify as in a workspace
/// build. Cargo is `$CARGO` when set (tests and `cargo run` have it), else `cargo` from `PATH`.
pub fn sibling(
    exe: &Path,
    name: &str,
    packages: &[&str],
    sources: &[&str],
) -> Result<PathBuf, String> {
    let bin = exe.with_file_name(name);
    let how = build_command(exe, packages);
    let stale = match mtime(&bin) {
        None => true,
        Some(built) => sources
            .iter()
            .filter_map(|s| newest(&workspace_root().join(s)))
            .any(|t| t > built),
    };
    if stale {
        let (target_dir, triple, profile) = layout(exe)
            .ok_or_else(|| format!("{}: not in a cargo target directory", exe.display()))?;
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut c = Command::new(cargo);
        c.args(["build", "--quiet", "--profile", &profile]);
        if let Some(t) = &triple {
            c.args(["--target", t]);
        }
        for p in packages {
            c.args(["-p", p]);
        }
        c.current_dir(workspace_root())
            .env("CARGO_TARGET_DIR", &target_dir);
        match c.status() {
            Ok(st) if st.success() => {}
            Ok(st) => return Err(format!("`{how}` failed ({st})")),
            Err(e) => return Err(format!("`{how}`: {e}")),
        }
    }
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it with `{how}`",
            bin.display()
        ))
    }
}

/// The agent (`cwmpd`) and `cwmp-connreq` next to `exe`, each built first (together, so their
/// features unify as in a workspace build) when missing or older than its sources.
pub fn agent_and_connreq(exe: &Path) -> Result<(PathBuf, PathBuf), String> {
    let packages = ["cwmpd", "cwmp-connreq"];
    let agent = sibling(
        exe,
        "cwmpd",
        &packages,
        &["src", "Cargo.toml", "crates/cwmp-proto/src"],
    )?;
    let connreq = sibling(
        exe,
        "cwmp-connreq",
        &packages,
        &["crates/cwmp-connreq/src", "crates/cwmp-connreq/Cargo.toml"],
    )?;
    Ok((agent, connreq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_tells_the_target_dir_triple_and_profile() {
        let t = std::env::temp_dir().join(format!("cwmp-testacs-layout-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(t.join("debug")).unwrap();
        std::fs::create_dir_all(t.join("armv7-unknown-linux-gnueabihf/release-z")).unwrap();
        // A target directory made before cargo ran: no CACHEDIR.TAG, only cargo's own file.
        std::fs::write(t.join(".rustc_info.json"), "{}").unwrap();
        assert_eq!(
            layout(&t.join("debug/cwmpd")),
            Some((t.clone(), None, "dev".into()))
        );
        assert_eq!(
            layout(&t.join("armv7-unknown-linux-gnueabihf/release-z/cwmpd")),
            Some((
                t.clone(),
                Some("armv7-unknown-linux-gnueabihf".into()),
                "release-z".into()
            ))
        );
        assert!(build_command(&t.join("release/x"), &["a"]).ends_with("--release -p a"));
        std::fs::remove_dir_all(&t).unwrap();
    }
}
