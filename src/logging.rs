//! Logging to stderr through tracing; `CWMPD_LOG` overrides the configured level.

pub fn init(level: &str) {
    let level = std::env::var("CWMPD_LOG").unwrap_or_else(|_| level.to_string());
    let max = match level.as_str() {
        "error" => tracing::Level::ERROR,
        "warn" => tracing::Level::WARN,
        "debug" => tracing::Level::DEBUG,
        "trace" => tracing::Level::TRACE,
        _ => tracing::Level::INFO,
    };
    let _ = tracing_subscriber::fmt()
        .with_max_level(max)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
