//! A transactional dataset as Arrow: the columns rows are validated into, stored in the
//! WAL and buffers, and written to Parquet.

use std::sync::Arc;

use catalog::{Dataset, DatasetKind, FieldType};
use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};

use crate::IngestError;

/// Decimal fields are stored as Decimal128(18, 2).
pub const DECIMAL_PRECISION: u8 = 18;
pub const DECIMAL_SCALE: i8 = 2;

/// The reserved columns, in order, before the dataset's own fields.
pub const MEMBER_UID: &str = "member_uid";
pub const INSTANCE: &str = "instance";
pub const ROW_ID: &str = "id";
/// Which version of its row a stored row is: an update (`PUT`) stores a new version under
/// the same id, and readers keep the highest. Field names start with a letter, so this
/// cannot collide with one.
pub const ROW_VERSION: &str = "_version";

/// The `i64` column `name` of a batch of this crate's columns (`member_uid`, `id`,
/// `_version`, an event time): read by name, so no code depends on where a column sits.
pub fn int_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a Int64Array, IngestError> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| IngestError::Internal(format!("a batch without an integer {name} column")))
}

/// Runs of equal member uids in a member-sorted batch: `(member, start, len)`.
pub fn member_runs(batch: &RecordBatch) -> Result<Vec<(i64, usize, usize)>, IngestError> {
    let members = int_column(batch, MEMBER_UID)?.values();
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=members.len() {
        if i == members.len() || members[i] != members[start] {
            runs.push((members[start], start, i - start));
            start = i;
        }
    }
    Ok(runs)
}

/// The Arrow type of a field type (docs/api.md: Int64, Float64, Utf8, plus Decimal and
/// Boolean).
pub fn arrow_type(t: FieldType) -> DataType {
    match t {
        FieldType::Integer | FieldType::Timestamp => DataType::Int64,
        FieldType::Float => DataType::Float64,
        FieldType::Decimal => DataType::Decimal128(DECIMAL_PRECISION, DECIMAL_SCALE),
        FieldType::Text | FieldType::Json => DataType::Utf8,
        FieldType::Boolean => DataType::Boolean,
    }
}

/// The columns of a dataset's rows.
#[derive(Debug, Clone)]
pub struct DatasetSchema {
    pub dataset: Arc<Dataset>,
    /// `member_uid`, `instance`, then the data fields: what a client sends.
    pub input: SchemaRef,
    /// `member_uid`, `instance`, `id`, `_version`, then the data fields: what is stored.
    pub stored: SchemaRef,
    /// Index of the event-time field in `input` and in `stored`.
    pub event_time_input: usize,
    pub event_time_stored: usize,
}

impl DatasetSchema {
    /// The columns of a transactional dataset; a metadata dataset has no rows (its values
    /// live in the catalog), so asking for its columns is a fault of the caller.
    pub fn new(dataset: Arc<Dataset>) -> Result<Self, IngestError> {
        let not_rows = || IngestError::Internal(format!("{} is not a transactional dataset", dataset.name));
        let event = match (dataset.kind, &dataset.event_time_field) {
            (DatasetKind::Transactional, Some(event)) => event.clone(),
            _ => return Err(not_rows()),
        };
        let data: Vec<Field> =
            dataset.data_fields().map(|f| Field::new(f.name.as_str(), arrow_type(f.data_type), true)).collect();
        let reserved = [Field::new(MEMBER_UID, DataType::Int64, false), Field::new(INSTANCE, DataType::Int64, false)];
        let input: Vec<Field> = reserved.iter().cloned().chain(data.iter().cloned()).collect();
        let mut stored = input.clone();
        stored.insert(2, Field::new(ROW_ID, DataType::Int64, false));
        stored.insert(3, Field::new(ROW_VERSION, DataType::Int64, false));
        let position = |fields: &[Field]| fields.iter().position(|f| f.name() == event.as_str());
        let (Some(event_time_input), Some(event_time_stored)) = (position(&input), position(&stored)) else {
            return Err(not_rows());
        };
        Ok(DatasetSchema {
            dataset,
            input: Arc::new(Schema::new(input)),
            stored: Arc::new(Schema::new(stored)),
            event_time_input,
            event_time_stored,
        })
    }

    /// The data field behind input column `i` (none for the reserved columns).
    pub fn field(&self, i: usize) -> Option<&catalog::Field> {
        i.checked_sub(2).and_then(|i| self.dataset.data_fields().nth(i))
    }

    /// Whether the server fills a missing event time with the arrival time (datasets
    /// without an event-time field of their own use `created_timestamp`).
    pub fn fills_event_time(&self) -> bool {
        self.dataset.event_time_field.as_ref().is_some_and(|f| f.as_str() == catalog::DEFAULT_EVENT_TIME_FIELD)
    }
}
