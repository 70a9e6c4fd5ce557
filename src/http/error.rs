//! The one place errors become HTTP statuses: RFC 9457 problem+json for everything but the
//! OAuth2 token endpoint (which answers as RFC 6749 says, in `oauth.rs`).

use axum::extract::FromRequest;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use catalog::{CatalogError, ErrorKind};
use serde::Serialize;

/// An error answer. 5xx details are logged, never returned.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    detail: String,
    /// Structured detail, e.g. the failing rows and fields of a write (never values).
    errors: Vec<FieldProblem>,
    retry_after: Option<u64>,
}

/// One refused row or field of a write: where, and why; never the value.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldProblem {
    /// 1-based row of the body (0: the body's schema).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub row: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub reason: String,
}

/// The problem+json body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// A URI naming the problem type; `about:blank` means the status says it all.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

/// The problem+json answers of the API document: one response component per status,
/// registered once by [`ProblemResponses`] and referred to by each route through the
/// [`utoipa::IntoResponses`] sets below, so that every route documents its errors the way
/// [`ApiError`] serves them.
const DOCUMENTED: [StatusCode; 13] = [
    StatusCode::BAD_REQUEST,
    StatusCode::UNAUTHORIZED,
    StatusCode::FORBIDDEN,
    StatusCode::NOT_FOUND,
    StatusCode::CONFLICT,
    StatusCode::NOT_ACCEPTABLE,
    StatusCode::REQUEST_TIMEOUT,
    StatusCode::PAYLOAD_TOO_LARGE,
    StatusCode::UNSUPPORTED_MEDIA_TYPE,
    StatusCode::UNPROCESSABLE_ENTITY,
    StatusCode::TOO_MANY_REQUESTS,
    StatusCode::INTERNAL_SERVER_ERROR,
    StatusCode::SERVICE_UNAVAILABLE,
];

/// `Not Found` -> `NotFound`: the name of a status's response component.
fn component_name(status: StatusCode) -> String {
    status.canonical_reason().unwrap_or("Error").split([' ', '-']).collect()
}

fn problem_response(status: StatusCode) -> utoipa::openapi::Response {
    use utoipa::openapi::{ContentBuilder, HeaderBuilder, ObjectBuilder, Ref, ResponseBuilder, Type};
    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
    let mut response = ResponseBuilder::new()
        .description(status.canonical_reason().unwrap_or("Error"))
        .content("application/problem+json", content);
    if status == StatusCode::UNAUTHORIZED {
        let header =
            HeaderBuilder::new().schema(ObjectBuilder::new().schema_type(Type::String)).description(Some("`Bearer`"));
        response = response.header("WWW-Authenticate", header.build());
    }
    if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
        let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0));
        let header = HeaderBuilder::new().schema(seconds).description(Some("seconds to wait before retrying"));
        response = response.header("Retry-After", header.build());
    }
    response.build()
}

/// Registers the problem+json response components (see [`DOCUMENTED`]).
#[derive(Debug)]
pub(super) struct ProblemResponses;

impl utoipa::Modify for ProblemResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for status in DOCUMENTED {
            components.responses.insert(component_name(status), problem_response(status).into());
        }
    }
}

/// References to the problem+json responses of `statuses`.
fn problem_refs(
    statuses: &[StatusCode],
) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
    use utoipa::openapi::{Ref, RefOr};
    debug_assert!(statuses.iter().all(|s| DOCUMENTED.contains(s)), "every referenced status is registered");
    statuses.iter().map(|s| (s.as_str().to_owned(), RefOr::Ref(Ref::from_response_name(component_name(*s))))).collect()
}

/// Declares a set of problem+json answers for `responses(...)` of `#[utoipa::path]`.
macro_rules! problems {
    ($($(#[$doc:meta])* $name:ident = [$($status:ident),+];)+) => {$(
        $(#[$doc])*
        #[derive(Debug)]
        pub(super) struct $name;

        impl utoipa::IntoResponses for $name {
            fn responses() -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
                problem_refs(&[$(StatusCode::$status),+])
            }
        }
    )+};
}

problems! {
    /// 400: a malformed path or query parameter ([`ApiPath`], [`ApiQuery`]) or request.
    BadRequest = [BAD_REQUEST];
    /// 401 and 403: a route that takes a credential (docs/api.md: a wrong one is 401, a valid
    /// one asking outside what it may do is 403).
    Refused = [UNAUTHORIZED, FORBIDDEN];
    /// 404.
    NotFound = [NOT_FOUND];
    /// 409: a state that does not allow the change.
    Conflict = [CONFLICT];
    /// 406: no answer format the client accepts.
    NotAcceptable = [NOT_ACCEPTABLE];
    /// 413: a body over the configured limit (or, on ingest, over the rows of one body);
    /// 408: a body that stopped arriving or took too long.
    TooLarge = [PAYLOAD_TOO_LARGE, REQUEST_TIMEOUT];
    /// 415: a body of a content type the route does not read.
    UnsupportedMediaType = [UNSUPPORTED_MEDIA_TYPE];
    /// 422: a well-formed request the server will not carry out.
    Unprocessable = [UNPROCESSABLE_ENTITY];
    /// 429 and 503 with `Retry-After`: under pressure (a write: a full buffer, too many body
    /// bytes in flight, object storage failing; a read: the subscriber's or the server's
    /// cap on running queries).
    Busy = [TOO_MANY_REQUESTS, SERVICE_UNAVAILABLE];
    /// 500: the health check's answer when the catalog does not answer.
    Internal = [INTERNAL_SERVER_ERROR];
    /// What [`ApiJson`] answers for a body it cannot take: 400 (not JSON), 408 (too slow),
    /// 413 (too large), 415 (no JSON content type), 422 (JSON of the wrong shape).
    JsonBody = [BAD_REQUEST, REQUEST_TIMEOUT, PAYLOAD_TOO_LARGE, UNSUPPORTED_MEDIA_TYPE, UNPROCESSABLE_ENTITY];
}

/// The same words for every failed credential, so a refusal never says what exists.
const UNAUTHENTICATED: &str = "missing, invalid, expired or revoked credentials";
const FORBIDDEN: &str = "the credentials do not permit this request";

impl ApiError {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        ApiError { status, detail: detail.into(), errors: Vec::new(), retry_after: None }
    }
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, detail)
    }
    pub fn unprocessable(detail: impl Into<String>, errors: Vec<FieldProblem>) -> Self {
        ApiError { status: StatusCode::UNPROCESSABLE_ENTITY, detail: detail.into(), errors, retry_after: None }
    }
    pub fn unauthenticated() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, UNAUTHENTICATED)
    }
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, FORBIDDEN)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

/// The status of each kind of failure.
fn status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Forbidden => StatusCode::FORBIDDEN,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> Self {
        match e.kind() {
            ErrorKind::Unauthenticated => Self::unauthenticated(),
            ErrorKind::Forbidden => Self::forbidden(),
            kind => Self::new(status(kind), e.to_string()),
        }
    }
}

impl From<ingest::IngestError> for ApiError {
    fn from(e: ingest::IngestError) -> Self {
        use ingest::{ErrorKind as K, IngestError as E};
        let kind = e.kind();
        match e {
            E::Invalid { problems } => Self::unprocessable(
                "some fields were refused; nothing was stored",
                problems
                    .into_iter()
                    .map(|p| FieldProblem { row: None, field: Some(p.field), reason: p.reason })
                    .collect(),
            ),
            E::Rows { rows, forbidden } => {
                let status = if forbidden { StatusCode::FORBIDDEN } else { StatusCode::UNPROCESSABLE_ENTITY };
                let errors = rows
                    .into_iter()
                    .map(|r| FieldProblem { row: Some(r.row), field: r.field, reason: r.reason })
                    .collect();
                let detail = "rows were refused (the first 100 are listed); nothing was stored".to_owned();
                ApiError { status, detail, errors, retry_after: None }
            }
            E::Overloaded { retry_after_secs } => ApiError {
                retry_after: Some(retry_after_secs),
                ..Self::new(StatusCode::TOO_MANY_REQUESTS, "the write buffer is full; retry later")
            },
            other => match kind {
                K::Malformed => Self::bad_request(other.to_string()),
                K::Invalid => Self::unprocessable(other.to_string(), Vec::new()),
                K::Conflict => Self::new(StatusCode::CONFLICT, other.to_string()),
                K::Forbidden => Self::forbidden(),
                K::NotFound => Self::not_found("row"),
                K::TooLarge => Self::new(StatusCode::PAYLOAD_TOO_LARGE, other.to_string()),
                K::Unavailable => {
                    tracing::error!(error = %other, "write path unavailable");
                    ApiError {
                        retry_after: Some(1),
                        ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "storage is unavailable; retry later")
                    }
                }
                _ => Self::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
            },
        }
    }
}

impl From<query::QueryError> for ApiError {
    fn from(e: query::QueryError) -> Self {
        use query::QueryError as E;
        match e {
            E::Forbidden => Self::forbidden(),
            E::NotAllowed(_) | E::Invalid(_) => Self::bad_request(e.to_string()),
            E::MemoryLimit(_) | E::Timeout(_) | E::TooLarge(_) | E::Limit(_) => {
                Self::unprocessable(e.to_string(), Vec::new())
            }
            E::Busy => ApiError { retry_after: Some(1), ..Self::new(StatusCode::TOO_MANY_REQUESTS, e.to_string()) },
            E::Overloaded => {
                ApiError { retry_after: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()) }
            }
            E::Internal(ref detail) => {
                // The detail may name paths and members: the log only.
                tracing::error!(error = %detail, "query failed");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
            }
        }
    }
}

impl From<catalog::IdError> for ApiError {
    fn from(e: catalog::IdError) -> Self {
        Self::bad_request(e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            // Well-formed JSON of the wrong shape: unknown fields, wrong types, missing fields.
            JsonRejection::JsonDataError(e) => Self::unprocessable(e.body_text(), Vec::new()),
            JsonRejection::JsonSyntaxError(e) => Self::bad_request(e.body_text()),
            JsonRejection::MissingJsonContentType(_) => {
                Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "expected Content-Type: application/json")
            }
            JsonRejection::BytesRejection(e) if std::error::Error::source(&e).is_some_and(super::body::is_slow) => {
                Self::new(StatusCode::REQUEST_TIMEOUT, "the request body stopped arriving or took too long")
            }
            other => Self::new(other.status(), other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        Self::bad_request(r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let detail = if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), detail = %self.detail, "request failed");
            "internal error; the server log has the details".to_owned()
        } else {
            self.detail
        };
        let body = Problem {
            problem_type: "about:blank".into(),
            title: self.status.canonical_reason().unwrap_or("Error").into(),
            status: self.status.as_u16(),
            detail,
            errors: self.errors,
        };
        let mut response = (self.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// `axum::Json` whose rejections are problem+json (422 for unknown or mistyped fields).
#[derive(Debug, Clone, Copy, Default, FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `axum::extract::Query` whose rejections are problem+json.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `axum::extract::Path` whose rejections are problem+json.
#[derive(Debug, Clone, Copy, Default, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

pub type ApiResult<T> = Result<T, ApiError>;
