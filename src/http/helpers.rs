//! `/developer-helpers/*`: the public dataset catalogue, answered as Mydex's are.

use std::collections::BTreeMap;

use axum::extract::State;
use catalog::{Dataset, DatasetKind, DatasetName};
use serde::Serialize;

use super::error::{ApiError, ApiPath, ApiResult, BadRequest, NotFound};
use crate::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct DatasetSummary {
    dataset_machine_name: String,
    dataset_name: String,
    /// `production` or `sandbox`.
    status: String,
    /// `metadata` or `transactional`.
    kind: DatasetKind,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct FieldDescription {
    field_name: String,
    display_name: String,
    /// The resolved type: integer, float, decimal, text, boolean, json or timestamp.
    data_type: String,
}

fn summary(d: &Dataset) -> DatasetSummary {
    DatasetSummary {
        dataset_machine_name: d.name.to_string(),
        dataset_name: d.title.clone(),
        status: serde_json::to_value(d.environment)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        kind: d.kind,
    }
}

/// Every dataset of the catalogue.
#[utoipa::path(get, path = "/developer-helpers/datasets", tag = "catalogue",
    responses((status = 200, body = Vec<DatasetSummary>)))]
pub(super) async fn datasets(State(state): State<AppState>) -> ApiResult<axum::Json<Vec<DatasetSummary>>> {
    Ok(axum::Json(state.catalog.datasets().await?.iter().map(summary).collect()))
}

/// The datasets of one kind.
#[utoipa::path(get, path = "/developer-helpers/datasetsbytype/{type}", tag = "catalogue",
    params(("type" = String, Path, description = "metadata or transactional")),
    responses((status = 200, body = Vec<DatasetSummary>), BadRequest, NotFound))]
pub(super) async fn datasets_by_type(
    State(state): State<AppState>,
    ApiPath(kind): ApiPath<String>,
) -> ApiResult<axum::Json<Vec<DatasetSummary>>> {
    let kind = match kind.as_str() {
        "metadata" => DatasetKind::Metadata,
        "transactional" => DatasetKind::Transactional,
        _ => return Err(ApiError::not_found("dataset type")),
    };
    let all = state.catalog.datasets().await?;
    Ok(axum::Json(all.iter().filter(|d| d.kind == kind).map(summary).collect()))
}

/// A dataset's fields with their resolved types.
#[utoipa::path(get, path = "/developer-helpers/types/{dataset}", tag = "catalogue",
    params(("dataset" = String, Path, description = "e.g. ds_energy_consumption")),
    responses((status = 200, body = BTreeMap<String, FieldDescription>), BadRequest, NotFound))]
pub(super) async fn types(
    State(state): State<AppState>,
    ApiPath(dataset): ApiPath<String>,
) -> ApiResult<axum::Json<BTreeMap<String, FieldDescription>>> {
    let name = DatasetName::parse_mydex(&dataset).map_err(|_| ApiError::not_found("dataset"))?;
    let d = state.catalog.dataset(&name).await?;
    Ok(axum::Json(
        d.fields
            .iter()
            .map(|f| {
                let t = FieldDescription {
                    field_name: f.name.to_string(),
                    display_name: f.title.clone(),
                    data_type: f.data_type.as_str().to_owned(),
                };
                (f.name.to_string(), t)
            })
            .collect(),
    ))
}
