//! Test helpers, written once: a real trove server (the real router, real HTTP, a real
//! catalog) on port 0, seeded with the demo fixture, on SQLite or PostgreSQL.

pub mod abuse;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use catalog::{Catalog, Secret};
use ingest::{IngestConfig, Ingester};
use object_store::ObjectStore;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use trove::demo::DemoCredentials;

/// Which catalog store a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

/// Every store the suite must cover: SQLite always; PostgreSQL when
/// `TROVE_TEST_POSTGRES_URL` is set (`scripts/test.sh` sets it; CI refuses to run without).
pub fn stores() -> Vec<Store> {
    match std::env::var("TROVE_TEST_POSTGRES_URL") {
        Ok(_) => vec![Store::Sqlite, Store::Postgres],
        Err(_) => {
            assert!(std::env::var("CI").is_err(), "CI must run the PostgreSQL suite: set TROVE_TEST_POSTGRES_URL");
            eprintln!(
                "*** SKIPPED: PostgreSQL end-to-end runs (set TROVE_TEST_POSTGRES_URL, or run scripts/test.sh) ***"
            );
            vec![Store::Sqlite]
        }
    }
}

/// Which object store a test writes Parquet to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objects {
    Local,
    /// The S3 server of `TROVE_TEST_S3_*` (`scripts/start-s3.sh`), under a fresh prefix.
    S3,
}

/// Every object store the ingest suites must cover: the local directory always; S3 when
/// `TROVE_TEST_S3_ENDPOINT` is set (`scripts/test.sh` sets it; CI refuses to run without).
pub fn object_stores() -> Vec<Objects> {
    match std::env::var("TROVE_TEST_S3_ENDPOINT") {
        Ok(_) => vec![Objects::Local, Objects::S3],
        Err(_) => {
            assert!(std::env::var("CI").is_err(), "CI must run the S3 suite: set TROVE_TEST_S3_ENDPOINT");
            eprintln!("*** SKIPPED: S3 runs (run scripts/start-s3.sh, or scripts/test.sh) ***");
            vec![Objects::Local]
        }
    }
}

/// Every backend once, without running every pair: each catalog store with local objects,
/// then each other object store with SQLite.
pub fn backends() -> Vec<(Store, Objects)> {
    let local = stores().into_iter().map(|s| (s, Objects::Local));
    local.chain(object_stores().into_iter().skip(1).map(|o| (Store::Sqlite, o))).collect()
}

/// A subscriber's bearer token from `POST {base}/oauth2/token` (client credentials).
pub async fn client_token(client: &reqwest::Client, base: &str, client_id: &str, secret: &str) -> String {
    let resp = client
        .post(format!("{base}/oauth2/token"))
        .basic_auth(client_id, Some(secret))
        .form(&[("grant_type", "client_credentials"), ("scope", "mydex:pdx")])
        .send()
        .await
        .expect("token request");
    assert_eq!(resp.status(), StatusCode::OK);
    resp.json::<Value>().await.expect("token json")["access_token"].as_str().expect("access_token").to_owned()
}

/// POSTs `body` as JSON with `bearer` and returns the JSON answer (panics unless it is one).
pub async fn post_json(client: &reqwest::Client, url: &str, bearer: &str, body: &Value) -> Value {
    let resp = client.post(url).bearer_auth(bearer).json(body).send().await.expect("a request");
    resp.json().await.expect("a JSON answer")
}

/// The test S3 server's settings as `trove serve` reads them: `--object-store` and `AWS_*`.
pub fn s3_env(prefix: &str) -> (String, Vec<(&'static str, String)>) {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} (run scripts/start-s3.sh)"));
    let url = format!("s3://{}/{prefix}", var("TROVE_TEST_S3_BUCKET"));
    let env = vec![
        ("AWS_ENDPOINT", var("TROVE_TEST_S3_ENDPOINT")),
        ("AWS_ALLOW_HTTP", "true".to_owned()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", var("TROVE_TEST_S3_KEY")),
        ("AWS_SECRET_ACCESS_KEY", var("TROVE_TEST_S3_SECRET")),
    ];
    (url, env)
}

/// An object store of the given kind; S3 stores get a prefix of their own.
pub fn object_store(kind: Objects, local_dir: &std::path::Path) -> Arc<dyn ObjectStore> {
    match kind {
        Objects::Local => {
            trove::object_store(&trove::config::ObjectStoreLocation::Local(local_dir.to_owned())).expect("local store")
        }
        Objects::S3 => s3_store(&format!("test-{}", &Secret::generate().expose()[..12])),
    }
}

/// The test S3 server's bucket under `prefix`.
pub fn s3_store(prefix: &str) -> Arc<dyn ObjectStore> {
    let (url, env) = s3_env(prefix);
    let options = env.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v));
    trove::open_url(&url.parse().expect("an s3:// URL"), options).expect("S3 store")
}

/// A catalog URL for a fresh, empty store of the given kind in `dir`.
pub async fn fresh_catalog_url(store: Store, dir: &std::path::Path) -> String {
    match store {
        Store::Sqlite => Catalog::sqlite_url(&dir.join("catalog.db")),
        Store::Postgres => {
            let admin = std::env::var("TROVE_TEST_POSTGRES_URL").expect("TROVE_TEST_POSTGRES_URL");
            catalog::conformance::fresh_postgres_database(&admin).await
        }
    }
}

/// How a [`TestServer`] is set up.
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub store: Store,
    pub objects: Objects,
    /// Flush a partition once its oldest row is this old (long by default: tests flush by
    /// shutting down or calling [`TestServer::flush`]).
    pub flush_age: Duration,
    pub buffer_bytes: usize,
    /// At most this much of a dataset's buffer goes into one flush's file.
    pub flush_bytes: usize,
    pub ingest_inflight_bytes: usize,
    /// Resident memory past which writes are refused while the buffer is above half full
    /// (`IngestConfig::memory_limit`; none by default: a test process's memory is not the
    /// server's alone).
    pub memory_limit: Option<usize>,
    pub query: query::QueryConfig,
    /// Members of the demo fixture (uids 1..N).
    pub members: u32,
    pub body: trove::http::body::BodyLimits,
    pub connections: trove::http::listen::ConnectionLimits,
    /// The server's clock (the system's when `None`).
    pub clock: Option<Arc<dyn catalog::time::Clock>>,
}

impl TestConfig {
    pub fn new(store: Store) -> Self {
        TestConfig {
            store,
            objects: Objects::Local,
            flush_age: Duration::from_secs(3600),
            buffer_bytes: 256 << 20,
            flush_bytes: 8 << 20,
            ingest_inflight_bytes: 256 << 20,
            memory_limit: None,
            query: query::QueryConfig::default(),
            members: 10,
            body: Default::default(),
            connections: Default::default(),
            clock: None,
        }
    }
}

/// A running server with the demo fixture (10 members) and a client for it.
#[derive(Debug)]
pub struct TestServer {
    pub base: String,
    pub addr: SocketAddr,
    pub creds: DemoCredentials,
    pub catalog: Catalog,
    pub ingester: Arc<Ingester>,
    pub client: reqwest::Client,
    pub store: Store,
    /// Where the Parquet files go.
    pub objects: Arc<dyn ObjectStore>,
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub async fn spawn(store: Store) -> TestServer {
        Self::start(TestConfig::new(store)).await
    }

    pub async fn start(config: TestConfig) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut catalog = Catalog::connect(&fresh_catalog_url(config.store, dir.path()).await).await.expect("catalog");
        if let Some(clock) = config.clock.clone() {
            catalog = catalog.with_clock(clock);
        }
        let admin = Secret::generate();
        catalog.ensure_admin_token(Some(&admin)).await.expect("admin token");
        let creds = trove::demo::seed(&catalog, &admin, config.members).await.expect("demo fixture");
        let objects = object_store(config.objects, &dir.path().join("objects"));
        let ingest = IngestConfig {
            wal_dir: dir.path().join("wal"),
            durability: ingest::wal::Durability::Fsync,
            segment_bytes: 1 << 20,
            buffer_bytes: config.buffer_bytes,
            buffer_soft_bytes: config.buffer_bytes / 2,
            flush_age: config.flush_age,
            flush_bytes: config.flush_bytes,
            flush_tick: Duration::from_millis(50),
            compaction: ingest::compact::CompactionConfig { delete_grace: Duration::ZERO, ..Default::default() },
            // Tests compact when they ask to.
            compact_interval: Duration::from_secs(3600),
            inflight_bytes: config.ingest_inflight_bytes,
            max_rows_per_write: 1_000_000,
            memory_limit: config.memory_limit,
        };
        let ingester = Ingester::open(ingest, catalog.clone(), objects.clone()).await.expect("ingester");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let settings = trove::Settings {
            token_ttl: Duration::from_secs(3600),
            max_body_bytes: 64 * 1024,
            max_ingest_bytes: 32 << 20,
            body: config.body,
        };
        let app = trove::app(catalog.clone(), ingester.clone(), objects.clone(), config.query.clone(), settings)
            .expect("app");
        let connections = config.connections;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            let _ = trove::serve_on(listener, app, connections, async move {
                let _ = rx.await;
            })
            .await;
        });
        TestServer {
            base: format!("http://{addr}"),
            addr,
            creds,
            catalog,
            ingester,
            client: reqwest::Client::new(),
            store: config.store,
            objects,
            dir,
            shutdown: Some(tx),
            served: Some(served),
        }
    }

    /// Flushes every buffered row to Parquet now (hot files, several members' rows each).
    pub async fn flush(&self) {
        assert_eq!(self.ingester.flush_round(true).await, 0, "every flush succeeds");
    }

    /// Flushes every buffered row, then settles every hot file into per-member files, as
    /// compaction does once the hot window is over.
    pub async fn settle(&self) {
        self.flush().await;
        while self.ingester.settle_hot_files().await.expect("settling succeeds") > 0 {}
    }

    /// Moves every access-log entry still in the WAL to the catalog: a flush empties the
    /// buffer and asks the WAL writer to close its segment (which it does when idle), and
    /// the next flush moves that segment's entries.
    pub async fn settle_access_log(&self) {
        for _ in 0..3 {
            self.flush().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Graceful stop, as on SIGTERM: the server stops, then every acknowledged row is flushed.
    pub async fn stop(mut self) -> (Catalog, Arc<dyn ObjectStore>, tempfile::TempDir) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(served) = self.served.take() {
            let _ = served.await;
        }
        self.ingester.shutdown().await.expect("graceful shutdown flushes everything");
        let dir = tempfile::tempdir().expect("temp dir");
        let kept = std::mem::replace(&mut self.dir, dir);
        (self.catalog.clone(), self.objects.clone(), kept)
    }

    /// A `POST /v1/ingest/{dataset}` as energy-co's connection (`nid:key`), to finish.
    pub fn ingest_request(&self, dataset: &str, content_type: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
        let conn = &self.creds.subscribers[0].connection;
        self.client
            .post(self.url(&format!("/v1/ingest/{dataset}")))
            .bearer_auth(format!("{}:{}", conn.nid, conn.key))
            .header("content-type", content_type)
            .body(body)
    }

    /// POSTs `body` to `/v1/ingest/{dataset}` as energy-co's connection.
    pub async fn ingest(&self, dataset: &str, content_type: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let resp = self.ingest_request(dataset, content_type, body).send().await.expect("request");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request with an optional bearer token and JSON body; returns the status and
    /// the body parsed as JSON (`Value::Null` when empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (status, text) = self.call_text(method, path, bearer, body).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// As [`TestServer::call`], with the body as text.
    pub async fn call_text(
        &self,
        method: Method,
        path: &str,
        bearer: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, String) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = bearer {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        (status, resp.text().await.expect("body"))
    }

    pub fn admin(&self) -> &str {
        &self.creds.admin_token
    }

    /// An OAuth2 bearer token for the demo subscriber `name`.
    pub async fn subscriber_token(&self, name: &str) -> String {
        let s = self.creds.subscribers.iter().find(|s| s.name == name).expect("demo subscriber");
        client_token(&self.client, &self.url(""), &s.client_id, &s.client_secret).await
    }

    /// `con_id=..&key=..&source_type=connection` for demo member `uid` and subscriber `name`.
    pub fn member_query(&self, uid: i64, name: &str) -> String {
        let s = self.creds.subscribers.iter().find(|s| s.name == name).expect("demo subscriber");
        let m = &self.creds.members[uid as usize - 1];
        let k = &m.keys[&s.connection.nid.to_string()];
        format!("con_id={}&key={}&source_type=connection", k.con_id, k.key)
    }

    pub fn member_secret(&self, uid: i64) -> &str {
        &self.creds.members[uid as usize - 1].secret
    }
}

/// The value of `series` (a metric name with its labels, as Prometheus prints it) in a
/// `/metrics` text; 0 when absent (a counter not yet counted).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse::<f64>().ok()).unwrap_or(0.0)
}

/// Now, in epoch seconds (event times of test rows).
pub fn now_secs() -> i64 {
    use catalog::time::Clock;
    catalog::time::SystemClock.now_secs()
}

/// A free port on loopback, for a real binary to listen on. Chosen below the kernel's
/// ephemeral range: a port from `bind(0)` could be handed, between this check and the
/// binary's bind, to another test's server, whose `/health` would then answer for ours.
pub fn free_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let ephemeral_low: u16 = range.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(32_768);
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rand::Rng::random_range(&mut rng, 10_000..ephemeral_low.max(10_001));
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below {ephemeral_low}")
}

/// Resident set size of process `pid` in bytes (`VmRSS`), or `None` once it is gone.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    Some(process.status().ok()?.vmrss? * 1024)
}

/// Waits until a server on `port` answers `/health` (at most 30 s): how long it took.
pub async fn wait_healthy(client: &reqwest::Client, port: u16) -> Duration {
    let started = std::time::Instant::now();
    loop {
        if let Ok(r) = client.get(format!("http://127.0.0.1:{port}/health")).send().await
            && r.status().is_success()
        {
            return started.elapsed();
        }
        assert!(started.elapsed() < Duration::from_secs(30), "not ready after 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a Python `script` (with pyarrow, installed by `.ci/run`) on `args`; its stdout, or
/// `None` where Python or pyarrow is missing, which CI does not allow.
pub fn python(script: &str, args: &[&std::ffi::OsStr]) -> Option<String> {
    match std::process::Command::new("python3").args(["-c", script]).args(args).output() {
        Ok(out) if out.status.success() => Some(String::from_utf8(out.stdout).expect("utf-8 output")),
        other => {
            assert!(
                std::env::var("CI").is_err(),
                "CI must run the independent readers (pip install pyarrow): {other:?}"
            );
            eprintln!("*** SKIPPED: an independent-reader check (pip install pyarrow) ***");
            None
        }
    }
}

/// A connection made by a test: its id and `nid:key` credential.
#[derive(Debug, Clone)]
pub struct TestConnection {
    pub id: i64,
    pub nid: i64,
    pub key: String,
}

impl TestConnection {
    /// `Authorization: Bearer <nid>:<key>` for `/v1/ingest`.
    pub fn bearer(&self) -> String {
        format!("{}:{}", self.nid, self.key)
    }
}

impl TestServer {
    /// A new subscriber's OAuth2 bearer token, created by the operator.
    pub async fn new_subscriber(&self, name: &str) -> String {
        let (status, created) = self
            .call(Method::POST, "/v1/subscribers", Some(self.admin()), Some(serde_json::json!({"name": name})))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let (id, secret) = (created["client_id"].as_str().unwrap(), created["client_secret"].as_str().unwrap());
        client_token(&self.client, &self.url(""), id, secret).await
    }

    /// Creates, submits and approves a connection of the subscriber behind `token` (a
    /// sandbox connection); `live` also promotes it.
    pub async fn new_connection(&self, token: &str, terms: Value, live: bool) -> TestConnection {
        let (status, c) = self.call(Method::POST, "/v1/connections", Some(token), Some(terms)).await;
        assert_eq!(status, StatusCode::CREATED, "{c}");
        let id = c["id"].as_i64().expect("connection id");
        let at = |action: &str| format!("/v1/connections/{id}/{action}");
        assert_eq!(self.call(Method::POST, &at("submit"), Some(token), None).await.0, StatusCode::OK);
        let (status, approved) = self.call(Method::POST, &at("approve"), Some(self.admin()), None).await;
        assert_eq!(status, StatusCode::OK, "{approved}");
        if live {
            assert_eq!(self.call(Method::POST, &at("promote-request"), Some(token), None).await.0, StatusCode::OK);
            assert_eq!(self.call(Method::POST, &at("promote"), Some(self.admin()), None).await.0, StatusCode::OK);
        }
        TestConnection {
            id,
            nid: approved["nid"].as_i64().expect("nid"),
            key: approved["key"].as_str().expect("key").to_owned(),
        }
    }

    /// Member `uid` approves connection `id`: returns the `con_id=..&key=..` of the approval.
    pub async fn agree(&self, uid: i64, id: i64) -> String {
        let path = format!("/v1/members/{uid}/agreements/{id}/approve");
        let (status, a) = self.call(Method::POST, &path, Some(self.member_secret(uid)), None).await;
        assert_eq!(status, StatusCode::OK, "{a}");
        format!("con_id={}&key={}&source_type=connection", a["con_id"].as_str().unwrap(), a["key"].as_str().unwrap())
    }

    /// `POST /v1/query{query}` as `token`, answered in `accept`: the status, the headers and
    /// the body as bytes.
    pub async fn sql_as(
        &self,
        token: &str,
        query: &str,
        sql: &str,
        accept: &str,
    ) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let resp = self
            .client
            .post(self.url(&format!("/v1/query{query}")))
            .bearer_auth(token)
            .header("accept", accept)
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .expect("request");
        let (status, headers) = (resp.status(), resp.headers().clone());
        // A body cut off by a limit is an error mid-stream: keep what arrived.
        let body = resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
        (status, headers, body)
    }

    /// `POST /v1/query` as `token`, JSON answer parsed (`Value::Null` when not JSON).
    pub async fn sql(&self, token: &str, sql: &str) -> (StatusCode, Value) {
        let (status, _, body) = self.sql_as(token, "", sql, "application/json").await;
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Terms for a test connection: read and write every field of `datasets`.
pub fn terms(name: &str, datasets: &[&str]) -> Value {
    serde_json::to_value(catalog::conformance::terms(name, datasets)).expect("terms serialize")
}
