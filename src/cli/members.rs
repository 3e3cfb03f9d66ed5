//! `milebatch members …`: the member store.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};

use super::output::print_json;
use super::{load, Cli};
use crate::store::Database;
use crate::{db, members};

#[derive(Subcommand, Debug)]
pub enum MembersCommand {
    /// Upsert members from a `member_id,email,status` CSV. All or nothing.
    Import {
        /// The CSV file: `member_id,email,status` (optional header line).
        file: PathBuf,
        /// The file's text encoding.
        #[arg(long, value_enum, default_value_t = FileEncoding::Utf8)]
        encoding: FileEncoding,
        /// Whether line 1 is a header. `auto`: it is when its e-mail field
        /// has no '@' and its status field is not a status.
        #[arg(long, value_enum, default_value_t = HeaderArg::Auto)]
        header: HeaderArg,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Text encodings `members import` reads.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileEncoding {
    #[value(name = "utf-8")]
    Utf8,
    /// Shift_JIS as Windows writes it (CP932).
    #[value(name = "shift_jis")]
    ShiftJis,
}

/// `--header`: the values a partner's `header` key takes.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderArg {
    /// Line 1 is a header (refused if it is a member).
    #[value(name = "true")]
    Yes,
    /// Every line is a member.
    #[value(name = "false")]
    No,
    /// Line 1 is a header when it does not look like a member.
    Auto,
}

impl From<HeaderArg> for crate::config::Header {
    fn from(h: HeaderArg) -> Self {
        match h {
            HeaderArg::Yes => crate::config::Header::Yes,
            HeaderArg::No => crate::config::Header::No,
            HeaderArg::Auto => crate::config::Header::Auto,
        }
    }
}

impl From<FileEncoding> for crate::config::Encoding {
    fn from(e: FileEncoding) -> Self {
        match e {
            FileEncoding::Utf8 => crate::config::Encoding::Utf8,
            FileEncoding::ShiftJis => crate::config::Encoding::ShiftJis,
        }
    }
}

pub(super) fn run(cli: &Cli, command: &MembersCommand) -> anyhow::Result<ExitCode> {
    let MembersCommand::Import {
        file,
        encoding,
        header,
        json,
    } = command;
    let config = load(cli)?;
    let (encoding, header) = ((*encoding).into(), (*header).into());
    // A writer: the database is created (SQLite) or migrated (both) first,
    // as `once` does, so an import can be the first command ever run.
    let s = match &config.daemon.store {
        Database::Sqlite(_) => {
            let mut conn = db::open(&config.daemon.database)?;
            let started = std::time::Instant::now();
            (members::import(&mut conn, file, encoding, header)?, started)
        }
        Database::Postgres(target) => {
            let conn = crate::store::connect_postgres(target, true)?;
            let started = std::time::Instant::now();
            (members::import(&conn, file, encoding, header)?, started)
        }
    };
    let (s, started) = s;
    if *json {
        print_json(&s)?;
    } else {
        println!(
            "imported {} members from {} in {:.1}s",
            s.rows,
            file.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(ExitCode::SUCCESS)
}
