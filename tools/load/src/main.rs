//! The `trove-load` binary: parse the command line, run, exit 1 when the run failed (2 on a
//! usage problem).

use std::process::ExitCode;

use clap::Parser;
use trove_load::LoadConfig;

#[tokio::main]
async fn main() -> ExitCode {
    match trove_load::run(LoadConfig::parse()).await {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trove-load: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
