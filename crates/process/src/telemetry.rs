//! Logging set-up shared by every binary (the processors, the tools and the operator).

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Log output format (`SF_LOG_FORMAT`: `text` or `json`), defined in `sensorflow-api` with the
/// other settings the operator passes to the processors.
pub use sensorflow_api::LogFormat;

/// Installs the global tracing subscriber with the filter from `RUST_LOG` (default `info`); see
/// [`init_with_filter`].
pub fn init(format: LogFormat) {
    let filter = std::env::var(sensorflow_api::env::RUST_LOG).unwrap_or_default();
    init_with_filter(&filter, format);
}

/// Installs the global tracing subscriber: `filter` in `RUST_LOG` syntax (empty or invalid:
/// `info`), lines in `format`. Logs go to stderr so stdout stays free for command output;
/// colours only when stderr is a terminal, so log collectors get plain text. A second call
/// (tests) keeps the first subscriber.
pub fn init_with_filter(filter: &str, format: LogFormat) {
    let filter = if filter.trim().is_empty() {
        EnvFilter::new("info")
    } else {
        EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"))
    };
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry
            .with(
                fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_target(false)
                    .with_ansi(ansi),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
    let _ = result;
}
