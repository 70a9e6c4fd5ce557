//! The operator's catalogue: datasets, members, subscribers (`/v1/datasets`, `/v1/members`,
//! `/v1/subscribers`).

use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use catalog::{
    DEFAULT_EVENT_TIME_FIELD, Dataset, DatasetEnvironment, DatasetKind, DatasetName, Field, FieldName, FieldType,
    MAX_TEXT_BYTES, Member, MemberId, Subscriber, SubscriberId,
};
use ingest::decode::Format;
use serde::{Deserialize, Serialize};

use super::auth::Principal;
use super::error::{
    ApiError, ApiJson, ApiPath, ApiResult, BadRequest, Conflict, FieldProblem, JsonBody, NotFound, Refused,
};
use crate::AppState;

/// A dataset as `GET /v1/datasets/{name}` shows it: the resolved field types.
type DatasetView = Dataset;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewField {
    name: FieldName,
    title: String,
    #[serde(default)]
    description: String,
    data_type: FieldType,
    /// Cap on a text or JSON value in bytes (default and maximum 65536).
    max_bytes: Option<u32>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewDataset {
    name: DatasetName,
    title: String,
    #[serde(default)]
    description: String,
    kind: DatasetKind,
    fields: Vec<NewField>,
    /// Transactional only: the timestamp field rows are partitioned by. Default
    /// `created_timestamp`, added and filled with the arrival time when rows leave it out.
    event_time_field: Option<FieldName>,
}

/// The catalogue's datasets.
#[utoipa::path(get, path = "/v1/datasets", tag = "catalog", responses((status = 200, body = Vec<DatasetView>)))]
pub(super) async fn list_datasets(State(state): State<AppState>) -> ApiResult<axum::Json<Vec<DatasetView>>> {
    Ok(axum::Json(state.catalog.datasets().await?))
}

/// One dataset with its resolved field types.
#[utoipa::path(get, path = "/v1/datasets/{name}", tag = "catalog",
    params(("name" = String, Path)),
    responses((status = 200, body = DatasetView), BadRequest, NotFound))]
pub(super) async fn get_dataset(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<DatasetView>> {
    let name: DatasetName = name.parse().map_err(|_| ApiError::not_found("dataset"))?;
    Ok(axum::Json(state.catalog.dataset(&name).await?))
}

/// The operator adds a dataset; it starts in the sandbox.
#[utoipa::path(post, path = "/v1/datasets", tag = "catalog", security(("bearer" = [])),
    request_body = NewDataset,
    responses((status = 201, body = DatasetView), JsonBody, Refused, Conflict))]
pub(super) async fn create_dataset(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(new): ApiJson<NewDataset>,
) -> ApiResult<(StatusCode, axum::Json<DatasetView>)> {
    principal.operator()?;
    if new.fields.iter().any(|f| f.max_bytes.is_some_and(|m| m == 0 || m > MAX_TEXT_BYTES)) {
        return Err(ApiError::unprocessable(format!("max_bytes must be 1..={MAX_TEXT_BYTES}"), Vec::new()));
    }
    if let Some(f) = new.fields.iter().find(|f| catalog::RESERVED_FIELDS.contains(&f.name.as_str())) {
        return Err(ApiError::unprocessable(format!("{} is a reserved name", f.name), Vec::new()));
    }
    let mut fields: Vec<Field> = new
        .fields
        .into_iter()
        .map(|f| Field {
            name: f.name,
            title: f.title,
            description: f.description,
            documented_type: String::new(),
            data_type: f.data_type,
            max_bytes: f.max_bytes.unwrap_or(MAX_TEXT_BYTES),
        })
        .collect();
    let event_time_field = match new.kind {
        DatasetKind::Metadata => new.event_time_field,
        DatasetKind::Transactional => {
            let name: FieldName =
                new.event_time_field.unwrap_or_else(|| DEFAULT_EVENT_TIME_FIELD.parse().expect("valid name"));
            if fields.iter().all(|f| f.name != name) && name.as_str() == DEFAULT_EVENT_TIME_FIELD {
                fields.push(Field {
                    name: name.clone(),
                    title: "Created Timestamp".into(),
                    description: "When the event happened (epoch seconds); the arrival time when absent.".into(),
                    documented_type: String::new(),
                    data_type: FieldType::Timestamp,
                    max_bytes: MAX_TEXT_BYTES,
                });
            }
            Some(name)
        }
    };
    let dataset = Dataset {
        name: new.name,
        title: new.title,
        description: new.description,
        kind: new.kind,
        environment: DatasetEnvironment::Sandbox,
        fields,
        event_time_field,
    };
    Ok((StatusCode::CREATED, axum::Json(state.catalog.create_dataset(dataset).await?)))
}

/// The operator promotes a sandbox dataset to production.
#[utoipa::path(post, path = "/v1/datasets/{name}/promote", tag = "catalog", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = DatasetView), BadRequest, Refused, NotFound, Conflict))]
pub(super) async fn promote_dataset(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<axum::Json<DatasetView>> {
    principal.operator()?;
    let name: DatasetName = name.parse().map_err(|_| ApiError::not_found("dataset"))?;
    Ok(axum::Json(state.catalog.promote_dataset(&name).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewMember {
    /// The member's unique username.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    mydexid: String,
}

/// A new member and their secret, shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct CreatedMember {
    uid: MemberId,
    mydexid: String,
    secret: String,
}

/// The operator lists members.
#[utoipa::path(get, path = "/v1/members", tag = "catalog", security(("bearer" = [])),
    responses((status = 200, body = Vec<Member>), Refused))]
pub(super) async fn list_members(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<axum::Json<Vec<Member>>> {
    principal.operator()?;
    Ok(axum::Json(state.catalog.members().await?))
}

/// The most members one bulk request creates: one catalog transaction, held a second or two.
const MEMBERS_PER_REQUEST: usize = 100_000;

/// The operator creates a member, or many at once: with `application/x-ndjson`, one
/// `NewMember` a line (at most 100,000), created in one catalog transaction, all or none,
/// answered with one `CreatedMember` a line in the same order.
#[utoipa::path(post, path = "/v1/members", tag = "catalog", security(("bearer" = [])),
    request_body(content((NewMember = "application/json"), (NewMember = "application/x-ndjson"))),
    responses((status = 201, content((CreatedMember = "application/json"), (CreatedMember = "application/x-ndjson"))),
        JsonBody, Refused, Conflict))]
pub(super) async fn create_member(
    State(state): State<AppState>,
    principal: Principal,
    request: Request,
) -> ApiResult<Response> {
    principal.operator()?;
    let content_type = request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if Format::from_content_type(content_type) != Some(Format::Ndjson) {
        let ApiJson(new) = ApiJson::<NewMember>::from_request(request, &state).await?;
        let (member, secret) = state.catalog.create_member(&new.mydexid).await?;
        let body = CreatedMember { uid: member.uid, mydexid: member.mydexid, secret: secret.expose().to_owned() };
        return Ok((StatusCode::CREATED, axum::Json(body)).into_response());
    }
    let body = super::body::read_all(request.into_body(), state.settings.max_ingest_bytes).await?;
    let mut mydexids = Vec::new();
    for (i, line) in body.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.trim_ascii().is_empty()) {
        if mydexids.len() == MEMBERS_PER_REQUEST {
            return Err(ApiError::unprocessable(
                format!("at most {MEMBERS_PER_REQUEST} members a request"),
                Vec::new(),
            ));
        }
        let new: NewMember = serde_json::from_slice(line).map_err(|_| {
            let reason = "each line is {\"mydexid\": \"...\"}".to_owned();
            ApiError::unprocessable(
                "a line is not a new member",
                vec![FieldProblem { row: Some(i + 1), field: None, reason }],
            )
        })?;
        mydexids.push(new.mydexid);
    }
    let mut out = Vec::with_capacity(mydexids.len() * 96);
    for (member, secret) in state.catalog.create_members(&mydexids).await? {
        let created = CreatedMember { uid: member.uid, mydexid: member.mydexid, secret: secret.expose().to_owned() };
        serde_json::to_writer(&mut out, &created).expect("a created member is plain JSON");
        out.push(b'\n');
    }
    Ok((StatusCode::CREATED, [(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response())
}

/// A member, for the operator or the member themself.
#[utoipa::path(get, path = "/v1/members/{uid}", tag = "catalog", security(("bearer" = [])),
    params(("uid" = i64, Path, minimum = 1)),
    responses((status = 200, body = Member), BadRequest, Refused, NotFound))]
pub(super) async fn get_member(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(uid): ApiPath<MemberId>,
) -> ApiResult<axum::Json<Member>> {
    if principal != Principal::Operator {
        principal.member(uid)?;
    }
    Ok(axum::Json(state.catalog.member(uid).await?))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewSubscriber {
    /// 1-200 characters, not all blank.
    #[schema(min_length = 1, max_length = 200, pattern = "\\S")]
    name: String,
}

/// A new subscriber and its credentials, shown once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct CreatedSubscriber {
    id: SubscriberId,
    name: String,
    client_id: String,
    client_secret: String,
    api_key: String,
}

/// The operator lists subscribers.
#[utoipa::path(get, path = "/v1/subscribers", tag = "catalog", security(("bearer" = [])),
    responses((status = 200, body = Vec<Subscriber>), Refused))]
pub(super) async fn list_subscribers(
    State(state): State<AppState>,
    principal: Principal,
) -> ApiResult<axum::Json<Vec<Subscriber>>> {
    principal.operator()?;
    Ok(axum::Json(state.catalog.subscribers().await?))
}

/// The operator creates a subscriber with its OAuth2 client credentials and `api_key`.
#[utoipa::path(post, path = "/v1/subscribers", tag = "catalog", security(("bearer" = [])),
    request_body = NewSubscriber,
    responses((status = 201, body = CreatedSubscriber), JsonBody, Refused, Conflict))]
pub(super) async fn create_subscriber(
    State(state): State<AppState>,
    principal: Principal,
    ApiJson(new): ApiJson<NewSubscriber>,
) -> ApiResult<(StatusCode, axum::Json<CreatedSubscriber>)> {
    principal.operator()?;
    let (s, creds) = state.catalog.create_subscriber(&new.name).await?;
    let body = CreatedSubscriber {
        id: s.id,
        name: s.name,
        client_id: creds.client_id,
        client_secret: creds.client_secret.expose().to_owned(),
        api_key: creds.api_key.expose().to_owned(),
    };
    Ok((StatusCode::CREATED, axum::Json(body)))
}

/// A subscriber, for the operator or the subscriber itself.
#[utoipa::path(get, path = "/v1/subscribers/{id}", tag = "catalog", security(("bearer" = [])),
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, body = Subscriber), BadRequest, Refused, NotFound))]
pub(super) async fn get_subscriber(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<SubscriberId>,
) -> ApiResult<axum::Json<Subscriber>> {
    match principal {
        Principal::Operator => {}
        Principal::Subscriber(s) if s == id => {}
        _ => return Err(ApiError::forbidden()),
    }
    Ok(axum::Json(state.catalog.subscriber(id).await?))
}
