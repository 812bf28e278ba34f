/// A deployment unit as installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuInfo {
    pub uuid: String,
    pub name: String,
    pub version: String,
    pub vendor: String,
    pub description: String,
    pub url: String,
    pub units: Vec<EuInfo>,
}

/// An execution unit of a deployment unit (a process started by the run contract).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EuInfo {
    pub name: String,
    pub exec: Vec<String>,
    pub autostart: bool,
}

/// Why an operation failed, with its TR-069 DUStateChangeComplete fault code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DuError {
    /// 9018 file corrupted or otherwise unusable (bad archive, checksum, signature, manifest)
    Corrupt(String),
    /// 9026 duplicate deployment unit (install of a UUID already installed)
    Duplicate(String),
    /// 9032 update to the version already installed
    VersionExists(String),
    /// 9028 unknown deployment unit (no such UUID / version)
    Unknown(String),
    /// 9022 invalid UUID format
    InvalidUuid(String),
    /// 9025 deployment unit to execution environment mismatch (e.g. a package built for
    /// another architecture)
    Mismatch(String),
    /// 9027 system resources exceeded (size/count limits, disk full)
    Resources(String),
    /// 9001 request denied: another IO failure. (9002 Internal error is not one of the codes
    /// `cwmp-1-2.xsd` allows in a DUStateChangeComplete result; 9001 is its generic one.)
    Internal(String),
}

impl DuError {
    pub fn code(&self) -> u32 {
        match self {
            DuError::Corrupt(_) => 9018,
            DuError::Duplicate(_) => 9026,
            DuError::VersionExists(_) => 9032,
            DuError::Unknown(_) => 9028,
            DuError::InvalidUuid(_) => 9022,
            DuError::Mismatch(_) => 9025,
            DuError::Resources(_) => 9027,
            DuError::Internal(_) => 9001,
        }
    }

    pub fn text(&self) -> &str {
        match self {
            DuError::Corrupt(s)
            | DuError::Duplicate(s)
            | DuError::VersionExists(s)
            | DuError::Unknown(s)
            | DuError::InvalidUuid(s)
            | DuError::Mismatch(s)
            | DuError::Resources(s)
            | DuError::Internal(s) => s,
        }
    }
}

pub mod dir;
pub mod dpkg;
pub mod manifest;
pub mod tar;
