//! Logs: `tracing` with JSON lines when stderr is not a terminal (or when asked), human text
//! otherwise. `WORMVAULT_LOG` sets the filter (default `info`), e.g. `wormvault=debug`.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The log format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    Text,
    Json,
}

/// Installs the global subscriber. Logs go to stderr; stdout is for command output.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("WORMVAULT_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
    // A second initialisation (tests) keeps the first subscriber.
    let _ = result;
}
