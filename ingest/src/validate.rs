//! Checking written values against a dataset's schema and the writer's agreement.

use std::collections::BTreeMap;

use std::sync::Arc;

use catalog::{
    AgreementScope, DataEnvironment, Dataset, DatasetEnvironment, DatasetGrant, Field, FieldType, MemberId,
    RESERVED_FIELDS,
};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::Int64Type;
use serde_json::Value;

use crate::decode::{MAX_ROW_ERRORS, RowError};
use crate::schema::{DatasetSchema, INSTANCE, MEMBER_UID, int_column};

pub use crate::error::{FieldProblem, IngestError};

/// Most refused fields reported in one answer.
const MAX_PROBLEMS: usize = 100;

/// Whether a connection in `env` may touch `dataset` at all: a dataset still in the
/// sandbox is not offered to live connections.
pub fn dataset_offered(dataset: &Dataset, env: DataEnvironment) -> bool {
    !(dataset.environment == DatasetEnvironment::Sandbox && env == DataEnvironment::Production)
}

/// Checks that `scope` grants writing `dataset` and every named field.
pub fn authorize_write<'a>(
    scope: &AgreementScope,
    dataset: &Dataset,
    fields: impl IntoIterator<Item = &'a str>,
) -> Result<(), IngestError> {
    let grant = scope.grant(&dataset.name).ok_or(IngestError::Forbidden)?;
    if !dataset_offered(dataset, scope.environment.into()) {
        return Err(IngestError::Forbidden);
    }
    if fields.into_iter().all(|f| grant.write.contains(f)) { Ok(()) } else { Err(IngestError::Forbidden) }
}

/// Checks and converts one object of field values. Unknown and reserved names, wrong types
/// and oversize values are all reported (up to 100), so a client can fix a batch at once.
pub fn check_values(
    dataset: &Dataset,
    values: &serde_json::Map<String, Value>,
) -> Result<BTreeMap<String, Value>, IngestError> {
    let mut out = BTreeMap::new();
    let mut problems = Vec::new();
    for (name, value) in values {
        let problem = |reason: &str| FieldProblem { field: name.clone(), reason: reason.to_owned() };
        if RESERVED_FIELDS.contains(&name.as_str()) {
            problems.push(problem("reserved: assigned by the server"));
            continue;
        }
        let Some(field) = dataset.field(name) else {
            problems.push(problem("not a field of this dataset"));
            continue;
        };
        match coerce(field, value) {
            Ok(v) => {
                out.insert(name.clone(), v);
            }
            Err(reason) => problems.push(FieldProblem { field: name.clone(), reason }),
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        problems.truncate(MAX_PROBLEMS);
        Err(IngestError::Invalid { problems })
    }
}

/// Converts a JSON value (or a string holding one, as Mydex clients send) to the field's
/// type. `null` clears a value.
pub fn coerce(field: &Field, value: &Value) -> Result<Value, String> {
    if value.is_null() {
        return Ok(Value::Null);
    }
    let text = value.as_str().map(str::trim);
    let expected = |t: &str| format!("expected {t}");
    match field.data_type {
        FieldType::Integer | FieldType::Timestamp => value
            .as_i64()
            .or_else(|| text.and_then(|s| s.parse::<i64>().ok()))
            .map(Value::from)
            .ok_or_else(|| expected("a 64-bit integer")),
        FieldType::Float => value
            .as_f64()
            .or_else(|| text.and_then(|s| s.parse::<f64>().ok()))
            .filter(|f| f.is_finite())
            .map(Value::from)
            .ok_or_else(|| expected("a number")),
        FieldType::Decimal => {
            let s = match value {
                Value::Number(n) => n.to_string(),
                Value::String(s) => s.trim().to_owned(),
                _ => return Err(expected("a decimal with at most 2 places")),
            };
            crate::decode::parse_cents(&s)
                .map(|c| Value::from(format_cents(c)))
                .ok_or_else(|| expected("a decimal with at most 2 places"))
        }
        FieldType::Boolean => match value {
            Value::Bool(b) => Ok(Value::Bool(*b)),
            Value::Number(n) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
                Ok(Value::Bool(n.as_i64() == Some(1)))
            }
            Value::String(s) => match s.trim() {
                "true" | "1" => Ok(Value::Bool(true)),
                "false" | "0" => Ok(Value::Bool(false)),
                _ => Err(expected("a boolean")),
            },
            _ => Err(expected("a boolean")),
        },
        FieldType::Text => {
            let s = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(expected("text")),
            };
            check_len(field, s)
        }
        FieldType::Json => {
            let parsed = match value {
                Value::Object(_) | Value::Array(_) => value.clone(),
                Value::String(s) => match serde_json::from_str::<Value>(s) {
                    Ok(v @ (Value::Object(_) | Value::Array(_))) => v,
                    _ => return Err(expected("a JSON object or array")),
                },
                _ => return Err(expected("a JSON object or array")),
            };
            check_len(field, parsed.to_string())
        }
    }
}

fn check_len(field: &Field, s: String) -> Result<Value, String> {
    if s.len() > field.max_bytes as usize {
        Err(format!("longer than {} bytes", field.max_bytes))
    } else {
        Ok(Value::String(s))
    }
}

fn format_cents(c: i64) -> String {
    let sign = if c < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", c.unsigned_abs() / 100, c.unsigned_abs() % 100)
}

/// An event time more than this far ahead of the server's clock is refused.
pub const MAX_FUTURE_SECS: i64 = 86_400;

/// Fills a missing `created_timestamp` with the arrival time (datasets whose event time is
/// that field) and refuses rows without an event time or with one more than a day ahead.
pub fn check_event_time(schema: &DatasetSchema, batch: RecordBatch, now_secs: i64) -> Result<RecordBatch, IngestError> {
    let i = schema.event_time_input;
    let times = batch.column(i).as_primitive::<Int64Type>();
    let name = schema.input.field(i).name();
    let mut rows = Vec::new();
    for (r, t) in times.iter().enumerate() {
        let reason = match t {
            None if !schema.fills_event_time() => "the event time is required",
            Some(t) if t > now_secs + MAX_FUTURE_SECS => "the event time is more than a day in the future",
            _ => continue,
        };
        if rows.len() < MAX_ROW_ERRORS {
            rows.push(RowError { row: r + 1, field: Some(name.clone()), reason: reason.into() });
        }
    }
    if !rows.is_empty() {
        return Err(IngestError::Rows { rows, forbidden: false });
    }
    if times.null_count() == 0 {
        return Ok(batch);
    }
    let filled: Int64Array = times.iter().map(|t| Some(t.unwrap_or(now_secs))).collect();
    let mut columns = batch.columns().to_vec();
    columns[i] = Arc::new(filled);
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// Checks a batch of new rows as every door does before it is stored: each row's member
/// must have an agreement granting write of this dataset and of every field the row sets
/// ([`authorize_rows`], 403), each row must set at least one field (422), and event times
/// must be present and not in the future ([`check_event_time`], which fills a missing
/// `created_timestamp`).
pub fn check_new_rows<'g>(
    schema: &DatasetSchema,
    batch: RecordBatch,
    grant_of: impl Fn(MemberId) -> Option<&'g DatasetGrant>,
    now_secs: i64,
) -> Result<RecordBatch, IngestError> {
    authorize_rows(schema, &batch, grant_of)?;
    refuse_empty_rows(&batch)?;
    check_event_time(schema, batch, now_secs)
}

/// Refuses rows that set no field of the dataset (only `member_uid` and `instance`, or
/// nulls): they would store nothing but what the server fills in.
fn refuse_empty_rows(batch: &RecordBatch) -> Result<(), IngestError> {
    let schema = batch.schema();
    let data: Vec<&ArrayRef> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .filter(|(f, _)| f.name() != MEMBER_UID && f.name() != INSTANCE)
        .map(|(_, c)| c)
        .collect();
    // Most batches have a column every row sets.
    if data.iter().any(|c| c.null_count() == 0) {
        return Ok(());
    }
    let rows: Vec<RowError> = (0..batch.num_rows())
        .filter(|r| data.iter().all(|c| c.is_null(*r)))
        .take(MAX_ROW_ERRORS)
        .map(|r| RowError { row: r + 1, field: None, reason: "the row sets no field of the dataset".into() })
        .collect();
    if rows.is_empty() { Ok(()) } else { Err(IngestError::Rows { rows, forbidden: false }) }
}

/// Checks every row against its member's agreement with the writing connection: the member
/// must have one granting write of this dataset (a grant that writes no field is none) and
/// of every field the row sets; `member_uid` and `instance` need that grant too. Members
/// without an agreement and members that do not exist are refused alike.
pub fn authorize_rows<'g>(
    schema: &DatasetSchema,
    batch: &RecordBatch,
    grant_of: impl Fn(MemberId) -> Option<&'g DatasetGrant>,
) -> Result<(), IngestError> {
    let members = int_column(batch, MEMBER_UID)?;
    let columns = batch.columns();
    // Members share a few grants (one per approved revision): decide each grant's columns
    // once, not a set lookup per row and field.
    let mut decided: Vec<(&DatasetGrant, Vec<bool>)> = Vec::new();
    let mut rows = Vec::new();
    for r in 0..batch.num_rows() {
        if rows.len() >= MAX_ROW_ERRORS {
            break;
        }
        let grant = MemberId::new(members.value(r)).ok().and_then(&grant_of).filter(|g| !g.write.is_empty());
        let Some(grant) = grant else {
            rows.push(RowError {
                row: r + 1,
                field: None,
                reason: "no agreement permits writing this member's data".into(),
            });
            continue;
        };
        let i = match decided.iter().position(|(g, _)| std::ptr::eq(*g, grant)) {
            Some(i) => i,
            None => {
                let writable = (0..columns.len())
                    .map(|c| {
                        let name = schema.input.field(c).name();
                        name == MEMBER_UID || name == INSTANCE || grant.write.contains(name.as_str())
                    })
                    .collect();
                decided.push((grant, writable));
                decided.len() - 1
            }
        };
        // Run before the server fills event times: only what the writer sent is checked.
        for (c, column) in columns.iter().enumerate().skip(2) {
            if !decided[i].1[c] && column.is_valid(r) {
                let field = schema.input.field(c).name();
                rows.push(RowError {
                    row: r + 1,
                    field: Some(field.clone()),
                    reason: "the agreement does not permit writing this field".into(),
                });
            }
        }
    }
    if rows.is_empty() { Ok(()) } else { Err(IngestError::Rows { rows, forbidden: true }) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(t: FieldType) -> Field {
        Field {
            name: "f".parse().unwrap(),
            title: "F".into(),
            description: String::new(),
            documented_type: String::new(),
            data_type: t,
            max_bytes: 10,
        }
    }

    #[test]
    fn coerces_strings_and_numbers() {
        use FieldType::*;
        let ok = [
            (Integer, json!("42"), json!(42)),
            (Integer, json!(-7), json!(-7)),
            (Timestamp, json!("1648633780"), json!(1648633780)),
            (Float, json!("4.5"), json!(4.5)),
            (Decimal, json!("23.4"), json!("23.40")),
            (Decimal, json!(200), json!("200.00")),
            (Decimal, json!("-0.05"), json!("-0.05")),
            (Boolean, json!("1"), json!(true)),
            (Text, json!(12345678), json!("12345678")),
            (Json, json!("{\"a\": [1]}"), json!("{\"a\":[1]}")),
            (Json, json!([1, 2]), json!("[1,2]")),
            (Text, Value::Null, Value::Null),
        ];
        for (t, input, want) in ok {
            assert_eq!(coerce(&field(t), &input).unwrap(), want, "{t:?} {input}");
        }
        let bad = [
            (Integer, json!("4.5")),
            (Integer, json!("x")),
            (Float, json!("NaN")),
            (Decimal, json!("1.234")),
            (Decimal, json!("1e3")),
            (Boolean, json!("yes")),
            (Text, json!("far too long")),
            (Json, json!("42")),
            (Text, json!({"a": 1})),
        ];
        for (t, input) in bad {
            let err = coerce(&field(t), &input).unwrap_err();
            assert!(!err.contains(&input.to_string()), "the reason never echoes the value");
        }
    }

    #[test]
    fn each_row_is_checked_against_its_own_members_grant() {
        let dataset =
            catalog::builtin_datasets().into_iter().find(|d| d.name.as_str() == "ds_energy_consumption").unwrap();
        let all: std::collections::BTreeSet<String> = dataset.data_fields().map(|f| f.name.to_string()).collect();
        let full = DatasetGrant { read: all.clone(), write: all.clone() };
        let mut narrow = full.clone();
        narrow.write.remove("field_energy_source_name");
        let schema = DatasetSchema::new(Arc::new(dataset)).unwrap();
        let body = [1, 2, 1, 3, 2]
            .iter()
            .map(|m| format!(r#"{{"member_uid": {m}, "field_energy_reading_timestamp": 1764000000, "field_energy_source_name": "Kettle"}}"#))
            .collect::<Vec<_>>()
            .join("\n");
        let batch = crate::decode::decode(&schema, crate::decode::Format::Ndjson, body.as_bytes()).unwrap();
        let grant_of = |m: MemberId| match m.get() {
            1 => Some(&full),
            2 => Some(&narrow),
            _ => None,
        };
        let Err(IngestError::Rows { rows, forbidden: true }) = authorize_rows(&schema, &batch, grant_of) else {
            panic!("refused")
        };
        let got: Vec<(usize, Option<&str>)> = rows.iter().map(|r| (r.row, r.field.as_deref())).collect();
        assert_eq!(got, [(2, Some("field_energy_source_name")), (4, None), (5, Some("field_energy_source_name"))]);
        // Without the field, member 2's rows pass under the narrow grant.
        let body = r#"{"member_uid": 2, "field_energy_reading_timestamp": 1764000000}"#;
        let batch = crate::decode::decode(&schema, crate::decode::Format::Ndjson, body.as_bytes()).unwrap();
        assert!(authorize_rows(&schema, &batch, grant_of).is_ok());
    }

    /// A grant that writes no field (a read-only revision the member is still on) writes
    /// nothing: not a row of only `member_uid`, nor one that only moves `instance`.
    #[test]
    fn a_read_only_grant_writes_no_row() {
        let dataset =
            catalog::builtin_datasets().into_iter().find(|d| d.name.as_str() == "ds_energy_consumption").unwrap();
        let all: std::collections::BTreeSet<String> = dataset.data_fields().map(|f| f.name.to_string()).collect();
        let read_only = DatasetGrant { read: all, write: Default::default() };
        let schema = DatasetSchema::new(Arc::new(dataset)).unwrap();
        for body in [r#"{"member_uid": 1}"#, r#"{"member_uid": 1, "instance": 99}"#] {
            let batch = crate::decode::decode(&schema, crate::decode::Format::Ndjson, body.as_bytes()).unwrap();
            let refused = authorize_rows(&schema, &batch, |_| Some(&read_only));
            assert!(matches!(refused, Err(IngestError::Rows { forbidden: true, .. })), "{body}: {refused:?}");
        }
    }

    /// A row that sets no field is refused (422) even under a full grant; the others name
    /// the rows.
    #[test]
    fn rows_that_set_no_field_are_refused() {
        let dataset =
            catalog::builtin_datasets().into_iter().find(|d| d.name.as_str() == "ds_browsing_history").unwrap();
        let all: std::collections::BTreeSet<String> = dataset.data_fields().map(|f| f.name.to_string()).collect();
        let full = DatasetGrant { read: all.clone(), write: all };
        let schema = DatasetSchema::new(Arc::new(dataset)).unwrap();
        let body = "{\"member_uid\": 1}\n{\"member_uid\": 1, \"browsing_url\": \"https://example.org\"}\n{\"member_uid\": 1, \"instance\": 2, \"browsing_url\": null}\n";
        let batch = crate::decode::decode(&schema, crate::decode::Format::Ndjson, body.as_bytes()).unwrap();
        let Err(IngestError::Rows { rows, forbidden: false }) =
            check_new_rows(&schema, batch, |_| Some(&full), 1_764_000_000)
        else {
            panic!("refused")
        };
        assert_eq!(rows.iter().map(|r| r.row).collect::<Vec<_>>(), [1, 3]);
    }

    #[test]
    fn check_values_reports_every_problem_without_values() {
        let d = catalog::Dataset {
            name: "ds_x".parse().unwrap(),
            title: "X".into(),
            description: String::new(),
            kind: catalog::DatasetKind::Metadata,
            environment: DatasetEnvironment::Production,
            fields: vec![field(FieldType::Integer)],
            event_time_field: None,
        };
        let input = json!({"f": "secret-value", "nope": 1, "id": 3});
        let Err(IngestError::Invalid { problems }) = check_values(&d, input.as_object().unwrap()) else { panic!() };
        let fields: Vec<_> = problems.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(fields, ["f", "nope", "id"]);
        assert!(problems.iter().all(|p| !p.reason.contains("secret-value")));
        assert!(
            matches!(DatasetSchema::new(Arc::new(d)), Err(IngestError::Internal(_))),
            "a metadata dataset has no columns of rows: an error, not a panic"
        );
    }
}
