//! Dedicated connections (revisions and lifecycle) and members' agreements.

use std::collections::BTreeSet;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Catalog, Result, get_json, to_json};
use crate::error::CatalogError;
use crate::model::{
    Agreement, AgreementScope, AgreementStatus, AgreementVersion, ConId, Connection, ConnectionEnvironment,
    ConnectionId, ConnectionStatus, ConnectionTerms, Dataset, LAWFUL_BASES, MemberId, Nid, Revision, RevisionState,
    SubscriberId,
};
use crate::secret::{Secret, SecretHash};

/// Checks terms against the catalogue and expands `"*"` into the dataset's fields, so what
/// is stored (and what members approve) is an explicit list.
pub fn normalize_terms(mut terms: ConnectionTerms, datasets: &[Dataset]) -> Result<ConnectionTerms> {
    fn invalid(reason: impl Into<String>) -> CatalogError {
        CatalogError::invalid(reason)
    }
    if terms.name.trim().is_empty() || terms.name.len() > 200 {
        return Err(invalid("name must be 1-200 characters"));
    }
    if terms.company_name.trim().is_empty() {
        return Err(invalid("company_name is required"));
    }
    if !terms.contact_email.contains('@') {
        return Err(invalid("contact_email must be an email address"));
    }
    if terms.purposes.iter().all(|p| p.trim().is_empty()) {
        return Err(invalid("at least one purpose (use case) is required"));
    }
    if !LAWFUL_BASES.contains(&terms.gdpr.lawful_basis.as_str()) {
        return Err(invalid(format!("gdpr.lawful_basis must be one of {}", LAWFUL_BASES.join(", "))));
    }
    if terms.datasets.is_empty() {
        return Err(invalid("at least one dataset is required"));
    }
    for (name, grant) in terms.datasets.iter_mut() {
        let dataset =
            datasets.iter().find(|d| &d.name == name).ok_or_else(|| invalid(format!("unknown dataset {name}")))?;
        let all: BTreeSet<String> = dataset.data_fields().map(|f| f.name.to_string()).collect();
        for (dir, fields) in [("read", &mut grant.read), ("write", &mut grant.write)] {
            if fields.remove("*") {
                fields.extend(all.iter().cloned());
            }
            if let Some(bad) = fields.iter().find(|f| !all.contains(*f)) {
                return Err(invalid(format!("{dir}: {bad} is not a field of {name}")));
            }
        }
        if grant.read.is_empty() && grant.write.is_empty() {
            return Err(invalid(format!("{name}: grant read or write of at least one field")));
        }
    }
    Ok(terms)
}

fn revision_from_row(row: &AnyRow) -> Result<Revision> {
    let state: String = row.try_get("state")?;
    Ok(Revision {
        version: AgreementVersion::new(row.try_get("version")?).map_err(CatalogError::corrupt)?,
        state: RevisionState::parse(&state).ok_or_else(|| CatalogError::corrupt(format!("revision state {state}")))?,
        terms: get_json(row, "terms")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const CONNECTION_COLUMNS: &str = "id, subscriber_id, nid, environment, promote_requested, approved_version, created_at";

impl Catalog {
    /// Creates a connection for `subscriber`: revision 1, in `draft`.
    pub async fn create_connection(&self, subscriber: SubscriberId, terms: ConnectionTerms) -> Result<Connection> {
        let terms = normalize_terms(terms, &self.datasets().await?)?;
        let now = self.clock.now_ms();
        let mut tx = self.begin().await?;
        let row = sqlx::query(
            "INSERT INTO connections (subscriber_id, environment, promote_requested, created_at) \
             VALUES ($1, 'sandbox', 0, $2) RETURNING id",
        )
        .bind(subscriber.get())
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let id: i64 = row.try_get(0)?;
        sqlx::query(
            "INSERT INTO connection_revisions (connection_id, version, state, terms, created_at, updated_at) \
             VALUES ($1, 1, 'draft', $2, $3, $3)",
        )
        .bind(id)
        .bind(to_json(&terms))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.connection(ConnectionId::new(id).map_err(CatalogError::corrupt)?).await
    }

    /// The connection with every revision: the one-page view.
    pub async fn connection(&self, id: ConnectionId) -> Result<Connection> {
        let row =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {CONNECTION_COLUMNS} FROM connections WHERE id = $1")))
                .bind(id.get())
                .fetch_optional(&self.pool)
                .await?
                .ok_or(CatalogError::NotFound { what: "connection" })?;
        self.connection_from_row(&row).await
    }

    /// All connections, or one subscriber's.
    pub async fn connections(&self, subscriber: Option<SubscriberId>) -> Result<Vec<Connection>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONNECTION_COLUMNS} FROM connections WHERE $1 = 0 OR subscriber_id = $1 ORDER BY id"
        )))
        .bind(subscriber.map_or(0, SubscriberId::get))
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.connection_from_row(row).await?);
        }
        Ok(out)
    }

    async fn connection_from_row(&self, row: &AnyRow) -> Result<Connection> {
        let id: i64 = row.try_get("id")?;
        let revisions = sqlx::query(
            "SELECT version, state, terms, created_at, updated_at FROM connection_revisions \
             WHERE connection_id = $1 ORDER BY version",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(revision_from_row)
        .collect::<Result<Vec<_>>>()?;
        let latest = revisions.last().ok_or_else(|| CatalogError::corrupt("connection without revision"))?;
        let environment = match row.try_get::<String, _>("environment")?.as_str() {
            "live" => ConnectionEnvironment::Live,
            _ => ConnectionEnvironment::Sandbox,
        };
        let approved_version: Option<i64> = row.try_get("approved_version")?;
        let approved_version =
            approved_version.map(AgreementVersion::new).transpose().map_err(CatalogError::corrupt)?;
        let status = match (approved_version, environment, latest.state) {
            (None, _, RevisionState::Requested) => ConnectionStatus::Requested,
            (None, _, _) => ConnectionStatus::Draft,
            (Some(_), ConnectionEnvironment::Sandbox, _) => ConnectionStatus::Approved,
            (Some(_), ConnectionEnvironment::Live, _) => ConnectionStatus::Live,
        };
        let nid: Option<i64> = row.try_get("nid")?;
        Ok(Connection {
            id: ConnectionId::new(id).map_err(CatalogError::corrupt)?,
            subscriber_id: SubscriberId::new(row.try_get("subscriber_id")?).map_err(CatalogError::corrupt)?,
            status,
            environment,
            nid: nid.map(Nid::new).transpose().map_err(CatalogError::corrupt)?,
            promote_requested: row.try_get::<i64, _>("promote_requested")? != 0,
            approved_version,
            revisions,
            created_at: row.try_get("created_at")?,
        })
    }

    /// Edits the terms. A draft is edited in place; a requested revision returns to draft
    /// under the next version number, so that an approval naming the version the operator
    /// reviewed (`approve_connection`) cannot approve terms edited since; an approved or live
    /// connection gets a new draft revision while the approved one keeps serving.
    pub async fn edit_connection(&self, id: ConnectionId, terms: ConnectionTerms) -> Result<Connection> {
        let terms = normalize_terms(terms, &self.datasets().await?)?;
        let current = self.connection(id).await?;
        let latest = current.latest();
        let now = self.clock.now_ms();
        let done = match latest.state {
            // A requested revision was never approved, so no agreement names its version:
            // it moves to the next one.
            RevisionState::Draft | RevisionState::Requested => sqlx::query(
                "UPDATE connection_revisions SET terms = $1, updated_at = $2, \
                 version = CASE WHEN state = 'requested' THEN version + 1 ELSE version END, state = 'draft' \
                 WHERE connection_id = $3 AND version = $4 AND state IN ('draft', 'requested')",
            )
            .bind(to_json(&terms))
            .bind(now)
            .bind(id.get())
            .bind(latest.version.get())
            .execute(&self.pool)
            .await?
            .rows_affected(),
            // The primary key makes a concurrent second "new revision" fail instead of forking.
            RevisionState::Approved | RevisionState::Superseded => sqlx::query(
                "INSERT INTO connection_revisions (connection_id, version, state, terms, created_at, updated_at) \
                 VALUES ($1, $2, 'draft', $3, $4, $4)",
            )
            .bind(id.get())
            .bind(latest.version.next().get())
            .bind(to_json(&terms))
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|_| CatalogError::conflict("the connection changed meanwhile; retry"))?
            .rows_affected(),
        };
        if done != 1 {
            return Err(CatalogError::conflict("the connection changed meanwhile; retry"));
        }
        self.connection(id).await
    }

    /// Submits the newest draft revision for approval.
    pub async fn submit_connection(&self, id: ConnectionId) -> Result<Connection> {
        self.step_latest(id, RevisionState::Draft, RevisionState::Requested, "only a draft can be submitted").await?;
        self.connection(id).await
    }

    async fn step_latest(
        &self,
        id: ConnectionId,
        from: RevisionState,
        to: RevisionState,
        refusal: &str,
    ) -> Result<AgreementVersion> {
        let current = self.connection(id).await?;
        let latest = current.latest().version;
        let done = sqlx::query(
            "UPDATE connection_revisions SET state = $1, updated_at = $2 \
             WHERE connection_id = $3 AND version = $4 AND state = $5",
        )
        .bind(to.as_str())
        .bind(self.clock.now_ms())
        .bind(id.get())
        .bind(latest.get())
        .bind(from.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Err(CatalogError::conflict(refusal));
        }
        Ok(latest)
    }

    /// The operator approves the requested revision; it becomes the serving one. On the first
    /// approval the connection is deployed on the sandbox with a new `nid` and connection key
    /// (returned once); later approvals keep both. With `expected`, the revision waiting must
    /// still be that version (the one the operator reviewed): an edit since is a conflict.
    pub async fn approve_connection(
        &self,
        id: ConnectionId,
        expected: Option<AgreementVersion>,
    ) -> Result<(Connection, Option<Secret>)> {
        let current = self.connection(id).await?;
        let version = current.latest().version;
        if let Some(expected) = expected
            && expected != version
        {
            return Err(CatalogError::conflict(format!(
                "the revision waiting for approval is version {version}, not {expected}"
            )));
        }
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE connection_revisions SET state = 'approved', updated_at = $1 \
             WHERE connection_id = $2 AND version = $3 AND state = 'requested'",
        )
        .bind(self.clock.now_ms())
        .bind(id.get())
        .bind(version.get())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(CatalogError::conflict("only a requested connection can be approved"));
        }
        sqlx::query(
            "UPDATE connection_revisions SET state = 'superseded' \
             WHERE connection_id = $1 AND version < $2 AND state = 'approved'",
        )
        .bind(id.get())
        .bind(version.get())
        .execute(&mut *tx)
        .await?;
        let key = if current.nid.is_none() {
            let nid = Self::next_counter(&mut tx, "nid").await?;
            let key = Secret::generate();
            sqlx::query("UPDATE connections SET nid = $1, key_hash = $2 WHERE id = $3")
                .bind(nid)
                .bind(key.hash().0)
                .bind(id.get())
                .execute(&mut *tx)
                .await?;
            Some(key)
        } else {
            None
        };
        sqlx::query("UPDATE connections SET approved_version = $1 WHERE id = $2")
            .bind(version.get())
            .bind(id.get())
            .execute(&mut *tx)
            .await?;
        Self::bump_generation(&mut tx).await?;
        tx.commit().await?;
        Ok((self.connection(id).await?, key))
    }

    /// The subscriber asks for an approved (sandbox) connection to go live.
    pub async fn request_promotion(&self, id: ConnectionId) -> Result<Connection> {
        let done = sqlx::query(
            "UPDATE connections SET promote_requested = 1 \
             WHERE id = $1 AND approved_version IS NOT NULL AND environment = 'sandbox'",
        )
        .bind(id.get())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Err(CatalogError::conflict("only an approved sandbox connection can ask to go live"));
        }
        self.connection(id).await
    }

    /// The operator grants a promote request: the connection goes live.
    pub async fn promote_connection(&self, id: ConnectionId) -> Result<Connection> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE connections SET environment = 'live', promote_requested = 0 \
             WHERE id = $1 AND promote_requested = 1 AND environment = 'sandbox'",
        )
        .bind(id.get())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(CatalogError::conflict("the connection has no pending promote request"));
        }
        Self::bump_generation(&mut tx).await?;
        tx.commit().await?;
        self.connection(id).await
    }

    /// A new draft connection with the newest revision's terms.
    pub async fn clone_connection(&self, id: ConnectionId) -> Result<Connection> {
        let source = self.connection(id).await?;
        let mut terms = source.latest().terms.clone();
        terms.name = format!("{} (copy)", terms.name);
        terms.name.truncate(200);
        self.create_connection(source.subscriber_id, terms).await
    }

    /// Checks a connection credential (`nid` + connection key) in constant time.
    pub async fn authenticate_connection(&self, nid: Nid, key: &str) -> Result<Connection> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {CONNECTION_COLUMNS}, key_hash FROM connections WHERE nid = $1"
        )))
        .bind(nid.get())
        .fetch_optional(&self.pool)
        .await?;
        let presented = SecretHash::of(key);
        let row = row.ok_or(CatalogError::Unauthenticated)?;
        let stored: Option<String> = row.try_get("key_hash")?;
        if !stored.is_some_and(|s| presented.matches(&s)) {
            return Err(CatalogError::Unauthenticated);
        }
        self.connection_from_row(&row).await
    }

    /// [`Catalog::approve_agreement`] for many members in one transaction (seeding a
    /// fixture, and approvals committed together): one generation bump however many. A
    /// member that does not exist is not found.
    pub async fn approve_agreements(&self, members: &[MemberId], id: ConnectionId) -> Result<Vec<(Agreement, Secret)>> {
        let connection = self.connection(id).await?;
        let serving =
            connection.approved().ok_or_else(|| CatalogError::conflict("the connection is not approved yet"))?;
        let (version, terms) = (serving.version, &serving.terms);
        let nid = connection.nid.ok_or_else(|| CatalogError::corrupt("an approved connection without nid"))?;
        let keys: Vec<(MemberId, Secret, String)> = members
            .iter()
            .map(|m| {
                let key = Secret::generate();
                let hash = key.hash().0;
                (*m, key, hash)
            })
            .collect();
        let now = self.clock.now_ms();
        let mut tx = self.begin().await?;
        // First: the rows carry the generation that commits them (see `agreement_changes`).
        let generation = Self::bump_generation(&mut tx).await?;
        self.insert_rows(
            &mut tx,
            "agreements (member_uid, connection_id, version, status, key_hash, approved_at, generation)",
            7,
            " ON CONFLICT (member_uid, connection_id) DO UPDATE SET \
             version = excluded.version, status = excluded.status, key_hash = excluded.key_hash, \
             approved_at = excluded.approved_at, revoked_at = NULL, generation = excluded.generation",
            &keys,
            |q, (member, _, hash)| {
                q.bind(member.get())
                    .bind(id.get())
                    .bind(version.get())
                    .bind("active")
                    .bind(hash.as_str())
                    .bind(now)
                    .bind(generation)
            },
        )
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.is_foreign_key_violation() => CatalogError::NotFound { what: "member" },
            _ => CatalogError::Store(e),
        })?;
        tx.commit().await?;
        Ok(keys
            .into_iter()
            .map(|(member, key, _)| {
                let agreement = Agreement {
                    member,
                    connection_id: id,
                    con_id: ConId { member, nid },
                    version,
                    status: AgreementStatus::Active,
                    terms: terms.clone(),
                    approved_at: now,
                    revoked_at: None,
                };
                (agreement, key)
            })
            .collect())
    }

    /// The member withdraws consent: every request that starts afterwards is refused.
    pub async fn revoke_agreement(&self, member: MemberId, id: ConnectionId) -> Result<Agreement> {
        let mut tx = self.begin().await?;
        // Caches of agreements see the revocation with the same commit.
        let generation = Self::bump_generation(&mut tx).await?;
        let done = sqlx::query(
            "UPDATE agreements SET status = 'revoked', revoked_at = $1, generation = $2 \
             WHERE member_uid = $3 AND connection_id = $4 AND status = 'active'",
        )
        .bind(self.clock.now_ms())
        .bind(generation)
        .bind(member.get())
        .bind(id.get())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(CatalogError::NotFound { what: "active agreement" });
        }
        tx.commit().await?;
        let connection = self.connection(id).await?;
        self.agreement(member, &connection).await
    }

    async fn agreement(&self, member: MemberId, connection: &Connection) -> Result<Agreement> {
        let row = sqlx::query(
            "SELECT version, status, approved_at, revoked_at FROM agreements WHERE member_uid = $1 AND connection_id = $2",
        )
        .bind(member.get())
        .bind(connection.id.get())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(CatalogError::NotFound { what: "agreement" })?;
        agreement_from_row(member, connection, &row)
    }

    /// A member's agreements with the connections they concern.
    pub async fn agreements(&self, member: MemberId) -> Result<Vec<(Agreement, Connection)>> {
        let rows = sqlx::query(
            "SELECT connection_id, version, status, approved_at, revoked_at FROM agreements \
             WHERE member_uid = $1 ORDER BY connection_id",
        )
        .bind(member.get())
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let connection = self
                .connection(ConnectionId::new(row.try_get("connection_id")?).map_err(CatalogError::corrupt)?)
                .await?;
            out.push((agreement_from_row(member, &connection, row)?, connection));
        }
        Ok(out)
    }

    /// Members with an active agreement with connection `id`, and the revision each approved.
    /// The rows are decoded as they stream: a connection with a million members would
    /// otherwise hold a million driver rows (about 500 bytes each) at once.
    pub async fn active_agreements(&self, id: ConnectionId) -> Result<Vec<(MemberId, AgreementVersion)>> {
        use futures::TryStreamExt;
        let mut rows = sqlx::query_as::<_, (i64, i64)>(
            "SELECT member_uid, version FROM agreements WHERE connection_id = $1 AND status = 'active'",
        )
        .bind(id.get())
        .fetch(&self.pool);
        let mut out = Vec::new();
        while let Some((member, version)) = rows.try_next().await? {
            let member = MemberId::new(member).map_err(CatalogError::corrupt)?;
            out.push((member, AgreementVersion::new(version).map_err(CatalogError::corrupt)?));
        }
        Ok(out)
    }

    /// The agreements of connection `id` changed after generation `since`: each member's
    /// version if its agreement is now active, `None` if it is not. Applied to the
    /// connection's active agreements as of `since`, they give the agreements as of the
    /// generation read before this call, or later.
    pub async fn agreement_changes(
        &self,
        id: ConnectionId,
        since: i64,
    ) -> Result<Vec<(MemberId, Option<AgreementVersion>)>> {
        let rows = sqlx::query_as::<_, (i64, i64, String)>(
            "SELECT member_uid, version, status FROM agreements WHERE connection_id = $1 AND generation > $2",
        )
        .bind(id.get())
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(member, version, status)| {
                let member = MemberId::new(member).map_err(CatalogError::corrupt)?;
                let version = AgreementVersion::new(version).map_err(CatalogError::corrupt)?;
                Ok((member, (status == "active").then_some(version)))
            })
            .collect()
    }

    /// Checks a Mydex-style member-connection credential (`con_id` + `key`) presented by
    /// `subscriber`, and returns the agreement in force. Everything that is not an active
    /// agreement of this subscriber's approved connection with this exact key is
    /// `Unauthenticated`: the answer never says which part was wrong.
    pub async fn agreement_scope(&self, subscriber: SubscriberId, con_id: ConId, key: &str) -> Result<AgreementScope> {
        let presented = SecretHash::of(key);
        let row = sqlx::query(
            "SELECT c.id AS id, a.key_hash AS key_hash, a.version AS version, a.status AS status, \
             a.approved_at AS approved_at, a.revoked_at AS revoked_at \
             FROM connections c JOIN agreements a ON a.connection_id = c.id \
             WHERE c.nid = $1 AND a.member_uid = $2 AND c.subscriber_id = $3",
        )
        .bind(con_id.nid.get())
        .bind(con_id.member.get())
        .bind(subscriber.get())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(CatalogError::Unauthenticated)?;
        if !presented.matches(&row.try_get::<String, _>("key_hash")?) || row.try_get::<String, _>("status")? != "active"
        {
            return Err(CatalogError::Unauthenticated);
        }
        let connection = self.connection(ConnectionId::new(row.try_get("id")?).map_err(CatalogError::corrupt)?).await?;
        if connection.approved_version.is_none() {
            return Err(CatalogError::Unauthenticated);
        }
        let agreement = agreement_from_row(con_id.member, &connection, &row)?;
        Ok(AgreementScope { agreement, subscriber_id: subscriber, environment: connection.environment })
    }
}

fn agreement_from_row(member: MemberId, connection: &Connection, row: &AnyRow) -> Result<Agreement> {
    let version = AgreementVersion::new(row.try_get("version")?).map_err(CatalogError::corrupt)?;
    let terms = connection
        .revision(version)
        .ok_or_else(|| CatalogError::corrupt("agreement names a missing revision"))?
        .terms
        .clone();
    let nid = connection.nid.ok_or_else(|| CatalogError::corrupt("agreement on a connection without nid"))?;
    Ok(Agreement {
        member,
        connection_id: connection.id,
        con_id: ConId { member, nid },
        version,
        status: match row.try_get::<String, _>("status")?.as_str() {
            "active" => AgreementStatus::Active,
            _ => AgreementStatus::Revoked,
        },
        terms,
        approved_at: row.try_get("approved_at")?,
        revoked_at: row.try_get("revoked_at")?,
    })
}
