//! The catalog store: one implementation over `sqlx::Any`, so SQLite (embedded default) and
//! PostgreSQL (several nodes) run the same queries. Dialects differ only in the migrations
//! (identity columns); every query uses `$N` placeholders, which both drivers accept.
//!
//! Lifecycle steps are compare-and-set updates (`UPDATE ... WHERE state = 'draft'`) checked
//! by rows affected, so two nodes racing on one connection cannot both win, without
//! `SELECT ... FOR UPDATE` (which SQLite lacks).

pub(crate) mod accounts;
mod approvals;
mod connections;
mod data;
pub use data::AccessEvent;
pub(crate) mod manifest;
mod sqlite_memory;

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Executor, Row, Transaction};

use crate::error::CatalogError;
use crate::secret::Secret;
use crate::time::{Clock, SystemClock};

pub use connections::normalize_terms;

type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// Which database the catalog lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The catalog: datasets, members, subscribers, connections, agreements, hashed keys,
/// metadata instances and the access log. Cheap to clone (a pool handle).
#[derive(Debug, Clone)]
pub struct Catalog {
    pool: AnyPool,
    backend: Backend,
    /// The access log's member index rows this process knows are stored (see
    /// [`Catalog::record_access`]).
    known_blocks: Arc<Mutex<data::KnownBlocks>>,
    /// What time it is: every timestamp the catalog stores, and every crate's clock.
    clock: Arc<dyn Clock>,
    /// Members' approvals waiting to be committed together.
    approvals: Arc<approvals::Approvals>,
}

static MIGRATE_SQLITE: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static MIGRATE_POSTGRES: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl Catalog {
    /// Opens (creating if needed) and migrates the catalog at `url`: `sqlite://PATH`
    /// or `postgres://...`. Built-in datasets missing from the store are added.
    pub async fn connect(url: &str) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(CatalogError::invalid("the catalog URL must start with sqlite: or postgres://"));
        };
        let pool = match backend {
            Backend::Sqlite => {
                sqlite_memory::use_process_allocator();
                // One writer at a time is SQLite's model; a small pool keeps readers concurrent
                // and `busy_timeout` queues writers instead of failing them.
                AnyPoolOptions::new()
                    .max_connections(8)
                    // An embedded database cannot hang up: sqlx's ping before every
                    // acquire only cost a round trip to the connection's thread per query.
                    .test_before_acquire(false)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // A page cache of 64 MiB (allocated as used) and statement
                            // journals in memory: a move of the access log touches a leaf of
                            // the member index per member read, and with SQLite's default 2 MiB
                            // those pages spilled and were read back within the transaction.
                            // The soft heap limit, 128 MiB, bounds SQLite's memory in the whole
                            // process (its share of the per-member state the memory budget
                            // allows beside the ingest buffers): past it, caches recycle their
                            // own pages instead of growing (eight caches of up to 64 MiB could
                            // hold 512 MiB).
                            conn.execute(
                                "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; \
                                 PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY; \
                                 PRAGMA soft_heap_limit = 134217728;",
                            )
                            .await?;
                            Ok(())
                        })
                    })
                    .connect(url)
                    .await?
            }
            Backend::Postgres => AnyPoolOptions::new().max_connections(16).connect(url).await?,
        };
        if backend == Backend::Sqlite {
            // WAL mode is a property of the database file: set once, it persists.
            sqlx::query("PRAGMA journal_mode = WAL").execute(&pool).await?;
        }
        let catalog = Catalog {
            pool,
            backend,
            known_blocks: Arc::default(),
            clock: Arc::new(SystemClock),
            approvals: Arc::default(),
        };
        match backend {
            Backend::Sqlite => MIGRATE_SQLITE.run(&catalog.pool).await?,
            Backend::Postgres => MIGRATE_POSTGRES.run(&catalog.pool).await?,
        }
        catalog.seed_builtin_datasets().await?;
        Ok(catalog)
    }

    /// The SQLite URL for a catalog file, created if missing.
    pub fn sqlite_url(path: &Path) -> String {
        format!("sqlite://{}?mode=rwc", path.display())
    }

    /// Checks the store answers (readiness).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The clock every crate reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// This catalog, reading time from `clock` (tests set the date with a [`MockClock`](crate::time::MockClock)).
    pub fn with_clock(self, clock: Arc<dyn Clock>) -> Catalog {
        Catalog { clock, ..self }
    }

    /// Whether this store already holds a catalog (someone ran migrations and set it up).
    pub async fn is_initialized(&self) -> Result<bool> {
        Ok(self.setting("admin_token_hash").await?.is_some())
    }

    /// Makes sure an operator token exists. `TROVE_ADMIN_TOKEN`, when given, wins and
    /// replaces the stored hash. Otherwise a token is generated on first start and returned
    /// (`Some`) so the caller can write it for the operator; later starts return `None`.
    pub async fn ensure_admin_token(&self, configured: Option<&Secret>) -> Result<Option<Secret>> {
        if let Some(token) = configured {
            self.put_setting("admin_token_hash", &token.hash().0, true).await?;
            return Ok(None);
        }
        let fresh = Secret::generate();
        // Insert-if-absent: of several nodes starting together exactly one token wins.
        let inserted = self.put_setting("admin_token_hash", &fresh.hash().0, false).await?;
        Ok(inserted.then_some(fresh))
    }

    async fn setting(&self, name: &str) -> Result<Option<String>> {
        let row =
            sqlx::query("SELECT value FROM settings WHERE name = $1").bind(name).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.get::<String, _>(0)))
    }

    async fn put_setting(&self, name: &str, value: &str, overwrite: bool) -> Result<bool> {
        let q = if overwrite {
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        } else {
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING"
        };
        let done = sqlx::query(q).bind(name).bind(value).execute(&self.pool).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Begins a write transaction. SQLite takes the write lock up front (`IMMEDIATE`) so
    /// that a read-then-write transaction cannot fail on a lock upgrade.
    async fn begin(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// The authorization generation: it changes, in the same transaction, with every change
    /// to connections' serving terms, agreements and datasets. Equal generations mean a
    /// cache of those is current.
    pub async fn generation(&self) -> Result<i64> {
        let row = sqlx::query("SELECT value FROM counters WHERE name = 'generation'").fetch_one(&self.pool).await?;
        Ok(row.get::<i64, _>(0))
    }

    /// Moves the authorization generation on, in `tx`, and returns the new one. Its row
    /// stays locked until `tx` commits, so generations commit in order.
    async fn bump_generation(tx: &mut Transaction<'static, Any>) -> Result<i64> {
        Self::next_counter(tx, "generation").await
    }

    /// Atomically increments a named counter and returns the new value.
    pub(crate) async fn next_counter(tx: &mut Transaction<'static, Any>, name: &str) -> Result<i64> {
        let row = sqlx::query("UPDATE counters SET value = value + 1 WHERE name = $1 RETURNING value")
            .bind(name)
            .fetch_one(&mut **tx)
            .await?;
        Ok(row.get::<i64, _>(0))
    }
}

fn get_json<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> Result<T> {
    let text: String = row.try_get(col)?;
    serde_json::from_str(&text).map_err(CatalogError::corrupt)
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("catalog types serialize")
}

/// Maps a unique-constraint violation to `AlreadyExists`.
fn unique_violation(what: &'static str) -> impl FnOnce(sqlx::Error) -> CatalogError {
    move |e| match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => CatalogError::AlreadyExists { what },
        _ => CatalogError::Store(e),
    }
}

#[cfg(test)]
mod tests {
    use super::Catalog;
    use crate::conformance;

    #[tokio::test]
    async fn conformance_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::connect(&Catalog::sqlite_url(&dir.path().join("catalog.db"))).await.unwrap();
        conformance::run_all(&catalog).await;
        // Reopening migrates nothing and keeps the data.
        drop(catalog);
        let again = Catalog::connect(&Catalog::sqlite_url(&dir.path().join("catalog.db"))).await.unwrap();
        assert!(again.is_initialized().await.unwrap());
    }

    #[tokio::test]
    async fn sqlite_memory_comes_from_the_process_allocator_within_a_limit() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::connect(&Catalog::sqlite_url(&dir.path().join("catalog.db"))).await.unwrap();
        assert!(
            super::sqlite_memory::use_process_allocator(),
            "SQLite was initialised before the catalog set its allocator"
        );
        let limit: i64 = sqlx::query_scalar("PRAGMA soft_heap_limit").fetch_one(&catalog.pool).await.unwrap();
        assert_eq!(limit, 128 << 20);
    }

    #[tokio::test]
    async fn conformance_postgres() {
        let Ok(url) = std::env::var("TROVE_TEST_POSTGRES_URL") else {
            assert!(std::env::var("CI").is_err(), "CI must run the PostgreSQL suite: set TROVE_TEST_POSTGRES_URL");
            eprintln!(
                "\n*** SKIPPED: catalog conformance on PostgreSQL (set TROVE_TEST_POSTGRES_URL, or run scripts/test.sh) ***\n"
            );
            return;
        };
        let catalog = Catalog::connect(&conformance::fresh_postgres_database(&url).await).await.unwrap();
        assert_eq!(catalog.backend(), super::Backend::Postgres);
        conformance::run_all(&catalog).await;
    }
}
