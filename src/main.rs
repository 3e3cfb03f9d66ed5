//! The `milebatch` binary: parse the command line, set up logging, run, and
//! turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = milebatch::cli::Cli::parse();
    milebatch::cli::init_tracing(&cli);
    match milebatch::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("milebatch: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
