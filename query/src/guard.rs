//! What bounds one SQL query's work besides the memory pool, the deadline and the answer
//! caps of [`crate::engine`]: the shape of the statement (checked on the syntax tree before
//! anything is planned), the size of the plan (checked before it is optimized, which would
//! copy a plan grown by nested CTEs), memory for the value-building functions of
//! [`crate::functions`], and the input of window operators, which DataFusion buffers
//! without telling the memory pool.
//!
//! | cap | value | why |
//! |---|---|---|
//! | operators in the text | [`MAX_OPERATORS`] | a chain of them parses as deep as it is long: walking it would overflow the stack |
//! | table references in the statement | [`MAX_TABLE_REFERENCES`] | each is a scan that materialises what it reads |
//! | `SELECT`s in the statement | [`MAX_SELECTS`] | as operators; and a union of thousands plans for seconds |
//! | expressions in the statement | [`MAX_EXPRESSIONS`] | planning time |
//! | nodes of the plan, subqueries included | [`MAX_PLAN_NODES`] | nested CTEs double a plan per level |
//! | scans in the plan | [`MAX_TABLE_REFERENCES`] | as above, after CTEs are expanded |

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::common::Result as DfResult;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use datafusion::sql::sqlparser::ast::{Expr as SqlExpr, ObjectName, Select, Statement, Visit, Visitor};
use futures::StreamExt;

use crate::QueryError;
use crate::functions::{GROWING, MAX_OUTPUT_BYTES};

/// Most table references (and scans, after CTEs are expanded) in one query.
pub const MAX_TABLE_REFERENCES: usize = 64;
/// Most `SELECT`s in one statement.
pub const MAX_SELECTS: usize = 256;
/// Most expressions in one statement (an `IN` list of 10,000 members is 10,001).
pub const MAX_EXPRESSIONS: usize = 100_000;
/// Most nodes of a query's plan, subqueries included.
pub const MAX_PLAN_NODES: usize = 2_000;
/// Most expression nodes visited while sizing a plan (its expressions, once per copy).
const MAX_PLAN_EXPRESSIONS: usize = 1_000_000;

fn too_complex(what: String) -> QueryError {
    QueryError::Limit(format!("the query is too complex: {what}"))
}

/// Most operators (`+`, `||`, `=`, `AND`, `UNION` ...) in one statement's text. A chain of
/// them parses into a tree as deep as it is long, which later steps walk by recursion
/// (DataFusion names a column `1 + 1 + ...` that way: about 8 KiB of stack a level in a
/// debug build), so the chain is bounded before anything is parsed. The server's threads
/// have [`PLANNING_STACK_BYTES`] of stack: a chain this long takes a fraction of it.
pub const MAX_OPERATORS: usize = 1_000;
/// The stack a thread that plans queries needs (the server's runtime threads have it).
pub const PLANNING_STACK_BYTES: usize = 32 << 20;
/// Most tokens in one statement's text.
const MAX_TOKENS: usize = 250_000;

/// Refuses SQL text past the caps on tokens, operators and `SELECT`s before it is parsed:
/// the tokenizer reads text iteratively, while a statement parsed from a long enough chain
/// of unions or operators is deep enough to overflow a thread's stack when walked.
pub fn check_text(sql: &str) -> Result<(), QueryError> {
    use datafusion::sql::sqlparser::dialect::GenericDialect;
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let tokens = Tokenizer::new(&GenericDialect {}, sql).tokenize().map_err(|e| QueryError::Invalid(e.to_string()))?;
    if tokens.len() > MAX_TOKENS {
        return Err(too_complex(format!("more than {MAX_TOKENS} tokens")));
    }
    let (mut selects, mut operators) = (0, 0);
    for token in &tokens {
        match token {
            Token::Word(w) if w.keyword == Keyword::SELECT => selects += 1,
            Token::Word(w)
                if matches!(
                    w.keyword,
                    Keyword::AND | Keyword::OR | Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT
                ) =>
            {
                operators += 1
            }
            Token::Word(_)
            | Token::Number(..)
            | Token::SingleQuotedString(_)
            | Token::DoubleQuotedString(_)
            | Token::NationalStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::HexStringLiteral(_)
            | Token::Whitespace(_)
            | Token::Comma
            | Token::Period
            | Token::LParen
            | Token::RParen
            | Token::SemiColon
            | Token::EOF => {}
            _ => operators += 1,
        }
    }
    if selects > MAX_SELECTS {
        return Err(too_complex(format!("more than {MAX_SELECTS} SELECTs")));
    }
    if operators > MAX_OPERATORS {
        return Err(too_complex(format!("more than {MAX_OPERATORS} operators")));
    }
    Ok(())
}

/// Refuses a statement past the caps on table references, `SELECT`s and expressions,
/// before it is planned.
pub fn check_statement_shape(statement: &Statement) -> Result<(), QueryError> {
    #[derive(Default)]
    struct Shape {
        tables: usize,
        selects: usize,
        expressions: usize,
    }
    impl Visitor for Shape {
        type Break = QueryError;

        fn pre_visit_relation(&mut self, _: &ObjectName) -> ControlFlow<QueryError> {
            self.tables += 1;
            if self.tables > MAX_TABLE_REFERENCES {
                return ControlFlow::Break(too_complex(format!("more than {MAX_TABLE_REFERENCES} table references")));
            }
            ControlFlow::Continue(())
        }

        fn pre_visit_select(&mut self, _: &Select) -> ControlFlow<QueryError> {
            self.selects += 1;
            if self.selects > MAX_SELECTS {
                return ControlFlow::Break(too_complex(format!("more than {MAX_SELECTS} SELECTs")));
            }
            ControlFlow::Continue(())
        }

        fn pre_visit_expr(&mut self, _: &SqlExpr) -> ControlFlow<QueryError> {
            self.expressions += 1;
            if self.expressions > MAX_EXPRESSIONS {
                return ControlFlow::Break(too_complex(format!("more than {MAX_EXPRESSIONS} expressions")));
            }
            ControlFlow::Continue(())
        }
    }
    if let ControlFlow::Break(e) = statement.visit(&mut Shape::default()) {
        return Err(e);
    }
    if expanded_size(statement) > MAX_EXPANDED {
        return Err(too_complex(format!(
            "its common table expressions expand to more than {MAX_EXPANDED} queries and tables"
        )));
    }
    Ok(())
}

/// Most queries and table references a statement may expand to once every reference to a
/// common table expression is replaced by its definition (as planning does).
pub const MAX_EXPANDED: u64 = 256;

/// The size of `statement` with its CTEs expanded: each query counts 1 and each table
/// reference 1, a reference to a CTE the size of its definition. CTEs that each reference
/// the one before twice double the plan per level: twenty levels would plan a million
/// scans (and run out of memory planning them) from a few hundred bytes of SQL.
fn expanded_size(statement: &Statement) -> u64 {
    use datafusion::sql::sqlparser::ast::{Query, visit_relations};
    use std::collections::HashMap;

    /// The sizes of the CTEs met so far (by name; a name defined twice keeps the later).
    #[derive(Default)]
    struct Sizes(HashMap<String, u64>);
    impl Sizes {
        fn of(&self, query: &Query) -> u64 {
            let mut size = 1u64;
            let _ = visit_relations(query, |r| {
                let name = r.to_string().replace('"', "").to_lowercase();
                size = size.saturating_add(self.0.get(&name).copied().unwrap_or(1)).min(MAX_EXPANDED + 1);
                ControlFlow::<()>::Continue(())
            });
            size
        }
    }
    impl Visitor for Sizes {
        type Break = ();
        // After a query's nested queries (and the CTEs they define) are sized, its own CTEs
        // are, in order: each may name the ones before it. A recursive CTE's reference to
        // itself counts 1.
        fn post_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            for cte in query.with.iter().flat_map(|w| &w.cte_tables) {
                let size = self.of(&cte.query);
                self.0.insert(cte.alias.name.value.to_lowercase(), size);
            }
            ControlFlow::Continue(())
        }
    }
    let mut sizes = Sizes::default();
    let _ = statement.visit(&mut sizes);
    match statement {
        Statement::Query(query) => sizes.of(query),
        _ => 1,
    }
}

/// Sizes a plan before it is optimized: refuses it past the caps on nodes and scans, and
/// returns how many calls of value-building functions it makes.
pub fn check_plan(plan: &LogicalPlan) -> Result<usize, QueryError> {
    let (mut nodes, mut scans, mut expressions, mut growing) = (0usize, 0usize, 0usize, 0usize);
    let mut refusal = None;
    let mut stop = |e: QueryError| {
        refusal.get_or_insert(e);
        Ok(TreeNodeRecursion::Stop)
    };
    let walked = plan.apply_with_subqueries(|node| {
        nodes += 1;
        if nodes > MAX_PLAN_NODES {
            return stop(too_complex(format!("its plan has more than {MAX_PLAN_NODES} steps")));
        }
        if matches!(node, LogicalPlan::TableScan(_)) {
            scans += 1;
            if scans > MAX_TABLE_REFERENCES {
                return stop(too_complex(format!("it reads tables more than {MAX_TABLE_REFERENCES} times")));
            }
        }
        let mut over = false;
        node.apply_expressions(|e| {
            e.apply(|e| {
                expressions += 1;
                if expressions > MAX_PLAN_EXPRESSIONS {
                    over = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
                if let Expr::ScalarFunction(f) = e
                    && GROWING.contains(&f.func.name())
                {
                    growing += 1;
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })?;
        if over {
            return stop(too_complex(format!("its plan has more than {MAX_PLAN_EXPRESSIONS} expressions")));
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if let Some(e) = refusal {
        return Err(e);
    }
    walked.map_err(|e| QueryError::Invalid(e.to_string()))?;
    Ok(growing)
}

/// Reserves, from the query's memory, what `calls` value-building calls may hold at once:
/// one batch's worth ([`MAX_OUTPUT_BYTES`]) per call and partition.
pub fn reserve_for_functions(
    pool: &Arc<dyn MemoryPool>,
    calls: usize,
    partitions: usize,
) -> Result<MemoryReservation, QueryError> {
    let reservation = MemoryConsumer::new("trove value-building functions").register(pool);
    let each = MAX_OUTPUT_BYTES * partitions.max(1);
    reservation.try_grow(calls * each).map_err(|_| {
        let limit = pool.memory_limit();
        let fit = match limit {
            datafusion::execution::memory_pool::MemoryLimit::Finite(bytes) => (bytes / each).to_string(),
            _ => "all".into(),
        };
        QueryError::Limit(format!(
            "the query calls value-building functions (repeat, lpad, rpad, concat, concat_ws, ||) {calls} times; each call holds {} MiB of the query's memory and {fit} fit",
            each >> 20
        ))
    })?;
    Ok(reservation)
}

/// `plan` with the input of every window operator metered (see [`Metered`]).
pub fn meter_windows(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        if !matches!(node.name(), "WindowAggExec") {
            return Ok(Transformed::no(node));
        }
        let children =
            node.children().into_iter().map(|c| Arc::new(Metered::new(c.clone())) as Arc<dyn ExecutionPlan>).collect();
        #[expect(deprecated, reason = "replace_children's options are not needed for a same-schema input")]
        let node = node.with_new_children(children)?;
        Ok(Transformed::yes(node))
    })
    .map(|t| t.data)
}

/// Passes its input through, counting every batch into the query's memory for as long as
/// the stream lives: below a `WindowAggExec`, which holds its whole input until the input
/// ends and tells no memory pool (a window over a cross join of generated rows would grow
/// without bound).
#[derive(Debug)]
pub struct Metered {
    input: Arc<dyn ExecutionPlan>,
}

impl Metered {
    fn new(input: Arc<dyn ExecutionPlan>) -> Metered {
        Metered { input }
    }
}

impl DisplayAs for Metered {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Metered")
    }
}

impl ExecutionPlan for Metered {
    fn name(&self) -> &str {
        "Metered"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(Metered::new(children.swap_remove(0))))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, context.clone())?;
        let schema = input.schema();
        let reservation = MemoryConsumer::new("trove window input").register(context.memory_pool());
        let counted = input.map(move |batch| {
            let batch = batch?;
            reservation.try_grow(batch.get_array_memory_size())?;
            Ok(batch)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, counted)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(sql: &str) -> Statement {
        let mut parsed = datafusion::sql::sqlparser::parser::Parser::parse_sql(
            &datafusion::sql::sqlparser::dialect::GenericDialect {},
            sql,
        )
        .unwrap();
        parsed.pop().unwrap()
    }

    /// Each cap holds at its value and refuses one past it.
    #[test]
    fn the_caps_hold_at_their_value_and_refuse_past_it() {
        let chain = |n: usize| format!("SELECT {}", vec!["1"; n + 1].join(" + "));
        assert!(check_text(&chain(MAX_OPERATORS)).is_ok());
        assert!(matches!(check_text(&chain(MAX_OPERATORS + 1)), Err(QueryError::Limit(m)) if m.contains("operators")));
        let union = |n: usize| vec!["SELECT 1"; n].join(", ");
        assert!(check_text(&union(MAX_SELECTS)).is_ok());
        assert!(check_text(&union(MAX_SELECTS + 1)).is_err());
        let tables = |n: usize| format!("SELECT 1 FROM {}", vec!["t"; n].join(", "));
        assert!(check_statement_shape(&statement(&tables(MAX_TABLE_REFERENCES))).is_ok());
        assert!(check_statement_shape(&statement(&tables(MAX_TABLE_REFERENCES + 1))).is_err());
    }

    /// A CTE counts once per reference, as planning expands it; a recursive CTE's reference
    /// to itself counts once.
    #[test]
    fn ctes_are_sized_as_expanded() {
        assert_eq!(expanded_size(&statement("SELECT * FROM t")), 2);
        assert_eq!(expanded_size(&statement("WITH a AS (SELECT * FROM t) SELECT * FROM a, a")), 1 + 1 + 2 * 2);
        let doubling = "WITH a AS (SELECT * FROM t), b AS (SELECT * FROM a UNION ALL SELECT * FROM a), \
                        c AS (SELECT * FROM b UNION ALL SELECT * FROM b) SELECT * FROM c";
        // a = 2, b = 1 + 2a = 5, c = 1 + 2b = 11; the statement: 1 + t + 2a + 2b + c.
        assert_eq!(expanded_size(&statement(doubling)), 1 + 1 + 4 + 10 + 11);
        let recursive = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) SELECT * FROM r";
        assert!(expanded_size(&statement(recursive)) < 8);
        let deep: Vec<String> =
            (1..=20).map(|i| format!("c{i} AS (SELECT * FROM c{0} UNION ALL SELECT * FROM c{0})", i - 1)).collect();
        let deep = format!("WITH c0 AS (SELECT 1), {} SELECT * FROM c20", deep.join(", "));
        assert!(expanded_size(&statement(&deep)) > MAX_EXPANDED);
    }
}
