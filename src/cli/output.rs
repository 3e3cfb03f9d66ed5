//! Printing helpers shared by the commands, and the tracing setup.

use std::process::ExitCode;

use super::{Cli, LogFormat};
use crate::config::Config;

/// Text logs carry their time in the configured zone. The config is read
/// here only for that; an unreadable one is reported by the command itself,
/// and logs fall back to UTC until then.
pub fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false);
    if cli.log_format == LogFormat::Json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        let tz = Config::load(&cli.config)
            .map(|c| c.daemon.timezone)
            .unwrap_or(chrono_tz::UTC);
        builder.with_timer(crate::timefmt::LogTimer(tz)).init();
    }
}

pub(super) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Print `milebatch: error: …` and give exit code 1: the command ran and
/// the answer is "no" (an unknown partner or member, a problem found).
pub(super) fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("milebatch: error: {message}");
    ExitCode::from(1)
}
