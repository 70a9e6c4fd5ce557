//! `GET /api/pds/transaction/{uid}.json`, `POST /api/pds/transaction?uid=...` and
//! `PUT /api/pds/transaction/{uid}.json?id=N`: one member's transactional rows through the
//! Mydex-compatible Connection API. Writes take the same durable path as `/v1/ingest` (an
//! update is a new version of the row); reads the same scoped tables as `/v1/query`.

use std::sync::Arc;

use axum::extract::{RawQuery, Request, State};
use axum::response::Response;
use catalog::{AccessAction, AccessDecision, DatasetKind, DatasetName, MemberId};
use datafusion::arrow::array::{Array, RecordBatch};
use ingest::{RowUpdate, Rows, WriteRequest};
use serde_json::{Map, Value, json};

use super::auth::MydexSubscriber;
use super::error::{ApiError, ApiQuery, ApiResult, BadRequest, Busy, NotFound, Refused, TooLarge, Unprocessable};
use super::mydex::{
    AddParams, Call, FileCall, Format, MydexParams, ReadParams, UpdateParams, answer, authorize, body_bytes, write_body,
};
use crate::AppState;

/// The rows of a body: `{"ds_x": {...}}` (one row) or `{"ds_x": [{...}, ...]}`.
fn rows_of(body: &[u8]) -> ApiResult<(String, Vec<Map<String, Value>>)> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| ApiError::bad_request("the body must be a JSON object"))?;
    let Value::Object(map) = value else {
        return Err(ApiError::unprocessable("the body must be a JSON object", Vec::new()));
    };
    if map.len() != 1 {
        return Err(ApiError::unprocessable("write one dataset: {\"ds_x\": {...}} or {\"ds_x\": [{...}]}", Vec::new()));
    }
    let (name, rows) = map.into_iter().next().expect("one entry");
    let rows = match rows {
        Value::Object(row) => vec![row],
        Value::Array(items) => items
            .into_iter()
            .map(|i| match i {
                Value::Object(row) => Ok(row),
                _ => Err(ApiError::unprocessable("every row must be an object", Vec::new())),
            })
            .collect::<ApiResult<_>>()?,
        _ => return Err(ApiError::unprocessable("rows must be an object or an array of objects", Vec::new())),
    };
    Ok((name, rows))
}

/// Add one row or many to a member's transactional dataset. Every row gets a stable id,
/// increasing per member and dataset.
#[utoipa::path(post, path = "/api/pds/transaction", tag = "mydex", security(("bearer" = [])),
    params(AddParams),
    request_body(content = Object, description = "`{\"ds_x\": {...}}` or `{\"ds_x\": [{...}, ...]}`"),
    responses(
        (status = 200, description = "`{\"success\": 1, \"ids\": [\"<row id>\", ...], \"last_insert_id\": <last id>}`", body = Object),
        BadRequest, Refused, TooLarge, Unprocessable, Busy))]
pub(super) async fn add(
    State(state): State<AppState>,
    subscriber: MydexSubscriber,
    ApiQuery(params): ApiQuery<MydexParams>,
    request: Request,
) -> ApiResult<Response> {
    let uid: MemberId = params.uid.as_deref().ok_or_else(|| ApiError::bad_request("uid= is required"))?.parse()?;
    let call = authorize(&state, subscriber, uid, Format::Json, &params).await?;
    state.ingester.admit()?;
    let (requested, mut rows) = rows_of(&body_bytes(&state, request).await?)?;
    let dataset = Arc::new(call.dataset(&state, &requested, AccessAction::Write, DatasetKind::Transactional).await?);
    if rows.is_empty() {
        return Err(ApiError::unprocessable("no rows to add", Vec::new()));
    }
    // The member is the one of `uid=`; a row naming another is refused, not redirected.
    for row in &mut rows {
        match row.get("member_uid") {
            None => {
                row.insert("member_uid".into(), json!(uid.get()));
            }
            Some(v) if v.as_i64() == Some(uid.get()) || v.as_str() == Some(&uid.to_string()) => {}
            Some(_) => return Err(ApiError::unprocessable("member_uid must be the uid= member", Vec::new())),
        }
    }
    let grant = call.scope.grant(&dataset.name).ok_or_else(ApiError::forbidden)?;
    let grant_of = |m| (m == uid).then_some(grant);
    let request = WriteRequest {
        connection: call.scope.agreement.connection_id,
        env: call.env,
        dataset: dataset.clone(),
        rows: Rows::Objects(rows),
        grant_of: &grant_of,
        idempotency: None,
        // The decoded rows count into the in-flight budget of ingest, as a body's do.
        memory: state.ingester.in_flight(0)?,
        logged: true,
    };
    let ids = match state.ingester.ingest(request).await {
        Ok(written) => written.ids,
        Err(e) => return Err(refused_write(&state, &call, &dataset.name, e).await),
    };
    call.record(
        &state,
        call.log(dataset.name.as_str(), AccessAction::Write, ids.len() as i64, AccessDecision::Allowed),
    )
    .await?;
    let last = ids.last().copied().unwrap_or(0);
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    Ok(answer(call.format, json!({"success": 1, "ids": ids, "last_insert_id": last})))
}

/// A write the ingester refused: a refusal by the agreement is logged first (the answer
/// waits for the entry).
async fn refused_write(state: &AppState, call: &Call, dataset: &DatasetName, e: ingest::IngestError) -> ApiError {
    if e.kind() == ingest::ErrorKind::Forbidden
        && let Err(logging) =
            call.record(state, call.log(dataset.as_str(), AccessAction::Write, 0, AccessDecision::Refused)).await
    {
        return logging;
    }
    e.into()
}

/// Update row `id`: the fields the body names replace the row's, in a new version of the
/// row; the others keep their values. Reads see only the newest version.
#[utoipa::path(put, path = "/api/pds/transaction/{file}", tag = "mydex", security(("bearer" = [])),
    params(UpdateParams),
    request_body(content = Object, description = "the fields, flat (`dataset=` names the dataset) or `{\"ds_x\": {...}}`"),
    responses(
        (status = 200, description = "`{\"success\": 1}`",
            content((Object = "application/json"), ("application/xml"))),
        BadRequest, Refused, NotFound, TooLarge, Unprocessable, Busy))]
pub(super) async fn update(State(state): State<AppState>, checked: FileCall, request: Request) -> ApiResult<Response> {
    let FileCall { call, params, .. } = checked;
    let uid = call.scope.agreement.member;
    let id = params.id("the row id")?;
    state.ingester.admit()?;
    let (requested, fields) = write_body(&body_bytes(&state, request).await?, params.dataset.as_deref())?;
    let dataset = Arc::new(call.dataset(&state, &requested, AccessAction::Write, DatasetKind::Transactional).await?);
    if fields.is_empty() {
        return Err(ApiError::unprocessable("no fields to update", Vec::new()));
    }
    if fields.contains_key("member_uid") {
        return Err(ApiError::unprocessable("member_uid cannot change", Vec::new()));
    }
    let grant = call.scope.grant(&dataset.name).ok_or_else(ApiError::forbidden)?;
    let update = RowUpdate {
        dataset: dataset.clone(),
        env: call.env,
        member: uid,
        id,
        connection: call.scope.agreement.connection_id,
        fields,
        grant,
    };
    if let Err(e) = state.ingester.update_row(update).await {
        return Err(refused_write(&state, &call, &dataset.name, e).await);
    }
    call.record(&state, call.log(dataset.name.as_str(), AccessAction::Write, 1, AccessDecision::Allowed)).await?;
    Ok(answer(call.format, json!({"success": 1})))
}

/// Read a member's rows: `{"<row id>": {"id", "ds_id", "instance", <granted fields>}}` (or,
/// with several datasets joined by `+`, one such object per dataset), values as strings,
/// ordered by id. `filters[<field>][operator]` and `[value]` narrow it (AND-ed);
/// `filters[id][operator]=>` with the last id seen reads only newer rows.
#[utoipa::path(get, path = "/api/pds/transaction/{file}", tag = "mydex", security(("bearer" = [])),
    params(ReadParams),
    responses(
        (status = 200, description = "the rows, keyed by row id",
            content((Object = "application/json"), ("application/xml"))),
        BadRequest, Refused, NotFound, Unprocessable, Busy))]
pub(super) async fn read(
    State(state): State<AppState>,
    checked: FileCall,
    RawQuery(raw): RawQuery,
) -> ApiResult<Response> {
    let started = std::time::Instant::now();
    let FileCall { subscriber, call, params } = checked;
    // The same slots as the SQL door: a subscriber's reads by either door count together.
    let _slot = state.query.admit(subscriber.0)?;
    let names = params.datasets()?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw.as_deref().unwrap_or("")).unwrap_or_default();
    let filters = query::mydex::parse_filters(&pairs)?;
    let instance = params.instance()?;
    let mut tables = Vec::with_capacity(names.len());
    let mut applied = vec![false; filters.len()];
    for name in &names {
        let dataset = Arc::new(call.dataset(&state, name, AccessAction::Read, DatasetKind::Transactional).await?);
        let refuse = || async {
            Err::<Response, ApiError>(call.refuse(&state, dataset.name.as_str(), AccessAction::Read).await)
        };
        let Ok(table) = query::TableScope::for_agreement(&call.scope, state.ingester.schema(&dataset)?) else {
            return refuse().await;
        };
        let mut exprs = Vec::with_capacity(filters.len() + 1);
        for (i, f) in filters.iter().enumerate() {
            match f.expr(&table) {
                Ok(Some(e)) => {
                    applied[i] = true;
                    exprs.push(e);
                }
                Ok(None) => {}
                Err(query::QueryError::Forbidden) => return refuse().await,
                Err(e) => return Err(e.into()),
            }
        }
        if let Some(i) = instance {
            exprs.push(datafusion::prelude::col("instance").eq(datafusion::prelude::lit(i)));
        }
        tables.push((dataset, table, exprs));
    }
    if let Some(i) = applied.iter().position(|a| !a) {
        return Err(ApiError::bad_request(format!(
            "filters[{}]: no such field in {}",
            filters[i].field,
            names.join("+")
        )));
    }
    let mut answers = Map::new();
    let mut budget = state.query.config().max_bytes;
    for (dataset, table, exprs) in tables {
        let (batches, _) = state.query.read_member(table, exprs).await?;
        let rows = rows_json(&batches, &mut budget)?;
        let log = call.log(dataset.name.as_str(), AccessAction::Read, rows.len() as i64, AccessDecision::Allowed);
        call.record(&state, log).await?;
        answers.insert(dataset.name.to_string(), Value::Object(rows));
    }
    metrics::histogram!("trove_query_duration_seconds", "door" => "mydex").record(started.elapsed().as_secs_f64());
    let body = if answers.len() == 1 {
        answers.into_iter().next().map(|(_, v)| v).unwrap_or_default()
    } else {
        Value::Object(answers)
    };
    Ok(answer(call.format, body))
}

/// Rows as Mydex shows them: keyed by id, `id` and `ds_id` first, values as strings, no
/// `member_uid` (the path names the member). The answer may take at most `budget` more
/// bytes (about: keys, values and quotes), counted as it is built, past which it is refused
/// (422) before more is built.
fn rows_json(batches: &[RecordBatch], budget: &mut usize) -> ApiResult<Map<String, Value>> {
    let limit = *budget;
    let mut spend = |bytes: usize| -> ApiResult<()> {
        *budget = budget
            .checked_sub(bytes)
            .ok_or_else(|| ApiError::from(query::QueryError::TooLarge(format!("{limit} bytes"))))?;
        Ok(())
    };
    use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
    let mut out = Map::new();
    let options = FormatOptions::default();
    for batch in batches {
        let schema = batch.schema();
        let formatters = batch
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &options))
            .collect::<Result<Vec<_>, _>>()
            .map_err(ingest::IngestError::from)?;
        let id_column = schema.index_of("id").map_err(ingest::IngestError::from)?;
        for row in 0..batch.num_rows() {
            let id = formatters[id_column].value(row).to_string();
            spend(2 * id.len() + 40)?;
            let mut fields = Map::new();
            fields.insert("id".into(), json!(id));
            fields.insert("ds_id".into(), json!(id));
            for (i, field) in schema.fields().iter().enumerate() {
                if matches!(field.name().as_str(), "id" | "member_uid") {
                    continue;
                }
                let column = batch.column(i);
                let value = if column.is_null(row) { Value::Null } else { json!(formatters[i].value(row).to_string()) };
                spend(field.name().len() + value.as_str().map_or(4, str::len) + 6)?;
                fields.insert(field.name().clone(), value);
            }
            out.insert(id, Value::Object(fields));
        }
    }
    Ok(out)
}
