//! `milebatch serve`: the partner API and the management site.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::daemon::{bind_metrics, runtime, shutdown_on_signals};
use super::{load, Cli};
use crate::db;

pub(super) fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    use std::io::Write as _;
    let config = Arc::new(load(cli)?);
    // Create or migrate the database before the first request, and fail
    // here, clearly, if it cannot be opened. Held open for the process's
    // life: `restore` refuses while any process has the database open.
    let _holder = db::open(&config.daemon.database)?;
    let listen = config.server.listen;
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen} (`[server] listen`)"))?;
    let addr = listener.local_addr()?;
    let metrics_listener = bind_metrics(config.server.metrics_listen, "[server] metrics_listen")?;
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let rt = runtime()?;
    // Before the `listening` line: a bad certificate or key fails the start.
    let tls = rt.block_on(crate::web::load_tls(&config))?;
    crate::web::nofile::raise_soft_limit(config.server.limits.max_connections);
    // The bound address (port 0 picks one) for scripts and tests.
    println!("listening on {scheme}://{addr}");
    std::io::stdout().flush()?;
    let result = rt.block_on(async move {
        let rx = shutdown_on_signals()?;
        crate::web::serve(config, tls, listener, metrics_listener, rx)
            .await
            .map_err(anyhow::Error::from)
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result?;
    Ok(ExitCode::SUCCESS)
}
