//! The command line: one `clap` struct; every flag is also a `TROVE_LOAD_*` environment
//! variable (the operator token and the data directory are the server's `TROVE_ADMIN_TOKEN`
//! and `TROVE_DATA_DIR`).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// A load-generator workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Smart-meter readings (`ds_energy_consumption`), one per member every 15 minutes.
    Energy,
    /// Browsing history (`ds_browsing_history`): long, high-cardinality strings.
    Browsing,
    /// Bank transactions (`ds_bank_account_transactions`): decimals, each member's rows in
    /// runs, and with `--rate` sent in bursts.
    Bank,
    /// Energy readings at a fraction of the maximum plus scoped reads through both read doors.
    Mixed,
    /// A long steady energy run that samples memory, files and compaction backlog.
    Soak,
}

/// A load-generator body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    Ndjson,
    Arrow,
}

/// trove-load: drive a running trove server with a realistic workload and report rates and
/// latencies.
///
/// It sets up its own subscriber, live connection, members and agreements through the API
/// with the operator token, then sends.
#[derive(Debug, Clone, Parser)]
#[command(name = "trove-load", version)]
pub struct LoadConfig {
    /// The server.
    #[arg(long, env = "TROVE_LOAD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Operator token, for setting up members and the connection. Default: read from
    /// `<data-dir>/admin-token` when the server runs here.
    #[arg(long, env = "TROVE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// The server's data directory, to find the operator token.
    #[arg(long, env = "TROVE_DATA_DIR", default_value = "./trove-data")]
    pub data_dir: PathBuf,

    #[arg(long, env = "TROVE_LOAD_WORKLOAD", default_value = "energy")]
    pub workload: Workload,

    /// Body format of the deliveries.
    #[arg(long, env = "TROVE_LOAD_FORMAT", default_value = "ndjson")]
    pub format: BodyFormat,

    /// Members the rows are spread over (set up by the run), 1 to 1,000,000.
    #[arg(long, env = "TROVE_LOAD_MEMBERS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub members: u32,

    /// Rows per request body.
    #[arg(long, env = "TROVE_LOAD_BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch: u32,

    /// HTTP connections (keep-alive), each with one request in flight.
    #[arg(long, env = "TROVE_LOAD_CONNECTIONS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub connections: u32,

    /// How long to send (humantime) when neither `--rows` nor `--input` bounds the run.
    #[arg(long, env = "TROVE_LOAD_DURATION", default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Send exactly this many rows, then stop.
    #[arg(long, env = "TROVE_LOAD_ROWS")]
    pub rows: Option<u64>,

    /// Rows per second to offer; 0 sends as fast as the server answers. Latency is measured
    /// from when each batch was due, so a server that falls behind cannot hide it. `mixed`
    /// and `soak` default to `--fraction` of a 5-second maximum run.
    #[arg(long, env = "TROVE_LOAD_RATE", default_value_t = 0)]
    pub rate: u64,

    /// For `mixed` and `soak` without `--rate`: the fraction of the measured maximum to offer.
    #[arg(long, env = "TROVE_LOAD_FRACTION", default_value_t = 0.5)]
    pub fraction: f64,

    /// Read clients of the `mixed` workload, alternating the SQL and the Mydex door.
    #[arg(long, env = "TROVE_LOAD_READERS", default_value_t = 2)]
    pub readers: u32,

    /// Send this NDJSON file's rows (of the workload's dataset) instead of generated ones;
    /// its `member_uid` k goes to the k-th member the run set up.
    #[arg(long, env = "TROVE_LOAD_INPUT")]
    pub input: Option<PathBuf>,

    /// Pre-built request bodies are cycled through; this caps their memory (MiB).
    #[arg(long, env = "TROVE_LOAD_POOL_MIB", default_value_t = 256)]
    pub pool_mib: usize,

    /// Keep the set-up credentials here and reuse them on the next run against the same
    /// server (setting up 100,000 members takes a while).
    #[arg(long, env = "TROVE_LOAD_SETUP_FILE")]
    pub setup_file: Option<PathBuf>,

    /// The server's process, for RSS and CPU; default: whatever listens on the URL's port
    /// when it is on this machine.
    #[arg(long, env = "TROVE_LOAD_SERVER_PID")]
    pub server_pid: Option<u32>,

    /// Write the JSON report here (it is also printed as the last line of stdout).
    #[arg(long, env = "TROVE_LOAD_REPORT")]
    pub report: Option<PathBuf>,

    /// How often `soak` samples the server (and the progress line is printed).
    #[arg(long, env = "TROVE_LOAD_SAMPLE_EVERY", default_value = "10s", value_parser = humantime::parse_duration)]
    pub sample_every: Duration,
}
