//! CWMP fault codes as the store reports them (TR-069 Table "Fault codes").

use std::fmt;

/// A CWMP fault: a code from 9000..9899 and a short reason for the FaultString / log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub code: u32,
    pub reason: String,
}

impl Fault {
    pub fn new(code: u32, reason: impl Into<String>) -> Fault {
        Fault {
            code,
            reason: reason.into(),
        }
    }

    /// The standard FaultString for a code.
    pub fn standard_string(code: u32) -> &'static str {
        match code {
            9000 => "Method not supported",
            9001 => "Request denied",
            9002 => "Internal error",
            9003 => "Invalid arguments",
            9004 => "Resources exceeded",
            9005 => "Invalid parameter name",
            9006 => "Invalid parameter type",
            9007 => "Invalid parameter value",
            9008 => "Attempt to set a non-writable parameter",
            9009 => "Notification request rejected",
            9010 => "Download failure",
            9011 => "Upload failure",
            9012 => "File transfer server authentication failure",
            9013 => "Unsupported protocol for file transfer",
            9015 => "Download failure: unable to contact file server",
            9016 => "Download failure: unable to access file",
            9017 => "Download failure: unable to complete download",
            9018 => "Download failure: file corrupted",
            9019 => "Download failure: file authentication failure",
            9021 => "Cancelation of file transfer not permitted",
            _ => "Fault",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.code,
            Fault::standard_string(self.code),
            self.reason
        )
    }
}

impl std::error::Error for Fault {}
