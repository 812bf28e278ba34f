//! Tests of `cwmpd::net::acs::AcsClient` against small hyper servers on
//! 127.0.0.1 started in each test.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::service::service_fn;
use hyper::{Request, Response, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use cwmpd::connreq::digest::DigestServer;
use cwmpd::net::acs::{AcsClient, AcsError, TlsSettings};

const T: Duration = Duration::from_secs(5);

/// One request as seen by the test server.
#[derive(Debug, Clone)]
struct Seen {
    conn: usize,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

type Handler = Arc<dyn Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync>;

struct Srv {
    addr: SocketAddr,
    conns: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Srv {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
    fn conns(&self) -> usize {
        self.conns.load(Ordering::SeqCst)
    }
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Srv {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(handler: Handler, tls: Option<tokio_rustls::TlsAcceptor>) -> Srv {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    serve_on(listener, handler, tls)
}

fn serve_on(
    listener: TcpListener,
    handler: Handler,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Srv {
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (c2, s2) = (conns.clone(), seen.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let conn = c2.fetch_add(1, Ordering::SeqCst) + 1;
            let (handler, seen, tls) = (handler.clone(), s2.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (handler, seen) = (handler.clone(), seen.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let s = Seen {
                            conn,
                            path: parts.uri.to_string(),
                            headers: parts.headers,
                            body,
                        };
                        seen.lock().unwrap().push(s.clone());
                        Ok::<_, Infallible>(handler(&s))
                    }
                });
                let b = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(acc) => {
                        if let Ok(s) = acc.accept(stream).await {
                            let _ = b.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                    None => {
                        let _ = b.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    Srv {
        addr,
        conns,
        seen,
        task,
    }
}

fn resp(status: u16, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

fn with(mut r: Response<Full<Bytes>>, name: &'static str, value: &str) -> Response<Full<Bytes>> {
    r.headers_mut()
        .append(name, header::HeaderValue::from_str(value).unwrap());
    r
}

fn client(url: &str, user: &str, pass: &str) -> AcsClient {
    AcsClient::new(url, user, pass, &TlsSettings::default(), T).unwrap()
}

fn hdr<'a>(s: &'a Seen, name: &str) -> Option<&'a str> {
    s.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "current_thread")]
async fn keep_alive_one_connection_and_headers() {
    let srv = serve(Arc::new(|_| resp(200, "ok")), None).await;
    let mut c = client(&srv.url("/acs"), "", "");
    let r = c.post(b"<x/>".to_vec()).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"ok"[..]));
    let r = c.post(Vec::new()).await.unwrap();
    assert_eq!(r.status, 200);
    let r = c.post(b"<y/>".to_vec()).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(srv.conns(), 1);
    assert_eq!(c.connections(), 1);
    let seen = srv.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.conn == 1 && s.path == "/acs"));
    assert_eq!(
        hdr(&seen[0], "content-type"),
        Some("text/xml; charset=\"utf-8\"")
    );
    assert_eq!(hdr(&seen[0], "soapaction"), Some(""));
    assert_eq!(hdr(&seen[0], "host"), Some(srv.addr.to_string().as_str()));
    assert_eq!(&seen[0].body[..], b"<x/>");
    assert_eq!(hdr(&seen[1], "content-type"), None);
    assert_eq!(hdr(&seen[1], "soapaction"), None);
    assert_eq!(hdr(&seen[1], "content-length"), Some("0"));
    assert!(seen[1].body.is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn reconnects_after_connection_close() {
    let srv = serve(
        Arc::new(|s| {
            if s.body.is_empty() {
                resp(200, "")
            } else {
                with(resp(200, "bye"), "connection", "close")
            }
        }),
        None,
    )
    .await;
    let mut c = client(&srv.url("/"), "", "");
    let r = c.post(b"a".to_vec()).await.unwrap();
    assert!(r.connection_close);
    let r = c.post(Vec::new()).await.unwrap();
    assert_eq!(r.status, 200);
    assert!(!r.connection_close);
    assert_eq!(srv.conns(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn cookie_round_trip() {
    let srv = serve(
        Arc::new(|s| {
            if hdr(s, "cookie").is_none() {
                with(
                    with(
                        resp(200, "first"),
                        "set-cookie",
                        "session=abc123; Path=/; HttpOnly",
                    ),
                    "set-cookie",
                    "other=x; Path=/elsewhere",
                )
            } else {
                resp(200, "later")
            }
        }),
        None,
    )
    .await;
    let mut c = client(&srv.url("/acs"), "", "");
    c.post(b"<inform/>".to_vec()).await.unwrap();
    c.post(Vec::new()).await.unwrap();
    c.post(b"<r/>".to_vec()).await.unwrap();
    let seen = srv.seen();
    assert_eq!(hdr(&seen[0], "cookie"), None);
    assert_eq!(hdr(&seen[1], "cookie"), Some("session=abc123"));
    assert_eq!(hdr(&seen[2], "cookie"), Some("session=abc123"));
}

fn digest_handler(user: &'static str, pass: &'static str) -> Handler {
    let server = Arc::new(Mutex::new(DigestServer::new(
        [9u8; 32],
        "acs-test",
        Duration::from_secs(300),
    )));
    Arc::new(move |s| {
        let mut d = server.lock().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        match d.verify("POST", &s.path, hdr(s, "authorization"), user, pass, now) {
            Ok(()) => resp(200, "authenticated"),
            Err(_) => with(resp(401, ""), "www-authenticate", &d.challenge(now, false)),
        }
    })
}

#[tokio::test(flavor = "current_thread")]
async fn digest_retry_on_same_connection() {
    let srv = serve(digest_handler("cpe", "s3cret"), None).await;
    let mut c = client(&srv.url("/acs?x=1"), "cpe", "s3cret");
    let r = c.post(b"<inform/>".to_vec()).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"authenticated"[..]));
    // Later requests re-use the nonce with an incremented nc (replays would fail).
    let r = c.post(Vec::new()).await.unwrap();
    assert_eq!(r.status, 200);
    let r = c.post(b"<r/>".to_vec()).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(srv.conns(), 1);
    let seen = srv.seen();
    assert_eq!(seen.len(), 4, "one 401 then three authenticated requests");
    assert!(hdr(&seen[0], "authorization").is_none());
    let ncs: Vec<String> = seen[1..]
        .iter()
        .map(|s| {
            let a = hdr(s, "authorization").unwrap();
            a.split(", ")
                .find_map(|p| p.strip_prefix("nc="))
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ncs, ["00000001", "00000002", "00000003"]);
}

#[tokio::test(flavor = "current_thread")]
async fn digest_wrong_password_fails() {
    let srv = serve(digest_handler("cpe", "s3cret"), None).await;
    let mut c = client(&srv.url("/acs"), "cpe", "wrong");
    assert_eq!(
        c.post(b"<i/>".to_vec()).await.unwrap_err(),
        AcsError::AuthFailed
    );
    assert_eq!(srv.seen().len(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn digest_stale_nonce_rechallenge() {
    // First authenticated request gets a stale=true re-challenge, the second
    // answer is accepted.
    let n = Arc::new(AtomicUsize::new(0));
    let inner = digest_handler("u", "p");
    let srv = serve(
        Arc::new(move |s| {
            let k = n.fetch_add(1, Ordering::SeqCst);
            if k == 1 {
                let d = DigestServer::new([9u8; 32], "acs-test", Duration::from_secs(300));
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                with(resp(401, ""), "www-authenticate", &d.challenge(now, true))
            } else {
                inner(s)
            }
        }),
        None,
    )
    .await;
    let mut c = client(&srv.url("/acs"), "u", "p");
    let r = c.post(b"<i/>".to_vec()).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(srv.seen().len(), 3);
    assert_eq!(srv.conns(), 1);
}

fn basic_handler() -> Handler {
    Arc::new(|s| {
        // "cpe:pa:ss" in base64.
        if hdr(s, "authorization") == Some("Basic Y3BlOnBhOnNz") {
            resp(200, "hello")
        } else {
            with(
                resp(401, ""),
                "www-authenticate",
                "Basic realm=\"GenieACS\"",
            )
        }
    })
}

#[tokio::test(flavor = "current_thread")]
async fn basic_auth() {
    // Basic over plain http only when the configuration allows it (allow_basic_over_http).
    let srv = serve(basic_handler(), None).await;
    let mut c = client(&srv.url("/"), "cpe", "pa:ss");
    c.set_allow_basic_over_http(true);
    assert_eq!(c.post(b"<i/>".to_vec()).await.unwrap().status, 200);
    assert_eq!(c.post(Vec::new()).await.unwrap().status, 200);
    // 401, retry, then pre-emptive credentials.
    assert_eq!(srv.seen().len(), 3);
    assert_eq!(srv.conns(), 1);

    let mut c = client(&srv.url("/"), "cpe", "nope");
    c.set_allow_basic_over_http(true);
    assert_eq!(
        c.post(b"<i/>".to_vec()).await.unwrap_err(),
        AcsError::AuthFailed
    );
}

#[tokio::test(flavor = "current_thread")]
async fn redirect_chain_302_then_307() {
    let srv = serve(
        Arc::new(|s| {
            let port = s.headers.get("host").unwrap().to_str().unwrap().to_string();
            match s.path.as_str() {
                "/a" => with(resp(302, ""), "location", "b?step=2"),
                "/b?step=2" => with(resp(307, ""), "location", &format!("http://{port}/final")),
                "/final" => resp(200, &String::from_utf8_lossy(&s.body)),
                _ => resp(404, ""),
            }
        }),
        None,
    )
    .await;
    let mut c = client(&srv.url("/a"), "", "");
    let r = c.post(b"<body/>".to_vec()).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"<body/>"[..]));
    assert_eq!(c.url(), srv.url("/final"));
    // The new URL holds for the rest of the session.
    let r = c.post(b"again".to_vec()).await.unwrap();
    assert_eq!(&r.body[..], b"again");
    let paths: Vec<String> = srv.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/a", "/b?step=2", "/final", "/final"]);
    // The POST body is kept across redirects.
    assert!(srv.seen().iter().all(|s| !s.body.is_empty()));
}

#[tokio::test(flavor = "current_thread")]
async fn too_many_redirects() {
    let srv = serve(Arc::new(|_| with(resp(302, ""), "location", "/loop")), None).await;
    let mut c = client(&srv.url("/start"), "", "");
    assert_eq!(
        c.post(Vec::new()).await.unwrap_err(),
        AcsError::TooManyRedirects
    );
    assert_eq!(srv.seen().len(), 6);
}

#[tokio::test(flavor = "current_thread")]
async fn passes_through_error_statuses() {
    let srv = serve(
        Arc::new(|_| {
            with(
                with(resp(503, ""), "retry-after", "60"),
                "connection",
                "close",
            )
        }),
        None,
    )
    .await;
    let mut c = client(&srv.url("/"), "", "");
    let r = c.post(b"<i/>".to_vec()).await.unwrap();
    assert_eq!(
        (r.status, r.retry_after, r.connection_close),
        (503, Some(60), true)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and never answers.
    let task = tokio::spawn(async move {
        let mut keep = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            keep.push(s);
        }
    });
    let mut c = AcsClient::new(
        &format!("http://{addr}/acs"),
        "",
        "",
        &TlsSettings::default(),
        Duration::from_millis(300),
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    assert_eq!(
        c.post(b"<i/>".to_vec()).await.unwrap_err(),
        AcsError::Timeout
    );
    assert!(t0.elapsed() < Duration::from_secs(3));
    task.abort();
}

#[tokio::test(flavor = "current_thread")]
async fn body_too_large() {
    let big = "x".repeat(cwmpd::net::acs::MAX_BODY + 1);
    let srv = serve(Arc::new(move |_| resp(200, &big)), None).await;
    let mut c = client(&srv.url("/"), "", "");
    assert_eq!(
        c.post(Vec::new()).await.unwrap_err(),
        AcsError::BodyTooLarge
    );
}

#[tokio::test(flavor = "current_thread")]
async fn connect_refused_and_bad_url() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    let mut c = client(&format!("http://{addr}/"), "", "");
    assert!(matches!(
        c.post(Vec::new()).await,
        Err(AcsError::Connect(_))
    ));
    for bad in ["ftp://x/", "http://", "nourl"] {
        assert!(matches!(
            AcsClient::new(bad, "", "", &TlsSettings::default(), T),
            Err(AcsError::BadUrl(_))
        ));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn ipv6_literal_url() {
    let Ok(listener) = TcpListener::bind("[::1]:0").await else {
        common::skip("ipv6_literal_url", "cannot bind [::1]");
        return;
    };
    let srv = serve_on(listener, Arc::new(|_| resp(200, "v6")), None);
    let url = format!("http://[::1]:{}/acs", srv.addr.port());
    let mut c = client(&url, "", "");
    let r = c.post(Vec::new()).await.unwrap();
    assert_eq!(&r.body[..], b"v6");
    assert_eq!(
        hdr(&srv.seen()[0], "host"),
        Some(format!("[::1]:{}", srv.addr.port()).as_str())
    );
}

// ---------------------------------------------------------------------------
// HTTPS
// ---------------------------------------------------------------------------

struct Pki {
    dir: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .is_ok_and(|o| {
            if !o.status.success() {
                eprintln!("openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
            }
            o.status.success()
        })
}

/// A CA and a server certificate for 127.0.0.1, or None without `openssl`.
fn make_pki() -> Option<Pki> {
    if Command::new("openssl").arg("version").output().is_err() {
        return None;
    }
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "cwmpd-acs-pki-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let pki = Pki { dir: dir.clone() };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let ok = openssl(
        &dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=cwmpd test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    ) && openssl(
        &dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "srv.key",
                "-out",
                "srv.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    ) && openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    std::fs::write(
        dir.join("cli.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
         extendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    let ok =
        ok && openssl(
            &dir,
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "cli.key",
                    "-out",
                    "cli.csr",
                    "-subj",
                    "/CN=cpe-SN42",
                ],
            ]
            .concat(),
        ) && openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                "cli.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "cli.pem",
                "-days",
                "2",
                "-extfile",
                "cli.cnf",
            ],
        );
    assert!(ok, "openssl is installed but failed to make the test PKI");
    Some(pki)
}

fn tls_acceptor(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    tls_acceptor_with(pki, false)
}

fn tls_acceptor_with(pki: &Pki, require_client_cert: bool) -> tokio_rustls::TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(pki.dir.join("srv.pem"))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_file(pki.dir.join("srv.key")).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = if require_client_cert {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(pki.dir.join("ca.pem")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let v =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
        builder.with_client_cert_verifier(v)
    } else {
        builder.with_no_client_auth()
    };
    let cfg = builder.with_single_cert(chain, key).unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

#[tokio::test(flavor = "current_thread")]
async fn https_with_self_signed_ca() {
    let Some(pki) = make_pki() else {
        common::skip(
            "https_with_self_signed_ca",
            "the `openssl` command is not installed",
        );
        return;
    };
    let srv = serve(Arc::new(|_| resp(200, "secure")), Some(tls_acceptor(&pki))).await;
    let url = format!("https://127.0.0.1:{}/acs", srv.addr.port());

    // Trusted through ca_file; keep-alive over TLS too.
    let tls = TlsSettings {
        ca_file: Some(pki.dir.join("ca.pem")),
        ..TlsSettings::default()
    };
    let mut c = AcsClient::new(&url, "", "", &tls, T).unwrap();
    assert_eq!(&c.post(b"<i/>".to_vec()).await.unwrap().body[..], b"secure");
    assert_eq!(c.post(Vec::new()).await.unwrap().status, 200);
    assert_eq!(c.connections(), 1);

    // Refused with the default (webpki) roots.
    let mut c = AcsClient::new(&url, "", "", &TlsSettings::default(), T).unwrap();
    let e = c.post(Vec::new()).await.unwrap_err();
    assert!(matches!(e, AcsError::Tls(_)), "{e:?}");

    // Accepted without verification.
    let tls = TlsSettings {
        insecure_skip_verify: true,
        ..TlsSettings::default()
    };
    let mut c = AcsClient::new(&url, "", "", &tls, T).unwrap();
    assert_eq!(c.post(Vec::new()).await.unwrap().status, 200);

    // The right CA but the wrong host name (localhost is not in the SAN).
    let tls = TlsSettings {
        ca_file: Some(pki.dir.join("ca.pem")),
        ..TlsSettings::default()
    };
    let mut c = AcsClient::new(
        &format!("https://localhost:{}/acs", srv.addr.port()),
        "",
        "",
        &tls,
        T,
    )
    .unwrap();
    let e = c.post(Vec::new()).await.unwrap_err();
    assert!(
        matches!(e, AcsError::Tls(_) | AcsError::Connect(_)),
        "{e:?}"
    );

    // A CA file without certificates is a configuration error.
    std::fs::write(pki.dir.join("empty.pem"), "").unwrap();
    let tls = TlsSettings {
        ca_file: Some(pki.dir.join("empty.pem")),
        ..TlsSettings::default()
    };
    assert!(matches!(
        AcsClient::new(&url, "", "", &tls, T),
        Err(AcsError::Tls(_))
    ));
}

#[tokio::test(flavor = "current_thread")]
async fn https_client_certificate() {
    let Some(pki) = make_pki() else {
        common::skip(
            "https_client_certificate",
            "the `openssl` command is not installed",
        );
        return;
    };
    let srv = serve(
        Arc::new(|_| resp(200, "mtls")),
        Some(tls_acceptor_with(&pki, true)),
    )
    .await;
    let url = format!("https://127.0.0.1:{}/acs", srv.addr.port());
    let tls = TlsSettings {
        ca_file: Some(pki.dir.join("ca.pem")),
        client_cert: Some(pki.dir.join("cli.pem")),
        client_key: Some(pki.dir.join("cli.key")),
        insecure_skip_verify: false,
    };
    let mut c = AcsClient::new(&url, "", "", &tls, T).unwrap();
    assert_eq!(&c.post(Vec::new()).await.unwrap().body[..], b"mtls");

    // Without the client certificate the server refuses the handshake.
    let tls = TlsSettings {
        ca_file: Some(pki.dir.join("ca.pem")),
        ..TlsSettings::default()
    };
    let mut c = AcsClient::new(&url, "", "", &tls, T).unwrap();
    assert!(c.post(Vec::new()).await.is_err());

    // A certificate without its key is a configuration error.
    let tls = TlsSettings {
        ca_file: Some(pki.dir.join("ca.pem")),
        client_cert: Some(pki.dir.join("cli.pem")),
        ..TlsSettings::default()
    };
    assert!(matches!(
        AcsClient::new(&url, "", "", &tls, T),
        Err(AcsError::Tls(_))
    ));
}

// ---------------------------------------------------------------------------
// Compressed responses (Content-Encoding)
// ---------------------------------------------------------------------------

const ENVELOPE: &str = "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\" \
    xmlns:cwmp=\"urn:dslforum-org:cwmp-1-2\"><soap:Header><cwmp:ID soap:mustUnderstand=\"1\">1\
    </cwmp:ID></soap:Header><soap:Body><cwmp:InformResponse><MaxEnvelopes>1</MaxEnvelopes>\
    </cwmp:InformResponse></soap:Body></soap:Envelope>";

/// `data` compressed as `coding`: gzip, zlib (`deflate` as RFC 9110 means it) or raw deflate.
fn compress(coding: &str, data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let level = flate2::Compression::fast();
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), level);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "zlib" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), level);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "raw" => {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), level);
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        _ => panic!("{coding}"),
    }
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn bytes_resp(status: u16, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    r
}

/// An ACS that answers in the encoding of the request, as GenieACS does: a gzip request
/// gets a gzip answer. It checks that the request body really was gzip.
#[tokio::test(flavor = "current_thread")]
async fn gzip_answer_to_a_gzip_request_is_decoded() {
    let srv = serve(
        Arc::new(|s| {
            if hdr(s, "content-encoding") == Some("gzip") {
                assert_eq!(gunzip(&s.body), b"<inform/>");
                with(
                    bytes_resp(200, compress("gzip", ENVELOPE.as_bytes())),
                    "content-encoding",
                    "gzip",
                )
            } else {
                resp(200, ENVELOPE)
            }
        }),
        None,
    )
    .await;
    let mut c = client(&srv.url("/acs"), "", "");
    c.set_gzip(true);
    let r = c.post(b"<inform/>".to_vec()).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(String::from_utf8_lossy(&r.body), ENVELOPE);
    // The empty POST is not compressed; its answer is identity here.
    let r = c.post(Vec::new()).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&r.body), ENVELOPE);
    let seen = srv.seen();
    assert_eq!(hdr(&seen[0], "content-encoding"), Some("gzip"));
    assert_eq!(hdr(&seen[1], "content-encoding"), None);
    // With compression on, every request says that a gzip answer is welcome.
    assert!(
        seen.iter()
            .all(|s| hdr(s, "accept-encoding") == Some("gzip"))
    );
    assert_eq!(srv.conns(), 1);
}

/// Every coding the client accepts is decoded whether or not the request was compressed:
/// gzip, x-gzip, deflate as zlib (RFC 9110) and deflate as raw deflate (some servers), in
/// any letter case; identity is a no-op.
#[tokio::test(flavor = "current_thread")]
async fn every_supported_content_coding_is_decoded() {
    let srv = serve(
        Arc::new(|s| {
            let (header, coding) = match s.path.as_str() {
                "/gzip" => ("gzip", "gzip"),
                "/x-gzip" => ("x-gzip", "gzip"),
                "/upper" => ("GZip", "gzip"),
                "/zlib" => ("deflate", "zlib"),
                "/raw" => ("deflate", "raw"),
                "/identity" => {
                    return with(resp(200, ENVELOPE), "content-encoding", "identity");
                }
                _ => return resp(404, ""),
            };
            with(
                bytes_resp(200, compress(coding, ENVELOPE.as_bytes())),
                "content-encoding",
                header,
            )
        }),
        None,
    )
    .await;
    for path in ["/gzip", "/x-gzip", "/upper", "/zlib", "/raw", "/identity"] {
        let mut c = client(&srv.url(path), "", "");
        let r = c.post(b"<inform/>".to_vec()).await.unwrap();
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(String::from_utf8_lossy(&r.body), ENVELOPE, "{path}");
    }
    // Without compression configured the client does not ask for it.
    assert!(
        srv.seen()
            .iter()
            .all(|s| hdr(s, "accept-encoding").is_none())
    );
}

/// A raw HTTP/1.1 server on loopback that answers every request with `head` and then `body`
/// sent with chunked transfer coding in chunks of `chunk` bytes, and closes the connection.
async fn raw_chunked_server(
    head: &'static str,
    body: Vec<u8>,
    chunk: usize,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            // The request head, then its Content-Length body.
            let head_end = loop {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break None;
                }
                req.extend_from_slice(&buf[..n]);
                if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
            };
            let Some(head_end) = head_end else { continue };
            let text = String::from_utf8_lossy(&req[..head_end]).to_string();
            let len: usize = text
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while req.len() < head_end + len {
                let n = s.read(&mut buf).await.unwrap_or(0);
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&buf[..n]);
            }
            let mut out = format!(
                "HTTP/1.1 {head}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            )
            .into_bytes();
            for c in body.chunks(chunk) {
                out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                out.extend_from_slice(c);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            for piece in out.chunks(64) {
                if s.write_all(piece).await.is_err() {
                    break;
                }
                let _ = s.flush().await;
                tokio::task::yield_now().await;
            }
            let _ = s.shutdown().await;
        }
    });
    (addr, task)
}

/// A compressed body that arrives in many small chunks is decoded as a stream.
#[tokio::test(flavor = "current_thread")]
async fn compressed_body_in_small_chunks_is_decoded() {
    for (header, coding) in [("gzip", "gzip"), ("deflate", "raw"), ("deflate", "zlib")] {
        let head: &'static str = match header {
            "gzip" => "200 OK\r\nContent-Encoding: gzip",
            _ => "200 OK\r\nContent-Encoding: deflate",
        };
        let (addr, task) = raw_chunked_server(head, compress(coding, ENVELOPE.as_bytes()), 1).await;
        let mut c = client(&format!("http://{addr}/acs"), "", "");
        let r = c.post(b"<inform/>".to_vec()).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&r.body), ENVELOPE, "{coding}");
        assert!(r.connection_close);
        task.abort();
    }
}

/// A compression bomb: 64 MiB of zeros in about 64 KiB of gzip. The size limit applies to
/// the decoded body, the POST fails with DecodedTooLarge, and the client (the session) can
/// go on with a fresh connection.
#[tokio::test(flavor = "current_thread")]
async fn compression_bomb_is_refused() {
    let bomb = Arc::new(compress("gzip", &vec![0u8; 64 * 1024 * 1024]));
    assert!(bomb.len() < 1024 * 1024);
    let n = Arc::new(AtomicUsize::new(0));
    let srv = serve(
        Arc::new(move |_| {
            if n.fetch_add(1, Ordering::SeqCst) == 0 {
                with(bytes_resp(200, bomb.to_vec()), "content-encoding", "gzip")
            } else {
                resp(200, ENVELOPE)
            }
        }),
        None,
    )
    .await;
    let mut c = client(&srv.url("/acs"), "", "");
    c.set_gzip(true);
    let e = c.post(b"<inform/>".to_vec()).await.unwrap_err();
    assert_eq!(e, AcsError::DecodedTooLarge);
    let r = c.post(b"<inform/>".to_vec()).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&r.body), ENVELOPE);
    assert_eq!(srv.conns(), 2, "the connection of the bomb is not reused");
}

/// Just below the limit is fine: a body that decodes to exactly MAX_BODY bytes.
#[tokio::test(flavor = "current_thread")]
async fn compressed_body_of_exactly_the_limit_is_accepted() {
    let max = cwmpd::net::acs::MAX_BODY;
    let body = Arc::new(compress("gzip", &vec![b'x'; max]));
    let srv = serve(
        Arc::new(move |_| with(bytes_resp(200, body.to_vec()), "content-encoding", "gzip")),
        None,
    )
    .await;
    let mut c = client(&srv.url("/acs"), "", "");
    let r = c.post(Vec::new()).await.unwrap();
    assert_eq!(r.body.len(), max);
    assert!(r.body.iter().all(|&b| b == b'x'));
}

/// An unknown coding, a corrupt or truncated compressed body: a clear error, no garbage
/// handed to the XML parser. An empty body is empty whatever its Content-Encoding.
#[tokio::test(flavor = "current_thread")]
async fn unknown_or_broken_content_coding_is_an_error() {
    let gz = compress("gzip", ENVELOPE.as_bytes());
    let truncated = gz[..gz.len() - 6].to_vec();
    let mut corrupt = gz.clone();
    let mid = corrupt.len() / 2;
    corrupt[mid] ^= 0x55;
    let srv = serve(
        Arc::new(move |s| match s.path.as_str() {
            "/br" => with(resp(200, "\u{1b}abc"), "content-encoding", "br"),
            "/stacked" => with(
                bytes_resp(200, compress("gzip", &compress("gzip", b"x"))),
                "content-encoding",
                "gzip, gzip",
            ),
            "/notgzip" => with(resp(200, ENVELOPE), "content-encoding", "gzip"),
            "/truncated" => with(
                bytes_resp(200, truncated.clone()),
                "content-encoding",
                "gzip",
            ),
            "/corrupt" => with(bytes_resp(200, corrupt.clone()), "content-encoding", "gzip"),
            "/trailing" => {
                let mut b = gz.clone();
                b.extend_from_slice(b"junk");
                with(bytes_resp(200, b), "content-encoding", "gzip")
            }
            "/empty" => with(resp(204, ""), "content-encoding", "gzip"),
            _ => resp(404, ""),
        }),
        None,
    )
    .await;
    for path in [
        "/br",
        "/stacked",
        "/notgzip",
        "/truncated",
        "/corrupt",
        "/trailing",
    ] {
        let mut c = client(&srv.url(path), "", "");
        let e = c.post(b"<inform/>".to_vec()).await.unwrap_err();
        assert!(matches!(e, AcsError::Encoding(_)), "{path}: {e:?}");
    }
    let mut c = client(&srv.url("/br"), "", "");
    let e = c.post(Vec::new()).await.unwrap_err();
    assert!(e.to_string().contains("br"), "{e}");
    let mut c = client(&srv.url("/empty"), "", "");
    let r = c.post(Vec::new()).await.unwrap();
    assert_eq!((r.status, r.body.len()), (204, 0));
}

/// File downloads decode a Content-Encoding too: the file written is the decoded content,
/// FileSize is compared with the decoded size, and max_download bounds the decoded size.
#[tokio::test(flavor = "current_thread")]
async fn download_decodes_content_encoding() {
    use cwmpd::net::files::{Target, download};
    let content: Arc<Vec<u8>> = Arc::new(
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect(),
    );
    let c2 = content.clone();
    let bomb = Arc::new(compress("gzip", &vec![0u8; 32 * 1024 * 1024]));
    let srv = serve(
        Arc::new(move |s| match s.path.as_str() {
            "/fw.bin" => with(
                bytes_resp(200, compress("gzip", &c2)),
                "content-encoding",
                "gzip",
            ),
            "/fw.deflate" => with(
                bytes_resp(200, compress("raw", &c2)),
                "content-encoding",
                "deflate",
            ),
            "/bomb" => with(bytes_resp(200, bomb.to_vec()), "content-encoding", "gzip"),
            "/br" => with(resp(200, "abc"), "content-encoding", "br"),
            _ => resp(404, ""),
        }),
        None,
    )
    .await;
    let dir = std::env::temp_dir().join(format!("cwmpd-acs-dl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let target = |path: &str| Target {
        url: srv.url(path),
        username: String::new(),
        password: String::new(),
        tls: TlsSettings::default(),
        idle_timeout: T,
    };
    let len = content.len() as u64;
    for path in ["/fw.bin", "/fw.deflate"] {
        let dest = dir.join("fw");
        // With the FileSize the ACS announced, and without.
        for file_size in [len, 0] {
            let n = download(&target(path), &dest, 1 << 30, file_size)
                .await
                .unwrap_or_else(|f| panic!("{path}: {f}"));
            assert_eq!(n, len);
            assert_eq!(std::fs::read(&dest).unwrap(), *content, "{path}");
        }
        // A FileSize that is the compressed size is a mismatch.
        let f = download(&target(path), &dest, 1 << 30, len / 3)
            .await
            .unwrap_err();
        assert_eq!(f.code, 9017);
        assert!(!dest.exists());
    }
    // max_download bounds the decoded size.
    let dest = dir.join("bomb");
    let f = download(&target("/bomb"), &dest, 1024 * 1024, 0)
        .await
        .unwrap_err();
    assert_eq!(f.code, 9017, "{f}");
    assert!(!dest.exists());
    let f = download(&target("/fw.bin"), &dest, len - 1, 0)
        .await
        .unwrap_err();
    assert_eq!(f.code, 9017, "{f}");
    // An unknown coding is a failed download, nothing left behind.
    let f = download(&target("/br"), &dest, 1 << 30, 0)
        .await
        .unwrap_err();
    assert!(f.msg.contains("br"), "{f}");
    assert!(!dest.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------
// Basic authentication and plain http
// ---------------------------------------------------------------------------

/// An ACS (or an on-path attacker that stripped Digest) offering only Basic over plain
/// http: the password is never sent unless allow_basic_over_http says so.
#[tokio::test(flavor = "current_thread")]
async fn basic_over_plain_http_is_refused_by_default() {
    let srv = serve(basic_handler(), None).await;
    let mut c = client(&srv.url("/"), "cpe", "pa:ss");
    let e = c.post(b"<i/>".to_vec()).await.unwrap_err();
    assert_eq!(e, AcsError::BasicOverHttp);
    assert!(e.to_string().contains("allow_basic_over_http"), "{e}");
    let seen = srv.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen.iter().all(|s| hdr(s, "authorization").is_none()));

    // A Digest challenge the client cannot answer plus Basic is the same downgrade.
    let srv2 = serve(
        Arc::new(|s| {
            if hdr(s, "authorization").is_some() {
                resp(200, "leaked")
            } else {
                with(
                    resp(401, ""),
                    "www-authenticate",
                    "Digest realm=\"x\", nonce=\"n\", algorithm=SHA-512-256, Basic realm=\"x\"",
                )
            }
        }),
        None,
    )
    .await;
    let mut c = client(&srv2.url("/"), "cpe", "pa:ss");
    assert_eq!(
        c.post(b"<i/>".to_vec()).await.unwrap_err(),
        AcsError::BasicOverHttp
    );
    assert!(
        srv2.seen()
            .iter()
            .all(|s| hdr(s, "authorization").is_none())
    );
}

/// Basic over https stays allowed (the password is protected by TLS); a redirect from the
/// https ACS to a plain-http URL that asks for Basic again is refused.
#[tokio::test(flavor = "current_thread")]
async fn basic_over_https_is_allowed() {
    let Some(pki) = make_pki() else {
        common::skip(
            "basic_over_https_is_allowed",
            "the `openssl` command is not installed",
        );
        return;
    };
    let srv = serve(basic_handler(), Some(tls_acceptor(&pki))).await;
    let url = format!("https://127.0.0.1:{}/acs", srv.addr.port());
    let tls = TlsSettings {
        ca_file: Some(pki.dir.join("ca.pem")),
        ..TlsSettings::default()
    };
    let mut c = AcsClient::new(&url, "cpe", "pa:ss", &tls, T).unwrap();
    let r = c.post(b"<i/>".to_vec()).await.unwrap();
    assert_eq!((r.status, &r.body[..]), (200, &b"hello"[..]));
    assert_eq!(srv.seen().len(), 2);

    // https (Basic accepted) redirecting to http (Basic asked again): refused there.
    let plain = serve(basic_handler(), None).await;
    let plain_url = plain.url("/acs");
    let tls_srv = serve(
        Arc::new(move |s| {
            if hdr(s, "authorization") == Some("Basic Y3BlOnBhOnNz") {
                with(resp(307, ""), "location", &plain_url)
            } else {
                with(resp(401, ""), "www-authenticate", "Basic realm=\"x\"")
            }
        }),
        Some(tls_acceptor(&pki)),
    )
    .await;
    let url = format!("https://127.0.0.1:{}/acs", tls_srv.addr.port());
    let mut c = AcsClient::new(&url, "cpe", "pa:ss", &tls, T).unwrap();
    assert_eq!(
        c.post(b"<i/>".to_vec()).await.unwrap_err(),
        AcsError::BasicOverHttp
    );
    assert!(
        plain
            .seen()
            .iter()
            .all(|s| hdr(s, "authorization").is_none())
    );
}

#[test]
fn allow_basic_over_http_config_key() {
    use cwmpd::config::Config;
    let p = Path::new("/etc/cwmpd/cwmpd.toml");
    assert!(!Config::parse("", p).unwrap().acs.allow_basic_over_http);
    let c = Config::parse("[acs]\nallow_basic_over_http = true\n", p).unwrap();
    assert!(c.acs.allow_basic_over_http);
    assert!(Config::parse("[acs]\nallow_basic_over_http = \"yes\"\n", p).is_err());
}

// ---------------------------------------------------------------------------
// Cookies by origin
// ---------------------------------------------------------------------------

/// A cookie set by one origin (scheme, host, port) is never sent to another: not after a
/// redirect to another port, not after a redirect to another host name of the same server.
/// Cookies of the new origin are kept for it, and Path is still honoured.
#[tokio::test(flavor = "current_thread")]
async fn cookies_stay_with_their_origin() {
    // B: another port on the same host.
    let b = serve(
        Arc::new(|s| {
            if hdr(s, "cookie").is_none() {
                with(resp(200, "b"), "set-cookie", "bsess=2; Path=/")
            } else {
                resp(200, "b")
            }
        }),
        None,
    )
    .await;
    let b_url = b.url("/acs");
    // A: sets its session cookie on the Inform, redirects the next POST to B.
    let a = serve(
        Arc::new(move |s| {
            if hdr(s, "cookie").is_none() {
                with(resp(200, "a"), "set-cookie", "session=A1; Path=/")
            } else {
                with(resp(307, ""), "location", &b_url)
            }
        }),
        None,
    )
    .await;
    let mut c = client(&a.url("/acs"), "", "");
    c.post(b"<inform/>".to_vec()).await.unwrap();
    let r = c.post(Vec::new()).await.unwrap();
    assert_eq!(&r.body[..], b"b");
    c.post(b"<r/>".to_vec()).await.unwrap();
    let seen_a = a.seen();
    assert_eq!(hdr(&seen_a[0], "cookie"), None);
    assert_eq!(hdr(&seen_a[1], "cookie"), Some("session=A1"));
    let seen_b = b.seen();
    assert_eq!(seen_b.len(), 2);
    assert_eq!(hdr(&seen_b[0], "cookie"), None, "A's cookie leaked to B");
    assert_eq!(hdr(&seen_b[1], "cookie"), Some("bsess=2"));

    // The same server under another host name is another origin.
    let srv = serve(
        Arc::new(|s| {
            let host = hdr(s, "host").unwrap().to_string();
            match (s.path.as_str(), hdr(s, "cookie")) {
                ("/acs", None) => with(resp(200, "first"), "set-cookie", "session=X; Path=/"),
                ("/acs", Some(_)) => {
                    let port = host.rsplit(':').next().unwrap();
                    with(
                        resp(302, ""),
                        "location",
                        &format!("http://localhost:{port}/moved"),
                    )
                }
                _ => resp(200, "moved"),
            }
        }),
        None,
    )
    .await;
    let mut c = client(&srv.url("/acs"), "", "");
    c.post(b"<inform/>".to_vec()).await.unwrap();
    let r = c.post(Vec::new()).await.unwrap();
    assert_eq!(&r.body[..], b"moved");
    let seen = srv.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[2].path, "/moved");
    assert_eq!(
        hdr(&seen[2], "cookie"),
        None,
        "127.0.0.1's cookie sent to localhost"
    );
}
