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
    use crate::web::ratelog::{RustlsWarnings, RUSTLS_HELLO_TARGET};
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // rustls's per-handshake warnings are printed by RustlsWarnings, at
    // most once a minute, not once per client hello.
    let filter = match format!("{RUSTLS_HELLO_TARGET}=error").parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    let rustls_warnings = || Targets::new().with_target(RUSTLS_HELLO_TARGET, LevelFilter::WARN);
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    // RustlsWarnings logs from inside its `on_event`: it must come after
    // the log output, whose per-layer filter decision for the event at
    // hand a nested event would otherwise reset.
    let registry = tracing_subscriber::registry();
    if cli.log_format == LogFormat::Json {
        let fmt = fmt.json().flatten_event(true).with_current_span(true);
        registry
            .with(fmt.with_filter(filter))
            .with(RustlsWarnings::default().with_filter(rustls_warnings()))
            .init();
    } else {
        let tz = Config::load(&cli.config)
            .map(|c| c.daemon.timezone)
            .unwrap_or(chrono_tz::UTC);
        let fmt = fmt.with_timer(crate::timefmt::LogTimer(tz));
        registry
            .with(fmt.with_filter(filter))
            .with(RustlsWarnings::default().with_filter(rustls_warnings()))
            .init();
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
