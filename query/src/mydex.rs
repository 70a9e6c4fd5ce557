//! The Mydex read filters: `filters[<field>][operator]=>&filters[<field>][value]=10`, AND-ed,
//! one per field, values typed by the field. A filter on a field the agreement does not let
//! the caller read is refused, never dropped: dropping it would answer a different question.

use std::collections::BTreeMap;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, col, lit};

use crate::QueryError;
use crate::scope::TableScope;

/// One parsed filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub field: String,
    pub op: Op,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    NotEq,
    Gt,
    GtEq,
    Lt,
    LtEq,
    Like,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s.trim() {
            "=" | "==" => Op::Eq,
            "!=" | "<>" => Op::NotEq,
            ">" => Op::Gt,
            ">=" => Op::GtEq,
            "<" => Op::Lt,
            "<=" => Op::LtEq,
            s if s.eq_ignore_ascii_case("like") => Op::Like,
            _ => return None,
        })
    }
}

/// The filters among query parameters (other parameters are ignored). An operator without
/// a value is an error; a value without an operator means `=`.
pub fn parse_filters(params: &[(String, String)]) -> Result<Vec<Filter>, QueryError> {
    let mut parts: BTreeMap<String, (Option<String>, Option<String>)> = BTreeMap::new();
    for (key, value) in params {
        let Some(rest) = key.strip_prefix("filters[") else { continue };
        let bad =
            || QueryError::Invalid("a filter is written filters[<field>][operator] and filters[<field>][value]".into());
        let (field, part) = rest.split_once("][").ok_or_else(bad)?;
        let part = part.strip_suffix(']').ok_or_else(bad)?;
        let entry = parts.entry(field.to_owned()).or_default();
        let slot = match part {
            "operator" => &mut entry.0,
            "value" => &mut entry.1,
            _ => return Err(bad()),
        };
        if slot.replace(value.clone()).is_some() {
            return Err(QueryError::Invalid(format!("one filter per field: filters[{field}] is repeated")));
        }
    }
    parts
        .into_iter()
        .map(|(field, (op, value))| {
            let value = value.ok_or_else(|| QueryError::Invalid(format!("filters[{field}][value] is missing")))?;
            let op = match op {
                None => Op::Eq,
                Some(op) => Op::parse(&op).ok_or_else(|| {
                    QueryError::Invalid(format!("filters[{field}][operator] must be one of = != > >= < <= LIKE"))
                })?,
            };
            Ok(Filter { field, op, value })
        })
        .collect()
}

impl Filter {
    /// The filter as an expression over `table`: `Ok(None)` if the dataset has no such
    /// field, `Forbidden` if it has it but the caller may not read it.
    pub fn expr(&self, table: &TableScope) -> Result<Option<Expr>, QueryError> {
        let name = if self.field == "ds_id" { "id" } else { self.field.as_str() };
        let stored = &table.schema.stored;
        let Ok(index) = stored.index_of(name) else { return Ok(None) };
        if name == ingest::schema::ROW_VERSION {
            return Ok(None);
        }
        if !table.columns.contains(&index) {
            return Err(QueryError::Forbidden);
        }
        let data_type = stored.field(index).data_type();
        let value = ScalarValue::try_from_string(self.value.clone(), data_type)
            .map_err(|_| QueryError::Invalid(format!("filters[{}][value] must be a {data_type} value", self.field)))?;
        let column = col(format!("\"{name}\""));
        Ok(Some(match self.op {
            Op::Eq => column.eq(lit(value)),
            Op::NotEq => column.not_eq(lit(value)),
            Op::Gt => column.gt(lit(value)),
            Op::GtEq => column.gt_eq(lit(value)),
            Op::Lt => column.lt(lit(value)),
            Op::LtEq => column.lt_eq(lit(value)),
            Op::Like if data_type.is_string() => column.like(lit(value)),
            Op::Like => return Err(QueryError::Invalid(format!("LIKE needs a text field; {} is not", self.field))),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_operators_and_values() {
        let f = parse_filters(&pairs(&[
            ("filters[id][operator]", ">"),
            ("filters[id][value]", "10"),
            ("filters[name][value]", "x"),
            ("filters[t][operator]", "like"),
            ("filters[t][value]", "a%"),
            ("key", "ignored"),
        ]))
        .unwrap();
        assert_eq!(f.len(), 3);
        assert_eq!((f[0].field.as_str(), f[0].op), ("id", Op::Gt));
        assert_eq!(f[1].op, Op::Eq, "a value alone is equality");
        assert_eq!(f[2].op, Op::Like);
        for bad in [
            &[("filters[id][operator]", ">")][..],
            &[("filters[id][operator]", "~"), ("filters[id][value]", "1")],
            &[("filters[id][value]", "1"), ("filters[id][value]", "2")],
            &[("filters[id]", "1")],
            &[("filters[id][other]", "1")],
        ] {
            assert!(matches!(parse_filters(&pairs(bad)), Err(QueryError::Invalid(_))), "{bad:?}");
        }
    }
}
