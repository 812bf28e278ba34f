//! `cwmpd demo`: the agent on loopback with a built-in demo configuration.

use std::path::PathBuf;

/// Where the data-model files are: `CWMPD_DATAMODEL`, `./datamodel`, the source tree, or the
/// installed location.
pub fn datamodel_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CWMPD_DATAMODEL") {
        return PathBuf::from(d);
    }
    for c in [
        PathBuf::from("datamodel"),
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/datamodel")),
    ] {
        if c.join("00-device.xml").exists() {
            return c;
        }
    }
    PathBuf::from("/usr/share/cwmpd/datamodel")
}

pub fn run(_args: Vec<String>) -> Result<(), String> {
    Err("demo: not yet available".into())
}
