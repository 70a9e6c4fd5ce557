//! The manifest: which Parquet files hold which member's rows of a dataset.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Catalog, Result};
use crate::error::CatalogError;
use crate::model::{ConnectionId, DataEnvironment, DatasetName, MemberId, ParquetFile};

/// `member_uid` of a hot file (several members' rows): no member has it.
const HOT: i64 = 0;

/// The (environment, dataset, member) columns of a manifest row; no member for a hot file.
fn partition_from_row(row: &AnyRow) -> Result<(DataEnvironment, DatasetName, Option<MemberId>)> {
    let env: String = row.try_get("environment")?;
    let member: i64 = row.try_get("member_uid")?;
    Ok((
        DataEnvironment::parse(&env).ok_or_else(|| CatalogError::corrupt(format!("environment {env}")))?,
        row.try_get::<String, _>("dataset")?.parse().map_err(CatalogError::corrupt)?,
        if member == HOT { None } else { Some(MemberId::new(member).map_err(CatalogError::corrupt)?) },
    ))
}

/// A settled file's partition (compaction works on those only).
fn member_partition_from_row(row: &AnyRow) -> Result<(DataEnvironment, DatasetName, MemberId)> {
    match partition_from_row(row)? {
        (env, dataset, Some(member)) => Ok((env, dataset, member)),
        _ => Err(CatalogError::corrupt("a hot file where a member's file was asked for")),
    }
}

fn file_from_row(row: &AnyRow) -> Result<ParquetFile> {
    let (environment, dataset, member) = partition_from_row(row)?;
    Ok(ParquetFile {
        environment,
        dataset,
        member,
        path: row.try_get("path")?,
        rows: row.try_get("row_count")?,
        size_bytes: row.try_get("size_bytes")?,
        min_event_time: row.try_get("min_event_time")?,
        max_event_time: row.try_get("max_event_time")?,
        min_id: row.try_get("min_id")?,
        max_id: row.try_get("max_id")?,
        max_version: row.try_get("max_version")?,
    })
}

const FILE_COLUMNS: &str = "environment, dataset, member_uid, path, row_count, size_bytes, min_event_time, max_event_time, min_id, max_id, max_version";

impl Catalog {
    /// Records files whose puts succeeded and removes `replaced` ones, in one transaction:
    /// readers see either the old files or the new ones, never both (compaction's swap).
    pub async fn commit_parquet_files(&self, added: &[ParquetFile], replaced: &[String]) -> Result<()> {
        self.commit_parquet_files_arrived(added, replaced, None).await
    }

    /// The same, recording the added files as created at `arrived` (epoch ms) rather than
    /// now: hot files merged into one keep the arrival time of the oldest, so their rows
    /// settle when the hot window of their first arrival ends.
    pub async fn commit_parquet_files_arrived(
        &self,
        added: &[ParquetFile],
        replaced: &[String],
        arrived: Option<i64>,
    ) -> Result<()> {
        let now = self.clock.now_ms();
        let created = arrived.unwrap_or(now);
        let mut tx = self.begin().await?;
        let seq = Self::next_counter(&mut tx, "manifest").await?;
        for f in added {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO parquet_files ({FILE_COLUMNS}, created_at, seq) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
            )))
            .bind(f.environment.as_str())
            .bind(f.dataset.as_str())
            .bind(f.member.map_or(HOT, MemberId::get))
            .bind(&f.path)
            .bind(f.rows)
            .bind(f.size_bytes)
            .bind(f.min_event_time)
            .bind(f.max_event_time)
            .bind(f.min_id)
            .bind(f.max_id)
            .bind(f.max_version)
            .bind(created)
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        }
        for path in replaced {
            let done = sqlx::query("DELETE FROM parquet_files WHERE path = $1").bind(path).execute(&mut *tx).await?;
            // Another compactor (another node) replaced it first: keep its result, drop ours.
            if done.rows_affected() != 1 {
                return Err(CatalogError::conflict("a replaced file is no longer in the manifest"));
            }
            sqlx::query("INSERT INTO parquet_file_removals (seq, path, removed_at) VALUES ($1, $2, $3)")
                .bind(seq)
                .bind(path)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// What changed in the manifest after commit `since`: files added and paths replaced,
    /// with the newest commit number they cover. Each node's read index follows this feed.
    pub async fn manifest_changes(&self, since: i64) -> Result<ManifestChanges> {
        // Read the counter first: every change at or below it is committed and is returned
        // now or by the next call.
        let latest: i64 = sqlx::query("SELECT value FROM counters WHERE name = 'manifest'")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        if latest == since {
            return Ok(ManifestChanges { latest, added: Vec::new(), removed: Vec::new() });
        }
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FILE_COLUMNS} FROM parquet_files WHERE seq > $1 AND seq <= $2"
        )))
        .bind(since)
        .bind(latest)
        .fetch_all(&self.pool)
        .await?;
        let added = rows.iter().map(file_from_row).collect::<Result<_>>()?;
        let removed = sqlx::query("SELECT path FROM parquet_file_removals WHERE seq > $1 AND seq <= $2")
            .bind(since)
            .bind(latest)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        Ok(ManifestChanges { latest, added, removed })
    }

    /// Forgets tombstones of files replaced before `before` (epoch ms). A node that has not
    /// followed the feed for a while reloads the whole manifest instead (see the ingester).
    pub async fn purge_manifest_tombstones(&self, before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM parquet_file_removals WHERE removed_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Paths of files replaced at or after `since` (epoch ms), while their tombstones last.
    pub async fn replaced_since(&self, since: i64) -> Result<Vec<String>> {
        let rows = sqlx::query("SELECT path FROM parquet_file_removals WHERE removed_at >= $1")
            .bind(since)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get::<String, _>(0)?)).collect()
    }

    /// The manifest's newest commit number (where a node that loaded every file starts the feed).
    pub async fn manifest_seq(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT value FROM counters WHERE name = 'manifest'").fetch_one(&self.pool).await?.try_get(0)?)
    }

    /// Partitions with at least `min_files` files smaller than `small_bytes`, with how many
    /// they have: compaction's work.
    pub async fn compaction_candidates(
        &self,
        small_bytes: i64,
        min_files: i64,
        limit: i64,
    ) -> Result<Vec<((DataEnvironment, DatasetName, MemberId), i64)>> {
        let rows = sqlx::query(
            "SELECT environment, dataset, member_uid, COUNT(*) AS files FROM parquet_files WHERE size_bytes < $1 \
             AND member_uid <> 0 GROUP BY environment, dataset, member_uid HAVING COUNT(*) >= $2 LIMIT $3",
        )
        .bind(small_bytes)
        .bind(min_files)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((member_partition_from_row(row)?, row.try_get("files")?))).collect()
    }

    /// One member's files of a dataset, oldest events first.
    pub async fn parquet_files(
        &self,
        env: DataEnvironment,
        dataset: &DatasetName,
        member: MemberId,
    ) -> Result<Vec<ParquetFile>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FILE_COLUMNS} FROM parquet_files WHERE environment = $1 AND dataset = $2 AND member_uid = $3 \
             ORDER BY min_event_time, min_id"
        )))
        .bind(env.as_str())
        .bind(dataset.as_str())
        .bind(member.get())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// Hot files recorded before `before` (epoch ms), oldest first, with when each was
    /// recorded: what compaction settles once the hot window is over.
    pub async fn hot_files_before(&self, before: i64) -> Result<Vec<(ParquetFile, i64)>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {FILE_COLUMNS}, created_at FROM parquet_files WHERE member_uid = 0 AND created_at < $1 \
             ORDER BY created_at, file_id"
        )))
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|row| Ok((file_from_row(row)?, row.try_get("created_at")?))).collect()
    }

    /// Every recorded file (for start-up and tests).
    pub async fn all_parquet_files(&self) -> Result<Vec<ParquetFile>> {
        let rows =
            sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {FILE_COLUMNS} FROM parquet_files ORDER BY file_id")))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(file_from_row).collect()
    }

    /// The highest row id and row version recorded per (environment, dataset, member):
    /// where id counters resume after a restart, and which WAL rows are already in files.
    /// A dataset's hot files (no member) come as one row; which members' rows they hold is
    /// in the files themselves.
    pub async fn max_row_ids(&self) -> Result<Vec<(DataEnvironment, DatasetName, Option<MemberId>, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT environment, dataset, member_uid, MAX(max_id) AS max_id, MAX(max_version) AS max_version \
             FROM parquet_files GROUP BY environment, dataset, member_uid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let (env, dataset, member) = partition_from_row(row)?;
                Ok((env, dataset, member, row.try_get("max_id")?, row.try_get("max_version")?))
            })
            .collect()
    }
}

/// See [`Catalog::manifest_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestChanges {
    pub latest: i64,
    pub added: Vec<ParquetFile>,
    pub removed: Vec<String>,
}

/// The first answer to a write sent with an `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotentWrite {
    pub connection: ConnectionId,
    pub key: String,
    pub body_hash: String,
    pub accepted: i64,
    /// Epoch milliseconds.
    pub at: i64,
}

impl Catalog {
    /// Remembers answers whose WAL records are about to be deleted (first answer wins).
    pub async fn remember_idempotent_writes(&self, writes: &[IdempotentWrite]) -> Result<()> {
        let mut tx = self.begin().await?;
        for w in writes {
            sqlx::query(
                "INSERT INTO idempotency_keys (connection_id, idempotency_key, body_hash, accepted, created_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (connection_id, idempotency_key) DO NOTHING",
            )
            .bind(w.connection.get())
            .bind(&w.key)
            .bind(&w.body_hash)
            .bind(w.accepted)
            .bind(w.at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The remembered answer for a key, if any newer than `since` (epoch ms).
    pub async fn idempotent_write(
        &self,
        connection: ConnectionId,
        key: &str,
        since: i64,
    ) -> Result<Option<IdempotentWrite>> {
        let row = sqlx::query(
            "SELECT body_hash, accepted, created_at FROM idempotency_keys \
             WHERE connection_id = $1 AND idempotency_key = $2 AND created_at >= $3",
        )
        .bind(connection.get())
        .bind(key)
        .bind(since)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(IdempotentWrite {
                connection,
                key: key.to_owned(),
                body_hash: r.try_get("body_hash")?,
                accepted: r.try_get("accepted")?,
                at: r.try_get("created_at")?,
            })
        })
        .transpose()
    }

    /// Forgets answers older than `before` (epoch ms).
    pub async fn forget_idempotent_writes(&self, before: i64) -> Result<()> {
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < $1").bind(before).execute(&self.pool).await?;
        Ok(())
    }
}
