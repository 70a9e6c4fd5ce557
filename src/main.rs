//! The `trove` binary: parse the command line, set up logging, run.

use std::process::ExitCode;

use clap::Parser;
use trove::config::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    trove::telemetry::init_logging(cli.log_format, &cli.log);
    let result = match cli.command {
        Command::Serve(config) => trove::serve(config, trove::shutdown_signal()).await,
        Command::Demo(config) => trove::demo::run(config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trove: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
