//! Running the agent: the engine, the connection-request listeners (HTTP, UDP/STUN, XMPP)
//! and the control socket on one current-thread runtime.

use tokio::sync::mpsc;

use crate::config::Config;
use crate::engine::{Command, Engine};

/// Why the agent could not start (or its runtime not be built).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("no HTTP connection-request listener could be bound")]
    NoHttpListener,
    #[error("control socket {}: {source}", path.display())]
    ControlSocket {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the HTTP connection-request listeners and spawns the server (needs the LocalSet).
async fn start_http_cr(
    cfg: &Config,
    engine: &mut Engine,
    tx: mpsc::Sender<Command>,
    limiter: std::rc::Rc<std::cell::RefCell<crate::connreq::backoff::RateLimiter>>,
    shutdown: &Shutdown,
) -> Result<(), AgentError> {
    use crate::connreq::http::CrEvent;
    if cfg.connreq.http_listen.is_empty() {
        tracing::info!("no HTTP connection-request listener configured");
        return Ok(());
    }
    let mut listeners = Vec::new();
    let mut addrs = Vec::new();
    for a in &cfg.connreq.http_listen {
        match tokio::net::TcpListener::bind(a).await {
            Ok(l) => {
                let bound = l.local_addr().unwrap_or(*a);
                tracing::info!("HTTP connection requests on {bound}");
                addrs.push(bound);
                listeners.push(l);
            }
            Err(e) => tracing::warn!("HTTP connection-request listener {a}: {e}"),
        }
    }
    if listeners.is_empty() {
        return Err(AgentError::NoHttpListener);
    }
    #[cfg(not(feature = "upnp"))]
    if cfg.connreq.upnp {
        tracing::warn!("connreq.upnp is set, but this cwmpd is built without the upnp feature");
    }
    #[cfg(feature = "upnp")]
    if cfg.connreq.upnp
        && let Some(port) = addrs.iter().find(|a| a.is_ipv4()).map(|a| a.port())
    {
        // Ask the gateway for a port forward; the external port is the configured one, or the
        // listener's own.
        let external = if cfg.connreq.external_port != 0 {
            cfg.connreq.external_port
        } else {
            port
        };
        let (stop, done) = (shutdown.signal.subscribe(), shutdown.done.clone());
        let task = crate::connreq::upnp::keep_mapping(external, port, tx.clone(), stop);
        tokio::task::spawn_local(async move {
            task.await;
            drop(done);
        });
    }
    engine.set_cr_listen(addrs);
    let (etx, mut erx) = mpsc::channel::<CrEvent>(16);
    let drain = crate::connreq::http::Drain {
        stop: shutdown.signal.subscribe(),
        done: shutdown.done.clone(),
    };
    tokio::task::spawn_local(crate::connreq::http::serve(
        listeners,
        engine.cr_settings(),
        limiter,
        etx,
        engine.cr_secret(),
        drain,
    ));
    // Forward accepted requests to the engine without ever blocking the listener.
    tokio::task::spawn_local(async move {
        while let Some(ev) = erx.recv().await {
            if tx.send(Command::ConnectionRequest(ev)).await.is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Binds the UDP connection-request socket (shared with the STUN client) and spawns its task.
/// A bind failure is logged, not fatal: the other connection-request mechanisms still work.
#[cfg(feature = "stun")]
async fn start_udp_cr(
    cfg: &Config,
    engine: &Engine,
    tx: mpsc::Sender<Command>,
    limiter: std::rc::Rc<std::cell::RefCell<crate::connreq::backoff::RateLimiter>>,
) {
    use crate::connreq::udp;
    let sock = match tokio::net::UdpSocket::bind(cfg.connreq.udp_listen).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "UDP connection-request socket {}: {e}; no UDP connection requests or STUN",
                cfg.connreq.udp_listen
            );
            return;
        }
    };
    if let Ok(a) = sock.local_addr() {
        tracing::info!("UDP connection requests and STUN on {a}");
    }
    let (etx, mut erx) = mpsc::channel(16);
    let (stx, mut srx) = mpsc::channel::<Vec<(String, String)>>(4);
    let out = udp::Outputs {
        events: etx,
        status: stx,
    };
    tokio::task::spawn_local(udp::serve(
        sock,
        engine.settings(),
        limiter,
        out,
        cfg.agent.state_dir.clone(),
    ));
    tokio::task::spawn_local(async move {
        loop {
            let cmd = tokio::select! {
                Some(ev) = erx.recv() => Command::ConnectionRequest(ev),
                Some(st) = srx.recv() => Command::Status(st),
                else => break,
            };
            if tx.send(cmd).await.is_err() {
                break;
            }
        }
    });
}

/// Graceful shutdown (the mini-redis pattern): tasks that must clean up (the UPnP mapping, the
/// HTTP connection-request connections in flight) watch `signal` and hold a clone of `done`; the
/// agent waits, bounded, until every clone is dropped.
struct Shutdown {
    signal: tokio::sync::watch::Sender<bool>,
    done: mpsc::Sender<()>,
}

/// Longest wait for the engine to save and for tasks to clean up at shutdown.
const SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(3);

/// Runs the agent on a current-thread runtime until `stop` completes (the binary passes the
/// SIGTERM/SIGINT wait; the demo a channel), then saves what is unsaved and returns.
pub fn run(cfg: Config, stop: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let agent = start(cfg).await?;
        crate::util::trim_heap();
        stop.await;
        agent.stop().await;
        Ok::<_, AgentError>(())
    })
}

/// A started agent: its engine and listeners are tasks on the caller's `LocalSet`.
pub struct Running {
    tx: mpsc::Sender<Command>,
    shutdown: Shutdown,
    all_done: mpsc::Receiver<()>,
    engine_task: tokio::task::JoinHandle<()>,
}

/// Starts one agent on the current thread's `LocalSet` (the caller owns the runtime and may run
/// several agents on it; the fleet simulator does). Errors when the configuration, the data
/// model, the state directory or every HTTP connection-request listener is unusable.
pub async fn start(cfg: Config) -> Result<Running, AgentError> {
    let engine = Engine::new(cfg.clone())?;
    start_with(cfg, engine).await
}

/// [`start`] with an engine the caller built (e.g. with [`Engine::with_store`] on a schema it
/// loaded once for many agents).
pub async fn start_with(cfg: Config, mut engine: Engine) -> Result<Running, AgentError> {
    let (signal, _) = tokio::sync::watch::channel(false);
    let (done, all_done) = mpsc::channel::<()>(1);
    let shutdown = Shutdown { signal, done };
    engine.start_providers();
    let (tx, rx) = mpsc::channel::<Command>(64);
    // A bucket of `rate_burst` refilled with `rate_per_minute` tokens per minute, shared by
    // all connection-request mechanisms.
    let limiter = std::rc::Rc::new(std::cell::RefCell::new(
        crate::connreq::backoff::RateLimiter::new(
            cfg.connreq.rate_burst,
            f64::from(cfg.connreq.rate_per_minute) / 60.0,
        ),
    ));
    start_http_cr(&cfg, &mut engine, tx.clone(), limiter.clone(), &shutdown).await?;
    #[cfg(feature = "stun")]
    start_udp_cr(&cfg, &engine, tx.clone(), limiter.clone()).await;
    #[cfg(not(feature = "stun"))]
    tracing::info!("built without the stun feature: no UDP connection requests or STUN");
    // The XMPP connection-request client (idle while ConnReqXMPPConnection is empty).
    #[cfg(feature = "xmpp")]
    tokio::task::spawn_local(crate::connreq::xmpp::run(
        engine.settings(),
        cfg.xmpp.ca_file.clone(),
        limiter,
        tx.clone(),
    ));
    #[cfg(not(feature = "xmpp"))]
    drop(limiter);
    if !cfg.agent.control_socket.as_os_str().is_empty() {
        let l = crate::ctl::bind(&cfg.agent.control_socket).map_err(|source| {
            AgentError::ControlSocket {
                path: cfg.agent.control_socket.clone(),
                source,
            }
        })?;
        tokio::task::spawn_local(crate::ctl::serve(l, tx.clone()));
    }
    tracing::info!(
        config = %cfg.file.display(),
        parameters = engine.store.param_count(),
        "cwmpd {} started",
        env!("CARGO_PKG_VERSION")
    );
    let engine_task = tokio::task::spawn_local(engine.run(rx));
    Ok(Running {
        tx,
        shutdown,
        all_done,
        engine_task,
    })
}

impl Running {
    /// The engine's command channel (what the control socket and the listeners send on).
    pub fn commands(&self) -> &mpsc::Sender<Command> {
        &self.tx
    }

    /// Stops the agent: every task is told; the engine saves what is unsaved; the CR ports
    /// close and the connections in flight finish their request; the UPnP mapping is removed;
    /// all within SHUTDOWN_BOUND, then whatever is left is abandoned.
    pub async fn stop(self) {
        let Running {
            tx,
            shutdown,
            mut all_done,
            engine_task,
        } = self;
        tracing::info!("shutting down");
        let Shutdown { signal, done } = shutdown;
        let _ = signal.send(true);
        drop(done);
        let _ = tx.send(Command::Shutdown).await;
        let finished = tokio::time::timeout(SHUTDOWN_BOUND, async {
            let _ = engine_task.await;
            let _ = all_done.recv().await;
        })
        .await;
        if finished.is_err() {
            tracing::warn!("shutdown took longer than {SHUTDOWN_BOUND:?}; stopping anyway");
        }
    }
}
