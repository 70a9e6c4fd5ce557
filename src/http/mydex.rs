//! What the Mydex-compatible Connection API routes share: parameters, the `.json`/`.xml`
//! answer format, and the check every call makes before touching data (subscriber
//! credential, the member's `con_id` + `key`, the agreement in force, the access log).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use catalog::time::Clock;
use catalog::{
    AccessAction, AccessDecision, AccessLogEntry, AgreementScope, DataEnvironment, Dataset, DatasetKind, DatasetName,
    ErrorKind, MemberId,
};
use ingest::validate;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::auth::{MydexSubscriber, con_id_for};
use super::error::{ApiError, ApiPath, ApiQuery, ApiResult};
use super::xml;
use crate::AppState;

/// The Mydex query parameters (unknown ones are ignored, as Mydex clients send extras;
/// `source_type=connection` is one, `api_key` is read by [`MydexSubscriber`]). Each route
/// documents the ones it takes with one of the [`utoipa::IntoParams`] sets below.
#[derive(Debug, Deserialize)]
pub(super) struct MydexParams {
    pub(super) key: Option<String>,
    pub(super) con_id: Option<String>,
    pub(super) dataset: Option<String>,
    instance: Option<String>,
    pub(super) uid: Option<String>,
    id: Option<String>,
}

/// One or more dataset names joined with `+`.
const DATASETS_PATTERN: &str = "^(field_)?ds_[a-z0-9_]{1,125}(\\+(field_)?ds_[a-z0-9_]{1,125})*$";

/// A positive integer id, as a query string carries it.
const ID_PATTERN: &str = "^[1-9][0-9]{0,17}$";

/// The Mydex parameters of a route: the `{file}` in its path when `required` names it, the
/// credentials every call takes, then `required` and `optional` of the rest.
fn mydex_params(required: &[&str], optional: &[&str]) -> Vec<utoipa::openapi::path::Parameter> {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::{ObjectBuilder, Required, Type};
    let all: [(&str, &str, Option<&str>); 9] = [
        ("file", "`<uid>.json` or `<uid>.xml`.", Some(r"^[1-9][0-9]{0,17}\.(json|xml)$")),
        ("key", "The member connection key.", None),
        ("con_id", "The member's connection, `<uid>-<nid>`.", Some("^[1-9][0-9]{0,17}-[1-9][0-9]{0,17}$")),
        ("source_type", "`connection`.", None),
        ("api_key", "The subscriber's key, instead of a bearer token.", None),
        ("dataset", "`ds_x`, the older `field_ds_x`, or (to read) several joined with `+`.", Some(DATASETS_PATTERN)),
        ("instance", "The 0-based instance to read.", Some("^[0-9]{1,18}$")),
        ("uid", "The member.", Some(ID_PATTERN)),
        ("id", "The instance or row id to update (`instance_0` is id 1).", Some(ID_PATTERN)),
    ];
    let always = ["key", "con_id", "source_type", "api_key"];
    all.into_iter()
        .filter(|(name, ..)| always.contains(name) || required.contains(name) || optional.contains(name))
        .map(|(name, description, pattern)| {
            let needed = matches!(name, "key" | "con_id") || required.contains(&name);
            let place = if name == "file" { ParameterIn::Path } else { ParameterIn::Query };
            ParameterBuilder::new()
                .name(name)
                .parameter_in(place)
                .required(if needed { Required::True } else { Required::False })
                .description(Some(description))
                .schema(Some(ObjectBuilder::new().schema_type(Type::String).pattern(pattern)))
                .build()
        })
        .collect()
}

/// Declares the parameter set of a kind of Mydex call.
macro_rules! mydex_params {
    ($($(#[$doc:meta])* $name:ident = required $required:expr, optional $optional:expr;)+) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub(super) enum $name {}

        impl utoipa::IntoParams for $name {
            fn into_params(_: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>) -> Vec<utoipa::openapi::path::Parameter> {
                mydex_params(&$required, &$optional)
            }
        }
    )+};
}

mydex_params! {
    /// A read: the dataset(s), and which instance.
    ReadParams = required ["file", "dataset"], optional ["instance"];
    /// A metadata instance created: the body names the dataset.
    CreateParams = required ["file"], optional ["dataset"];
    /// An update of instance or row `id`: the body names the dataset, or `dataset=` does.
    UpdateParams = required ["file", "id"], optional ["dataset"];
    /// Rows added for member `uid`.
    AddParams = required ["uid"], optional [];
}

impl MydexParams {
    /// The datasets of a read: `dataset=` with several joined by `+` (which a query string
    /// decodes to a space).
    pub(super) fn datasets(&self) -> ApiResult<Vec<&str>> {
        let names: Vec<&str> =
            self.dataset.as_deref().unwrap_or("").split(['+', ' ']).filter(|s| !s.is_empty()).collect();
        if names.is_empty() {
            return Err(ApiError::bad_request("dataset= is required"));
        }
        Ok(names)
    }

    /// The `instance=` to read, if any: 0 or more.
    pub(super) fn instance(&self) -> ApiResult<Option<i64>> {
        match self.instance.as_deref() {
            None | Some("") => Ok(None),
            Some(i) => Ok(Some(
                i.parse::<i64>()
                    .ok()
                    .filter(|i| *i >= 0)
                    .ok_or_else(|| ApiError::bad_request("instance must be 0 or more"))?,
            )),
        }
    }

    /// The `id=` of an update: a positive integer naming `what` (an instance id or row id).
    pub(super) fn id(&self, what: &str) -> ApiResult<i64> {
        self.id
            .as_deref()
            .and_then(|i| i.parse::<i64>().ok())
            .filter(|i| *i > 0)
            .ok_or_else(|| ApiError::bad_request(format!("id= ({what}, from 1) is required")))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
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

pub(super) fn answer(format: Format, body: Value) -> Response {
    match format {
        Format::Json => axum::Json(body).into_response(),
        Format::Xml => xml::response(&body),
    }
}

/// Everything a Mydex call establishes before touching data.
pub(super) struct Call {
    pub(super) scope: AgreementScope,
    pub(super) format: Format,
    pub(super) env: DataEnvironment,
    /// The catalog's clock, for the access log.
    clock: Arc<dyn Clock>,
}

/// Checks a call on `/api/pds/.../{uid}.json|.xml`: the path names the member and format.
async fn authorize_file(
    state: &AppState,
    subscriber: MydexSubscriber,
    file: &str,
    params: &MydexParams,
) -> ApiResult<Call> {
    let (uid, format) = parse_file(file)?;
    authorize(state, subscriber, uid, format, params).await
}

/// A call on a `/api/pds/.../{file}` route, checked before the handler runs: the
/// subscriber's credential, the member of `<uid>.json|xml` with its `con_id` + `key`, and
/// the agreement in force; with the call's parameters.
pub(super) struct FileCall {
    pub(super) subscriber: MydexSubscriber,
    pub(super) call: Call,
    pub(super) params: MydexParams,
}

impl FromRequestParts<AppState> for FileCall {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &AppState) -> ApiResult<FileCall> {
        let subscriber = MydexSubscriber::from_request_parts(parts, state).await?;
        let ApiPath(file) = ApiPath::<String>::from_request_parts(parts, state).await?;
        let ApiQuery(params) = ApiQuery::<MydexParams>::from_request_parts(parts, state).await?;
        let call = authorize_file(state, subscriber, &file, &params).await?;
        Ok(FileCall { subscriber, call, params })
    }
}

/// Checks a call for member `uid`: 401 for any wrong credential, whatever was wrong.
pub(super) async fn authorize(
    state: &AppState,
    subscriber: MydexSubscriber,
    uid: MemberId,
    format: Format,
    params: &MydexParams,
) -> ApiResult<Call> {
    let con_id = con_id_for(uid, params.con_id.as_deref())?;
    let key = params.key.as_deref().ok_or_else(ApiError::unauthenticated)?;
    let scope =
        AgreementScope::clone(&*state.auth_cache.agreement_scope(&state.catalog, subscriber.0, con_id, key).await?);
    let env = scope.environment.into();
    Ok(Call { scope, format, env, clock: state.catalog.clock().clone() })
}

impl Call {
    pub(super) fn log(
        &self,
        dataset: &str,
        action: AccessAction,
        rows: i64,
        decision: AccessDecision,
    ) -> AccessLogEntry {
        AccessLogEntry {
            at: self.clock.now_ms(),
            member: Some(self.scope.agreement.member),
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

    /// Logs `entry` in the access log (through the WAL, durable before the answer).
    pub(super) async fn record(&self, state: &AppState, entry: AccessLogEntry) -> ApiResult<()> {
        Ok(state.ingester.log_access(vec![entry]).await?)
    }

    /// The 403 of a refused call, logged first.
    pub(super) async fn refuse(&self, state: &AppState, dataset: &str, action: AccessAction) -> ApiError {
        if action == AccessAction::Read {
            metrics::counter!("trove_query_refusals_total", "door" => "mydex").increment(1);
        }
        match self.record(state, self.log(dataset, action, 0, AccessDecision::Refused)).await {
            Ok(()) => ApiError::forbidden(),
            Err(e) => e,
        }
    }

    /// Resolves a requested dataset name to a dataset of `kind` the agreement covers.
    /// Unknown and ungranted datasets get the same 403; the refusal is logged.
    pub(super) async fn dataset(
        &self,
        state: &AppState,
        requested: &str,
        action: AccessAction,
        kind: DatasetKind,
    ) -> ApiResult<Dataset> {
        let refuse = || async { Err::<Dataset, _>(self.refuse(state, requested, action).await) };
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
        if dataset.kind != kind {
            let door = if dataset.kind == DatasetKind::Metadata { "/api/pds/pds" } else { "/api/pds/transaction" };
            return Err(ApiError::bad_request(format!(
                "{} is a {} dataset: use {door}",
                dataset.name,
                kind_name(dataset.kind)
            )));
        }
        Ok(dataset)
    }
}

fn kind_name(kind: DatasetKind) -> &'static str {
    match kind {
        DatasetKind::Metadata => "metadata",
        DatasetKind::Transactional => "transactional",
    }
}

/// The body of a metadata write: `{"ds_x": {"<field>": "value", ...}}`, or for an update
/// the fields flat with `dataset=` naming the dataset.
pub(super) fn write_body(body: &[u8], dataset_param: Option<&str>) -> ApiResult<(String, Map<String, Value>)> {
    let value: Value =
        serde_json::from_slice(body).map_err(|_| ApiError::bad_request("the body must be a JSON object"))?;
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

pub(super) async fn body_bytes(state: &AppState, request: Request) -> ApiResult<axum::body::Bytes> {
    super::body::read_all(request.into_body(), state.settings.max_body_bytes).await
}
