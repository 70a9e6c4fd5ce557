//! The HTTP surface: every route is registered here with its OpenAPI description, so
//! `/openapi.json` is generated from the same code that serves.

mod admin;
mod auth;
pub mod body;
mod connections;
pub mod error;
mod health;
mod helpers;
mod ingest;
pub mod listen;
mod members;
mod mydex;
mod oauth;
mod pds;
mod query;
mod transaction;
mod xml;

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware;
use axum::response::IntoResponse;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;
use error::{ApiError, ProblemResponses};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "trove",
        description = "Personal data stores: members' data, delivered and read only under the data sharing agreements they approved."
    ),
    components(schemas(error::Problem)),
    modifiers(&SecuritySchemes, &ProblemResponses)
)]
struct ApiDoc;

/// `bearer`: the operator's token, a subscriber's OAuth2 token, a member's secret or a
/// connection's `nid:key`, by route (docs/api.md, "Credentials"); `basic`: a subscriber's
/// OAuth2 client id and secret at `/oauth2/token`.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// The routes and their OpenAPI document, before state is attached.
fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi_json))
        .routes(routes!(oauth::token))
        .routes(routes!(helpers::datasets))
        .routes(routes!(helpers::datasets_by_type))
        .routes(routes!(helpers::types))
        .routes(routes!(admin::list_datasets, admin::create_dataset))
        .routes(routes!(admin::get_dataset))
        .routes(routes!(admin::promote_dataset))
        .routes(routes!(admin::list_members, admin::create_member))
        .routes(routes!(admin::get_member))
        .routes(routes!(admin::list_subscribers, admin::create_subscriber))
        .routes(routes!(admin::get_subscriber))
        .routes(routes!(connections::list, connections::create))
        .routes(routes!(connections::get, connections::edit))
        .routes(routes!(connections::submit))
        .routes(routes!(connections::approve))
        .routes(routes!(connections::promote_request))
        .routes(routes!(connections::promote))
        .routes(routes!(connections::clone))
        .routes(routes!(members::agreements))
        .routes(routes!(members::approve))
        .routes(routes!(members::revoke))
        .routes(routes!(members::access_log))
        .routes(routes!(pds::read, pds::create, pds::update))
        .routes(routes!(ingest::ingest))
        .routes(routes!(transaction::add))
        .routes(routes!(transaction::update, transaction::read))
        .routes(routes!(query::query))
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().into_openapi()
}

/// The whole router: routes, `/openapi.json`, body limit, request tracing and metrics.
pub fn router(state: AppState) -> axum::Router {
    // Installed before the first request so every request is counted.
    crate::telemetry::metrics_handle();
    let max_body = state.settings.max_body_bytes;
    let body_limits = state.settings.body;
    api()
        .split_for_parts()
        .0
        .fallback(|| async { ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(body_limits, body::timed))
        .layer(middleware::from_fn(telemetry_layer))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            // The path template only: query strings carry keys (`key=`, `api_key=`) and must
            // never reach a log.
            let route = req.extensions().get::<axum::extract::MatchedPath>().map(|p| p.as_str().to_owned());
            tracing::info_span!("http", method = %req.method(), route = route.as_deref().unwrap_or("unmatched"))
        }))
        .with_state(state)
}

async fn telemetry_layer(request: Request, next: middleware::Next) -> impl IntoResponse {
    crate::telemetry::track_http(request, next).await
}
