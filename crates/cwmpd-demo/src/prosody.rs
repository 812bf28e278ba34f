//! A throw-away Prosody XMPP server for the demo: its own CA and server certificate (openssl),
//! config and data in the demo's directory, two accounts (the box and the ACS), listening on a
//! free loopback port. Killed by its PID when dropped. The tests use the same setup
//! (tests/common/prosody.rs).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The XMPP domain; the certificate is issued for it.
pub const DOMAIN: &str = "cpe.test";
/// The box's account (the agent logs in with it) and the ACS's.
pub const CPE: (&str, &str) = ("cpe1", "cpe1-pw");
pub const ACS: (&str, &str) = ("acs", "acs-pw");

pub struct Prosody {
    pub port: u16,
    /// The CA that issued the server's certificate (the agent's `[xmpp] ca_file`).
    pub ca: PathBuf,
    dir: PathBuf,
    child: Child,
}

/// Why the demo cannot run Prosody here, or None.
pub fn unavailable() -> Option<String> {
    let have = |cmd: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {cmd}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("prosody") || !have("prosodyctl") {
        return Some("prosody not installed (apt install prosody lua-unbound)".into());
    }
    if !have("openssl") {
        return Some("openssl not installed (apt install openssl)".into());
    }
    None
}

fn run(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .map_err(|e| format!("{}: {e}", args[0]))?;
    if !out.status.success() {
        return Err(format!(
            "{}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

impl Prosody {
    /// Sets up and starts Prosody in `dir`; returns once it accepts connections.
    pub fn start(dir: &Path) -> Result<Prosody, String> {
        let certs = dir.join("certs");
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&certs).map_err(|e| e.to_string())?;
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        let ca = format!(
            "openssl req -x509 {ec} -keyout ca.key -out ca.crt -days 2 -subj /CN=cwmpd-demo-ca \
             -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign"
        );
        run(&certs, &ca.split_whitespace().collect::<Vec<_>>())?;
        std::fs::write(
            certs.join("ext.cnf"),
            format!(
                "subjectAltName=DNS:{DOMAIN}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let csr =
            format!("openssl req {ec} -keyout {DOMAIN}.key -out server.csr -subj /CN={DOMAIN}");
        run(&certs, &csr.split_whitespace().collect::<Vec<_>>())?;
        let sign = format!(
            "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
             -out {DOMAIN}.crt -days 2 -extfile ext.cnf"
        );
        run(&certs, &sign.split_whitespace().collect::<Vec<_>>())?;

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        // run_as_root only matters when the demo runs as root (Prosody refuses otherwise).
        let cfg = dir.join("prosody.cfg.lua");
        std::fs::write(
            &cfg,
            cwmp_testacs::prosody::ProsodyConfig {
                dir,
                tag: "",
                ip: "127.0.0.1",
                port,
                domain: DOMAIN,
                log_level: "warn",
            }
            .text(),
        )
        .map_err(|e| e.to_string())?;
        let cfg_s = cfg.to_string_lossy();
        for (user, pw) in [CPE, ACS] {
            run(
                dir,
                &[
                    "prosodyctl",
                    "--config",
                    &cfg_s,
                    "register",
                    user,
                    DOMAIN,
                    pw,
                ],
            )?;
        }
        let log = std::fs::File::create(dir.join("stdout.log")).map_err(|e| e.to_string())?;
        let child = Command::new("prosody")
            .args(["--config", &cfg_s, "-F"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("prosody: {e}"))?;
        let mut p = Prosody {
            port,
            ca: certs.join("ca.crt"),
            dir: dir.to_path_buf(),
            child,
        };
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(st)) = p.child.try_wait() {
                return Err(format!("prosody exited with {st}: {}", p.log()));
            }
            if t0.elapsed() > Duration::from_secs(20) {
                return Err(format!("prosody did not listen: {}", p.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(p)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        let a = std::fs::read_to_string(self.dir.join("prosody.log")).unwrap_or_default();
        let b = std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default();
        format!("{a}{b}")
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        // SIGKILL to its own PID, then reap it.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
