//! A partition: one member's rows of one dataset in one environment, the unit of settled
//! Parquet files, compaction and erasure, and where its files live in object storage. (The
//! buffer and the hot files keep a dataset's rows together; compaction settles hot files
//! into partitions once the hot window is over.)

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
/// use ingest::partition::{PartitionKey, hot_prefix, owner_of, partition_prefix};
/// let key = PartitionKey {
///     env: catalog::DataEnvironment::Production,
///     dataset: "ds_energy_consumption".parse().unwrap(),
///     member: catalog::MemberId::new(42).unwrap(),
/// };
/// assert_eq!(partition_prefix(&key).as_ref(), "production/ds_energy_consumption/42");
/// let owner = owner_of("production/ds_energy_consumption/42/d1.parquet").unwrap();
/// assert_eq!(owner, (key.env, key.dataset.clone(), Some(key.member)));
/// let hot = hot_prefix(key.env, &key.dataset);
/// assert_eq!(owner_of(&format!("{hot}/h1.parquet")).unwrap(), (key.env, key.dataset, None));
/// ```
pub fn partition_prefix(key: &PartitionKey) -> Path {
    Path::from_iter([key.env.as_str(), key.dataset.as_str(), &key.member.to_string()])
}

/// The prefix of a dataset's hot files: `<environment>/<dataset>/hot/` (member uids are
/// numbers, so no member's prefix is this one).
pub fn hot_prefix(env: catalog::DataEnvironment, dataset: &DatasetName) -> Path {
    Path::from_iter([env.as_str(), dataset.as_str(), HOT])
}

const HOT: &str = "hot";

/// Whose rows a file path (from [`partition_prefix`] or [`hot_prefix`]) holds: its
/// environment, dataset, and member (`None` for a hot file).
pub fn owner_of(path: &str) -> Option<(catalog::DataEnvironment, DatasetName, Option<MemberId>)> {
    let mut parts = path.split('/');
    let env = catalog::DataEnvironment::parse(parts.next()?)?;
    let dataset = parts.next()?.parse().ok()?;
    let member = match parts.next()? {
        HOT => None,
        m => Some(m.parse().ok()?),
    };
    Some((env, dataset, member))
}

/// Whether a path is one of this crate's Parquet files: a partition's or a hot file.
pub fn is_data_file(path: &str) -> bool {
    path.ends_with(".parquet") && owner_of(path).is_some()
}

/// A new, unique hot file name: when it was written (epoch ms) and a random suffix.
pub(crate) fn hot_file_path(env: catalog::DataEnvironment, dataset: &DatasetName, now_ms: i64) -> Path {
    let name = format!("h{now_ms:014}_{}.parquet", uuid::Uuid::new_v4().simple());
    hot_prefix(env, dataset).join(name.as_str())
}

/// A new, unique file name in the partition: the first event day and id range say what it
/// holds; a random suffix makes concurrent writers (several nodes) never collide.
pub(crate) fn file_path(key: &PartitionKey, min_event_time: i64, min_id: i64, max_id: i64) -> Path {
    let day = min_event_time.div_euclid(86_400);
    let name = format!("d{day:06}_{min_id:012}-{max_id:012}_{}.parquet", uuid::Uuid::new_v4().simple());
    partition_prefix(key).join(name.as_str())
}
