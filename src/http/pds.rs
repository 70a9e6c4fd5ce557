//! `/api/pds/pds/{uid}.json|.xml`: members' metadata datasets through the Mydex-compatible
//! Connection API. Every call needs the subscriber (bearer token or `api_key`) and the
//! member's `con_id` + `key`; it sees and changes only what the agreement in force grants.

use std::collections::BTreeMap;

use axum::extract::{Request, State};
use axum::response::Response;
use catalog::{AccessAction, AccessDecision, Dataset, DatasetKind, MetadataInstance};
use ingest::validate;
use serde_json::{Map, Value, json};

use super::error::{ApiError, ApiResult, BadRequest, NotFound, Refused, TooLarge, Unprocessable};
use super::mydex::{
    Call, CreateParams, FileCall, MydexParams, ReadParams, UpdateParams, answer, body_bytes, write_body,
};
use crate::AppState;

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
    params(ReadParams),
    responses(
        (status = 200, description = "`{\"ds_x\": {\"instance_N\": {\"<field>\": {\"value\": \"...\", \"access\": {...}}}}}`",
            content((Object = "application/json"), ("application/xml"))),
        BadRequest, Refused, NotFound))]
pub(super) async fn read(State(state): State<AppState>, checked: FileCall) -> ApiResult<Response> {
    let FileCall { call, params, .. } = checked;
    let names = params.datasets()?;
    let instance = params.instance()?;
    let mut body = Map::new();
    let mut log = Vec::new();
    for requested in names {
        let dataset = call.dataset(&state, requested, AccessAction::Read, DatasetKind::Metadata).await?;
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
    state.ingester.log_access(log).await?;
    Ok(answer(call.format, Value::Object(body)))
}

/// A metadata write, checked: the subscriber and the member's key, the body (one dataset's
/// fields), their values (422, naming fields, never values) and the agreement's write grant
/// of every field (403, logged).
async fn checked_write(
    state: &AppState,
    call: &Call,
    params: &MydexParams,
    request: Request,
) -> ApiResult<(Dataset, BTreeMap<String, Value>)> {
    let (requested, fields) = write_body(&body_bytes(state, request).await?, params.dataset.as_deref())?;
    let dataset = call.dataset(state, &requested, AccessAction::Write, DatasetKind::Metadata).await?;
    if fields.is_empty() {
        return Err(ApiError::unprocessable("no fields to write", Vec::new()));
    }
    let values = validate::check_values(&dataset, &fields).map_err(ApiError::from)?;
    if validate::authorize_write(&call.scope, &dataset, values.keys().map(String::as_str)).is_err() {
        return Err(call.refuse(state, dataset.name.as_str(), AccessAction::Write).await);
    }
    Ok((dataset, values))
}

/// Create a metadata instance: `{"ds_x": {"<field>": "value", ...}}`.
#[utoipa::path(post, path = "/api/pds/pds/{file}", tag = "mydex", security(("bearer" = [])),
    params(CreateParams),
    request_body(content = Object, description = "`{\"ds_x\": {\"<field>\": \"value\"}}`"),
    responses(
        (status = 200, description = "`{\"success\": 1, \"dataset\": \"ds_x\", \"instance\": N, \"id\": \"<id>\"}`",
            content((Object = "application/json"), ("application/xml"))),
        BadRequest, Refused, NotFound, TooLarge, Unprocessable))]
pub(super) async fn create(State(state): State<AppState>, checked: FileCall, request: Request) -> ApiResult<Response> {
    let FileCall { call, params, .. } = checked;
    let (dataset, values) = checked_write(&state, &call, &params, request).await?;
    let member = call.scope.agreement.member;
    let instance = state.catalog.create_metadata_instance(member, &dataset.name, call.env, values).await?;
    call.record(&state, call.log(dataset.name.as_str(), AccessAction::Write, 1, AccessDecision::Allowed)).await?;
    let body =
        json!({"success": 1, "dataset": dataset.name, "instance": instance.index(), "id": instance.id.to_string()});
    Ok(answer(call.format, body))
}

/// Update fields of instance `id` (`instance_0` is id 1); other fields keep their values.
#[utoipa::path(put, path = "/api/pds/pds/{file}", tag = "mydex", security(("bearer" = [])),
    params(UpdateParams),
    request_body(content = Object, description = "`{\"ds_x\": {\"<field>\": \"value\"}}` or the fields flat with `dataset=`"),
    responses(
        (status = 200, description = "`{\"success\": 1}`",
            content((Object = "application/json"), ("application/xml"))),
        BadRequest, Refused, NotFound, TooLarge, Unprocessable))]
pub(super) async fn update(State(state): State<AppState>, checked: FileCall, request: Request) -> ApiResult<Response> {
    let FileCall { call, params, .. } = checked;
    let id = params.id("the instance id")?;
    let (dataset, values) = checked_write(&state, &call, &params, request).await?;
    let member = call.scope.agreement.member;
    state.catalog.update_metadata_instance(member, &dataset.name, call.env, id, values).await?;
    call.record(&state, call.log(dataset.name.as_str(), AccessAction::Write, 1, AccessDecision::Allowed)).await?;
    Ok(answer(call.format, json!({"success": 1})))
}
