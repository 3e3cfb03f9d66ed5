//! Printing helpers shared by the commands, the tracing setup, and what
//! happens when the reader of stdout goes away.
//!
//! What must stay true: a closed stdout (`milebatch status --json | head`)
//! ends the process quietly with 141 (128 + SIGPIPE, what a shell reports
//! for a C tool killed by SIGPIPE), never a panic message and exit 101.

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

/// Exit 141, quietly, when printing to stdout fails because its reader is
/// gone (EPIPE). Rust ignores SIGPIPE, so `println!` panics instead of the
/// process dying as a C tool would; the panic is turned into that quiet
/// exit here, for every command. Other panics keep the default report.
/// SIGPIPE itself stays ignored: `run` and `serve` must survive a peer
/// that closes a socket.
pub fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let p = info.payload();
        let msg = p
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| p.downcast_ref::<&str>().copied())
            .unwrap_or("");
        // std's message: "failed printing to stdout: Broken pipe (os error 32)"
        if msg.starts_with("failed printing to stdout") && msg.contains("os error 32") {
            std::process::exit(141);
        }
        default(info);
    }));
}
