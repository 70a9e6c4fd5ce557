//! Dedicated connections: a subscriber drafts and submits terms, the operator approves and
//! promotes (`/v1/connections`).

use axum::extract::State;
use axum::http::StatusCode;
use catalog::{Connection, ConnectionId, ConnectionTerms, ErrorKind, Nid, SubscriberId};
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use super::error::{
    ApiError, ApiJson, ApiPath, ApiQuery, ApiResult, BadRequest, Conflict, JsonBody, NotFound, Refused, Unprocessable,
};
use crate::AppState;

/// Loads a connection the caller may act on: the operator any, a subscriber its own. For a
/// subscriber, another's connection and a missing one get the same 403.
async fn accessible(state: &AppState, principal: Principal, id: ConnectionId) -> ApiResult<Connection> {
    match principal {
        Principal::Operator => Ok(state.catalog.connection(id).await?),
        Principal::Subscriber(s) => match state.catalog.connection(id).await {
            Ok(c) if c.subscriber_id == s => Ok(c),
            Ok(_) => Err(ApiError::forbidden()),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(ApiError::forbidden()),
            Err(e) => Err(e.into()),
        },
        Principal::Member(_) => Err(ApiError::forbidden()),
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct OnBehalf {
    /// Operator only: the subscriber the connection is created for.
    #[param(value_type = Option<i64>, minimum = 1)]
    subscriber: Option<SubscriberId>,
}

/// The operator's view of all connections, or a subscriber's own.
#[utoipa::path(get, path = "/v1/connections", tag = "connections", security(("bearer" = [])),
    responses((status = 200, body = Vec<Connection>), Refused))]
pub(super) async fn list(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<axum::Json<Vec<Connection>>> {
    let scope = match principal {
        Principal::Operator => None,
        Principal::Subscriber(s) => Some(s),
        Principal::Member(_) => return Err(ApiError::forbidden()),
    };
    Ok(axum::Json(state.catalog.connections(scope).await?))
}

/// A subscriber drafts a new connection (revision 1, `draft`). `"*"` in a dataset's `read`
/// or `write` list stands for all its fields.
#[utoipa::path(post, path = "/v1/connections", tag = "connections", security(("bearer" = [])),
    params(OnBehalf), request_body = ConnectionTerms,
    responses((status = 201, body = Connection), JsonBody, Refused, NotFound))]
pub(super) async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(on_behalf): ApiQuery<OnBehalf>,
    ApiJson(terms): ApiJson<ConnectionTerms>,
) -> ApiResult<(StatusCode, axum::Json<Connection>)> {
    let subscriber = match (principal, on_behalf.subscriber) {
        (Principal::Subscriber(s), None) => s,
        (Principal::Operator, Some(s)) => state.catalog.subscriber(s).await?.id,
        (Principal::Operator, None) => {
            return Err(ApiError::unprocessable("the operator names ?subscriber=ID", Vec::new()));
        }
        _ => return Err(ApiError::forbidden()),
    };
    Ok((StatusCode::CREATED, axum::Json(state.catalog.create_connection(subscriber, terms).await?)))
}

/// The one-page view: status, environment, nid, every revision with its terms.
#[utoipa::path(get, path = "/v1/connections/{id}", tag = "connections", security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = Connection), BadRequest, Refused, NotFound))]
pub(super) async fn get(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<ConnectionId>,
) -> ApiResult<axum::Json<Connection>> {
    Ok(axum::Json(accessible(&state, principal, id).await?))
}

/// Edit the terms. A requested connection returns to draft; an approved or live one gets a
/// new draft revision while the approved revision keeps serving.
#[utoipa::path(put, path = "/v1/connections/{id}", tag = "connections", security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1)), request_body = ConnectionTerms,
    responses((status = 200, body = Connection), JsonBody, Refused, NotFound, Conflict))]
pub(super) async fn edit(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<ConnectionId>,
    ApiJson(terms): ApiJson<ConnectionTerms>,
) -> ApiResult<axum::Json<Connection>> {
    accessible(&state, principal, id).await?;
    Ok(axum::Json(state.catalog.edit_connection(id, terms).await?))
}

/// Submit the newest draft for the operator's approval.
#[utoipa::path(post, path = "/v1/connections/{id}/submit", tag = "connections", security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = Connection), BadRequest, Refused, NotFound, Conflict))]
pub(super) async fn submit(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<ConnectionId>,
) -> ApiResult<axum::Json<Connection>> {
    accessible(&state, principal, id).await?;
    Ok(axum::Json(state.catalog.submit_connection(id).await?))
}

/// What approval returns: the connection key only on the first approval, shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Approved {
    connection: Connection,
    nid: Option<Nid>,
    key: Option<String>,
}

/// What the operator may send with an approval.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ApproveBody {
    /// The version the operator reviewed: if the revision waiting for approval is another
    /// (the subscriber edited it since), the approval is refused with 409.
    #[schema(value_type = Option<i64>, minimum = 1)]
    version: Option<catalog::AgreementVersion>,
}

/// The operator approves the requested revision: it serves from now on. The first approval
/// deploys the connection on the sandbox and issues its `nid` and connection key. An
/// optional body `{"version": N}` approves only if version N is still the one waiting.
#[utoipa::path(post, path = "/v1/connections/{id}/approve", tag = "connections", security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1)),
    request_body(content = Option<ApproveBody>, content_type = "application/json"),
    responses((status = 200, body = Approved), BadRequest, Refused, NotFound, Conflict, Unprocessable))]
pub(super) async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<ConnectionId>,
    body: axum::body::Bytes,
) -> ApiResult<axum::Json<Approved>> {
    principal.operator()?;
    // No body, `null` and `{}` all approve whatever revision is waiting.
    let expected = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        serde_json::from_slice::<Option<ApproveBody>>(&body)
            .map_err(|e| match e.classify() {
                serde_json::error::Category::Data => {
                    ApiError::unprocessable("the body is {\"version\": N}", Vec::new())
                }
                _ => ApiError::bad_request("the body must be JSON"),
            })?
            .and_then(|b| b.version)
    };
    let (connection, key) = state.catalog.approve_connection(id, expected).await?;
    Ok(axum::Json(Approved { nid: connection.nid, key: key.map(|k| k.expose().to_owned()), connection }))
}

/// The subscriber asks for its approved sandbox connection to go live.
#[utoipa::path(post, path = "/v1/connections/{id}/promote-request", tag = "connections", security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = Connection), BadRequest, Refused, Conflict))]
pub(super) async fn promote_request(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<ConnectionId>,
) -> ApiResult<axum::Json<Connection>> {
    if !matches!(principal, Principal::Subscriber(_)) {
        return Err(ApiError::forbidden());
    }
    accessible(&state, principal, id).await?;
    Ok(axum::Json(state.catalog.request_promotion(id).await?))
}

/// The operator grants the promote request: the connection goes live (production data).
#[utoipa::path(post, path = "/v1/connections/{id}/promote", tag = "connections", security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = Connection), BadRequest, Refused, NotFound, Conflict))]
pub(super) async fn promote(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<ConnectionId>,
) -> ApiResult<axum::Json<Connection>> {
    principal.operator()?;
    Ok(axum::Json(state.catalog.promote_connection(id).await?))
}

/// A new draft connection with the same terms.
#[utoipa::path(post, path = "/v1/connections/{id}/clone", tag = "connections", security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 201, body = Connection), BadRequest, Refused, NotFound))]
pub(super) async fn clone(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<ConnectionId>,
) -> ApiResult<(StatusCode, axum::Json<Connection>)> {
    accessible(&state, principal, id).await?;
    Ok((StatusCode::CREATED, axum::Json(state.catalog.clone_connection(id).await?)))
}
