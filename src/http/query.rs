//! `POST /v1/query`: read-only SQL over the caller's scoped tables, answered as JSON,
//! NDJSON, CSV, an Arrow IPC stream or Parquet (by `Accept`), streamed batch by batch.
//!
//! Planning errors and failures before the first batch are problem+json; a failure later
//! (the deadline, the row or byte cap) aborts the body, so a client never mistakes a cut
//! answer for a whole one. The access log entries of the read (one per member scanned) are
//! durable in the write-ahead log before the first byte (refusals go to the catalog at once).

use std::io::Write;
use std::sync::Arc;

use parking_lot::Mutex;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use catalog::{AccessAction, AccessDecision, AccessLogEntry, ConnectionId, DatasetKind};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use futures::StreamExt;
use serde::Deserialize;

use super::auth::{Principal, subscriber_connection};
use super::error::{ApiError, ApiJson, ApiQuery, ApiResult, Busy, JsonBody, NotAcceptable, Refused};
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct QueryBody {
    /// One `SELECT` over the tables your connection may read (one per transactional dataset).
    #[schema(example = "SELECT member_uid, count(*) AS n FROM ds_energy_consumption GROUP BY member_uid")]
    sql: String,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct QueryParams {
    /// Which of your connections reads (optional when you have exactly one approved).
    #[param(value_type = Option<i64>, minimum = 1)]
    connection: Option<ConnectionId>,
    /// Or name it by a member's `con_id` (`<uid>-<nid>`).
    #[param(pattern = "^[1-9][0-9]{0,17}-[1-9][0-9]{0,17}$")]
    con_id: Option<String>,
}

/// The answer formats, by `Accept`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    NdJson,
    Csv,
    Arrow,
    Parquet,
}

impl Format {
    const TYPES: [(&'static str, Format); 5] = [
        ("application/json", Format::Json),
        ("application/x-ndjson", Format::NdJson),
        ("text/csv", Format::Csv),
        ("application/vnd.apache.arrow.stream", Format::Arrow),
        ("application/vnd.apache.parquet", Format::Parquet),
    ];

    /// The first supported type the client accepts (JSON for none or `*/*`).
    fn negotiate(headers: &HeaderMap) -> ApiResult<Format> {
        let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return Ok(Format::Json) };
        for part in accept.split(',') {
            let media = part.split(';').next().unwrap_or("").trim();
            if media == "*/*" || media == "application/*" {
                return Ok(Format::Json);
            }
            if let Some((_, f)) = Self::TYPES.iter().find(|(t, _)| t.eq_ignore_ascii_case(media)) {
                return Ok(*f);
            }
        }
        Err(ApiError::new(
            axum::http::StatusCode::NOT_ACCEPTABLE,
            "answers are application/json, application/x-ndjson, text/csv, application/vnd.apache.arrow.stream or application/vnd.apache.parquet",
        ))
    }

    fn content_type(self) -> &'static str {
        Self::TYPES.iter().find(|(_, f)| *f == self).map(|(t, _)| *t).expect("every format has a type")
    }
}

/// Read-only SQL over the datasets your agreements let you read. Each transactional dataset
/// is a table named after it holding only the rows of members whose approved agreement lets
/// this connection read it, and only the granted fields, plus `member_uid`, `instance`, `id`.
#[utoipa::path(post, path = "/v1/query", tag = "query", security(("bearer" = [])),
    params(QueryParams),
    request_body = QueryBody,
    responses(
        (status = 200, description = "the rows, in the format `Accept` asked for (JSON: an array of objects; NDJSON: one a line)",
            content((Vec<Object> = "application/json"), ("application/x-ndjson"), ("text/csv"),
                ("application/vnd.apache.arrow.stream"), ("application/vnd.apache.parquet"))),
        JsonBody, Refused, NotAcceptable, Busy))]
pub(super) async fn query(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<QueryParams>,
    ApiJson(body): ApiJson<QueryBody>,
) -> ApiResult<Response> {
    let Principal::Subscriber(subscriber) = principal else { return Err(ApiError::forbidden()) };
    let started = std::time::Instant::now();
    let format = Format::negotiate(&headers)?;
    // `Principal` brought the authorization cache to the catalog's generation as the request
    // started: a revocation committed before then holds.
    let connection = subscriber_connection(&state, subscriber, params.con_id.as_deref(), params.connection).await?;
    let permit = state.query.admit(subscriber)?;
    let members = state.auth_cache.agreements(&state.catalog, connection.id).await?;
    let mut datasets = Vec::new();
    if let Some(serving) = connection.approved() {
        for name in serving.terms.datasets.keys() {
            let dataset = state.auth_cache.dataset(&state.catalog, name).await?;
            if dataset.kind == DatasetKind::Transactional {
                datasets.push(state.ingester.schema(&dataset)?);
            }
        }
    }
    let purpose = connection.approved().map(|r| r.terms.purposes.join("; ")).unwrap_or_default();
    let entry = |member, version, dataset: &str, rows, decision| AccessLogEntry {
        at: state.catalog.clock().now_ms(),
        member,
        subscriber_id: subscriber,
        connection_id: connection.id,
        agreement_version: version,
        purpose: purpose.clone(),
        dataset: dataset.to_owned(),
        action: AccessAction::Read,
        rows,
        decision,
    };
    let scope = query::ReadScope { connection: connection.clone(), members: members.clone(), datasets };
    let planned = match state.query.plan_sql(&scope, &body.sql).await {
        Ok(p) => p,
        Err(e) => {
            if matches!(
                e,
                query::QueryError::NotAllowed(_) | query::QueryError::Invalid(_) | query::QueryError::Forbidden
            ) {
                metrics::counter!("trove_query_refusals_total", "door" => "sql").increment(1);
                state.ingester.log_access(vec![entry(None, None, "", 0, AccessDecision::Refused)]).await?;
            }
            return Err(e.into());
        }
    };
    let log: Vec<AccessLogEntry> = planned
        .reads()
        .rows()
        .into_iter()
        .map(|((dataset, member), rows)| {
            entry(Some(member), members.get(member), dataset.as_str(), rows, AccessDecision::Allowed)
        })
        .collect();
    state.ingester.log_access(log).await?;
    metrics::histogram!("trove_query_plan_duration_seconds").record(started.elapsed().as_secs_f64());
    // From here the read is allowed and logged: a failure is the query's, not a refusal,
    // and says so (the access log holds the read, not a refusal).
    let ran = |e: query::QueryError| match e {
        query::QueryError::Invalid(m) => {
            ApiError::from(query::QueryError::Invalid(format!("the query failed while running: {m}")))
        }
        other => other.into(),
    };
    let mut stream = planned.execute().map_err(ran)?;
    let schema = planned.schema();
    let max_bytes = state.query.config().max_bytes;
    let mut encoder = Encoder::new(format, &schema).map_err(internal)?;
    // The first batch decides between a problem+json and a 200.
    let first = match stream.next().await {
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => return Err(ran(state.query.error(e))),
        None => None,
    };
    let mut head = encoder.begin().map_err(internal)?;
    if let Some(b) = &first {
        head.extend_from_slice(&encoder.batch(b).map_err(internal)?);
    }
    // The unfold's state: the answer stream, its encoder (gone once the answer ended), bytes
    // sent, the subscriber's query slot (released with the body) and the engine.
    let state0 = (stream, Some(encoder), head.len(), permit, state.query.clone());
    let rest = futures::stream::unfold(state0, move |(mut stream, mut encoder, mut sent, permit, engine)| async move {
        let enc = encoder.as_mut()?;
        let chunk = match stream.next().await {
            Some(Ok(b)) => enc.batch(&b).map_err(|e| failure(query::QueryError::Internal(e.to_string()))),
            Some(Err(e)) => Err(failure(engine.error(e))),
            None => {
                metrics::histogram!("trove_query_duration_seconds", "door" => "sql")
                    .record(started.elapsed().as_secs_f64());
                let end = encoder
                    .take()
                    .expect("checked above")
                    .finish()
                    .map_err(|e| failure(query::QueryError::Internal(e.to_string())));
                return Some((end.map(Bytes::from), (stream, None, sent, permit, engine)));
            }
        };
        let chunk = chunk.and_then(|c| {
            sent += c.len();
            if sent > max_bytes {
                Err(failure(query::QueryError::TooLarge(format!("{max_bytes} bytes"))))
            } else {
                Ok(Bytes::from(c))
            }
        });
        // After an error the answer ends (the body is aborted).
        let encoder = if chunk.is_err() { None } else { encoder };
        Some((chunk, (stream, encoder, sent, permit, engine)))
    });
    let body = futures::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(head)) }).chain(rest);
    let mut response = Body::from_stream(body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    Ok(response)
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::from(query::QueryError::Internal(e.to_string()))
}

/// An error after the answer started: logged, then the body aborts.
fn failure(e: query::QueryError) -> std::io::Error {
    tracing::warn!(error = %e, "query answer cut off");
    std::io::Error::other(e.to_string())
}

/// Bytes written by the Arrow and Parquet writers, taken out as they come.
#[derive(Debug, Clone, Default)]
struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock())
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

type EncodeResult = Result<Vec<u8>, datafusion::error::DataFusionError>;

/// Encodes an answer batch by batch.
enum Encoder {
    Json { rows: usize },
    NdJson,
    Csv { schema: SchemaRef, header: bool },
    Arrow { buf: SharedBuf, writer: datafusion::arrow::ipc::writer::StreamWriter<SharedBuf> },
    Parquet { buf: SharedBuf, writer: datafusion::parquet::arrow::ArrowWriter<SharedBuf> },
}

impl Encoder {
    fn new(format: Format, schema: &SchemaRef) -> Result<Encoder, datafusion::error::DataFusionError> {
        Ok(match format {
            Format::Json => Encoder::Json { rows: 0 },
            Format::NdJson => Encoder::NdJson,
            Format::Csv => Encoder::Csv { schema: schema.clone(), header: true },
            Format::Arrow => {
                let buf = SharedBuf::default();
                Encoder::Arrow {
                    writer: datafusion::arrow::ipc::writer::StreamWriter::try_new(buf.clone(), schema)?,
                    buf,
                }
            }
            Format::Parquet => {
                let buf = SharedBuf::default();
                let props = datafusion::parquet::file::properties::WriterProperties::builder()
                    .set_compression(datafusion::parquet::basic::Compression::ZSTD(Default::default()))
                    .build();
                Encoder::Parquet {
                    writer: datafusion::parquet::arrow::ArrowWriter::try_new(buf.clone(), schema.clone(), Some(props))?,
                    buf,
                }
            }
        })
    }

    fn begin(&mut self) -> EncodeResult {
        Ok(match self {
            Encoder::Json { .. } => b"[".to_vec(),
            Encoder::Arrow { buf, .. } | Encoder::Parquet { buf, .. } => buf.take(),
            _ => Vec::new(),
        })
    }

    fn batch(&mut self, batch: &RecordBatch) -> EncodeResult {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        use datafusion::arrow::json::{WriterBuilder, writer::JsonArray, writer::LineDelimited};
        Ok(match self {
            Encoder::Json { rows } => {
                let mut w = WriterBuilder::new().with_explicit_nulls(true).build::<_, JsonArray>(Vec::new());
                w.write(batch)?;
                w.finish()?;
                let out = w.into_inner();
                // `[{...},{...}]` → `{...},{...}`, joined to what came before.
                let inner = &out[1..out.len() - 1];
                let mut chunk = Vec::with_capacity(inner.len() + 1);
                if *rows > 0 {
                    chunk.push(b',');
                }
                chunk.extend_from_slice(inner);
                *rows += batch.num_rows();
                chunk
            }
            Encoder::NdJson => {
                let mut w = WriterBuilder::new().with_explicit_nulls(true).build::<_, LineDelimited>(Vec::new());
                w.write(batch)?;
                w.finish()?;
                w.into_inner()
            }
            Encoder::Csv { header, .. } => {
                let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(*header).build(Vec::new());
                w.write(batch)?;
                *header = false;
                w.into_inner()
            }
            Encoder::Arrow { buf, writer } => {
                writer.write(batch)?;
                buf.take()
            }
            Encoder::Parquet { buf, writer } => {
                writer.write(batch)?;
                writer.flush()?;
                buf.take()
            }
        })
    }

    fn finish(self) -> EncodeResult {
        Ok(match self {
            Encoder::Json { .. } => b"]".to_vec(),
            Encoder::NdJson => Vec::new(),
            Encoder::Csv { schema, header } => {
                // An empty answer still names its columns.
                if header {
                    let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(Vec::new());
                    w.write(&RecordBatch::new_empty(schema))?;
                    w.into_inner()
                } else {
                    Vec::new()
                }
            }
            Encoder::Arrow { buf, mut writer } => {
                writer.finish()?;
                buf.take()
            }
            Encoder::Parquet { buf, writer } => {
                writer.close()?;
                buf.take()
            }
        })
    }
}
