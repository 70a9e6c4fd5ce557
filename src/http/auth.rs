//! Who is calling: the bearer credential resolved to a principal (docs/api.md, "Credentials").
//! A wrong, expired, revoked or missing credential is 401; a valid credential asking for
//! something it may not do is 403. Neither says whether anything exists.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use std::sync::Arc;

use catalog::{Bearer, ConId, Connection, ConnectionId, MemberId, SubscriberId};

use super::error::ApiError;
use crate::AppState;

/// The authenticated caller of a `/v1` route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Principal {
    Operator,
    Subscriber(SubscriberId),
    Member(MemberId),
}

impl Principal {
    /// Only the operator may do this.
    pub(super) fn operator(self) -> Result<(), ApiError> {
        match self {
            Principal::Operator => Ok(()),
            _ => Err(ApiError::forbidden()),
        }
    }

    /// Only member `uid` may do this (not the operator: it reads no member data).
    pub(super) fn member(self, uid: MemberId) -> Result<(), ApiError> {
        match self {
            Principal::Member(m) if m == uid => Ok(()),
            _ => Err(ApiError::forbidden()),
        }
    }
}

/// The token of `Authorization: Bearer <token>`, if any.
pub(super) fn bearer(parts: &Parts) -> Option<&str> {
    bearer_of(&parts.headers)
}

/// As [`bearer`], from headers.
pub(super) fn bearer_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(ApiError::unauthenticated)?;
        // The request starts here: everything it is allowed is decided as of now.
        Ok(match state.auth_cache.caller(&state.catalog, token).await? {
            Bearer::Operator => Principal::Operator,
            Bearer::Subscriber { id, .. } => Principal::Subscriber(id),
            Bearer::Member(uid) => Principal::Member(uid),
        })
    }
}

/// A subscriber calling a Mydex-style `/api/pds/*` route: its bearer token, or the older
/// `api_key=` query parameter.
#[derive(Debug, Clone, Copy)]
pub(super) struct MydexSubscriber(pub(super) SubscriberId);

impl FromRequestParts<AppState> for MydexSubscriber {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        state.auth_cache.refresh(&state.catalog).await?;
        if let Some(token) = bearer(parts) {
            return Ok(MydexSubscriber(state.auth_cache.subscriber_token(&state.catalog, token).await?));
        }
        let query = parts.uri.query().unwrap_or("");
        let api_key = serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .ok()
            .and_then(|pairs| pairs.into_iter().find(|(k, _)| k == "api_key").map(|(_, v)| v))
            .ok_or_else(ApiError::unauthenticated)?;
        Ok(MydexSubscriber(state.catalog.authenticate_api_key(&api_key).await?))
    }
}

/// Parses `con_id` and checks it names the member of the path: a `con_id` for another uid
/// is a wrong credential (401).
pub(super) fn con_id_for(uid: MemberId, con_id: Option<&str>) -> Result<ConId, ApiError> {
    let con_id: ConId = con_id.and_then(|c| c.parse().ok()).ok_or_else(ApiError::unauthenticated)?;
    if con_id.member != uid {
        return Err(ApiError::unauthenticated());
    }
    Ok(con_id)
}

/// Which of `subscriber`'s approved connections a call acts through (docs/api.md, "The native API"): the one
/// `con_id` names, else `?connection=`, else its only approved one. One it does not own, or
/// one not approved, is 403; an unnamed choice among several (or none) is 400.
pub(super) async fn subscriber_connection(
    state: &AppState,
    subscriber: SubscriberId,
    con_id: Option<&str>,
    named: Option<ConnectionId>,
) -> Result<Arc<Connection>, ApiError> {
    let mine = state.auth_cache.subscriber_connections(&state.catalog, subscriber).await?;
    let mut approved = mine.iter().filter(|c| c.approved_version.is_some());
    let chosen = match (con_id, named) {
        (Some(con_id), _) => {
            let con_id: ConId = con_id.parse().map_err(|_| ApiError::bad_request("con_id is <uid>-<nid>"))?;
            approved.find(|c| c.nid == Some(con_id.nid))
        }
        (None, Some(id)) => approved.find(|c| c.id == id),
        (None, None) => match (approved.next(), approved.next()) {
            (Some(only), None) => Some(only),
            _ => return Err(ApiError::bad_request("name the connection with ?connection=<id>")),
        },
    };
    chosen.cloned().ok_or_else(ApiError::forbidden)
}
