//! The `trove` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use trove::config::{Cli, Command};

/// glibc's allocator hands large Arrow buffers back to the kernel and faults fresh zeroed
/// pages in for the next request (a third of ingest CPU in a profile); mimalloc keeps them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// No transparent huge pages for this process. mimalloc asks for them, so a first touch of
/// its memory zeroes 2 MiB at once; ingest frees every buffered row at each flush and
/// touches fresh memory for the next, and the zeroing took a tenth of the core. Without
/// them: 4 to 13 % less CPU per ingested row (BENCHMARKS.md, issue 18's fourth step).
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with plain integer arguments; it only sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

fn main() -> ExitCode {
    no_huge_pages();
    // The fault-injection build reads its failpoints from FAILPOINTS (tests/e2e/faults.rs).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    trove::telemetry::init_logging(cli.log_format, &cli.log);
    // Query planning recurses as deep as the SQL it is given allows (query::guard bounds it).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(query::guard::PLANNING_STACK_BYTES)
        .build()
        .expect("a tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(config) => trove::serve(*config, trove::shutdown_signal()).await,
            Command::Demo(config) => trove::demo::run(config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trove: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
