//! milebatch: pulls partners' point-exchange CSV files, validates every row
//! against the member store, credits miles in SQLite exactly once, and writes
//! back an error CSV of the failed rows.
//!
//! Layout, in the order data flows:
//!
//! - [`config`]: `partners.toml`, typed and validated.
//! - [`source`]: where files come from: the [`source::Source`] trait and one
//!   file per kind (`local`, `sftp`, `ftp`, `http`), built in one registry.
//! - [`pipeline`]: one partner run, stage by stage (pickup → decode → parse →
//!   validate → credit → report → tidy), one file per stage.
//! - [`members`]: the member store (import, lookup, balances).
//! - [`metrics`]: `GET /metrics` (Prometheus text) for the daemon and `serve`.
//! - [`db`]: SQLite: pragmas and the migration list.
//! - [`store`]: the storage layer: one boundary, SQLite or PostgreSQL behind
//!   it, one file per concern (moving there concern by concern).
//! - [`schedule`]: partner schedules in the daemon's time zone.
//! - [`calendar`]: business days (営業日): weekends, national holidays,
//!   the operator's closed days.
//! - [`daemon`]: `milebatch run`: scheduling, catch-up, shutdown, systemd.
//! - [`heartbeat`]: the daemon's last poll, for the dashboard and monitors.
//! - [`notify`]: e-mail and signed webhooks about partners' files, from the
//!   outbox written in the transaction of what they report.
//! - [`money`]: after the credit: ledger verification (and its digest).
//! - [`query`]: read-only views for the CLI (`files`, `history`, `status`).
//! - [`audit`]: the append-only audit trail of sensitive actions.
//! - [`check`]: `milebatch check`: what a run needs, found before a run.
//! - [`timefmt`]: times for people, in the configured zone.
//! - [`words`]: numbers with 桁区切り and Japanese words for stored values.
//! - [`excel`]: the bytes of CSV files people open in Excel (BOM / CP932).
//! - [`web`]: `milebatch serve`: the partner API and the management site
//!   over one HTTPS server; it calls the modules above, never the reverse.
//! - [`cli`]: the command line; `main.rs` only calls it.

pub mod audit;
pub mod calendar;
pub mod check;
pub mod cli;
pub mod config;
pub mod csvcell;
pub mod daemon;
pub mod db;
pub mod excel;
pub mod heartbeat;
pub mod members;
pub mod metrics;
pub mod money;
pub mod notify;
pub mod pipeline;
pub mod query;
pub mod schedule;
pub mod source;
pub mod store;
pub mod termtext;
pub mod timefmt;
pub mod web;

// "Run now" requests moved behind the store; the old path stays for callers.
pub use store::run_requests;
pub mod words;
