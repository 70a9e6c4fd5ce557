//! `POST /v1/ingest/{dataset}`: high-rate delivery of transactional rows for many members at
//! once. A 200 means every row is durable and visible; any refused row stores nothing.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use catalog::{Connection, ConnectionId, DatasetKind, DatasetName, ErrorKind};
use ingest::decode::Format;
use ingest::{IdempotencyKey, InFlight, Rows, WriteRequest, validate};
use serde::{Deserialize, Serialize};

use super::auth::{bearer_of, subscriber_connection};
use super::error::{
    ApiError, ApiPath, ApiQuery, ApiResult, BadRequest, Busy, Conflict, NotFound, Refused, TooLarge, Unprocessable,
    UnsupportedMediaType,
};
use crate::AppState;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct IngestQuery {
    /// With a subscriber token: which of its connections writes (optional when it has one).
    #[param(value_type = Option<i64>, minimum = 1)]
    connection: Option<ConnectionId>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Accepted {
    accepted: usize,
}

/// A delivered row as the document shows it: `member_uid`, `instance` and the dataset's
/// fields, whose types `GET /v1/datasets/{name}` gives. The body is decoded against that
/// dataset's own schema, which one document for every dataset cannot spell out.
pub(super) enum IngestRow {}

impl utoipa::PartialSchema for IngestRow {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let uid = ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .description(Some("the member the row belongs to"));
        let instance = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).description(Some("default 0"));
        ObjectBuilder::new()
            .property("member_uid", uid)
            .required("member_uid")
            .property("instance", instance)
            .description(Some("`member_uid`, `instance` and fields of the dataset"))
            .into()
    }
}

impl utoipa::ToSchema for IngestRow {}

/// An Arrow IPC stream of the schema `GET /v1/datasets/{name}` serves.
pub(super) enum ArrowStream {}

impl utoipa::PartialSchema for ArrowStream {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for ArrowStream {}

/// The writing connection: `Bearer <nid>:<connection key>`, or a subscriber token naming
/// one of its connections. Only approved (sandbox) or live connections write.
async fn writing_connection(
    state: &AppState,
    headers: &HeaderMap,
    named: Option<ConnectionId>,
) -> ApiResult<Arc<Connection>> {
    let token = bearer_of(headers).ok_or_else(ApiError::unauthenticated)?;
    if let Some((nid, key)) = token.split_once(':') {
        let nid = nid.parse().map_err(|_| ApiError::unauthenticated())?;
        return Ok(state.auth_cache.connection(&state.catalog, nid, key).await?);
    }
    let subscriber = state.auth_cache.subscriber_token(&state.catalog, token).await?;
    subscriber_connection(state, subscriber, None, named).await
}

/// What is decided before the body is read.
struct Admitted {
    connection: Arc<Connection>,
    name: DatasetName,
    dataset: Arc<catalog::Dataset>,
    format: Format,
    content_type: String,
    request_key: Option<String>,
    /// The body's share of the bytes in flight (its declared length), grown as a body of
    /// unknown length arrives and as it is decoded, held until the write is answered.
    memory: InFlight,
}

/// Reads an ingest body of at most `limit` bytes, counting a body of unknown length into
/// `memory` as it arrives (429 once the budget is spent; 413 past the limit; 408 if it is
/// too slow, see [`super::body`]).
async fn read_body(body: axum::body::Body, limit: usize, memory: &mut InFlight) -> ApiResult<axum::body::Bytes> {
    use http_body::Body as _;
    let mut body = std::pin::pin!(body);
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = frame.map_err(|e| super::body::refusal(&e, limit))?;
        let Ok(data) = frame.into_data() else { continue };
        if out.len() + data.len() > limit {
            return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {limit} bytes")));
        }
        if !memory.body_at(out.len() + data.len()) {
            return Err(ingest::IngestError::Overloaded { retry_after_secs: 1 }.into());
        }
        out.extend_from_slice(&data);
    }
    Ok(out.freeze())
}

/// Everything a write is refused for before its body is read: credentials, the agreement,
/// pressure (a full buffer, or too many body bytes already in flight: a body counts by its
/// declared length, or as it arrives when it declares none), the dataset, and the headers.
async fn admit(
    state: &AppState,
    dataset: &str,
    named: Option<ConnectionId>,
    headers: &HeaderMap,
) -> ApiResult<Admitted> {
    // Everything below is decided as of now: a revocation committed before this point holds.
    state.auth_cache.refresh(&state.catalog).await?;
    let connection = writing_connection(state, headers, named).await?;
    let terms = &connection.approved().ok_or_else(ApiError::forbidden)?.terms;
    state.ingester.admit()?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .unwrap_or(0)
        .min(state.settings.max_ingest_bytes);
    let memory = state.ingester.in_flight(declared)?;
    let name: DatasetName = dataset.parse().map_err(|_| ApiError::not_found("dataset"))?;
    let dataset = match state.auth_cache.dataset(&state.catalog, &name).await {
        Ok(d) if d.kind == DatasetKind::Transactional => d,
        Ok(_) => return Err(ApiError::bad_request("a metadata dataset: write it through /api/pds/pds")),
        Err(e) if e.kind() == ErrorKind::NotFound => return Err(ApiError::not_found("dataset")),
        Err(e) => return Err(e.into()),
    };
    let writable = terms.datasets.get(&name).is_some_and(|g| !g.write.is_empty());
    if !writable || !validate::dataset_offered(&dataset, connection.environment.into()) {
        return Err(ApiError::forbidden());
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let request_key = headers.get("idempotency-key").map(|v| v.to_str().map(str::to_owned));
    let request_key =
        request_key.transpose().map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?;
    let format = Format::from_content_type(&content_type).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send application/x-ndjson, application/json, text/csv or application/vnd.apache.arrow.stream",
        )
    })?;
    Ok(Admitted { connection, name, dataset, format, content_type, request_key, memory })
}

/// Reads and drops a refused body before the refusal is answered: hyper closes a connection
/// whose request body was left unread, and a client still sending would see a broken pipe
/// instead of the refusal (and, for a 429/503, its `Retry-After`). Frames are dropped as they
/// arrive, so this holds no memory; past `limit` bytes or 5 seconds the connection is closed
/// after all.
async fn drained(body: axum::body::Body, limit: usize, refusal: ApiError) -> ApiError {
    use futures::StreamExt;
    let mut body = body.into_data_stream();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut read = 0;
        while let Some(Ok(frame)) = body.next().await {
            read += frame.len();
            if read > limit {
                break;
            }
        }
    })
    .await;
    refusal
}

/// Deliver rows: NDJSON, a JSON array, CSV with a header, or an Arrow IPC stream. 409: a
/// retry while the first request with its `Idempotency-Key` is still in flight.
#[utoipa::path(post, path = "/v1/ingest/{dataset}", tag = "ingest", security(("bearer" = [])),
    params(("dataset" = String, Path, example = "ds_energy_consumption"), IngestQuery,
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$",
            description = "visible ASCII; a retry with the same key and body gets the first answer")),
    request_body(
        description = "rows naming `member_uid` (and optionally `instance`); NDJSON is one row a line, CSV a header of field names",
        content(
            (Vec<IngestRow> = "application/x-ndjson"),
            (Vec<IngestRow> = "application/json", example = json!([
                {"member_uid": 1, "field_energy_reading_timestamp": 1764000000, "field_energy_reading_value": 1.5}])),
            (Vec<IngestRow> = "text/csv"),
            (ArrowStream = "application/vnd.apache.arrow.stream"))),
    responses((status = 200, body = Accepted), BadRequest, Refused, NotFound, Conflict, TooLarge, UnsupportedMediaType,
        Unprocessable, Busy))]
pub(super) async fn ingest(
    State(state): State<AppState>,
    ApiPath(dataset): ApiPath<String>,
    ApiQuery(q): ApiQuery<IngestQuery>,
    request: Request,
) -> ApiResult<axum::Json<Accepted>> {
    let (parts, body) = request.into_parts();
    let Admitted { connection, name, dataset, format, content_type, request_key, mut memory } =
        match admit(&state, &dataset, q.connection, &parts.headers).await {
            Ok(admitted) => admitted,
            Err(refusal) => return Err(drained(body, state.settings.max_ingest_bytes, refusal).await),
        };
    let body = read_body(body, state.settings.max_ingest_bytes, &mut memory).await?;
    metrics::counter!("trove_ingest_body_bytes_total", "dataset" => name.to_string()).increment(body.len() as u64);
    // The agreements in force when the request starts decide every row. Members are on one
    // of a few versions: resolve each version's grant once, not per row.
    let agreements = state.auth_cache.agreements(&state.catalog, connection.id).await?;
    let by_version: Vec<(catalog::AgreementVersion, Option<&catalog::DatasetGrant>)> =
        connection.revisions.iter().map(|r| (r.version, r.terms.datasets.get(&name))).collect();
    let grant_of = |member| {
        let version = agreements.get(member)?;
        by_version.iter().find(|(v, _)| *v == version).and_then(|(_, g)| *g)
    };
    let written = state
        .ingester
        .ingest(WriteRequest {
            connection: connection.id,
            env: connection.environment.into(),
            dataset,
            rows: Rows::Body { format, bytes: body },
            grant_of: &grant_of,
            idempotency: request_key.map(|key| IdempotencyKey { key, content_type }),
            memory,
            logged: false,
        })
        .await?;
    Ok(axum::Json(Accepted { accepted: written.accepted }))
}
