//! `/api/pds/pds/{uid}.json|.xml`: members' metadata datasets through the Mydex-compatible
//! Connection API. Every call needs the subscriber (bearer token or `api_key`) and the
//! member's `con_id` + `key`; it sees and changes only what the agreement in force grants.

use std::collections::BTreeMap;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use catalog::{
    AccessAction, AccessDecision, AccessLogEntry, AgreementScope, DataEnvironment, Dataset, DatasetKind, DatasetName,
    ErrorKind, MemberId, MetadataInstance,
};
use ingest::validate;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::auth::{MydexSubscriber, con_id_for};
use super::error::{ApiError, ApiPath, ApiQuery, ApiResult, Problem};
use super::xml;
use crate::AppState;

/// The Mydex query parameters (unknown ones are ignored, as Mydex clients send extras).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(super) struct MydexParams {
    /// The member connection key.
    key: Option<String>,
    /// `"<uid>-<nid>"`.
    con_id: Option<String>,
    /// `connection`.
    #[allow(dead_code, reason = "accepted and documented; Mydex clients always send it")]
    source_type: Option<String>,
    /// `ds_x`, the older `field_ds_x`, or several joined with `+`.
    dataset: Option<String>,
    /// 0-based instance to read.
    instance: Option<String>,
    /// The subscriber's key, instead of a bearer token.
    #[allow(dead_code, reason = "documented here; read from the raw query by `MydexSubscriber`")]
    api_key: Option<String>,
    /// The instance id to update (`instance_0` is id 1).
    id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Xml,
}

/// `12.json` → (12, Json).
fn parse_file(file: &str) -> ApiResult<(MemberId, Format)> {
    let (uid, format) = match file.rsplit_once('.') {
        Some((uid, "json")) => (uid, Format::Json),
        Some((uid, "xml")) => (uid, Format::Xml),
        _ => return Err(ApiError::not_found("route")),
    };
    Ok((uid.parse()?, format))
}

fn answer(format: Format, body: Value) -> Response {
    match format {
        Format::Json => axum::Json(body).into_response(),
        Format::Xml => xml::response(&body),
    }
}

/// Everything a Mydex call establishes before touching data.
struct Call {
    scope: AgreementScope,
    format: Format,
    env: DataEnvironment,
}

async fn authorize(state: &AppState, subscriber: MydexSubscriber, file: &str, params: &MydexParams) -> ApiResult<Call> {
    let (uid, format) = parse_file(file)?;
    let con_id = con_id_for(uid, params.con_id.as_deref())?;
    let key = params.key.as_deref().ok_or_else(ApiError::unauthenticated)?;
    let scope = state.catalog.agreement_scope(subscriber.0, con_id, key).await?;
    let env = scope.environment.into();
    Ok(Call { scope, format, env })
}

impl Call {
    fn log(&self, dataset: &str, action: AccessAction, rows: i64, decision: AccessDecision) -> AccessLogEntry {
        AccessLogEntry {
            at: now_ms(),
            member: self.scope.agreement.member,
            subscriber_id: self.scope.subscriber_id,
            connection_id: self.scope.agreement.connection_id,
            agreement_version: Some(self.scope.agreement.version),
            purpose: self.scope.purpose(),
            dataset: dataset.to_owned(),
            action,
            rows,
            decision,
        }
    }

    /// Resolves a requested dataset name to a metadata dataset the agreement covers. Unknown
    /// and ungranted datasets get the same 403; the refusal is logged.
    async fn dataset(&self, state: &AppState, requested: &str, action: AccessAction) -> ApiResult<Dataset> {
        let refuse = || async {
            state.catalog.record_access(&[self.log(requested, action, 0, AccessDecision::Refused)]).await?;
            Err::<Dataset, _>(ApiError::forbidden())
        };
        let Ok(name) = DatasetName::parse_mydex(requested) else { return refuse().await };
        if self.scope.grant(&name).is_none() {
            return refuse().await;
        }
        let dataset = match state.catalog.dataset(&name).await {
            Ok(d) => d,
            Err(e) if e.kind() == ErrorKind::NotFound => return refuse().await,
            Err(e) => return Err(e.into()),
        };
        if !validate::dataset_offered(&dataset, self.env) {
            return refuse().await;
        }
        if dataset.kind != DatasetKind::Metadata {
            return Err(ApiError::bad_request(format!(
                "{} is a transactional dataset: use /api/pds/transaction",
                dataset.name
            )));
        }
        Ok(dataset)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Values travel as strings, as in the public Mydex API.
fn as_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn instance_view(instance: &MetadataInstance, readable: &query::Readable<'_>) -> Value {
    let mut fields = Map::new();
    for (field, writable) in &readable.fields {
        let access = json!({"r": {"a": 1, "s": "A"}, "w": {"a": i32::from(*writable), "s": "A"}});
        let value = as_text(instance.values.get(field.name.as_str()));
        fields.insert(field.name.to_string(), json!({"value": value, "access": access}));
    }
    Value::Object(fields)
}

/// Read a member's metadata dataset(s): only the instances and fields the agreement allows.
#[utoipa::path(get, path = "/api/pds/pds/{file}", tag = "mydex", security(("bearer" = [])),
    params(("file" = String, Path, description = "`<uid>.json` or `<uid>.xml`"), MydexParams),
    responses(
        (status = 200, description = "`{\"ds_x\": {\"instance_N\": {\"<field>\": {\"value\": \"...\", \"access\": {...}}}}}`", body = Object),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub(super) async fn read(
    State(state): State<AppState>,
    subscriber: MydexSubscriber,
    ApiPath(file): ApiPath<String>,
    ApiQuery(params): ApiQuery<MydexParams>,
) -> ApiResult<Response> {
    let call = authorize(&state, subscriber, &file, &params).await?;
    let requested = params.dataset.as_deref().unwrap_or("");
    // `+` in a query string decodes to a space.
    let names: Vec<&str> = requested.split(['+', ' ']).filter(|s| !s.is_empty()).collect();
    if names.is_empty() {
        return Err(ApiError::bad_request("dataset= is required"));
    }
    let instance = match params.instance.as_deref() {
        None | Some("") => None,
        Some(i) => Some(i.parse::<i64>().ok().filter(|i| *i >= 0).ok_or_else(|| ApiError::bad_request("instance must be 0 or more"))?),
    };
    let mut body = Map::new();
    let mut log = Vec::new();
    for requested in names {
        let dataset = call.dataset(&state, requested, AccessAction::Read).await?;
        let readable = query::scope::readable(&call.scope, &dataset).map_err(|_| ApiError::forbidden())?;
        let member = call.scope.agreement.member;
        let instances = state.catalog.metadata_instances(member, &dataset.name, call.env).await?;
        let mut out = Map::new();
        for i in instances.iter().filter(|i| instance.is_none_or(|n| n == i.index())) {
            out.insert(format!("instance_{}", i.index()), instance_view(i, &readable));
        }
        log.push(call.log(dataset.name.as_str(), AccessAction::Read, out.len() as i64, AccessDecision::Allowed));
        body.insert(dataset.name.to_string(), Value::Object(out));
    }
    state.catalog.record_access(&log).await?;
    Ok(answer(call.format, Value::Object(body)))
}

/// The body of a metadata write: `{"ds_x": {"<field>": "value", ...}}`, or for an update
/// the fields flat with `dataset=` naming the dataset.
fn write_body(body: &[u8], dataset_param: Option<&str>) -> ApiResult<(String, Map<String, Value>)> {
    let value: Value = serde_json::from_slice(body).map_err(|_| ApiError::bad_request("the body must be a JSON object"))?;
    let Value::Object(mut map) = value else {
        return Err(ApiError::unprocessable("the body must be a JSON object", Vec::new()));
    };
    let wrapped = map.len() == 1 && map.keys().next().is_some_and(|k| DatasetName::parse_mydex(k).is_ok());
    if wrapped {
        let (name, inner) = map.into_iter().next().expect("one entry");
        return match inner {
            Value::Object(fields) => Ok((name, fields)),
            _ => Err(ApiError::unprocessable(format!("{name} must hold an object of fields"), Vec::new())),
        };
    }
    match dataset_param {
        Some(d) if !map.keys().any(|k| k.starts_with("ds_")) => Ok((d.to_owned(), std::mem::take(&mut map))),
        _ => Err(ApiError::unprocessable("write one dataset: {\"ds_x\": {...}}", Vec::new())),
    }
}

/// Checks values and the write grant, then stores through `store`. 422 for bad values
/// (naming fields, never values), 403 for fields the agreement does not let this
/// connection write.
async fn write(
    state: &AppState,
    call: &Call,
    requested: &str,
    fields: &Map<String, Value>,
) -> ApiResult<(Dataset, BTreeMap<String, Value>)> {
    let dataset = call.dataset(state, requested, AccessAction::Write).await?;
    if fields.is_empty() {
        return Err(ApiError::unprocessable("no fields to write", Vec::new()));
    }
    let values = validate::check_values(&dataset, fields).map_err(ApiError::from)?;
    if let Err(e) = validate::authorize_write(&call.scope, &dataset, values.keys().map(String::as_str)) {
        state.catalog.record_access(&[call.log(dataset.name.as_str(), AccessAction::Write, 0, AccessDecision::Refused)]).await?;
        return Err(e.into());
    }
    Ok((dataset, values))
}

async fn body_bytes(state: &AppState, request: Request) -> ApiResult<axum::body::Bytes> {
    axum::body::to_bytes(request.into_body(), state.settings.max_body_bytes)
        .await
        .map_err(|_| ApiError::new(axum::http::StatusCode::PAYLOAD_TOO_LARGE, "the body is too large"))
}

/// Create a metadata instance: `{"ds_x": {"<field>": "value", ...}}`.
#[utoipa::path(post, path = "/api/pds/pds/{file}", tag = "mydex", security(("bearer" = [])),
    params(("file" = String, Path, description = "`<uid>.json` or `<uid>.xml`"), MydexParams),
    request_body(content = Object, description = "`{\"ds_x\": {\"<field>\": \"value\"}}`"),
    responses(
        (status = 200, description = "`{\"success\": 1, \"dataset\": \"ds_x\", \"instance\": N, \"id\": \"<id>\"}`", body = Object),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem)))]
pub(super) async fn create(
    State(state): State<AppState>,
    subscriber: MydexSubscriber,
    ApiPath(file): ApiPath<String>,
    ApiQuery(params): ApiQuery<MydexParams>,
    request: Request,
) -> ApiResult<Response> {
    let call = authorize(&state, subscriber, &file, &params).await?;
    let (requested, fields) = write_body(&body_bytes(&state, request).await?, params.dataset.as_deref())?;
    let (dataset, values) = write(&state, &call, &requested, &fields).await?;
    let member = call.scope.agreement.member;
    let instance = state.catalog.create_metadata_instance(member, &dataset.name, call.env, values).await?;
    state.catalog.record_access(&[call.log(dataset.name.as_str(), AccessAction::Write, 1, AccessDecision::Allowed)]).await?;
    let body = json!({"success": 1, "dataset": dataset.name, "instance": instance.index(), "id": instance.id.to_string()});
    Ok(answer(call.format, body))
}

/// Update fields of instance `id` (`instance_0` is id 1); other fields keep their values.
#[utoipa::path(put, path = "/api/pds/pds/{file}", tag = "mydex", security(("bearer" = [])),
    params(("file" = String, Path, description = "`<uid>.json` or `<uid>.xml`"), MydexParams),
    request_body(content = Object, description = "`{\"ds_x\": {\"<field>\": \"value\"}}` or the fields flat with `dataset=`"),
    responses(
        (status = 200, description = "`{\"success\": 1}`", body = Object),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(super) async fn update(
    State(state): State<AppState>,
    subscriber: MydexSubscriber,
    ApiPath(file): ApiPath<String>,
    ApiQuery(params): ApiQuery<MydexParams>,
    request: Request,
) -> ApiResult<Response> {
    let call = authorize(&state, subscriber, &file, &params).await?;
    let id = params
        .id
        .as_deref()
        .and_then(|i| i.parse::<i64>().ok())
        .filter(|i| *i > 0)
        .ok_or_else(|| ApiError::bad_request("id= (the instance id, from 1) is required"))?;
    let (requested, fields) = write_body(&body_bytes(&state, request).await?, params.dataset.as_deref())?;
    let (dataset, values) = write(&state, &call, &requested, &fields).await?;
    let member = call.scope.agreement.member;
    state.catalog.update_metadata_instance(member, &dataset.name, call.env, id, values).await?;
    state.catalog.record_access(&[call.log(dataset.name.as_str(), AccessAction::Write, 1, AccessDecision::Allowed)]).await?;
    Ok(answer(call.format, json!({"success": 1})))
}
