//! A throw-away Prosody XMPP server for tests (own CA, config and port); skipped when Prosody or
//! openssl is missing. Also [`TlsProbe`], a one-shot fake server that tells how a client ended
//! the TLS handshake after STARTTLS.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::TempDir;

pub const DOMAIN: &str = "cpe.test";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME.crt`/`NAME.key`) in `dir`.
pub fn make_ca(dir: &Path, name: &str) {
    run(Command::new("openssl").current_dir(dir).args([
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &format!("{name}.key"),
        "-out",
        &format!("{name}.crt"),
        "-days",
        "2",
        "-subj",
        &format!("/CN=cwmpd test {name}"),
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]));
}

/// A Prosody instance owned by the test; killed (and continued first, if stopped) on drop.
pub struct Prosody {
    pub dir: PathBuf,
    pub cfg: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Prosody {
    /// None (after printing why) when Prosody or openssl is not installed.
    pub fn setup(d: &TempDir) -> Option<Prosody> {
        for t in ["prosody", "prosodyctl", "openssl"] {
            if !have(t) {
                super::skip(
                    "prosody",
                    &format!("{t} not installed (apt-get install prosody lua-unbound openssl)"),
                );
                return None;
            }
        }
        let dir = d.path().join("prosody");
        let certs = dir.join("certs");
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::create_dir_all(&certs).unwrap();
        make_ca(&certs, "ca");
        make_ca(&certs, "other-ca");
        std::fs::write(
            certs.join("ext.cnf"),
            format!(
                "subjectAltName=DNS:{DOMAIN}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
            ),
        )
        .unwrap();
        run(Command::new("openssl").current_dir(&certs).args([
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{DOMAIN}.key"),
            "-out",
            "server.csr",
            "-subj",
            &format!("/CN={DOMAIN}"),
        ]));
        run(Command::new("openssl").current_dir(&certs).args([
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{DOMAIN}.crt"),
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]));
        let port = free_port();
        let cfg = dir.join("prosody.cfg.lua");
        std::fs::write(
            &cfg,
            cwmp_testacs::prosody::ProsodyConfig {
                dir: &dir,
                tag: "",
                ip: "127.0.0.1",
                port,
                domain: DOMAIN,
                log_level: "info",
            }
            .text(),
        )
        .unwrap();
        let mut p = Prosody {
            dir,
            cfg,
            port,
            child: None,
        };
        for (u, pw) in [("cpe1", "cpe1-pw"), ("acs", "acs-pw"), ("evil", "evil-pw")] {
            p.register(u, pw);
        }
        p.start();
        Some(p)
    }

    pub fn register(&self, user: &str, pw: &str) {
        run(Command::new("prosodyctl")
            .arg("--config")
            .arg(&self.cfg)
            .args(["register", user, DOMAIN, pw]));
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("certs/ca.crt")
    }

    /// A [`TlsProbe`] presenting this Prosody's certificate.
    pub fn tls_probe(&self) -> TlsProbe {
        TlsProbe::start(
            &self.dir.join(format!("certs/{DOMAIN}.crt")),
            &self.dir.join(format!("certs/{DOMAIN}.key")),
        )
    }

    pub fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("stdout.log"))
            .unwrap();
        let child = Command::new("prosody")
            .arg("--config")
            .arg(&self.cfg)
            .arg("-F")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start prosody");
        self.child = Some(child);
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("prosody exited with {st}: {}", self.log());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "prosody did not listen: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        let a = std::fs::read_to_string(self.dir.join("prosody.log")).unwrap_or_default();
        let b = std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default();
        format!("{a}\n{b}")
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A one-shot fake XMPP server on a free loopback port: it accepts one client, offers STARTTLS,
/// and after `<proceed/>` does the server side of the TLS handshake with the given certificate.
/// [`outcome`](Self::outcome) says how the client ended it, as seen on the wire: `"handshake
/// complete"`, or `"alert X"` with the TLS alert the client sent (e.g. `UnknownCA` when it does
/// not trust the certificate's issuer), or what else went wrong.
pub struct TlsProbe {
    pub port: u16,
    handle: JoinHandle<String>,
}

impl TlsProbe {
    pub fn start(cert: &Path, key: &Path) -> TlsProbe {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handle = std::thread::spawn(move || match listener.accept() {
            Ok((tcp, _)) => Self::serve(tcp, Arc::new(config)),
            Err(e) => format!("accept: {e}"),
        });
        TlsProbe { port, handle }
    }

    /// Reads until `buf` (all read so far) holds `what` followed by `end`.
    fn read_past(
        tcp: &mut TcpStream,
        buf: &mut Vec<u8>,
        what: &str,
        end: &str,
    ) -> Result<(), String> {
        let mut chunk = [0u8; 4096];
        loop {
            let text = String::from_utf8_lossy(buf);
            if let Some(i) = text.find(what)
                && text[i..].contains(end)
            {
                buf.clear();
                return Ok(());
            }
            match tcp.read(&mut chunk) {
                Ok(0) => return Err(format!("closed before {what}: {text}")),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("reading {what}: {e}")),
            }
        }
    }

    fn serve(mut tcp: TcpStream, config: Arc<rustls::ServerConfig>) -> String {
        let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
        let mut buf = Vec::new();
        if let Err(e) = Self::read_past(&mut tcp, &mut buf, "<stream:stream", ">") {
            return e;
        }
        let features = format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
             xmlns:stream='http://etherx.jabber.org/streams' id='probe' from='{DOMAIN}' \
             version='1.0'><stream:features><starttls \
             xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls></stream:features>"
        );
        if let Err(e) = tcp.write_all(features.as_bytes()) {
            return format!("writing features: {e}");
        }
        if let Err(e) = Self::read_past(&mut tcp, &mut buf, "<starttls", ">") {
            return e;
        }
        if let Err(e) = tcp.write_all(b"<proceed xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>") {
            return format!("writing proceed: {e}");
        }
        let mut tls = rustls::ServerConnection::new(config).unwrap();
        while tls.is_handshaking() {
            if let Err(e) = tls.complete_io(&mut tcp) {
                return match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(rustls::Error::AlertReceived(alert)) => format!("alert {alert:?}"),
                    Some(other) => format!("TLS error: {other}"),
                    None => format!("IO error: {e}"),
                };
            }
        }
        "handshake complete".into()
    }

    /// How the client ended the handshake (waits for the probe's one client).
    pub fn outcome(self) -> String {
        self.handle
            .join()
            .unwrap_or_else(|_| "probe panicked".into())
    }
}
