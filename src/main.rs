//! The `milebatch` binary: parse the command line, set up logging, run, and
//! turn the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;

// jemalloc, not glibc's malloc: `serve` allocates and frees small blocks
// on many threads (a request's buffers are freed on another worker than
// the one that made them), and glibc's arenas spent about a fifth of the
// request threads' CPU on it (bench/api.sh, verify: 86 -> 70 us of server
// CPU a call, serve's peak RSS unchanged; mimalloc was as fast with 20%
// more). `once` keeps more memory (peak RSS 125 -> 159 MiB for 1M rows,
// target 200): jemalloc holds freed pages a while for reuse.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    milebatch::cli::quiet_on_closed_pipe();
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
