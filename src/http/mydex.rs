//! What the Mydex-compatible Connection API routes share: parameters, the `.json`/`.xml`
//! answer format, and the check every call makes before touching data (subscriber
//! credential, the member's `con_id` + `key`, the agreement in force, the access log).

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use catalog::{AccessAction, AccessDecision, AccessLogEntry, AgreementScope, DataEnvironment, Dataset, DatasetKind, DatasetName, ErrorKind, MemberId};
use ingest::validate;
use serde::Deserialize;
use serde_json::Value;

use super::auth::{MydexSubscriber, con_id_for};
use super::error::{ApiError, ApiResult};
use super::xml;
use crate::AppState;

/// The Mydex query parameters (unknown ones are ignored, as Mydex clients send extras).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(super) struct MydexParams {
    /// The member connection key.
    pub(super) key: Option<String>,
    /// `"<uid>-<nid>"`.
    pub(super) con_id: Option<String>,
    /// `connection`.
    #[allow(dead_code, reason = "accepted and documented; Mydex clients always send it")]
    source_type: Option<String>,
    /// `ds_x`, the older `field_ds_x`, or several joined with `+`.
    pub(super) dataset: Option<String>,
    /// 0-based instance to read.
    instance: Option<String>,
    /// The member (`POST /api/pds/transaction?uid=`).
    pub(super) uid: Option<String>,
    /// The subscriber's key, instead of a bearer token.
    #[allow(dead_code, reason = "documented here; read from the raw query by `MydexSubscriber`")]
    api_key: Option<String>,
    /// The instance or row id to update (`instance_0` is id 1).
    id: Option<String>,
}

impl MydexParams {
    /// The datasets of a read: `dataset=` with several joined by `+` (which a query string
    /// decodes to a space).
    pub(super) fn datasets(&self) -> ApiResult<Vec<&str>> {
        let names: Vec<&str> = self.dataset.as_deref().unwrap_or("").split(['+', ' ']).filter(|s| !s.is_empty()).collect();
        if names.is_empty() {
            return Err(ApiError::bad_request("dataset= is required"));
        }
        Ok(names)
    }

    /// The `instance=` to read, if any: 0 or more.
    pub(super) fn instance(&self) -> ApiResult<Option<i64>> {
        match self.instance.as_deref() {
            None | Some("") => Ok(None),
            Some(i) => Ok(Some(i.parse::<i64>().ok().filter(|i| *i >= 0).ok_or_else(|| ApiError::bad_request("instance must be 0 or more"))?)),
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
}

/// Checks a call on `/api/pds/.../{uid}.json|.xml`: the path names the member and format.
pub(super) async fn authorize_file(state: &AppState, subscriber: MydexSubscriber, file: &str, params: &MydexParams) -> ApiResult<Call> {
    let (uid, format) = parse_file(file)?;
    authorize(state, subscriber, uid, format, params).await
}

/// Checks a call for member `uid`: 401 for any wrong credential, whatever was wrong.
pub(super) async fn authorize(state: &AppState, subscriber: MydexSubscriber, uid: MemberId, format: Format, params: &MydexParams) -> ApiResult<Call> {
    let con_id = con_id_for(uid, params.con_id.as_deref())?;
    let key = params.key.as_deref().ok_or_else(ApiError::unauthenticated)?;
    let scope = AgreementScope::clone(&*state.auth_cache.agreement_scope(&state.catalog, subscriber.0, con_id, key).await?);
    let env = scope.environment.into();
    Ok(Call { scope, format, env })
}

impl Call {
    pub(super) fn log(&self, dataset: &str, action: AccessAction, rows: i64, decision: AccessDecision) -> AccessLogEntry {
        AccessLogEntry {
            at: now_ms(),
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

    /// Resolves a requested dataset name to a dataset of `kind` the agreement covers.
    /// Unknown and ungranted datasets get the same 403; the refusal is logged.
    pub(super) async fn dataset(&self, state: &AppState, requested: &str, action: AccessAction, kind: DatasetKind) -> ApiResult<Dataset> {
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
        if dataset.kind != kind {
            let door = if dataset.kind == DatasetKind::Metadata { "/api/pds/pds" } else { "/api/pds/transaction" };
            return Err(ApiError::bad_request(format!("{} is a {} dataset: use {door}", dataset.name, kind_name(dataset.kind))));
        }
        Ok(dataset)
    }
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn kind_name(kind: DatasetKind) -> &'static str {
    match kind {
        DatasetKind::Metadata => "metadata",
        DatasetKind::Transactional => "transactional",
    }
}

pub(super) async fn body_bytes(state: &AppState, request: Request) -> ApiResult<axum::body::Bytes> {
    axum::body::to_bytes(request.into_body(), state.settings.max_body_bytes)
        .await
        .map_err(|_| ApiError::new(axum::http::StatusCode::PAYLOAD_TOO_LARGE, "the body is too large"))
}

