//! Credentials: a wrong, expired, revoked or missing one is 401; a valid one outside its
//! agreement is 403; neither says whether a member, dataset or row exists.

use reqwest::{Method, StatusCode};
use serde_json::json;
use test_helpers::{TestServer, stores};

#[tokio::test]
async fn oauth2_client_credentials() {
    for store in stores() {
        let s = TestServer::spawn(store).await;
        let sub = &s.creds.subscribers[0];
        let token = |id: &str, secret: &str, grant: &str| {
            s.client
                .post(s.url("/oauth2/token"))
                .basic_auth(id, Some(secret))
                .form(&[("grant_type", grant), ("scope", "mydex:pdx")])
                .send()
        };
        let ok = token(&sub.client_id, &sub.client_secret, "client_credentials").await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let body: serde_json::Value = ok.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert!(body["expires_in"].as_u64().unwrap() > 0);
        let bad = token(&sub.client_id, "wrong", "client_credentials").await.unwrap();
        assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(bad.json::<serde_json::Value>().await.unwrap(), json!({"error": "invalid_client"}));
        let unknown = token("nobody", &sub.client_secret, "client_credentials").await.unwrap();
        assert_eq!(unknown.status(), StatusCode::UNAUTHORIZED);
        let grant = token(&sub.client_id, &sub.client_secret, "password").await.unwrap();
        assert_eq!(grant.status(), StatusCode::BAD_REQUEST);
        assert_eq!(grant.json::<serde_json::Value>().await.unwrap(), json!({"error": "unsupported_grant_type"}));
        // Form-encoded client credentials work too (RFC 6749 §2.3.1).
        let form = s
            .client
            .post(s.url("/oauth2/token"))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &sub.client_id),
                ("client_secret", &sub.client_secret),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(form.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn principals_get_401_or_403_as_the_contract_says() {
    for store in stores() {
        let s = TestServer::spawn(store).await;
        let token = s.subscriber_token("energy-co").await;
        let member = s.member_secret(1).to_owned();
        let new_member = || Some(json!({"mydexid": "newbie"}));
        // Missing and bad credentials: 401.
        assert_eq!(s.call(Method::POST, "/v1/members", None, new_member()).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(s.call(Method::POST, "/v1/members", Some("junk"), new_member()).await.0, StatusCode::UNAUTHORIZED);
        // Valid credentials, not the operator: 403.
        assert_eq!(s.call(Method::POST, "/v1/members", Some(&token), new_member()).await.0, StatusCode::FORBIDDEN);
        assert_eq!(s.call(Method::POST, "/v1/members", Some(&member), new_member()).await.0, StatusCode::FORBIDDEN);
        assert_eq!(s.call(Method::GET, "/v1/subscribers", Some(&token), None).await.0, StatusCode::FORBIDDEN);
        assert_eq!(s.call(Method::POST, "/v1/members", Some(s.admin()), new_member()).await.0, StatusCode::CREATED);

        // A member reads only their own things; another member's, existing or not, is the same 403.
        assert_eq!(s.call(Method::GET, "/v1/members/1/agreements", Some(&member), None).await.0, StatusCode::OK);
        let other = s.call_text(Method::GET, "/v1/members/2/agreements", Some(&member), None).await;
        let missing = s.call_text(Method::GET, "/v1/members/999999/agreements", Some(&member), None).await;
        assert_eq!(other.0, StatusCode::FORBIDDEN);
        assert_eq!(other, missing, "refusals for an existing and a missing member are byte-identical");
        // The operator reads no member data and cannot consent for a member.
        assert_eq!(
            s.call(Method::GET, "/v1/members/1/access-log", Some(s.admin()), None).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            s.call(Method::POST, "/v1/members/1/agreements/1/approve", Some(s.admin()), None).await.0,
            StatusCode::FORBIDDEN
        );
        // A subscriber cannot approve an agreement for a member either.
        assert_eq!(
            s.call(Method::POST, "/v1/members/1/agreements/1/approve", Some(&token), None).await.0,
            StatusCode::FORBIDDEN
        );

        // A subscriber sees only its own connections; another's and a missing one look alike.
        let own = s.creds.subscribers[0].connection.id;
        let theirs = s.creds.subscribers[1].connection.id;
        assert_eq!(s.call(Method::GET, &format!("/v1/connections/{own}"), Some(&token), None).await.0, StatusCode::OK);
        let a = s.call_text(Method::GET, &format!("/v1/connections/{theirs}"), Some(&token), None).await;
        let b = s.call_text(Method::GET, "/v1/connections/999999", Some(&token), None).await;
        assert_eq!(a.0, StatusCode::FORBIDDEN);
        assert_eq!(a, b);
        let (_, list) = s.call(Method::GET, "/v1/connections", Some(&token), None).await;
        assert_eq!(list.as_array().unwrap().len(), 1);
        let (_, all) = s.call(Method::GET, "/v1/connections", Some(s.admin()), None).await;
        assert_eq!(all.as_array().unwrap().len(), 3);
    }
}

#[tokio::test]
async fn mydex_calls_check_subscriber_and_member_credentials() {
    for store in stores() {
        let s = TestServer::spawn(store).await;
        let token = s.subscriber_token("energy-co").await;
        let insight = s.subscriber_token("insight-ltd").await;
        let q = s.member_query(1, "energy-co");
        let api_key = s.creds.subscribers[0].api_key.clone();
        let read = |path: String, bearer: Option<String>| {
            let s = &s;
            async move { s.call_text(Method::GET, &path, bearer.as_deref(), None).await }
        };
        let path = |uid: i64, q: &str, ds: &str| format!("/api/pds/pds/{uid}.json?{q}&dataset={ds}");

        assert_eq!(read(path(1, &q, "ds_personal_details"), Some(token.clone())).await.0, StatusCode::OK);
        // api_key instead of a bearer token.
        assert_eq!(
            read(format!("{}&api_key={api_key}", path(1, &q, "ds_personal_details")), None).await.0,
            StatusCode::OK
        );
        // No subscriber credential, a wrong one, or another subscriber presenting energy-co's member key: 401.
        let unauthorized = read(path(1, &q, "ds_personal_details"), None).await;
        assert_eq!(unauthorized.0, StatusCode::UNAUTHORIZED);
        assert_eq!(read(path(1, &q, "ds_personal_details"), Some("junk".into())).await, unauthorized);
        assert_eq!(
            read(path(1, &q, "ds_personal_details"), Some(insight.clone())).await,
            unauthorized,
            "forged con_id"
        );
        // A con_id for another uid than the path's, a wrong key, no key: the same 401.
        assert_eq!(read(path(2, &q, "ds_personal_details"), Some(token.clone())).await, unauthorized);
        let wrong_key = q.replace("key=", "key=0");
        assert_eq!(read(path(1, &wrong_key, "ds_personal_details"), Some(token.clone())).await, unauthorized);
        let no_key: String = q.split('&').filter(|p| !p.starts_with("key=")).collect::<Vec<_>>().join("&");
        assert_eq!(read(path(1, &no_key, "ds_personal_details"), Some(token.clone())).await, unauthorized);
        // A member without an agreement with this connection (member 10) and a member that does not exist: 401.
        let forged =
            |uid: i64| format!("con_id={uid}-{}&key=00&source_type=connection", s.creds.subscribers[0].connection.nid);
        let none = read(path(10, &forged(10), "ds_personal_details"), Some(token.clone())).await;
        let ghost = read(path(99999, &forged(99999), "ds_personal_details"), Some(token.clone())).await;
        assert_eq!(none, unauthorized);
        assert_eq!(ghost, unauthorized);

        // Valid credentials outside the agreement: 403, the same for a dataset that exists and one that does not.
        let insight_q = s.member_query(1, "insight-ltd");
        let outside = read(path(1, &insight_q, "ds_personal_details"), Some(insight.clone())).await;
        assert_eq!(outside.0, StatusCode::FORBIDDEN);
        assert_eq!(read(path(1, &q, "ds_passport"), Some(token.clone())).await, outside);
        assert_eq!(read(path(1, &q, "ds_no_such_dataset"), Some(token.clone())).await, outside);
    }
}
