//! The query engine: one shared runtime (memory pool, Parquet footer cache, object store)
//! and, per request, a DataFusion session whose catalog holds only that request's scoped
//! tables, built lazily as the SQL names them.
//!
//! The SQL door is a sandbox in layers: only a single `SELECT` (or `WITH ... SELECT`) is
//! parsed through, of a bounded shape ([`crate::guard`]), planned with DDL, DML and
//! statements off, with no information_schema, no URL tables, no file-reading table
//! functions and only the allowed functions ([`crate::functions`]); the final physical plan
//! is then checked so that every leaf is one of this request's scans (or a constant
//! source), and every file it opens is one the scoped tables chose. Each query gets its own
//! share of the memory pool (which also counts the rows its scans materialise), a deadline
//! that planning honours too, a cap on answer rows, and the server a cap on running queries,
//! per subscriber and in all.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use catalog::{Connection, MemberVersions, SubscriberId};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemoryCatalogProviderList, SchemaProvider, TableProvider,
};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::FileScanConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::session_state::{SessionState, SessionStateBuilder};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::{ExecutionPlan, execute_stream};
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext, col};
use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};
use datafusion::sql::sqlparser::ast::Statement;
use futures::Stream;
use ingest::schema::DatasetSchema;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::QueryError;
use crate::scope::TableScope;
use crate::table::{Reads, ScopedTable, Sources};

/// Limits and sizes of the read path.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// Memory all running queries share.
    pub memory_bytes: usize,
    /// Memory one query may hold.
    pub query_memory_bytes: usize,
    /// A query (planning and answer) is cancelled after this long.
    pub timeout: Duration,
    /// Answers are capped at this many rows ...
    pub max_rows: usize,
    /// ... and this many encoded bytes (the server's encoders enforce it).
    pub max_bytes: usize,
    /// Queries one subscriber may run at once ...
    pub per_subscriber: usize,
    /// ... and all subscribers together.
    pub total: usize,
    /// Partitions a scan is split into (cores).
    pub target_partitions: usize,
    /// Memory for decoded small files (see [`crate::cache`]); 0 turns the cache off.
    pub file_cache_bytes: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig {
            memory_bytes: 2 << 30,
            query_memory_bytes: 512 << 20,
            timeout: Duration::from_secs(30),
            max_rows: 1_000_000,
            max_bytes: 256 << 20,
            per_subscriber: 4,
            total: 16,
            target_partitions: std::thread::available_parallelism().map_or(2, usize::from),
            file_cache_bytes: 1 << 30,
        }
    }
}

/// What a connection-wide read (the SQL door) may see, resolved when the request starts.
#[derive(Debug, Clone)]
pub struct ReadScope {
    pub connection: Arc<Connection>,
    /// Members with an active agreement, and the revision each approved.
    pub members: Arc<MemberVersions>,
    /// The transactional datasets the serving revision names.
    pub datasets: Vec<Arc<DatasetSchema>>,
}

/// See the module docs. Shared by every request (`Arc`).
#[derive(Debug)]
pub struct QueryEngine {
    config: QueryConfig,
    runtime: Arc<RuntimeEnv>,
    template: SessionState,
    sources: Sources,
    running: Mutex<HashMap<SubscriberId, Arc<Semaphore>>>,
    running_total: Arc<Semaphore>,
}

/// A running query's slots (its subscriber's and one of the server's), released when
/// dropped with the answer.
#[derive(Debug)]
pub struct Admission {
    _subscriber: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl QueryEngine {
    pub fn new(
        config: QueryConfig,
        buffer: Arc<ingest::buffer::Buffer>,
        store: Arc<dyn object_store::ObjectStore>,
    ) -> DfResult<QueryEngine> {
        let store_url = datafusion::execution::object_store::ObjectStoreUrl::parse("trove://objects")?;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(GreedyMemoryPool::new(config.memory_bytes)))
            // Queries fail at their memory limit rather than spill member data to temp files.
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .build_arc()?;
        runtime.register_object_store(store_url.as_ref(), store.clone());
        let session = SessionConfig::new()
            .with_target_partitions(config.target_partitions.max(1))
            .with_information_schema(false)
            .with_create_default_catalog_and_schema(false)
            .set_bool("datafusion.execution.parquet.pushdown_filters", true)
            .set_bool("datafusion.execution.parquet.reorder_filters", true);
        let builder =
            SessionStateBuilder::new().with_config(session).with_runtime_env(runtime.clone()).with_default_features();
        let template = crate::functions::install(builder).build();
        let cache = Arc::new(crate::cache::FileCache::new(config.file_cache_bytes));
        let sources = Sources { buffer, store, store_url, cache };
        let running_total = Arc::new(Semaphore::new(config.total.max(1)));
        Ok(QueryEngine { config, runtime, template, sources, running: Mutex::new(HashMap::new()), running_total })
    }

    pub fn config(&self) -> &QueryConfig {
        &self.config
    }

    /// Memory the read side holds now and counts itself: decoded files in the cache and
    /// what running queries have reserved (the write path's memory guard leaves it out).
    pub fn memory_held(&self) -> usize {
        self.sources.cache.bytes() + self.runtime.memory_pool.reserved()
    }

    /// Slots for one of `subscriber`'s queries (either read door), held until its answer is
    /// sent: past the subscriber's cap 429 ([`QueryError::Busy`]), past the server's 503.
    pub fn admit(&self, subscriber: SubscriberId) -> Result<Admission, QueryError> {
        let semaphore = {
            let mut running = self.running.lock();
            running
                .entry(subscriber)
                .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_subscriber.max(1))))
                .clone()
        };
        let subscriber = semaphore.try_acquire_owned().map_err(|_| QueryError::Busy)?;
        let total = self.running_total.clone().try_acquire_owned().map_err(|_| QueryError::Overloaded)?;
        Ok(Admission { _subscriber: subscriber, _total: total })
    }

    /// A session holding `schema` as its only schema, with this query's own memory limit.
    fn session(&self, schema: Arc<dyn SchemaProvider>) -> SessionContext {
        let mut runtime = (*self.runtime).clone();
        runtime.memory_pool = Arc::new(QueryPool {
            shared: self.runtime.memory_pool.clone(),
            limit: self.config.query_memory_bytes,
            used: AtomicUsize::new(0),
        });
        let catalog = MemoryCatalogProvider::new();
        catalog.register_schema("public", schema).expect("a memory catalog takes schemas");
        let catalogs = MemoryCatalogProviderList::new();
        datafusion::catalog::CatalogProviderList::register_catalog(&catalogs, "datafusion".into(), Arc::new(catalog));
        let state = SessionStateBuilder::new_from_existing(self.template.clone())
            .with_catalog_list(Arc::new(catalogs))
            .with_runtime_env(Arc::new(runtime))
            .build();
        SessionContext::new_with_state(state)
    }

    /// What a DataFusion error may tell the caller, under this engine's limits.
    pub fn error(&self, e: DataFusionError) -> QueryError {
        QueryError::from_datafusion(e, self.config.query_memory_bytes)
    }

    /// `work`, to be done by `deadline` (the query's, counted from when it started).
    async fn in_time<T>(
        &self,
        deadline: tokio::time::Instant,
        work: impl std::future::Future<Output = DfResult<T>>,
    ) -> Result<T, QueryError> {
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| QueryError::Timeout(self.config.timeout.as_secs()))?
            .map_err(|e| self.error(e))
    }

    /// Plans `sql` against `scope`'s tables, refusing anything but a read of them. The
    /// deadline counts from here; scans check it, so planning past it stops too.
    pub async fn plan_sql(&self, scope: &ReadScope, sql: &str) -> Result<PlannedQuery, QueryError> {
        let statement = parse_select(sql)?;
        let started = tokio::time::Instant::now();
        let reads = Arc::new(Reads::new(self.config.timeout));
        let schema = Arc::new(ScopedSchema {
            scope: scope.clone(),
            sources: self.sources.clone(),
            reads: reads.clone(),
            tables: Mutex::new(HashMap::new()),
        });
        let state = self.session(schema).state();
        let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
        let deadline = started + self.config.timeout;
        let plan = self
            .in_time(deadline, async {
                let plan = state.statement_to_plan(statement).await?;
                options.verify_plan(&plan)?;
                Ok(plan)
            })
            .await?;
        let growing = crate::guard::check_plan(&plan)?;
        reads.hold(crate::guard::reserve_for_functions(
            &state.runtime_env().memory_pool,
            growing,
            self.config.target_partitions,
        )?);
        let plan = self.in_time(deadline, state.create_physical_plan(&plan)).await?;
        let plan = crate::guard::meter_windows(plan).map_err(|e| self.error(e))?;
        self.verify(&plan, &reads)?;
        Ok(PlannedQuery {
            plan,
            task: Arc::new(TaskContext::from(&state)),
            reads,
            started,
            config: self.config.clone(),
        })
    }

    /// Reads one member's rows of one dataset (the Mydex door): the rows `filters` select,
    /// by id, with the scope's columns.
    pub async fn read_member(
        &self,
        table: TableScope,
        filters: Vec<Expr>,
    ) -> Result<(Vec<RecordBatch>, Arc<Reads>), QueryError> {
        let reads = Arc::new(Reads::new(self.config.timeout));
        let provider = Arc::new(ScopedTable::new(table, self.sources.clone(), reads.clone()));
        let ctx = self.session(Arc::new(datafusion::catalog::MemorySchemaProvider::new()));
        let work = async {
            let mut df = ctx.read_table(provider)?;
            for f in filters {
                df = df.filter(f)?;
            }
            let df = df.sort(vec![col("id").sort(true, false)])?.limit(0, Some(self.config.max_rows + 1))?;
            df.collect().await
        };
        let batches = self.in_time(tokio::time::Instant::now() + self.config.timeout, work).await?;
        if batches.iter().map(RecordBatch::num_rows).sum::<usize>() > self.config.max_rows {
            return Err(QueryError::TooLarge(format!("{} rows", self.config.max_rows)));
        }
        Ok((batches, reads))
    }

    /// The defence in depth: every leaf of the final plan must be one of this request's
    /// scans, or a source of constants. A failure here is a bug elsewhere, so it is logged.
    fn verify(&self, plan: &Arc<dyn ExecutionPlan>, reads: &Reads) -> Result<(), QueryError> {
        let children = plan.children();
        if !children.is_empty() {
            return children.into_iter().try_for_each(|c| self.verify(c, reads));
        }
        let allowed = if let Some(exec) = plan.downcast_ref::<DataSourceExec>() {
            let source = exec.data_source();
            if let Some(files) = source.downcast_ref::<FileScanConfig>() {
                files.object_store_url == self.sources.store_url
                    && files
                        .file_groups
                        .iter()
                        .flat_map(|g| g.iter())
                        .all(|f| reads.allows_file(f.object_meta.location.as_ref()))
            } else {
                source.is::<MemorySourceConfig>()
            }
        } else {
            matches!(plan.name(), "PlaceholderRowExec" | "EmptyExec" | "LazyMemoryExec" | "WorkTableExec")
        };
        if allowed {
            Ok(())
        } else {
            tracing::error!(leaf = plan.name(), "a query plan reads outside its scoped tables; refused");
            Err(QueryError::NotAllowed("the query reads something other than the scoped tables".into()))
        }
    }
}

/// Only one `SELECT` (with `WITH`, `UNION`, subqueries ...): no EXPLAIN, COPY, SET, SHOW,
/// CREATE, INSERT, or anything else; and of a bounded shape ([`crate::guard`]).
fn parse_select(sql: &str) -> Result<DFStatement, QueryError> {
    crate::guard::check_text(sql)?;
    let mut statements = DFParserBuilder::new(sql)
        .build()
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| QueryError::Invalid(e.to_string()))?;
    if statements.len() != 1 {
        return Err(QueryError::NotAllowed("send exactly one SELECT statement".into()));
    }
    match statements.pop_front() {
        Some(DFStatement::Statement(s)) if matches!(*s, Statement::Query(_)) => {
            crate::guard::check_statement_shape(&s)?;
            Ok(DFStatement::Statement(s))
        }
        _ => Err(QueryError::NotAllowed("only SELECT queries are allowed".into())),
    }
}

/// A planned SQL query, ready to stream.
#[derive(Debug)]
pub struct PlannedQuery {
    plan: Arc<dyn ExecutionPlan>,
    task: Arc<TaskContext>,
    reads: Arc<Reads>,
    started: tokio::time::Instant,
    config: QueryConfig,
}

impl PlannedQuery {
    /// What the query reads: rows per (dataset, member), for the access log.
    pub fn reads(&self) -> &Reads {
        &self.reads
    }

    pub fn schema(&self) -> SchemaRef {
        self.plan.schema()
    }

    /// The answer's batches, under the deadline (counted from planning) and the row cap.
    pub fn execute(&self) -> Result<SendableRecordBatchStream, QueryError> {
        let inner = execute_stream(self.plan.clone(), self.task.clone())
            .map_err(|e| QueryError::from_datafusion(e, self.config.query_memory_bytes))?;
        Ok(Box::pin(Limited {
            schema: inner.schema(),
            inner,
            _reads: self.reads.clone(),
            deadline: Box::pin(tokio::time::sleep_until(self.started + self.config.timeout)),
            timeout: self.config.timeout.as_secs(),
            rows: 0,
            max_rows: self.config.max_rows,
            done: false,
        }))
    }
}

/// The answer stream under a deadline and a row cap: past either it ends with an error
/// (and dropping the inner stream cancels the query's tasks).
struct Limited {
    schema: SchemaRef,
    inner: SendableRecordBatchStream,
    /// What the query's scans materialised is counted in its memory until the answer ends.
    _reads: Arc<Reads>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: u64,
    rows: usize,
    max_rows: usize,
    done: bool,
}

impl Stream for Limited {
    type Item = DfResult<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(DataFusionError::External(Box::new(QueryError::Timeout(self.timeout))))));
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(batch))) => {
                self.rows += batch.num_rows();
                if self.rows > self.max_rows {
                    self.done = true;
                    let e = QueryError::TooLarge(format!("{} rows", self.max_rows));
                    return Poll::Ready(Some(Err(DataFusionError::External(Box::new(e)))));
                }
                Poll::Ready(Some(Ok(batch)))
            }
            other => other,
        }
    }
}

impl RecordBatchStream for Limited {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// The request's schema: one table per dataset the connection may read, built when the
/// query first names it.
#[derive(Debug)]
struct ScopedSchema {
    scope: ReadScope,
    sources: Sources,
    reads: Arc<Reads>,
    tables: Mutex<HashMap<String, Option<Arc<dyn TableProvider>>>>,
}

impl ScopedSchema {
    fn build(&self, name: &str) -> Option<Arc<dyn TableProvider>> {
        if let Some(t) = self.tables.lock().get(name) {
            return t.clone();
        }
        let schema = self.scope.datasets.iter().find(|d| d.dataset.name.as_str() == name)?;
        let table = TableScope::for_connection(&self.scope.connection, self.scope.members.clone(), schema.clone())
            .map(|t| Arc::new(ScopedTable::new(t, self.sources.clone(), self.reads.clone())) as Arc<dyn TableProvider>);
        self.tables.lock().insert(name.to_owned(), table.clone());
        table
    }
}

#[async_trait]
impl SchemaProvider for ScopedSchema {
    fn table_names(&self) -> Vec<String> {
        let names: Vec<String> = self.scope.datasets.iter().map(|d| d.dataset.name.to_string()).collect();
        names.into_iter().filter(|n| self.build(n).is_some()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.build(name))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.build(name).is_some()
    }
}

/// One query's view of the shared pool: its own limit, counted into the shared total.
#[derive(Debug)]
struct QueryPool {
    shared: Arc<dyn MemoryPool>,
    limit: usize,
    used: AtomicUsize,
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "trove-query({} of {} bytes)", self.used.load(Ordering::Relaxed), self.limit)
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "trove-query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.shared.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.shared.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.shared.grow(reservation, additional);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        self.shared.shrink(reservation, shrink);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DfResult<()> {
        let before = self.used.fetch_add(additional, Ordering::Relaxed);
        if before + additional > self.limit {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(DataFusionError::ResourcesExhausted(format!(
                "the query's memory limit of {} bytes",
                self.limit
            )));
        }
        if let Err(e) = self.shared.try_grow(reservation, additional) {
            self.used.fetch_sub(additional, Ordering::Relaxed);
            return Err(e);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}
