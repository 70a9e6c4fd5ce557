//! Datasets and their typed field schemas.

use serde::{Deserialize, Serialize};

use super::{DatasetName, FieldName};

/// Metadata datasets hold few, rarely changing values per member (in the catalog store);
/// transactional ones are append-mostly row streams (Parquet in object storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DatasetKind {
    Metadata,
    Transactional,
}

/// Where a dataset is offered: new datasets start in the sandbox and are promoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum DatasetEnvironment {
    Sandbox,
    Production,
}

/// A field's resolved storage type. On the wire values travel as strings (Mydex) or JSON
/// values; these are the types they are checked against and stored as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    /// 64-bit signed integer.
    Integer,
    /// 64-bit float.
    Float,
    /// Money: a decimal with exactly 2 places.
    Decimal,
    /// UTF-8 text, at most [`Field::max_bytes`].
    Text,
    Boolean,
    /// A JSON object or array, stored as compact JSON text.
    Json,
    /// Epoch seconds, a 64-bit integer on the wire, in Parquet and in SQL.
    Timestamp,
}

impl FieldType {
    /// The Mydex-style name shown as `data_type` by `/developer-helpers/types`.
    pub fn as_str(self) -> &'static str {
        match self {
            FieldType::Integer => "integer",
            FieldType::Float => "float",
            FieldType::Decimal => "decimal",
            FieldType::Text => "text",
            FieldType::Boolean => "boolean",
            FieldType::Json => "json",
            FieldType::Timestamp => "timestamp",
        }
    }

    /// Resolves the catalogue's documented type, following docs/api.md ("Rows and values"): the example wins
    /// where it contradicts the documented type, and `*_timestamp` / `*_time` names are
    /// epoch seconds whatever the type says (so are `*_timestamp_start` / `_end` pairs).
    pub fn resolve(name: &str, documented: &str, example: &str) -> FieldType {
        let doc = documented.trim().to_ascii_lowercase();
        let example = example.trim();
        if name.ends_with("_timestamp")
            || name.contains("_timestamp_")
            || name.ends_with("_time")
            || doc.contains("timestamp")
        {
            return FieldType::Timestamp;
        }
        let is_int = example.parse::<i64>().is_ok();
        let is_num = example.parse::<f64>().is_ok_and(f64::is_finite);
        match doc.as_str() {
            "int" | "integer" | "serial" | "bigint" => match () {
                _ if example.is_empty() || is_int => FieldType::Integer,
                _ if is_num => FieldType::Float,
                _ => FieldType::Text,
            },
            "number" | "numeric" | "floating point" | "float" | "double" => {
                if example.is_empty() || is_num {
                    FieldType::Float
                } else {
                    FieldType::Text
                }
            }
            "currency" => {
                if example.is_empty() || is_num {
                    FieldType::Decimal
                } else {
                    FieldType::Text
                }
            }
            "blob" | "json" => FieldType::Json,
            "boolean" | "bool" => FieldType::Boolean,
            _ => FieldType::Text,
        }
    }
}

/// Text values are capped so one value cannot take a row's whole budget.
pub const MAX_TEXT_BYTES: u32 = 64 * 1024;

/// One field of a dataset's schema.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Field {
    pub name: FieldName,
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// The type as the catalogue documents it (kept for display).
    #[serde(default)]
    pub documented_type: String,
    pub data_type: FieldType,
    /// Cap on a text or JSON value's UTF-8 length.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u32,
}

fn default_max_bytes() -> u32 {
    MAX_TEXT_BYTES
}

/// Names every transactional row has, whatever its dataset lists (docs/api.md, "Rows and values").
pub const RESERVED_FIELDS: [&str; 4] = ["member_uid", "instance", "id", "ds_id"];

/// A dataset of the catalogue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dataset {
    pub name: DatasetName,
    pub title: String,
    pub description: String,
    pub kind: DatasetKind,
    pub environment: DatasetEnvironment,
    /// Every field, including the catalogue's `id`/`instance` listings, which keep their
    /// reserved meaning on transactional datasets.
    pub fields: Vec<Field>,
    /// The event-time field of a transactional dataset (epoch seconds), used to partition
    /// and prune; `None` for metadata datasets.
    pub event_time_field: Option<FieldName>,
}

impl Dataset {
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name.as_str() == name)
    }

    /// Fields a client may send and a connection may be granted: all but the reserved ones
    /// of a transactional dataset.
    pub fn data_fields(&self) -> impl Iterator<Item = &Field> {
        let reserved = self.kind == DatasetKind::Transactional;
        self.fields.iter().filter(move |f| !(reserved && RESERVED_FIELDS.contains(&f.name.as_str())))
    }

    /// Checks the invariants the rest of trove relies on.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.fields {
            if !seen.insert(f.name.as_str()) {
                return Err(format!("field {} is listed twice", f.name));
            }
        }
        match (self.kind, &self.event_time_field) {
            (DatasetKind::Transactional, Some(t)) => match self.field(t.as_str()) {
                Some(f) if f.data_type == FieldType::Timestamp => Ok(()),
                _ => Err(format!("event time field {t} must be a timestamp field of the dataset")),
            },
            (DatasetKind::Transactional, None) => Err("a transactional dataset needs an event time field".into()),
            (DatasetKind::Metadata, Some(_)) => Err("a metadata dataset has no event time field".into()),
            (DatasetKind::Metadata, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::FieldType::*;
    use super::*;

    #[test]
    fn resolves_types_as_the_contract_says() {
        let cases = [
            ("field_energy_reading_value", "int", "1123.25", Float),
            ("memo", "int", "Text note here", Text),
            ("service_id", "int", "56", Integer),
            ("id", "serial", "", Integer),
            ("blood_glucose_level", "floating point", "4.3", Float),
            ("oxygen_saturation", "floating point", "95%", Text),
            ("field_ba_current_balance", "currency", "23.45", Decimal),
            ("referree_availability", "blob", "{}", Json),
            ("field_ba_date_from", "date", "29222", Text),
            ("temporal_relation_to_sleep", "", "", Text),
            ("identity_services_type", "Admin", "", Text),
            ("end_time", "1639153129", "", Timestamp),
            ("field_energy_reading_timestamp", "int", "1648633780", Timestamp),
            ("complete_time", "int", "1642137822", Timestamp),
            ("blood_glucose_timestamp_start", "int", "1648633780", Timestamp),
            ("is_active", "boolean", "true", Boolean),
        ];
        for (name, doc, example, want) in cases {
            assert_eq!(FieldType::resolve(name, doc, example), want, "{name}");
        }
    }
}
