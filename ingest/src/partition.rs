//! A partition: one member's rows of one dataset in one environment, the unit of Parquet
//! files, compaction and erasure, and where its files live in object storage. (The buffer
//! keeps a dataset's rows together; a flush splits them into partitions.)

use catalog::{DataEnvironment, DatasetName, MemberId};
use object_store::path::Path;

/// One member's rows of one dataset in one environment: the unit of flushing and of
/// Parquet files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub env: DataEnvironment,
    pub dataset: DatasetName,
    pub member: MemberId,
}

/// Where a partition's files live: `<environment>/<dataset>/<member>/`, so one member's data
/// can be listed, exported and erased without touching anyone else's.
///
/// ```
/// use ingest::partition::{PartitionKey, partition_of, partition_prefix};
/// let key = PartitionKey {
///     env: catalog::DataEnvironment::Production,
///     dataset: "ds_energy_consumption".parse().unwrap(),
///     member: catalog::MemberId::new(42).unwrap(),
/// };
/// assert_eq!(partition_prefix(&key).as_ref(), "production/ds_energy_consumption/42");
/// assert_eq!(partition_of("production/ds_energy_consumption/42/d1.parquet"), Some(key));
/// ```
pub fn partition_prefix(key: &PartitionKey) -> Path {
    Path::from_iter([key.env.as_str(), key.dataset.as_str(), &key.member.to_string()])
}

/// The partition a file path (from [`partition_prefix`]) belongs to.
pub fn partition_of(path: &str) -> Option<PartitionKey> {
    let mut parts = path.split('/');
    let env = catalog::DataEnvironment::parse(parts.next()?)?;
    let dataset = parts.next()?.parse().ok()?;
    let member = parts.next()?.parse().ok()?;
    Some(PartitionKey { env, dataset, member })
}

/// A new, unique file name in the partition: the first event day and id range say what it
/// holds; a random suffix makes concurrent writers (several nodes) never collide.
pub(crate) fn file_path(key: &PartitionKey, min_event_time: i64, min_id: i64, max_id: i64) -> Path {
    let day = min_event_time.div_euclid(86_400);
    let name = format!("d{day:06}_{min_id:012}-{max_id:012}_{}.parquet", uuid::Uuid::new_v4().simple());
    partition_prefix(key).join(name.as_str())
}
