//! Which members and files a scan can need, decided from its filters before DataFusion plans,
//! by DataFusion's own [`PruningPredicate`] over what the manifest knows: a member is a
//! container whose `member_uid` is exactly itself, a file one whose `member_uid`, `id` and
//! event time lie within its recorded min/max. The predicate handles AND, OR, NOT, IN lists,
//! BETWEEN and casts. Only an optimisation: the filters are still applied to every row (the
//! provider reports them `Inexact`), so a filter it does not understand prunes nothing.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use catalog::{MemberId, ParquetFile};
use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::Session;
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::logical_expr::Expr;
use datafusion::logical_expr::utils::conjunction;
use datafusion::physical_expr::utils::Guarantee;
use datafusion::physical_optimizer::pruning::{PruningPredicate, PruningPredicateBuilder};
use ingest::schema::{MEMBER_UID, ROW_ID};

/// A scan's filters, ready to prune members and files.
#[derive(Debug)]
pub struct Pruner {
    /// `None` when the filters say nothing the manifest could answer.
    predicate: Option<PruningPredicate>,
    /// The event-time column's name, when the table shows it.
    event_time: Option<String>,
}

impl Pruner {
    /// Reads `filters` (AND-ed) over a table of `schema`, whose event-time column (if shown)
    /// is `event_time`.
    pub fn new(state: &dyn Session, schema: &SchemaRef, filters: &[Expr], event_time: Option<&str>) -> Pruner {
        let predicate = conjunction(filters.iter().cloned()).and_then(|expr| {
            let df_schema = DFSchema::try_from(schema.clone()).ok()?;
            let physical = state.create_physical_expr(expr, &df_schema).ok()?;
            // `member_uid IN (...)` of any length is answered exactly by `contained`, so
            // the list is not also rewritten to a chain of ranges.
            let predicate = PruningPredicateBuilder::new()
                .with_file_schema(schema.clone())
                .with_max_in_list_size(0)
                .try_build(physical)
                .ok()?;
            (!predicate.always_true()).then_some(predicate)
        });
        Pruner { predicate, event_time: event_time.map(str::to_owned) }
    }

    /// The members the filters name outright (`member_uid = 3`, `member_uid IN (3, 4)`),
    /// if they do: the only candidates worth looking up.
    pub fn named_members(&self) -> Option<BTreeSet<i64>> {
        let mut named: Option<BTreeSet<i64>> = None;
        for g in self.predicate.as_ref()?.literal_guarantees() {
            if g.column.name() != MEMBER_UID || g.guarantee != Guarantee::In {
                continue;
            }
            let ids: BTreeSet<i64> = g.literals.iter().filter_map(int).collect();
            named = Some(match named {
                Some(n) => n.intersection(&ids).copied().collect(),
                None => ids,
            });
        }
        named
    }

    /// `members`, less those the filters rule out.
    pub fn members(&self, members: Vec<MemberId>) -> Vec<MemberId> {
        let keep = self.prune(&Members(&members));
        members.into_iter().zip(keep).filter_map(|(m, keep)| keep.then_some(m)).collect()
    }

    /// Which of `files` the filters may need (their recorded ranges are not ruled out). One
    /// call for every member's files: evaluating the predicate has a fixed cost a call.
    pub fn files(&self, files: &[Arc<ParquetFile>]) -> Vec<bool> {
        self.prune(&Files { files, event_time: self.event_time.as_deref() })
    }

    fn prune(&self, containers: &dyn PruningStatistics) -> Vec<bool> {
        match &self.predicate {
            // An error only means nothing is pruned: the filters still run on every row.
            Some(p) => p.prune(containers).unwrap_or_else(|_| vec![true; containers.num_containers()]),
            None => vec![true; containers.num_containers()],
        }
    }
}

fn int(v: &ScalarValue) -> Option<i64> {
    match v.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(v) => v,
        _ => None,
    }
}

/// Whether each of `values` (one per container) is among `literals`.
fn contained(values: impl Iterator<Item = i64>, literals: &HashSet<ScalarValue>) -> BooleanArray {
    let literals: HashSet<i64> = literals.iter().filter_map(int).collect();
    values.map(|v| Some(literals.contains(&v))).collect()
}

/// Candidate members: each holds only its own `member_uid`.
struct Members<'a>(&'a [MemberId]);

impl Members<'_> {
    fn uids(&self) -> impl Iterator<Item = i64> + '_ {
        self.0.iter().map(|m| m.get())
    }
}

impl PruningStatistics for Members<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        (column.name() == MEMBER_UID).then(|| Arc::new(self.uids().collect::<Int64Array>()) as ArrayRef)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.min_values(column)
    }

    fn num_containers(&self) -> usize {
        self.0.len()
    }

    fn null_counts(&self, _: &Column) -> Option<ArrayRef> {
        None
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        None
    }

    fn contained(&self, column: &Column, values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        (column.name() == MEMBER_UID).then(|| contained(self.uids(), values))
    }
}

/// A member's recorded files, with the ranges the manifest holds for each.
struct Files<'a> {
    files: &'a [Arc<ParquetFile>],
    event_time: Option<&'a str>,
}

impl Files<'_> {
    /// Each file's recorded (min, max) of `column`, if the manifest records it.
    fn ranges(&self, column: &Column) -> Option<Vec<(i64, i64)>> {
        let name = column.name();
        let range: fn(&ParquetFile) -> (i64, i64) = if name == MEMBER_UID {
            // A hot file may hold any member: it never prunes by member.
            |f| f.member.map_or((i64::MIN, i64::MAX), |m| (m.get(), m.get()))
        } else if name == ROW_ID {
            |f| (f.min_id, f.max_id)
        } else if Some(name) == self.event_time {
            |f| (f.min_event_time, f.max_event_time)
        } else {
            return None;
        };
        Some(self.files.iter().map(|f| range(f)).collect())
    }
}

impl PruningStatistics for Files<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.ranges(column).map(|r| Arc::new(r.iter().map(|r| r.0).collect::<Int64Array>()) as ArrayRef)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.ranges(column).map(|r| Arc::new(r.iter().map(|r| r.1).collect::<Int64Array>()) as ArrayRef)
    }

    fn num_containers(&self) -> usize {
        self.files.len()
    }

    fn null_counts(&self, _: &Column) -> Option<ArrayRef> {
        None
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        None
    }

    fn contained(&self, column: &Column, values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        // Unknown (None) for a hot file: it may hold any member.
        (column.name() == MEMBER_UID).then(|| {
            let literals: HashSet<i64> = values.iter().filter_map(int).collect();
            self.files.iter().map(|f| f.member.map(|m| literals.contains(&m.get()))).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use catalog::{DataEnvironment, DatasetName};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::prelude::{SessionContext, col, lit};

    fn pruner(filters: &[Expr]) -> Pruner {
        let schema = Arc::new(Schema::new(
            ["member_uid", "id", "t", "other"].map(|name| Field::new(name, DataType::Int64, true)).to_vec(),
        ));
        Pruner::new(&SessionContext::new().state(), &schema, filters, Some("t"))
    }

    fn members(ids: impl IntoIterator<Item = i64>) -> Vec<MemberId> {
        ids.into_iter().map(|id| MemberId::new(id).unwrap()).collect()
    }

    fn file(member: i64, ids: (i64, i64), times: (i64, i64)) -> Arc<ParquetFile> {
        Arc::new(ParquetFile {
            environment: DataEnvironment::Production,
            dataset: "ds_energy".parse::<DatasetName>().unwrap(),
            member: Some(MemberId::new(member).unwrap()),
            path: format!("{member}/{}", ids.0),
            rows: 1,
            size_bytes: 1,
            min_event_time: times.0,
            max_event_time: times.1,
            min_id: ids.0,
            max_id: ids.1,
            max_version: 1,
        })
    }

    fn kept(p: &Pruner, files: &[Arc<ParquetFile>]) -> Vec<String> {
        files.iter().zip(p.files(files)).filter(|(_, k)| *k).map(|(f, _)| f.path.clone()).collect()
    }

    #[test]
    fn picks_members_by_equality_lists_or_and_not() {
        let all = || members(1..=10);
        let p = pruner(&[col("member_uid").in_list((3..=7i64).map(lit).collect(), false)]);
        assert_eq!(p.named_members(), Some(BTreeSet::from([3, 4, 5, 6, 7])));
        let p = pruner(&[
            col("member_uid").eq(lit(7i64)).or(col("member_uid").eq(lit(3i64))),
            col("member_uid").in_list(vec![lit(3i64), lit(4i64)], false),
        ]);
        assert_eq!(p.members(all()), members([3]), "an OR of equalities and a list, AND-ed");
        let p = pruner(&[col("member_uid").gt(lit(8i64)).or(col("member_uid").lt(lit(2i64)))]);
        assert_eq!(p.members(all()), members([1, 9, 10]));
        assert_eq!(p.named_members(), None, "ranges name no members");
        let p = pruner(&[col("member_uid").in_list(vec![lit(2i64), lit(5i64)], true)]);
        assert_eq!(p.members(members(1..=6)), members([1, 3, 4, 6]), "NOT IN");
        let p = pruner(&[col("member_uid").eq(lit(5i32))]);
        assert_eq!(p.members(all()), members([5]), "a narrower literal is cast");
        let p = pruner(&[col("member_uid").eq(lit(5i64)).and(col("member_uid").gt(lit(5i64)))]);
        assert!(p.members(all()).is_empty(), "contradictions select nothing");
        let p = pruner(&[col("other").eq(lit(1i64))]);
        assert_eq!(p.members(all()), all(), "a column the manifest does not know prunes nothing");
    }

    #[test]
    fn picks_files_by_recorded_ranges() {
        let files = [file(1, (1, 10), (100, 199)), file(1, (11, 20), (200, 299)), file(2, (1, 5), (300, 399))];
        let p = pruner(&[lit(200i64).lt_eq(col("t")), col("t").lt(lit(300i64))]);
        assert_eq!(kept(&p, &files), ["1/11"]);
        let p = pruner(&[col("id").between(lit(5i64), lit(9i64)).or(col("t").gt(lit(350i64)))]);
        assert_eq!(kept(&p, &files), ["1/1", "2/1"]);
        let p = pruner(&[col("member_uid").eq(lit(2i64)).and(col("id").gt(lit(3i64)))]);
        assert_eq!(kept(&p, &files), ["2/1"]);
        let p = pruner(&[!col("t").eq(lit(150i64))]);
        assert_eq!(kept(&p, &files).len(), 3, "NOT of an equality can rule nothing out on ranges");
        let schema = Arc::new(Schema::new(vec![Field::new("t", DataType::Int64, true)]));
        let hidden = Pruner::new(&SessionContext::new().state(), &schema, &[col("t").eq(lit(5i64))], None);
        assert_eq!(kept(&hidden, &files).len(), 3, "an event time the table does not show prunes nothing");
    }
}
