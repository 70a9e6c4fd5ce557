//! `POST /oauth2/token`: the OAuth2 client credentials grant (RFC 6749 §4.4), with HTTP
//! Basic client authentication (or the client id and secret in the form, §2.3.1).

use axum::Form;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::AppState;

/// The client credentials grant, form-encoded (RFC 6749 §4.4.2).
// Fields are read as text so that each wrong value gets its own RFC 6749 error.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct TokenRequest {
    /// `client_credentials`, the one grant trove issues.
    #[schema(schema_with = grant_type_schema, required = true)]
    grant_type: Option<String>,
    /// `mydex:pdx`, the one scope (also the default).
    #[schema(schema_with = scope_schema)]
    scope: Option<String>,
    /// With `client_secret`: the client's credentials in the form instead of HTTP Basic.
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn grant_type_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(["client_credentials"]))
        .build()
}

fn scope_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::String).enum_values(Some([SCOPE])).build()
}

/// An RFC 6749 §5.2 error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct OAuthError {
    #[schema(schema_with = oauth_error_schema)]
    error: &'static str,
}

fn oauth_error_schema() -> utoipa::openapi::Object {
    let errors = ["invalid_request", "unsupported_grant_type", "invalid_scope", "invalid_client"];
    utoipa::openapi::ObjectBuilder::new().schema_type(utoipa::openapi::Type::String).enum_values(Some(errors)).build()
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct TokenResponse {
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
    scope: &'static str,
}

/// The one scope trove's subscriber tokens carry (Mydex's).
const SCOPE: &str = "mydex:pdx";

/// RFC 6749 §5.2 error answers.
fn oauth_error(status: StatusCode, error: &'static str) -> Response {
    let mut response = (status, axum::Json(OAuthError { error })).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"trove\""));
    }
    response
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (id, secret) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// Exchange client credentials for a bearer token.
#[utoipa::path(post, path = "/oauth2/token", tag = "auth", security(("basic" = []), ()),
    request_body(content = TokenRequest, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, body = TokenResponse),
        (status = 400, description = "unsupported_grant_type, invalid_scope or invalid_request", body = OAuthError),
        (status = 401, description = "invalid_client", body = OAuthError,
            headers(("WWW-Authenticate" = String, description = "`Basic realm=\"trove\"`"))),
    ))]
pub(super) async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: Result<Form<TokenRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    if form.grant_type.as_deref() != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    if form.scope.as_deref().is_some_and(|s| s.split(' ').any(|s| !s.is_empty() && s != SCOPE)) {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_scope");
    }
    let credentials = basic_credentials(&headers).or_else(|| Some((form.client_id?, form.client_secret?)));
    let Some((client_id, client_secret)) = credentials else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    };
    let ttl = state.settings.token_ttl;
    match state.catalog.issue_access_token(&client_id, &client_secret, ttl).await {
        Ok(token) => {
            let body = TokenResponse {
                access_token: token.expose().to_owned(),
                token_type: "Bearer",
                expires_in: ttl.as_secs(),
                scope: SCOPE,
            };
            let mut response = axum::Json(body).into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) if e.kind() == catalog::ErrorKind::Unauthenticated => {
            oauth_error(StatusCode::UNAUTHORIZED, "invalid_client")
        }
        Err(e) => super::error::ApiError::from(e).into_response(),
    }
}
