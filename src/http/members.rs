//! A member's own consent and oversight: agreements (approve, revoke, what a newer version
//! would change) and the access log (`/v1/members/{uid}/...`). Only the member may call these.

use std::collections::BTreeSet;

use axum::extract::State;
use catalog::{AccessLogEntry, Agreement, ConnectionId, ConnectionTerms, MemberId};
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use super::error::{ApiPath, ApiQuery, ApiResult, BadRequest, Conflict, NotFound, Refused};
use crate::AppState;

/// What a newer revision of a connection's terms would change for the member.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub(super) struct TermsChanges {
    datasets_added: Vec<String>,
    datasets_removed: Vec<String>,
    /// `dataset.field` now readable or writable, and no longer so.
    read_added: Vec<String>,
    read_removed: Vec<String>,
    write_added: Vec<String>,
    write_removed: Vec<String>,
    purposes_added: Vec<String>,
    purposes_removed: Vec<String>,
    lawful_basis_changed: bool,
}

fn qualified(terms: &ConnectionTerms, read: bool) -> BTreeSet<String> {
    terms
        .datasets
        .iter()
        .flat_map(|(d, g)| (if read { &g.read } else { &g.write }).iter().map(move |f| format!("{d}.{f}")))
        .collect()
}

fn diff(old: &ConnectionTerms, new: &ConnectionTerms) -> TermsChanges {
    let set = |f: &dyn Fn(&ConnectionTerms) -> BTreeSet<String>| (f(old), f(new));
    let added = |(o, n): &(BTreeSet<String>, BTreeSet<String>)| n.difference(o).cloned().collect();
    let removed = |(o, n): &(BTreeSet<String>, BTreeSet<String>)| o.difference(n).cloned().collect();
    let datasets = set(&|t| t.datasets.keys().map(|d| d.to_string()).collect());
    let read = set(&|t| qualified(t, true));
    let write = set(&|t| qualified(t, false));
    let purposes = set(&|t| t.purposes.iter().cloned().collect());
    TermsChanges {
        datasets_added: added(&datasets),
        datasets_removed: removed(&datasets),
        read_added: added(&read),
        read_removed: removed(&read),
        write_added: added(&write),
        write_removed: removed(&write),
        purposes_added: added(&purposes),
        purposes_removed: removed(&purposes),
        lawful_basis_changed: old.gdpr.lawful_basis != new.gdpr.lawful_basis,
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct PendingVersion {
    version: catalog::AgreementVersion,
    terms: ConnectionTerms,
    changes: TermsChanges,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct AgreementView {
    #[serde(flatten)]
    agreement: Agreement,
    subscriber_id: catalog::SubscriberId,
    /// The connection's approved terms, newer than the ones the member agreed to, awaiting
    /// the member's approval. They grant nothing until approved.
    newer_version: Option<PendingVersion>,
}

/// The member's agreements: each connection's approved version, any newer version waiting
/// for approval, and what it would change.
#[utoipa::path(get, path = "/v1/members/{uid}/agreements", tag = "members", security(("bearer" = [])),
    params(("uid" = i64, Path, minimum = 1)),
    responses((status = 200, body = Vec<AgreementView>), BadRequest, Refused))]
pub(super) async fn agreements(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(uid): ApiPath<MemberId>,
) -> ApiResult<axum::Json<Vec<AgreementView>>> {
    principal.member(uid)?;
    let out = state
        .catalog
        .agreements(uid)
        .await?
        .into_iter()
        .map(|(agreement, connection)| {
            let newer_version = connection.approved().filter(|r| r.version > agreement.version).map(|r| {
                PendingVersion { version: r.version, changes: diff(&agreement.terms, &r.terms), terms: r.terms.clone() }
            });
            AgreementView { agreement, subscriber_id: connection.subscriber_id, newer_version }
        })
        .collect();
    Ok(axum::Json(out))
}

/// What approval returns: the member connection key for the pair, shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Approval {
    con_id: String,
    key: String,
    version: catalog::AgreementVersion,
}

/// The member approves the connection's current approved terms. Issues a new member
/// connection key (an earlier key of the pair stops working).
#[utoipa::path(post, path = "/v1/members/{uid}/agreements/{connection_id}/approve", tag = "members", security(("bearer" = [])),
    params(("uid" = i64, Path, minimum = 1), ("connection_id" = i64, Path, minimum = 1)),
    responses((status = 200, body = Approval), BadRequest, Refused, NotFound, Conflict))]
pub(super) async fn approve(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((uid, connection)): ApiPath<(MemberId, ConnectionId)>,
) -> ApiResult<axum::Json<Approval>> {
    principal.member(uid)?;
    let (agreement, key) = state.catalog.approve_agreement(uid, connection).await?;
    Ok(axum::Json(Approval {
        con_id: agreement.con_id.to_string(),
        key: key.expose().to_owned(),
        version: agreement.version,
    }))
}

/// The member revokes the agreement: every request that starts afterwards is refused.
#[utoipa::path(post, path = "/v1/members/{uid}/agreements/{connection_id}/revoke", tag = "members", security(("bearer" = [])),
    params(("uid" = i64, Path, minimum = 1), ("connection_id" = i64, Path, minimum = 1)),
    responses((status = 200, body = Agreement), BadRequest, Refused, NotFound))]
pub(super) async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath((uid, connection)): ApiPath<(MemberId, ConnectionId)>,
) -> ApiResult<axum::Json<Agreement>> {
    principal.member(uid)?;
    let agreement = state.catalog.revoke_agreement(uid, connection).await?;
    Ok(axum::Json(agreement))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct LogQuery {
    /// Newest entries to return (default 100); taken as 1 below 1 and as 10000 above it.
    limit: Option<i64>,
}

/// Who read or wrote what of this member, when, under which agreement and purpose.
#[utoipa::path(get, path = "/v1/members/{uid}/access-log", tag = "members", security(("bearer" = [])),
    params(("uid" = i64, Path, minimum = 1), LogQuery),
    responses((status = 200, body = Vec<AccessLogEntry>), BadRequest, Refused))]
pub(super) async fn access_log(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(uid): ApiPath<MemberId>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> ApiResult<axum::Json<Vec<AccessLogEntry>>> {
    principal.member(uid)?;
    let limit = q.limit.unwrap_or(100).clamp(1, 10_000);
    // Reads still in the write-ahead log are as much the member's log as the catalog's part.
    let mut log = state.ingester.pending_reads(uid);
    log.extend(state.catalog.access_log(uid, limit).await?);
    log.sort_by_key(|e| std::cmp::Reverse(e.at));
    log.truncate(limit as usize);
    Ok(axum::Json(log))
}
