//! Checking written values against a dataset's schema and the writer's agreement.

use std::collections::BTreeMap;

use catalog::{AgreementScope, DataEnvironment, Dataset, DatasetEnvironment, Field, FieldType, RESERVED_FIELDS};
use serde_json::Value;

/// One refused field: which, and why. Never the value (it may be personal data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldProblem {
    pub field: String,
    pub reason: String,
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Values that do not fit the schema; nothing was stored.
    #[error("{} field(s) refused", problems.len())]
    Invalid { problems: Vec<FieldProblem> },
    /// The agreement does not grant writing (some of) these fields or this dataset.
    #[error("the agreement does not permit this write")]
    Forbidden,
}

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
pub fn check_values(dataset: &Dataset, values: &serde_json::Map<String, Value>) -> Result<BTreeMap<String, Value>, IngestError> {
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
            parse_cents(&s).map(|c| Value::from(format_cents(c))).ok_or_else(|| expected("a decimal with at most 2 places"))
        }
        FieldType::Boolean => match value {
            Value::Bool(b) => Ok(Value::Bool(*b)),
            Value::Number(n) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => Ok(Value::Bool(n.as_i64() == Some(1))),
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

/// `-12.3` → -1230 cents. At most 2 decimal places and 16 integer digits (Decimal(18, 2)).
fn parse_cents(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || int.len() > 16 || frac.len() > 2 || !all_digits(int) || !all_digits(frac) {
        return None;
    }
    let cents = int.parse::<i64>().ok()? * 100 + format!("{frac:0<2}").parse::<i64>().ok()?;
    Some(if neg { -cents } else { cents })
}

fn format_cents(c: i64) -> String {
    let sign = if c < 0 { "-" } else { "" };
    format!("{sign}{}.{:02}", c.unsigned_abs() / 100, c.unsigned_abs() % 100)
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
    }
}
