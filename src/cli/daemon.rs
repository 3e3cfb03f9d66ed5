//! `milebatch run` (the daemon), and the runtime pieces it shares with
//! `serve`: the tokio runtime, the shutdown signals, the metrics listener.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::{clock, load, Cli};
use crate::{daemon, db};

/// `milebatch run`: a tokio runtime, SIGTERM/SIGINT wired to the daemon's
/// shutdown, exit 0 after a clean stop.
pub(super) fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let config = Arc::new(load(cli)?);
    // Held open for the daemon's whole life, idle or not: `restore` refuses
    // while any process has the database open (money/backup.rs).
    let _holder = db::open(&config.daemon.database)?;
    let clock = clock()?;
    let metrics_listener = bind_metrics(config.daemon.metrics_listen, "[daemon] metrics_listen")?;
    let rt = runtime()?;
    let result = rt.block_on(async move {
        // Install the handlers before anything is scheduled (and before
        // READY=1), so an early SIGTERM is never the default "die now".
        let rx = shutdown_on_signals()?;
        if let Some(l) = metrics_listener {
            let m = Arc::new(crate::metrics::Metrics::new(
                config.daemon.database.clone(),
                config.partners.iter().map(|p| p.id.clone()).collect(),
                None,
            ));
            let stop = rx.clone();
            tokio::spawn(async move {
                if let Err(e) = crate::metrics::serve(m, l, stop).await {
                    tracing::error!(error = %e, "metrics listener stopped");
                }
            });
        }
        daemon::run(config, clock, rx)
            .await
            .map_err(anyhow::Error::from)
    });
    // A run that outlived shutdown_timeout is abandoned here: its open
    // transaction rolls back with the process.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}

/// The `/metrics` listener, bound before anything starts so that a taken
/// port fails the start with the key to change.
pub(super) fn bind_metrics(
    addr: Option<std::net::SocketAddr>,
    key: &str,
) -> anyhow::Result<Option<std::net::TcpListener>> {
    addr.map(|a| {
        std::net::TcpListener::bind(a).with_context(|| format!("cannot listen on {a} ({key})"))
    })
    .transpose()
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("milebatch")
        .build()
        .context("starting the tokio runtime")
}

/// A channel that turns true on the first SIGTERM or SIGINT (later ones
/// are logged). Call inside the runtime.
pub(super) fn shutdown_on_signals() -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            if tx.send_replace(true) {
                tracing::warn!(signal = name, "already shutting down");
            } else {
                tracing::info!(signal = name, "signal received: shutting down");
            }
        }
    });
    Ok(rx)
}
