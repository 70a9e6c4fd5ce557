//! Health, metrics, the OpenAPI document, the dataset catalogue, limits.

use reqwest::{Method, StatusCode};
use serde_json::json;
use test_helpers::{Store, TestServer};

#[tokio::test]
async fn health_metrics_and_openapi_cover_every_route() {
    let s = TestServer::spawn(Store::Sqlite).await;
    let (status, body) = s.call(Method::GET, "/health", None, None).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));

    let (status, doc) = s.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    let paths: Vec<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    for route in [
        "/health",
        "/metrics",
        "/openapi.json",
        "/oauth2/token",
        "/developer-helpers/datasets",
        "/developer-helpers/datasetsbytype/{type}",
        "/developer-helpers/types/{dataset}",
        "/v1/datasets",
        "/v1/datasets/{name}",
        "/v1/datasets/{name}/promote",
        "/v1/members",
        "/v1/members/{uid}",
        "/v1/subscribers",
        "/v1/subscribers/{id}",
        "/v1/connections",
        "/v1/connections/{id}",
        "/v1/connections/{id}/submit",
        "/v1/connections/{id}/approve",
        "/v1/connections/{id}/promote-request",
        "/v1/connections/{id}/promote",
        "/v1/connections/{id}/clone",
        "/v1/members/{uid}/agreements",
        "/v1/members/{uid}/agreements/{connection_id}/approve",
        "/v1/members/{uid}/agreements/{connection_id}/revoke",
        "/v1/members/{uid}/access-log",
        "/api/pds/pds/{file}",
        "/v1/ingest/{dataset}",
        "/api/pds/transaction",
        "/api/pds/transaction/{file}",
        "/v1/query",
    ] {
        assert!(paths.contains(&route), "{route} missing from /openapi.json");
    }
    let methods = |path: &str| doc["paths"][path].as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(methods("/api/pds/transaction/{file}"), ["get", "put"]);

    let (status, text) = s.call_text(Method::GET, "/metrics", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains("trove_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/health\""));
}

#[tokio::test]
async fn the_61_datasets_with_kinds_and_typed_schemas() {
    let s = TestServer::spawn(Store::Sqlite).await;
    let (_, all) = s.call(Method::GET, "/developer-helpers/datasets", None, None).await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 61);
    let kind = |name: &str| all.iter().find(|d| d["dataset_machine_name"] == name).unwrap()["kind"].clone();
    assert_eq!(kind("ds_energy_consumption"), "transactional");
    assert_eq!(kind("ds_personal_details"), "metadata");
    assert_eq!(kind("ds_bank_account"), "metadata");
    let (_, meta) = s.call(Method::GET, "/developer-helpers/datasetsbytype/metadata", None, None).await;
    let (_, tx) = s.call(Method::GET, "/developer-helpers/datasetsbytype/transactional", None, None).await;
    assert_eq!(meta.as_array().unwrap().len() + tx.as_array().unwrap().len(), 61);
    assert_eq!(
        s.call(Method::GET, "/developer-helpers/datasetsbytype/other", None, None).await.0,
        StatusCode::NOT_FOUND
    );

    let (_, types) = s.call(Method::GET, "/developer-helpers/types/field_ds_energy_consumption", None, None).await;
    assert_eq!(types["field_energy_reading_value"]["data_type"], "float");
    assert_eq!(types["field_energy_reading_timestamp"]["data_type"], "timestamp");
    let (_, referrals) = s.call(Method::GET, "/developer-helpers/types/ds_referrals", None, None).await;
    assert_eq!(referrals["memo"]["data_type"], "text", "the example wins over the documented int");
    assert_eq!(referrals["referree_availability"]["data_type"], "json");

    // Every transactional dataset has a typed schema with an event timestamp.
    for d in tx.as_array().unwrap() {
        let name = d["dataset_machine_name"].as_str().unwrap();
        let (status, full) = s.call(Method::GET, &format!("/v1/datasets/{name}"), None, None).await;
        assert_eq!(status, StatusCode::OK);
        let event = full["event_time_field"].as_str().unwrap_or_else(|| panic!("{name} has no event time"));
        let field = full["fields"].as_array().unwrap().iter().find(|f| f["name"] == event).unwrap();
        assert_eq!(field["data_type"], "timestamp", "{name}");
    }
}

#[tokio::test]
async fn operator_adds_a_dataset_in_the_sandbox_and_promotes_it() {
    let s = TestServer::spawn(Store::Sqlite).await;
    let body = json!({
        "name": "ds_solar_generation", "title": "Solar Generation", "kind": "transactional",
        "fields": [{"name": "solar_watts", "title": "Watts", "data_type": "float"},
                   {"name": "solar_reading_timestamp", "title": "Read at", "data_type": "timestamp"}],
        "event_time_field": "solar_reading_timestamp"
    });
    let (status, created) = s.call(Method::POST, "/v1/datasets", Some(s.admin()), Some(body.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["environment"], "sandbox");
    assert_eq!(s.call(Method::POST, "/v1/datasets", Some(s.admin()), Some(body)).await.0, StatusCode::CONFLICT);
    let token = s.subscriber_token("energy-co").await;
    let other = json!({"name": "ds_other", "title": "Other", "kind": "metadata", "fields": []});
    assert_eq!(s.call(Method::POST, "/v1/datasets", Some(&token), Some(other)).await.0, StatusCode::FORBIDDEN);
    let (status, promoted) =
        s.call(Method::POST, "/v1/datasets/ds_solar_generation/promote", Some(s.admin()), None).await;
    assert_eq!((status, promoted["environment"].as_str()), (StatusCode::OK, Some("production")));

    // Without an event-time field, created_timestamp is added.
    let body = json!({"name": "ds_notes_log", "title": "Notes", "kind": "transactional",
                      "fields": [{"name": "note_text", "title": "Note", "data_type": "text"}]});
    let (status, created) = s.call(Method::POST, "/v1/datasets", Some(s.admin()), Some(body)).await;
    assert_eq!((status, created["event_time_field"].as_str()), (StatusCode::CREATED, Some("created_timestamp")));
}

#[tokio::test]
async fn unknown_fields_and_oversize_bodies_are_refused() {
    let s = TestServer::spawn(Store::Sqlite).await;
    let (status, body) =
        s.call(Method::POST, "/v1/members", Some(s.admin()), Some(json!({"mydexid": "zed", "role": "admin"}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["status"], 422);
    let huge = json!({"mydexid": "x".repeat(70 * 1024)});
    let (status, body) = s.call(Method::POST, "/v1/members", Some(s.admin()), Some(huge)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let resp = s
        .client
        .post(s.url("/v1/members"))
        .bearer_auth(s.admin())
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}
