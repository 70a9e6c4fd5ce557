//! The connection and agreement lifecycle over HTTP, as subscriber, operator and member.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use test_helpers::{TestServer, stores, terms};

async fn post(s: &TestServer, path: &str, bearer: &str) -> (StatusCode, Value) {
    s.call(Method::POST, path, Some(bearer), None).await
}

#[tokio::test]
async fn connection_lifecycle_and_refused_transitions() {
    for store in stores() {
        let s = TestServer::spawn(store).await;
        let sub = s.subscriber_token("care-services").await;
        let other = s.subscriber_token("energy-co").await;
        let admin = s.admin().to_owned();

        let (status, c) =
            s.call(Method::POST, "/v1/connections", Some(&sub), Some(terms("Home visits", &["ds_home"]))).await;
        assert_eq!((status, c["status"].as_str()), (StatusCode::CREATED, Some("draft")), "{c}");
        let id = c["id"].as_i64().unwrap();
        let at = |action: &str| format!("/v1/connections/{id}/{action}");

        // A draft cannot be approved, promoted, or agreed to by a member.
        assert_eq!(post(&s, &at("approve"), &admin).await.0, StatusCode::CONFLICT);
        assert_eq!(post(&s, &at("promote-request"), &sub).await.0, StatusCode::CONFLICT);
        let member1 = s.member_secret(1).to_owned();
        assert_eq!(post(&s, &format!("/v1/members/1/agreements/{id}/approve"), &member1).await.0, StatusCode::CONFLICT);
        // Only its subscriber edits or submits it.
        assert_eq!(post(&s, &at("submit"), &other).await.0, StatusCode::FORBIDDEN);
        let (status, c) = post(&s, &at("submit"), &sub).await;
        assert_eq!((status, c["status"].as_str()), (StatusCode::OK, Some("requested")));
        let reviewed = c["revisions"][0]["version"].as_i64().unwrap();
        // Editing a requested connection returns it to draft, under a new version: the
        // operator's approval of the version it reviewed is then refused.
        let (status, c) = s
            .call(Method::PUT, &format!("/v1/connections/{id}"), Some(&sub), Some(terms("Home visits 2", &["ds_home"])))
            .await;
        assert_eq!((status, c["status"].as_str()), (StatusCode::OK, Some("draft")));
        let edited = c["revisions"][0]["version"].as_i64().unwrap();
        assert_ne!(edited, reviewed);
        post(&s, &at("submit"), &sub).await;
        let (status, body) =
            s.call(Method::POST, &at("approve"), Some(&admin), Some(json!({"version": reviewed}))).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        let (status, _) = s.call(Method::POST, &at("approve"), Some(&admin), Some(json!({"version": "two"}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        // A subscriber cannot approve its own connection.
        assert_eq!(post(&s, &at("approve"), &sub).await.0, StatusCode::FORBIDDEN);
        let (status, approved) =
            s.call(Method::POST, &at("approve"), Some(&admin), Some(json!({"version": edited}))).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(approved["connection"]["status"], "approved");
        assert_eq!(approved["connection"]["environment"], "sandbox");
        assert!(approved["nid"].as_i64().is_some() && approved["key"].as_str().unwrap().len() >= 32);
        assert_eq!(post(&s, &at("approve"), &admin).await.0, StatusCode::CONFLICT);

        // Promotion: the subscriber asks, the operator grants; not the other way round.
        assert_eq!(post(&s, &at("promote"), &admin).await.0, StatusCode::CONFLICT);
        assert_eq!(post(&s, &at("promote-request"), &admin).await.0, StatusCode::FORBIDDEN);
        assert_eq!(post(&s, &at("promote-request"), &sub).await.0, StatusCode::OK);
        assert_eq!(post(&s, &at("promote"), &sub).await.0, StatusCode::FORBIDDEN);
        let (status, live) = post(&s, &at("promote"), &admin).await;
        assert_eq!((status, live["status"].as_str()), (StatusCode::OK, Some("live")));

        // Clone: a new draft with the same terms; the one-page view shows the revisions.
        let (status, copy) = post(&s, &at("clone"), &sub).await;
        assert_eq!((status, copy["status"].as_str()), (StatusCode::CREATED, Some("draft")));
        assert_ne!(copy["id"], live["id"]);
        assert_eq!(copy["revisions"][0]["terms"]["datasets"], live["revisions"][0]["terms"]["datasets"]);
        let (_, page) = s.call(Method::GET, &format!("/v1/connections/{id}"), Some(&sub), None).await;
        assert_eq!(page["revisions"].as_array().unwrap().len(), 1);
        assert_eq!(page["nid"], approved["nid"]);

        // Bad terms are 422: unknown field, unknown dataset, unknown JSON key.
        let mut bad = terms("x", &["ds_home"]);
        bad["datasets"]["ds_home"]["read"] = json!(["no_such_field"]);
        assert_eq!(
            s.call(Method::POST, "/v1/connections", Some(&sub), Some(bad)).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        let mut extra = terms("x", &["ds_home"]);
        extra["surprise"] = json!(1);
        assert_eq!(
            s.call(Method::POST, "/v1/connections", Some(&sub), Some(extra)).await.0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
    }
}

#[tokio::test]
async fn new_revisions_wait_for_the_member_and_revocation_is_immediate() {
    for store in stores() {
        let s = TestServer::spawn(store).await;
        let token = s.subscriber_token("energy-co").await;
        let admin = s.admin().to_owned();
        let conn = s.creds.subscribers[0].connection.id;
        let member = s.member_secret(1).to_owned();
        let q = s.member_query(1, "energy-co");
        let read = |q: String, ds: &'static str| {
            let (s, token) = (&s, token.clone());
            async move { s.call(Method::GET, &format!("/api/pds/pds/1.json?{q}&dataset={ds}"), Some(&token), None).await.0 }
        };
        assert_eq!(read(q.clone(), "ds_passport").await, StatusCode::FORBIDDEN);

        // Editing the live connection opens a draft revision 2; revision 1 keeps serving.
        let (_, current) = s.call(Method::GET, &format!("/v1/connections/{conn}"), Some(&token), None).await;
        let mut v2 = current["revisions"][0]["terms"].clone();
        v2["datasets"]["ds_passport"] = json!({"read": ["*"], "write": []});
        let (status, edited) = s.call(Method::PUT, &format!("/v1/connections/{conn}"), Some(&token), Some(v2)).await;
        assert_eq!(status, StatusCode::OK, "{edited}");
        assert_eq!((edited["status"].as_str(), edited["approved_version"].as_i64()), (Some("live"), Some(1)));
        assert_eq!(edited["revisions"][1]["state"], "draft");
        assert_eq!(read(q.clone(), "ds_personal_details").await, StatusCode::OK, "the approved revision keeps serving");
        post(&s, &format!("/v1/connections/{conn}/submit"), &token).await;
        let (status, approved) = post(&s, &format!("/v1/connections/{conn}/approve"), &admin).await;
        assert_eq!((status, approved["connection"]["approved_version"].as_i64()), (StatusCode::OK, Some(2)));
        assert!(approved["key"].is_null(), "the connection key is issued once");

        // Members stay on the version they approved until they approve the new one.
        assert_eq!(read(q.clone(), "ds_passport").await, StatusCode::FORBIDDEN);
        let (_, agreements) = s.call(Method::GET, "/v1/members/1/agreements", Some(&member), None).await;
        let a = agreements.as_array().unwrap().iter().find(|a| a["connection_id"] == conn).unwrap();
        assert_eq!(a["version"], 1);
        assert_eq!(a["newer_version"]["version"], 2);
        assert_eq!(a["newer_version"]["changes"]["datasets_added"], json!(["ds_passport"]));
        let (status, approval) = post(&s, &format!("/v1/members/1/agreements/{conn}/approve"), &member).await;
        assert_eq!((status, approval["version"].as_i64()), (StatusCode::OK, Some(2)));
        let new_q = format!(
            "con_id={}&key={}&source_type=connection",
            approval["con_id"].as_str().unwrap(),
            approval["key"].as_str().unwrap()
        );
        assert_eq!(read(new_q.clone(), "ds_passport").await, StatusCode::OK);
        assert_eq!(read(q, "ds_personal_details").await, StatusCode::UNAUTHORIZED, "the earlier key was replaced");
        // Member 2 is still on version 1.
        let q2 = s.member_query(2, "energy-co");
        let (status, _) =
            s.call(Method::GET, &format!("/api/pds/pds/2.json?{q2}&dataset=ds_passport"), Some(&token), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        // Revocation stops every call that starts afterwards: reads and writes.
        let (status, revoked) = post(&s, &format!("/v1/members/1/agreements/{conn}/revoke"), &member).await;
        assert_eq!((status, revoked["status"].as_str()), (StatusCode::OK, Some("revoked")));
        assert_eq!(read(new_q.clone(), "ds_personal_details").await, StatusCode::UNAUTHORIZED);
        let write = json!({"ds_personal_details": {"field_personal_fname": "Eve"}});
        let (status, _) =
            s.call(Method::POST, &format!("/api/pds/pds/1.json?{new_q}"), Some(&token), Some(write)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            post(&s, &format!("/v1/members/1/agreements/{conn}/revoke"), &member).await.0,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn the_operator_creates_many_members_in_one_request() {
    for store in stores() {
        let s = TestServer::spawn(store).await;
        let bulk = |bearer: &str, body: String| {
            s.client
                .post(s.url("/v1/members"))
                .bearer_auth(bearer)
                .header("content-type", "application/x-ndjson")
                .body(body)
                .send()
        };
        let lines = |names: &[&str]| names.iter().map(|n| format!("{}\n", json!({"mydexid": n}))).collect::<String>();
        let resp = bulk(s.admin(), lines(&["ann", "ben", "cat"])).await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
        let created: Vec<Value> =
            resp.text().await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(created.iter().map(|m| m["mydexid"].as_str().unwrap()).collect::<Vec<_>>(), ["ann", "ben", "cat"]);
        for m in &created {
            let (status, me) =
                s.call(Method::GET, &format!("/v1/members/{}", m["uid"]), m["secret"].as_str(), None).await;
            assert_eq!((status, &me["mydexid"]), (StatusCode::OK, &m["mydexid"]), "each secret is its member's");
        }

        let count =
            || async { s.call(Method::GET, "/v1/members", Some(s.admin()), None).await.1.as_array().unwrap().len() };
        let before = count().await;
        let resp = bulk(s.admin(), format!("{}not json\n", lines(&["dan"]))).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(resp.json::<Value>().await.unwrap()["errors"][0]["row"], 2, "the line that failed");
        assert_eq!(
            bulk(s.admin(), lines(&["eve", "ann"])).await.unwrap().status(),
            StatusCode::CONFLICT,
            "ann is taken"
        );
        assert_eq!(bulk(s.admin(), lines(&["fay", "fay"])).await.unwrap().status(), StatusCode::CONFLICT);
        assert_eq!(count().await, before, "a refused request creates nobody");
        let member = s.member_secret(1).to_owned();
        assert_eq!(bulk(&member, lines(&["gus"])).await.unwrap().status(), StatusCode::FORBIDDEN, "operators only");
        let too_many: Vec<String> = (0..100_001).map(|i| format!("m{i}")).collect();
        let names: Vec<&str> = too_many.iter().map(String::as_str).collect();
        assert_eq!(bulk(s.admin(), lines(&names)).await.unwrap().status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(count().await, before);
    }
}
