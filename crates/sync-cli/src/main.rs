//! `starkeep-sync`: serve, sync and inspect a Starkeep node from the command line.

/// jemalloc for every process this binary runs (decision 0016): with glibc's allocator,
/// merging the chunks a page freed was most of the node's round task, and scenario 1 ran
/// about 13 % slower.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod bench;
mod blobs;
mod cli;
mod crash;
mod demo;
mod files;
mod node;
mod server;

use std::process::ExitCode;

use clap::Parser;

/// Exit codes a script can rely on.
pub mod exit {
    /// Done.
    pub const OK: u8 = 0;
    /// Failed (the message says why and how to fix it).
    pub const FAILURE: u8 = 1;
    /// Bad usage (clap's own code for bad flags).
    pub const USAGE: u8 = 2;
    /// Sync ran but items keep failing (stalled) or did not finish.
    pub const INCOMPLETE: u8 = 3;
    /// The server refused the credentials.
    pub const UNAUTHORIZED: u8 = 4;
}

fn main() -> ExitCode {
    let args = cli::Args::parse();
    // Logs go to stderr at the level of --log (or RUST_LOG; default warn). A closed span
    // is logged with its fields: one line per round (`round`) and per request (`request`)
    // at info.
    tracing_subscriber::fmt()
        .with_env_filter(args.log_filter())
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = crash::init() {
        eprintln!("error: {e:#}");
        return ExitCode::from(exit::USAGE);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(cli::exit_code_of(&e))
        }
    }
}
