//! What a scan's filters say about which members, event times and row ids it can need, so
//! the provider picks members and files before DataFusion plans. Only an optimisation: the
//! filters are still applied to every row (the provider reports them `Inexact`), so a filter
//! this does not understand simply prunes nothing.

use std::collections::BTreeSet;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::expr::InList;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};

/// An inclusive range of `i64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub lo: i64,
    pub hi: i64,
}

impl Default for Range {
    fn default() -> Self {
        Range { lo: i64::MIN, hi: i64::MAX }
    }
}

impl Range {
    pub fn overlaps(&self, lo: i64, hi: i64) -> bool {
        self.lo <= hi && lo <= self.hi
    }

    fn narrow(&mut self, op: Operator, v: i64) {
        match op {
            Operator::Eq => {
                self.lo = self.lo.max(v);
                self.hi = self.hi.min(v);
            }
            Operator::Gt => self.lo = self.lo.max(v.saturating_add(1)),
            Operator::GtEq => self.lo = self.lo.max(v),
            Operator::Lt => self.hi = self.hi.min(v.saturating_sub(1)),
            Operator::LtEq => self.hi = self.hi.min(v),
            _ => {}
        }
    }
}

/// What the filters allow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bounds {
    /// `None`: any member.
    pub members: Option<BTreeSet<i64>>,
    pub member_range: Range,
    pub time: Range,
    pub id: Range,
}

impl Bounds {
    /// Reads `filters` (AND-ed) over columns `member_uid`, `id` and `event_time` (if shown).
    pub fn from_filters(filters: &[Expr], event_time: Option<&str>) -> Bounds {
        let mut b = Bounds::default();
        for f in filters {
            for e in split_conjunction(f) {
                b.add(e, event_time);
            }
        }
        b
    }

    pub fn member_allowed(&self, member: i64) -> bool {
        self.members.as_ref().is_none_or(|m| m.contains(&member)) && self.member_range.overlaps(member, member)
    }

    fn range(&mut self, column: &str, event_time: Option<&str>) -> Option<&mut Range> {
        match column {
            "member_uid" => Some(&mut self.member_range),
            "id" => Some(&mut self.id),
            c if Some(c) == event_time => Some(&mut self.time),
            _ => None,
        }
    }

    fn add(&mut self, e: &Expr, event_time: Option<&str>) {
        match e {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (column, op, value) = match (column(left), int(right), column(right), int(left)) {
                    (Some(c), Some(v), _, _) => (c, *op, v),
                    (_, _, Some(c), Some(v)) => match op.swap() {
                        Some(op) => (c, op, v),
                        None => return,
                    },
                    _ => return,
                };
                if let Some(r) = self.range(column, event_time) {
                    r.narrow(op, value);
                }
            }
            Expr::Between(Between { expr, negated: false, low, high }) => {
                if let (Some(c), Some(lo), Some(hi)) = (column(expr), int(low), int(high))
                    && let Some(r) = self.range(c, event_time)
                {
                    r.narrow(Operator::GtEq, lo);
                    r.narrow(Operator::LtEq, hi);
                }
            }
            Expr::InList(InList { expr, list, negated: false }) if column(expr) == Some("member_uid") => {
                let Some(values) = list.iter().map(int).collect::<Option<BTreeSet<i64>>>() else { return };
                self.members = Some(match self.members.take() {
                    Some(m) => m.intersection(&values).copied().collect(),
                    None => values,
                });
            }
            _ => {}
        }
    }
}

fn column(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(c.name.as_str()),
        _ => None,
    }
}

fn int(e: &Expr) -> Option<i64> {
    match e {
        Expr::Literal(v, _) => match v {
            ScalarValue::Int64(Some(v)) => Some(*v),
            ScalarValue::Int32(Some(v)) => Some(i64::from(*v)),
            ScalarValue::Int16(Some(v)) => Some(i64::from(*v)),
            ScalarValue::Int8(Some(v)) => Some(i64::from(*v)),
            ScalarValue::UInt32(Some(v)) => Some(i64::from(*v)),
            ScalarValue::UInt16(Some(v)) => Some(i64::from(*v)),
            ScalarValue::UInt8(Some(v)) => Some(i64::from(*v)),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn reads_members_times_and_ids() {
        let filters = [
            col("member_uid").eq(lit(7i64)).or(col("member_uid").eq(lit(8i64))),
            col("member_uid").in_list(vec![lit(3i64), lit(4i64)], false),
            lit(100i64).lt_eq(col("t")),
            col("t").lt(lit(200i64)),
            col("id").between(lit(5i64), lit(9i64)),
            col("id").gt(lit(6i64)),
            col("other").eq(lit(1i64)),
        ];
        let b = Bounds::from_filters(&filters, Some("t"));
        assert_eq!(b.members, Some(BTreeSet::from([3, 4])), "an OR is not understood, and prunes nothing");
        assert_eq!(b.time, Range { lo: 100, hi: 199 });
        assert_eq!(b.id, Range { lo: 7, hi: 9 });
        assert!(b.member_allowed(3) && !b.member_allowed(7));
        let b = Bounds::from_filters(&[col("t").eq(lit(5i64))], None);
        assert_eq!(b.time, Range::default(), "an event time the table does not show prunes nothing");
        let b = Bounds::from_filters(&[col("member_uid").eq(lit(5i64)).and(col("member_uid").gt(lit(5i64)))], None);
        assert!(!b.member_allowed(5), "contradictions select nothing");
    }
}
