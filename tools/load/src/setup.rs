//! What a run sets up through the API before it sends: a subscriber, a live connection that
//! reads and writes the workload's dataset, members, and each member's agreement. The same
//! calls a real operator, subscriber and members make (README, "A connection's lifecycle").

use std::path::Path;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use reqwest::{Client, Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::Error;

/// Credentials of a set-up run; kept in `--setup-file` for reuse.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Setup {
    pub dataset: String,
    pub client_id: String,
    pub client_secret: String,
    pub connection_id: i64,
    /// `nid:key`, the bearer of `/v1/ingest`.
    pub ingest_bearer: String,
    pub members: Vec<SetupMember>,
}

/// A member and the `con_id`/`key` of its agreement, for the Mydex door.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SetupMember {
    pub uid: i64,
    pub con_id: String,
    pub key: String,
}

/// Members created by one bulk call (the server takes up to 100,000).
const MEMBERS_PER_CALL: usize = 50_000;

/// Members approving at once during setup (each approval waits for a catalog commit, and
/// approvals that wait together commit together).
pub(crate) const APPROVALS_IN_FLIGHT: usize = 16;

/// The text of a successful answer to `req` (`what` names it in errors).
async fn answer(req: reqwest::RequestBuilder, what: &str) -> Result<String, Error> {
    let resp = req.send().await.map_err(|e| Error::Api(format!("{what}: {e}")))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(Error::Api(format!("{what}: {status} {text}")));
    }
    Ok(text)
}

/// A thin JSON client of the server.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    pub client: Client,
    pub base: String,
}

impl Api {
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        bearer: &str,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        let mut req = self.client.request(method.clone(), format!("{}{path}", self.base)).bearer_auth(bearer);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let text = answer(req, &format!("{method} {path}")).await?;
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// POSTs an NDJSON `body`; the answer's text.
    pub(crate) async fn post_ndjson(&self, path: &str, bearer: &str, body: String) -> Result<String, Error> {
        let req = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(bearer)
            .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
            .body(body);
        answer(req, &format!("POST {path}")).await
    }

    /// A subscriber bearer token by OAuth2 client credentials.
    pub(crate) async fn token(&self, setup: &Setup) -> Result<String, Error> {
        let resp = self
            .client
            .post(format!("{}/oauth2/token", self.base))
            .basic_auth(&setup.client_id, Some(&setup.client_secret))
            .form(&[("grant_type", "client_credentials"), ("scope", "mydex:pdx")])
            .send()
            .await
            .map_err(|e| Error::Api(format!("token: {e}")))?;
        if resp.status() != StatusCode::OK {
            return Err(Error::Api(format!("token: {}", resp.status())));
        }
        let v: Value = resp.json().await.map_err(|e| Error::Api(format!("token: {e}")))?;
        v["access_token"].as_str().map(str::to_owned).ok_or_else(|| Error::Api("token: no access_token".into()))
    }
}

fn field<'a>(v: &'a Value, name: &str, call: &str) -> Result<&'a Value, Error> {
    v.get(name).filter(|f| !f.is_null()).ok_or_else(|| Error::Api(format!("{call}: the answer has no {name}")))
}

/// Reuses `file` when it holds a setup for `dataset` with at least `members` members,
/// otherwise sets up anew (and writes `file`).
pub(crate) async fn setup(
    api: &Api,
    admin: &str,
    dataset: &str,
    members: usize,
    file: Option<&Path>,
) -> Result<Setup, Error> {
    if let Some(file) = file
        && let Ok(text) = std::fs::read_to_string(file)
    {
        let mut saved: Setup =
            serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", file.display())))?;
        if saved.dataset == dataset && saved.members.len() >= members {
            saved.members.truncate(members);
            eprintln!("setup: reusing {} ({members} members)", file.display());
            return Ok(saved);
        }
    }
    let started = Instant::now();
    let run = format!("load-{}-{:08x}", dataset, rand::random::<u32>());
    let created = api.call(Method::POST, "/v1/subscribers", admin, Some(json!({"name": run}))).await?;
    let client_id = field(&created, "client_id", "POST /v1/subscribers")?.as_str().unwrap_or_default().to_owned();
    let client_secret =
        field(&created, "client_secret", "POST /v1/subscribers")?.as_str().unwrap_or_default().to_owned();
    let mut setup = Setup {
        dataset: dataset.into(),
        client_id,
        client_secret,
        connection_id: 0,
        ingest_bearer: String::new(),
        members: vec![],
    };
    let token = api.token(&setup).await?;
    let terms = json!({
        "name": run,
        "description": "trove load generator",
        "company_name": "trove load",
        "contact_name": "Load Generator",
        "contact_email": "load@trove.invalid",
        "contact_phone": "",
        "logo_url": "",
        "callback_url": "",
        "datasets": {dataset: {"read": ["*"], "write": ["*"]}},
        "purposes": ["load testing"],
        "gdpr": {"lawful_basis": "consent", "statement": "synthetic data for load tests"},
    });
    let c = api.call(Method::POST, "/v1/connections", &token, Some(terms)).await?;
    let id = field(&c, "id", "POST /v1/connections")?.as_i64().unwrap_or_default();
    let at = |action: &str| format!("/v1/connections/{id}/{action}");
    api.call(Method::POST, &at("submit"), &token, None).await?;
    let approved = api.call(Method::POST, &at("approve"), admin, None).await?;
    api.call(Method::POST, &at("promote-request"), &token, None).await?;
    api.call(Method::POST, &at("promote"), admin, None).await?;
    setup.connection_id = id;
    setup.ingest_bearer = format!(
        "{}:{}",
        field(&approved, "nid", "approve")?.as_i64().unwrap_or_default(),
        field(&approved, "key", "approve")?.as_str().unwrap_or_default()
    );

    // Members in bulk (the operator's NDJSON path, a catalog transaction a chunk), then each
    // approves the connection itself, in parallel: only a member approves its agreement.
    let mut created: Vec<(i64, String)> = Vec::with_capacity(members);
    for first in (0..members).step_by(MEMBERS_PER_CALL) {
        let body: String = (first..members.min(first + MEMBERS_PER_CALL))
            .map(|i| format!("{}\n", json!({"mydexid": format!("{run}-{i}")})))
            .collect();
        for line in api.post_ndjson("/v1/members", admin, body).await?.lines() {
            let m: Value = serde_json::from_str(line).map_err(|e| Error::Api(format!("POST /v1/members: {e}")))?;
            let uid = field(&m, "uid", "POST /v1/members")?.as_i64().unwrap_or_default();
            created.push((uid, field(&m, "secret", "POST /v1/members")?.as_str().unwrap_or_default().to_owned()));
        }
    }
    eprintln!("setup: {} members created in {:.1} s", created.len(), started.elapsed().as_secs_f64());
    setup.members = futures::stream::iter(created.into_iter().enumerate())
        .map(|(i, (uid, secret))| {
            let api = api.clone();
            async move {
                let a = api
                    .call(Method::POST, &format!("/v1/members/{uid}/agreements/{id}/approve"), &secret, None)
                    .await?;
                let con_id = field(&a, "con_id", "approve")?.as_str().unwrap_or_default().to_owned();
                let key = field(&a, "key", "approve")?.as_str().unwrap_or_default().to_owned();
                if (i + 1) % 10_000 == 0 {
                    eprintln!("setup: {} agreements", i + 1);
                }
                Ok::<_, Error>(SetupMember { uid, con_id, key })
            }
        })
        .buffered(APPROVALS_IN_FLIGHT)
        .try_collect()
        .await?;
    eprintln!(
        "setup: subscriber, live connection {id} and {members} members with agreements in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(file) = file {
        // It holds credentials: readable by this user only, like the server's admin-token file.
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(file)?;
        f.write_all(&serde_json::to_vec(&setup).expect("setup serializes"))?;
    }
    Ok(setup)
}
