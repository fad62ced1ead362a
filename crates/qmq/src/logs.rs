//! Logging set-up: text (ANSI colours only on a terminal) or JSON lines on standard error.

use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`, `QMQ_LOG_FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; coloured only when standard error is a terminal and `NO_COLOR`
    /// is unset.
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields`), for log shippers.
    Json,
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`), lines go to stderr.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(colours()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Whether text logs are coloured: stderr is a terminal and `NO_COLOR` is unset or empty.
fn colours() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Reports the error that ends the process: with JSON logs as an `error` log line (so that log
/// shippers see it), otherwise as `Error: …` with its causes, as `anyhow` prints it.
pub fn fatal(format: LogFormat, error: &anyhow::Error) {
    match format {
        LogFormat::Json => {
            let text = format!("{error:#}");
            tracing::error!(error = %text, "qmq failed");
        }
        LogFormat::Text => eprintln!("Error: {error:?}"),
    }
}
