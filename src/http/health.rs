//! Operations: liveness and readiness, Prometheus metrics.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;

use super::error::{ApiResult, Internal};
use crate::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    status: &'static str,
}

/// Ready when the catalog answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, body = Health), Internal))]
pub(super) async fn health(State(state): State<AppState>) -> ApiResult<axum::Json<Health>> {
    state.catalog.ping().await?;
    Ok(axum::Json(Health { status: "ok" }))
}

/// Prometheus text exposition.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain; version=0.0.4", body = String)))]
pub(super) async fn metrics() -> impl IntoResponse {
    let handle = crate::telemetry::metrics_handle();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
}

/// This document: the OpenAPI description of every route, generated from the code.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, content_type = "application/json", body = Object)))]
pub(super) async fn openapi_json() -> impl IntoResponse {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let doc = DOC.get_or_init(|| super::openapi().to_json().expect("the OpenAPI document serializes"));
    ([(header::CONTENT_TYPE, "application/json")], doc.as_str())
}
