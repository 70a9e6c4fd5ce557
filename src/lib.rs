//! # trove server
//!
//! Wires the catalog, ingest and query crates behind one axum router.
//!
//! ```text
//!  HTTP (axum, src/http) ─┬─ control plane ──► catalog (datasets, members, subscribers,
//!                         │                     connections, agreements, keys, access log)
//!                         ├─ /api/pds/pds ────► catalog metadata instances, scoped by query::Scope,
//!                         │                     values checked by ingest::validate
//!                         ├─ /v1/ingest, /api/pds/transaction (POST, PUT)
//!                         │      ──► ingest: Ingester::ingest / update_row → WAL → buffer → Parquet
//!                         ├─ /api/pds/transaction (GET) ─┐
//!                         └─ /v1/query ──────────────────┴► query: agreement-scoped DataFusion
//!                                                reads over ingest's buffer and file index
//! ```
//!
//! - [`config`]: the one `clap` struct, every flag also a `TROVE_*` variable.
//! - [`http`]: routes, authentication, and the one mapping of errors to statuses.
//! - [`demo`]: the demo fixture of docs/api.md, also the base of the end-to-end tests.
//! - [`telemetry`]: logs and Prometheus metrics.
//! - [`metered`]: the object store's requests counted, by kind.

pub mod config;
pub mod demo;
pub mod http;
pub mod metered;
pub mod telemetry;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use catalog::{Catalog, Secret};
use ingest::wal::Durability;
use ingest::{IngestConfig, Ingester};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;

use crate::config::{DurabilityArg, IngestArgs, ObjectStoreLocation, ServeConfig, StorageConfig};
use crate::metered::MeteredStore;

/// Errors that stop the binary.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("the data directory already holds a catalog; demo seeds only a new one")]
    AlreadySeeded,
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Exit status: 2 for usage problems (a bad flag, a seeded directory), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::AlreadySeeded => 2,
            _ => 1,
        }
    }
}

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    pub catalog: Catalog,
    pub ingester: Arc<Ingester>,
    /// Connections, agreements and datasets, never stale: the ingester's, shared with its
    /// write log.
    pub auth_cache: Arc<catalog::cache::AuthCache>,
    /// The read path: scoped sessions over ingest's buffer and files.
    pub query: Arc<query::QueryEngine>,
    pub settings: Arc<Settings>,
}

/// Server settings handlers need.
#[derive(Debug, Clone)]
pub struct Settings {
    pub token_ttl: Duration,
    pub max_body_bytes: usize,
    pub max_ingest_bytes: usize,
    /// How long a request body may take.
    pub body: http::body::BodyLimits,
}

/// The object store of a location: a local directory, or S3 (endpoint, region and
/// credentials from the `AWS_*` environment variables), its requests counted
/// ([`MeteredStore`]).
pub fn object_store(location: &ObjectStoreLocation) -> Result<Arc<dyn ObjectStore>, Error> {
    match location {
        ObjectStoreLocation::Local(dir) => {
            std::fs::create_dir_all(dir)?;
            let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| Error::Config(e.to_string()))?;
            Ok(Arc::new(MeteredStore::new(Arc::new(store))))
        }
        ObjectStoreLocation::Url(url) => {
            let aws = std::env::vars().filter(|(k, _)| k.starts_with("AWS_"));
            open_url(url, aws.map(|(k, v)| (k.to_ascii_lowercase(), v)))
        }
    }
}

/// The store at `url` (`s3://bucket/prefix`), built by object_store's own URL parsing with
/// `options` (`aws_endpoint`, `aws_region`, ...), under the URL's path as a prefix. Its client
/// retries failed requests itself (object_store's default `RetryConfig`); a flush that still
/// fails keeps its rows and is retried whole by the next flush round.
pub fn open_url(
    url: &url::Url,
    options: impl IntoIterator<Item = (String, String)>,
) -> Result<Arc<dyn ObjectStore>, Error> {
    let (store, prefix) = object_store::parse_url_opts(url, options).map_err(|e| Error::Config(e.to_string()))?;
    let store: Arc<dyn ObjectStore> = Arc::from(store);
    let store: Arc<dyn ObjectStore> =
        if prefix.as_ref().is_empty() { store } else { Arc::new(PrefixStore::new(store, prefix)) };
    Ok(Arc::new(MeteredStore::new(store)))
}

/// The write path's settings from the command line.
pub fn ingest_config(storage: &StorageConfig, args: &IngestArgs) -> IngestConfig {
    IngestConfig {
        wal_dir: args.wal_dir.clone().unwrap_or_else(|| storage.data_dir.join("wal")),
        durability: match args.durability {
            DurabilityArg::Fsync => Durability::Fsync,
            DurabilityArg::Process => Durability::Process,
        },
        segment_bytes: 64 << 20,
        buffer_bytes: args.buffer_bytes,
        buffer_soft_bytes: args.buffer_bytes / 2,
        flush_age: args.flush_age,
        flush_bytes: args.flush_bytes,
        flush_tick: Duration::from_millis(200),
        compaction: ingest::compact::CompactionConfig {
            min_files: args.compact_min_files,
            orphan_grace: args.orphan_grace,
            hot_window: args.hot_window,
            ..Default::default()
        },
        compact_interval: args.compact_interval,
        inflight_bytes: args.ingest_inflight_bytes,
        max_rows_per_write: args.max_ingest_rows,
        memory_limit: Some(
            args.memory_limit
                .unwrap_or(args.buffer_bytes.saturating_add(args.ingest_inflight_bytes).saturating_add(512 << 20)),
        ),
    }
}

/// Opens the data directory and the catalog (creating both if needed) and makes sure an
/// operator token exists.
pub async fn open(storage: &StorageConfig) -> Result<Catalog, Error> {
    std::fs::create_dir_all(&storage.data_dir)?;
    let catalog = Catalog::connect(&storage.catalog_url()).await?;
    let configured = storage.admin_token.as_deref().map(Secret::from_plaintext);
    if let Some(generated) = catalog.ensure_admin_token(configured.as_ref()).await? {
        let path = storage.data_dir.join("admin-token");
        write_private(&path, generated.expose())?;
        tracing::info!(path = %path.display(), "generated the operator token");
    }
    Ok(catalog)
}

/// Writes a file only its owner can read (0600), for the operator token.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(contents.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}

/// The state and router of a server.
pub fn app(
    catalog: Catalog,
    ingester: Arc<Ingester>,
    store: Arc<dyn ObjectStore>,
    query: query::QueryConfig,
    settings: Settings,
) -> Result<axum::Router, Error> {
    let query = Arc::new(
        query::QueryEngine::new(query, ingester.buffer().clone(), store).map_err(|e| Error::Config(e.to_string()))?,
    );
    ingester.count_memory_elsewhere({
        let query = query.clone();
        move || query.memory_held()
    });
    Ok(http::router(AppState {
        catalog,
        auth_cache: ingester.auth_cache(),
        ingester,
        query,
        settings: Arc::new(settings),
    }))
}

/// Runs the server until `shutdown` resolves, then finishes in-flight requests and flushes
/// every acknowledged row to Parquet.
pub async fn serve(config: ServeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let catalog = open(&config.storage).await?;
    let store = object_store(&config.storage.object_store().map_err(Error::Config)?)?;
    let ingester =
        Ingester::open(ingest_config(&config.storage, &config.ingest), catalog.clone(), store.clone()).await?;
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let settings = Settings {
        token_ttl: config.token_ttl,
        max_body_bytes: config.max_body_bytes,
        max_ingest_bytes: config.ingest.max_ingest_bytes,
        body: http::body::BodyLimits { idle: config.body_idle_timeout, total: config.body_timeout },
    };
    let limits = http::listen::ConnectionLimits {
        header_timeout: config.header_timeout,
        write_idle: config.query.query_idle_timeout,
    };
    tracing::info!(listen = %listener.local_addr()?, backend = ?catalog.backend(), "trove serving");
    serve_on(listener, app(catalog, ingester.clone(), store, config.query.config(), settings)?, limits, shutdown)
        .await?;
    ingester.shutdown().await?;
    tracing::info!("every acknowledged row is in Parquet");
    Ok(())
}

/// Serves `router` on `listener` until `shutdown` (see [`http::listen`]).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    limits: http::listen::ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    http::listen::serve(listener, router, limits, shutdown).await;
    tracing::info!("trove stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down");
}
