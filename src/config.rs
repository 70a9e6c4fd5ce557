//! The command line: one `clap` struct; every flag is also a `TROVE_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// trove: personal data stores with agreement-scoped streaming ingest and query.
#[derive(Debug, Parser)]
#[command(name = "trove", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log format: `text` for people, `json` for log collectors.
    #[arg(long, env = "TROVE_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: LogFormat,

    /// Log filter in `tracing` env-filter syntax (e.g. `info`, `trove=debug`).
    #[arg(long, env = "TROVE_LOG", default_value = "info", global = true)]
    pub log: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<ServeConfig>),
    /// Seed a new data directory with the demo fixture and print its credentials.
    Demo(DemoConfig),
}

/// Where trove keeps its state.
#[derive(Debug, Clone, Args)]
pub struct StorageConfig {
    /// Data directory: the SQLite catalog, the operator token file and (by default) the
    /// object store live here.
    #[arg(long, env = "TROVE_DATA_DIR", default_value = "./trove-data")]
    pub data_dir: PathBuf,

    /// Catalog store: `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB`.
    /// Default: SQLite at `<data-dir>/catalog.db`.
    #[arg(long, env = "TROVE_CATALOG", hide_env_values = true)]
    pub catalog: Option<String>,

    /// Object store for Parquet files: a local directory path or `s3://bucket/prefix`
    /// (endpoint, region and credentials from the `AWS_*` variables).
    /// Default: `<data-dir>/objects`.
    #[arg(long, env = "TROVE_OBJECT_STORE")]
    pub object_store: Option<String>,

    /// Operator token. When set it wins over the one stored in the catalog; otherwise a
    /// token is generated on first start and written to `<data-dir>/admin-token` (0600).
    #[arg(long, env = "TROVE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl StorageConfig {
    /// The catalog URL, SQLite in the data directory by default.
    pub fn catalog_url(&self) -> String {
        match &self.catalog {
            Some(url) => url.clone(),
            None => catalog::Catalog::sqlite_url(&self.data_dir.join("catalog.db")),
        }
    }

    /// The object store location, `<data-dir>/objects` by default.
    pub fn object_store(&self) -> Result<ObjectStoreLocation, String> {
        match self.object_store.as_deref() {
            None => Ok(ObjectStoreLocation::Local(self.data_dir.join("objects"))),
            Some(s) if s.contains("://") => {
                let refused = || "--object-store must be a directory path or s3://BUCKET[/PREFIX]".to_owned();
                let url = url::Url::parse(s).map_err(|_| refused())?;
                // S3 is the one remote store built in (object_store's `aws` feature).
                if url.scheme() != "s3" || url.host_str().is_none_or(str::is_empty) {
                    return Err(refused());
                }
                Ok(ObjectStoreLocation::Url(url))
            }
            Some(path) => Ok(ObjectStoreLocation::Local(path.into())),
        }
    }
}

/// Where Parquet files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectStoreLocation {
    Local(PathBuf),
    /// `s3://bucket/prefix`, opened by [`crate::open_url`].
    Url(url::Url),
}

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    #[command(flatten)]
    pub storage: StorageConfig,

    /// Address to listen on.
    #[arg(long, env = "TROVE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// How long a subscriber's OAuth2 bearer token lives (humantime, e.g. `1h`, `30m`).
    #[arg(long, env = "TROVE_TOKEN_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,

    /// Largest request body accepted on the control-plane and Mydex routes, in bytes.
    #[arg(long, env = "TROVE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// A request body that sends nothing for this long is cut off with 408 (humantime).
    #[arg(long, env = "TROVE_BODY_IDLE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub body_idle_timeout: Duration,

    /// A request body that takes longer than this in all is cut off with 408 (humantime).
    #[arg(long, env = "TROVE_BODY_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,

    /// A request's headers must arrive within this, which also closes keep-alive
    /// connections idle this long (humantime).
    #[arg(long, env = "TROVE_HEADER_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,

    #[command(flatten)]
    pub ingest: IngestArgs,

    #[command(flatten)]
    pub query: QueryArgs,
}

/// The read path's limits.
#[derive(Debug, Clone, Args)]
pub struct QueryArgs {
    /// Memory all running queries share, in bytes.
    #[arg(long, env = "TROVE_QUERY_MEMORY", default_value_t = 2 << 30)]
    pub query_memory: usize,

    /// Memory one query may use, in bytes: past it the query fails with 422.
    #[arg(long, env = "TROVE_QUERY_MEMORY_PER_QUERY", default_value_t = 512 << 20)]
    pub query_memory_per_query: usize,

    /// A query running longer is cancelled (humantime).
    #[arg(long, env = "TROVE_QUERY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub query_timeout: Duration,

    /// Most rows one answer may hold.
    #[arg(long, env = "TROVE_QUERY_MAX_ROWS", default_value_t = 1_000_000)]
    pub query_max_rows: usize,

    /// Most bytes one encoded answer may hold.
    #[arg(long, env = "TROVE_QUERY_MAX_BYTES", default_value_t = 256 << 20)]
    pub query_max_bytes: usize,

    /// Memory for decoded small Parquet files, so reads across many members' small files
    /// come from memory; 0 turns it off.
    #[arg(long, env = "TROVE_QUERY_FILE_CACHE_BYTES", default_value_t = 1 << 30)]
    pub query_file_cache_bytes: usize,

    /// Queries one subscriber may run at once (either read door); more get 429 with
    /// `Retry-After`.
    #[arg(long, env = "TROVE_QUERY_CONCURRENCY", default_value_t = 4)]
    pub query_concurrency: usize,

    /// Queries all subscribers may run at once; more get 503 with `Retry-After`.
    #[arg(long, env = "TROVE_QUERY_CONCURRENCY_TOTAL", default_value_t = 16)]
    pub query_concurrency_total: usize,

    /// An answer whose client takes no byte for this long is cut off and its connection
    /// closed, which ends its query (humantime; `--query-timeout` stays the total deadline).
    #[arg(long, env = "TROVE_QUERY_IDLE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub query_idle_timeout: Duration,
}

impl QueryArgs {
    pub fn config(&self) -> query::QueryConfig {
        query::QueryConfig {
            memory_bytes: self.query_memory,
            query_memory_bytes: self.query_memory_per_query,
            timeout: self.query_timeout,
            max_rows: self.query_max_rows,
            max_bytes: self.query_max_bytes,
            per_subscriber: self.query_concurrency,
            total: self.query_concurrency_total,
            file_cache_bytes: self.query_file_cache_bytes,
            ..query::QueryConfig::default()
        }
    }
}

/// The write path.
#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    /// Write-ahead log directory (local disk). Default: `<data-dir>/wal`.
    #[arg(long, env = "TROVE_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// `fsync`: acknowledge rows only once the WAL is synced to disk (survives power loss).
    /// `process`: acknowledge once written to the OS (survives a crash of trove, not of the
    /// machine); faster on slow disks.
    #[arg(long, env = "TROVE_DURABILITY", default_value = "fsync")]
    pub durability: DurabilityArg,

    /// Hard limit on buffered, not yet flushed rows, in bytes: above it writes get 429
    /// with `Retry-After` before their body is read. Above half of it the largest
    /// datasets are flushed first.
    #[arg(long, env = "TROVE_BUFFER_BYTES", default_value_t = 1 << 30)]
    pub buffer_bytes: usize,

    /// A dataset's buffered rows are flushed to Parquet once the oldest is this old
    /// (humantime) ...
    #[arg(long, env = "TROVE_FLUSH_AGE", default_value = "60s", value_parser = humantime::parse_duration)]
    pub flush_age: Duration,

    /// ... or once they take this many bytes (and at most this much a flush: what a flush
    /// sorts and encodes at once, outside the buffer's budget).
    #[arg(long, env = "TROVE_FLUSH_BYTES", default_value_t = 128 << 20)]
    pub flush_bytes: usize,

    /// How often compaction looks for members with many small files (humantime).
    #[arg(long, env = "TROVE_COMPACT_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub compact_interval: Duration,

    /// A member's dataset is compacted once it has this many small files of one day (or,
    /// once cold, one month).
    #[arg(long, env = "TROVE_COMPACT_MIN_FILES", default_value_t = 4, value_parser = clap::value_parser!(i64).range(2..))]
    pub compact_min_files: i64,

    /// Rows stay in hot files (one per dataset and flush, several members' rows sorted by
    /// member) one to two of these after they arrived (humantime): once a window's last
    /// arrival is a window old, compaction settles that window's hot files into one file per
    /// member. Shorter means more, smaller files per member (compaction merges them by day);
    /// longer means more hot files for each read of the dataset to open.
    #[arg(long, env = "TROVE_HOT_WINDOW", default_value = "24h", value_parser = humantime::parse_duration)]
    pub hot_window: Duration,

    /// Objects in the store that the manifest does not name (left by a crash between a put
    /// and its commit) are deleted once they are this old (humantime); checked an hour
    /// apart, the first time soon after start. Longer than any put waits for its commit.
    #[arg(long, env = "TROVE_ORPHAN_GRACE", default_value = "15m", value_parser = humantime::parse_duration)]
    pub orphan_grace: Duration,

    /// Largest body accepted by `POST /v1/ingest/{dataset}`, in bytes.
    #[arg(long, env = "TROVE_MAX_INGEST_BYTES", default_value_t = 64 << 20)]
    pub max_ingest_bytes: usize,

    /// Most rows in one `POST /v1/ingest/{dataset}` body (or one Mydex add); more get 413.
    #[arg(long, env = "TROVE_MAX_INGEST_ROWS", default_value_t = 1_000_000)]
    pub max_ingest_rows: usize,

    /// Bytes of ingest bodies read and decoded at once, over all requests (a body by its
    /// declared length, or as it arrives, plus its decoded rows as they grow): more get 429
    /// with `Retry-After` at once, so concurrent large bodies cannot exhaust memory.
    #[arg(long, env = "TROVE_INGEST_INFLIGHT_BYTES", default_value_t = 256 << 20)]
    pub ingest_inflight_bytes: usize,

    /// Resident memory of the process in bytes, less what the read side holds and counts
    /// itself (its file cache, running queries), that writes keep below: above it less
    /// `--flush-bytes` (what a flush under way may still add), writes get 429 with
    /// `Retry-After` while the buffer is above half its limit. The allocator keeps freed
    /// pages for a while, which the buffer's own count cannot see. Default: `--buffer-bytes`
    /// + `--ingest-inflight-bytes` + 512 MiB.
    #[arg(long, env = "TROVE_MEMORY_LIMIT")]
    pub memory_limit: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    Fsync,
    Process,
}

#[derive(Debug, Clone, Args)]
pub struct DemoConfig {
    #[command(flatten)]
    pub storage: StorageConfig,

    /// How many members the fixture has (uids 1..N).
    #[arg(long, env = "TROVE_DEMO_MEMBERS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    pub members: u32,

    /// Print the credentials as one JSON object on stdout (logs go to stderr).
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_contracts() {
        let cli = Cli::try_parse_from(["trove", "serve"]).unwrap();
        let Command::Serve(c) = cli.command else { panic!() };
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.storage.data_dir, PathBuf::from("./trove-data"));
        assert_eq!(c.storage.catalog_url(), "sqlite://./trove-data/catalog.db?mode=rwc");
        assert_eq!(c.storage.object_store().unwrap(), ObjectStoreLocation::Local("./trove-data/objects".into()));
    }

    #[test]
    fn object_store_urls() {
        let mut s = StorageConfig { data_dir: "d".into(), catalog: None, object_store: None, admin_token: None };
        s.object_store = Some("s3://bucket/a/b/".into());
        assert_eq!(s.object_store().unwrap(), ObjectStoreLocation::Url("s3://bucket/a/b/".parse().unwrap()));
        s.object_store = Some("gs://x".into());
        assert!(s.object_store().is_err());
        s.object_store = Some("s3://".into());
        assert!(s.object_store().is_err());
    }
}
