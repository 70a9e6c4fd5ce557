//! Members, subscribers and their credentials.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Catalog, Result, unique_violation};
use crate::error::CatalogError;
use crate::model::{Member, MemberId, Subscriber, SubscriberId};
use crate::secret::{Secret, SecretHash};

/// What a new subscriber is given, once.
#[derive(Debug, Clone)]
pub struct SubscriberCredentials {
    pub client_id: String,
    pub client_secret: Secret,
    pub api_key: Secret,
}

fn member_from_row(row: &AnyRow) -> Result<Member> {
    Ok(Member {
        uid: MemberId::new(row.try_get("uid")?).map_err(CatalogError::corrupt)?,
        mydexid: row.try_get("mydexid")?,
        created_at: row.try_get("created_at")?,
    })
}

fn subscriber_from_row(row: &AnyRow) -> Result<Subscriber> {
    Ok(Subscriber {
        id: SubscriberId::new(row.try_get("id")?).map_err(CatalogError::corrupt)?,
        name: row.try_get("name")?,
        client_id: row.try_get("client_id")?,
        created_at: row.try_get("created_at")?,
    })
}

/// Whose a bearer token is: see [`Catalog::bearer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bearer {
    Operator,
    /// A subscriber's access token, valid until `expires_at` (epoch ms).
    Subscriber {
        id: SubscriberId,
        expires_at: i64,
    },
    Member(MemberId),
}

/// Mydex usernames: short, printable, no spaces.
fn check_mydexid(s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    ok.then_some(()).ok_or_else(|| CatalogError::invalid("mydexid must be 1-64 characters of letters, digits, - _ . @"))
}

impl Catalog {
    /// Creates a member; the member secret is returned once and stored only as a hash.
    pub async fn create_member(&self, mydexid: &str) -> Result<(Member, Secret)> {
        let created = self.create_members(&[mydexid.to_owned()]).await?;
        Ok(created.into_iter().next().expect("one member a mydexid"))
    }

    /// Creates members in one transaction, all or none: the operator's path for onboarding
    /// many at once. A `mydexid` taken or given twice is a conflict. Secrets are returned
    /// once, in the order given, and stored only as hashes.
    pub async fn create_members(&self, mydexids: &[String]) -> Result<Vec<(Member, Secret)>> {
        let mut seen = HashSet::with_capacity(mydexids.len());
        for m in mydexids {
            check_mydexid(m)?;
            if !seen.insert(m.as_str()) {
                return Err(CatalogError::AlreadyExists { what: "member" });
            }
        }
        let mut secrets: HashMap<&str, Secret> = mydexids.iter().map(|m| (m.as_str(), Secret::generate())).collect();
        let rows: Vec<(&str, String)> = mydexids.iter().map(|m| (m.as_str(), secrets[m.as_str()].hash().0)).collect();
        let now = self.clock.now_ms();
        let mut tx = self.begin().await?;
        let created = self
            .insert_rows(
                &mut tx,
                "members (mydexid, secret_hash, created_at)",
                3,
                " RETURNING uid, mydexid, created_at",
                &rows,
                |q, (mydexid, hash)| q.bind(*mydexid).bind(hash.as_str()).bind(now),
            )
            .await
            .map_err(unique_violation("member"))?;
        tx.commit().await?;
        let mut by_id: HashMap<String, Member> =
            created.iter().map(|row| member_from_row(row).map(|m| (m.mydexid.clone(), m))).collect::<Result<_>>()?;
        let members = mydexids
            .iter()
            .map(|m| {
                let member = by_id.remove(m).ok_or_else(|| CatalogError::corrupt("a created member not returned"))?;
                Ok((member, secrets.remove(m.as_str()).expect("a secret per mydexid")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(members)
    }

    pub async fn member(&self, uid: MemberId) -> Result<Member> {
        let row = sqlx::query("SELECT uid, mydexid, created_at FROM members WHERE uid = $1")
            .bind(uid.get())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(CatalogError::NotFound { what: "member" })?;
        member_from_row(&row)
    }

    pub async fn members(&self) -> Result<Vec<Member>> {
        let rows =
            sqlx::query("SELECT uid, mydexid, created_at FROM members ORDER BY uid").fetch_all(&self.pool).await?;
        rows.iter().map(member_from_row).collect()
    }

    /// Whose bearer token this is, if anyone's, with the authorization generation it was
    /// read at: the one read a request starts from (`AuthCache::caller`). The operator's
    /// token, a subscriber's unexpired access token or a member's secret are looked up
    /// together, so a member's call does not pay one lookup per kind of caller first. A
    /// wrong token is the same `None` whatever it resembles, so the answer never says
    /// whether a member exists.
    pub async fn bearer(&self, token: &str) -> Result<(i64, Option<Bearer>)> {
        let hash = SecretHash::of(token);
        let row = sqlx::query(
            "SELECT c.value AS generation, b.kind, b.id, b.hash, b.expires_at FROM counters c LEFT JOIN ( \
               SELECT CAST(0 AS BIGINT) AS kind, CAST(0 AS BIGINT) AS id, value AS hash, \
                      CAST(0 AS BIGINT) AS expires_at \
                 FROM settings WHERE name = 'admin_token_hash' AND value = $1 \
               UNION ALL SELECT 1, subscriber_id, token_hash, expires_at FROM access_tokens \
                 WHERE token_hash = $1 AND expires_at > $2 \
               UNION ALL SELECT 2, uid, secret_hash, 0 FROM members WHERE secret_hash = $1 \
               ORDER BY kind LIMIT 1) b ON 1 = 1 \
             WHERE c.name = 'generation'",
        )
        .bind(&hash.0)
        .bind(self.clock.now_ms())
        .fetch_one(&self.pool)
        .await?;
        let generation = row.try_get("generation")?;
        let Some(kind) = row.try_get::<Option<i64>, _>("kind")? else {
            return Ok((generation, None));
        };
        if !hash.matches(&row.try_get::<String, _>("hash")?) {
            return Ok((generation, None));
        }
        let id: i64 = row.try_get("id")?;
        let bearer = match kind {
            0 => Bearer::Operator,
            1 => Bearer::Subscriber {
                id: SubscriberId::new(id).map_err(CatalogError::corrupt)?,
                expires_at: row.try_get("expires_at")?,
            },
            _ => Bearer::Member(MemberId::new(id).map_err(CatalogError::corrupt)?),
        };
        Ok((generation, Some(bearer)))
    }

    /// Creates a subscriber with its OAuth2 client credentials and `api_key`.
    pub async fn create_subscriber(&self, name: &str) -> Result<(Subscriber, SubscriberCredentials)> {
        let name = name.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(CatalogError::invalid("name must be 1-200 characters"));
        }
        let client_id = format!("trove-{}", &Secret::generate().expose()[..24]);
        let creds = SubscriberCredentials { client_id, client_secret: Secret::generate(), api_key: Secret::generate() };
        let row = sqlx::query(
            "INSERT INTO subscribers (name, client_id, client_secret_hash, api_key_hash, created_at) \
             VALUES ($1, $2, $3, $4, $5) RETURNING id, name, client_id, created_at",
        )
        .bind(name)
        .bind(&creds.client_id)
        .bind(creds.client_secret.hash().0)
        .bind(creds.api_key.hash().0)
        .bind(self.clock.now_ms())
        .fetch_one(&self.pool)
        .await
        .map_err(unique_violation("subscriber"))?;
        Ok((subscriber_from_row(&row)?, creds))
    }

    pub async fn subscriber(&self, id: SubscriberId) -> Result<Subscriber> {
        let row = sqlx::query("SELECT id, name, client_id, created_at FROM subscribers WHERE id = $1")
            .bind(id.get())
            .fetch_optional(&self.pool)
            .await?
            .ok_or(CatalogError::NotFound { what: "subscriber" })?;
        subscriber_from_row(&row)
    }

    pub async fn subscribers(&self) -> Result<Vec<Subscriber>> {
        let rows = sqlx::query("SELECT id, name, client_id, created_at FROM subscribers ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(subscriber_from_row).collect()
    }

    /// OAuth2 client credentials grant: checks the client secret in constant time and
    /// issues a bearer token valid for `ttl`, stored only as a hash.
    pub async fn issue_access_token(&self, client_id: &str, client_secret: &str, ttl: Duration) -> Result<Secret> {
        let row = sqlx::query("SELECT id, client_secret_hash FROM subscribers WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        // Hash even when the client is unknown so both paths cost the same.
        let presented = SecretHash::of(client_secret);
        let Some(row) = row else {
            return Err(CatalogError::Unauthenticated);
        };
        let stored: String = row.try_get("client_secret_hash")?;
        if !presented.matches(&stored) {
            return Err(CatalogError::Unauthenticated);
        }
        let token = Secret::generate();
        let now = self.clock.now_ms();
        sqlx::query("INSERT INTO access_tokens (token_hash, subscriber_id, expires_at) VALUES ($1, $2, $3)")
            .bind(token.hash().0)
            .bind(row.try_get::<i64, _>("id")?)
            .bind(now + ttl.as_millis() as i64)
            .execute(&self.pool)
            .await?;
        // Expired tokens are useless; dropping them here keeps the table small without a timer.
        sqlx::query("DELETE FROM access_tokens WHERE expires_at < $1").bind(now).execute(&self.pool).await?;
        Ok(token)
    }

    /// Resolves a subscriber bearer token; expired or unknown tokens are `Unauthenticated`.
    pub async fn authenticate_subscriber_token(&self, token: &str) -> Result<SubscriberId> {
        Ok(self.subscriber_token(token).await?.0)
    }

    /// As [`Catalog::authenticate_subscriber_token`], with when the token expires (epoch ms).
    pub async fn subscriber_token(&self, token: &str) -> Result<(SubscriberId, i64)> {
        let hash = SecretHash::of(token);
        let row = sqlx::query(
            "SELECT token_hash, subscriber_id, expires_at FROM access_tokens WHERE token_hash = $1 AND expires_at > $2",
        )
        .bind(&hash.0)
        .bind(self.clock.now_ms())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(CatalogError::Unauthenticated)?;
        if !hash.matches(&row.try_get::<String, _>("token_hash")?) {
            return Err(CatalogError::Unauthenticated);
        }
        let subscriber = SubscriberId::new(row.try_get("subscriber_id")?).map_err(CatalogError::corrupt)?;
        Ok((subscriber, row.try_get("expires_at")?))
    }

    /// Resolves a subscriber's `api_key` (the older Mydex style of call).
    pub async fn authenticate_api_key(&self, api_key: &str) -> Result<SubscriberId> {
        let hash = SecretHash::of(api_key);
        let row = sqlx::query("SELECT id, api_key_hash FROM subscribers WHERE api_key_hash = $1")
            .bind(&hash.0)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(CatalogError::Unauthenticated)?;
        if !hash.matches(&row.try_get::<String, _>("api_key_hash")?) {
            return Err(CatalogError::Unauthenticated);
        }
        SubscriberId::new(row.try_get("id")?).map_err(CatalogError::corrupt)
    }
}
