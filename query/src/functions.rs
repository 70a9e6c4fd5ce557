//! The functions the SQL door offers: an allow-list, not DataFusion's defaults. Every
//! function here either returns values no larger than its inputs (times a small constant
//! that does not compound) or is one of the few that build values ([`GROWING`]: `repeat`,
//! `lpad`, `rpad`, `concat`, `concat_ws` and the `||` operator), which are wrapped so that
//! one call (one batch) may produce at most [`MAX_OUTPUT_BYTES`], checked from the
//! arguments before anything is allocated. Those values never pass a memory pool, so
//! without the cap one call could ask for a terabyte (constant folding runs it while
//! planning). The engine also reserves, per call in a plan, that cap from the query's
//! memory (see [`crate::guard`]), so sixty of them cannot add up past the query's limit.
//!
//! Left out on purpose: functions that build values of unbounded size or compound when
//! nested (`replace`, `regexp_replace`, `translate`, `overlay`, `encode`, `to_char`, every
//! array and map function, `array_repeat`, struct constructors), functions of the server
//! (`version`, `input_file_name`), and `levenshtein` (quadratic time in one call, which no
//! deadline interrupts). `arrow_cast` takes only scalar target types: a fixed-size binary or
//! list type allocates its declared width for every row, even a null one.
//!
//! | kind | functions |
//! |---|---|
//! | aggregate (within the query's memory) | count, sum, avg, min, max, stddev, stddev_pop, var_samp, var_pop, median, approx_percentile_cont, approx_percentile_cont_with_weight, approx_distinct, approx_median, percentile_cont, array_agg, string_agg, first_value, last_value, nth_value, any_value, bool_and, bool_or, bit_and, bit_or, bit_xor, corr, covar_samp, covar_pop, regr_*, grouping |
//! | window | row_number, rank, dense_rank, percent_rank, cume_dist, ntile, lag, lead, first_value, last_value, nth_value, and the aggregates |
//! | date and time | now, current_date, current_time, date_trunc, date_bin, date_part (`EXTRACT`), from_unixtime, to_unixtime, make_date, to_date, to_timestamp, to_timestamp_seconds/_millis/_micros/_nanos |
//! | math | abs, ceil, floor, round, trunc, sqrt, cbrt, exp, ln, log, log2, log10, power, signum, pi, degrees, radians, the trigonometric functions, gcd, lcm, factorial, isnan, iszero, nanvl, random |
//! | conditional | coalesce, nullif, nvl, nvl2, greatest, least (and `CASE`) |
//! | cast | `CAST`, `TRY_CAST`, arrow_cast (scalar types), arrow_typeof |
//! | string | lower, upper, initcap, substr (`SUBSTRING`), left, right, btrim/ltrim/rtrim (`TRIM`), character_length, octet_length, bit_length, ascii, chr, reverse, strpos (`POSITION`), starts_with, ends_with, contains, split_part, substr_index, find_in_set, regexp_like, regexp_match, regexp_count, md5, sha224/256/384/512, to_hex, uuid, and `LIKE`/`ILIKE` |
//! | string, capped | repeat, lpad, rpad, concat, concat_ws, `\|\|` |
//! | table | generate_series, range (lazy; the answer's row cap and the deadline bound them) |

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::error::DataFusionError;
use datafusion::execution::SessionStateDefaults;
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::sql::sqlparser::ast::BinaryOperator;

use crate::QueryError;

/// Most bytes one call of a value-building function may produce (one batch: a value of this
/// size, or 8,192 rows of 2 KiB). Stored text fields are at most 64 KiB a value.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;

/// The value-building functions, which are capped (and `||`, planned as [`CONCAT_OP`]).
pub const GROWING: [&str; 6] = ["repeat", "lpad", "rpad", "concat", "concat_ws", CONCAT_OP];

/// The name `a || b` is planned under.
pub const CONCAT_OP: &str = "trove_string_concat";

const SCALAR: &[&str] = &[
    // date and time
    "now",
    "current_date",
    "current_time",
    "date_trunc",
    "date_bin",
    "date_part",
    "from_unixtime",
    "to_unixtime",
    "make_date",
    "to_date",
    "to_timestamp",
    "to_timestamp_seconds",
    "to_timestamp_millis",
    "to_timestamp_micros",
    "to_timestamp_nanos",
    // math
    "abs",
    "ceil",
    "floor",
    "round",
    "trunc",
    "sqrt",
    "cbrt",
    "exp",
    "ln",
    "log",
    "log2",
    "log10",
    "power",
    "signum",
    "pi",
    "degrees",
    "radians",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "sinh",
    "cosh",
    "tanh",
    "asinh",
    "acosh",
    "atanh",
    "cot",
    "gcd",
    "lcm",
    "factorial",
    "isnan",
    "iszero",
    "nanvl",
    "random",
    // conditional and cast
    "coalesce",
    "nullif",
    "nvl",
    "nvl2",
    "greatest",
    "least",
    "arrow_typeof",
    // string, bounded by their input
    "lower",
    "upper",
    "initcap",
    "substr",
    "left",
    "right",
    "btrim",
    "ltrim",
    "rtrim",
    "character_length",
    "octet_length",
    "bit_length",
    "ascii",
    "chr",
    "reverse",
    "strpos",
    "starts_with",
    "ends_with",
    "contains",
    "split_part",
    "substr_index",
    "find_in_set",
    "regexp_like",
    "regexp_match",
    "regexp_count",
    "md5",
    "sha224",
    "sha256",
    "sha384",
    "sha512",
    "to_hex",
    "uuid",
];

const AGGREGATE: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "stddev",
    "stddev_pop",
    "var",
    "var_pop",
    "median",
    "approx_percentile_cont",
    "approx_percentile_cont_with_weight",
    "approx_distinct",
    "approx_median",
    "percentile_cont",
    "array_agg",
    "string_agg",
    "first_value",
    "last_value",
    "nth_value",
    "any_value",
    "bool_and",
    "bool_or",
    "bit_and",
    "bit_or",
    "bit_xor",
    "corr",
    "covar_samp",
    "covar_pop",
    "regr_slope",
    "regr_intercept",
    "regr_count",
    "regr_r2",
    "regr_avgx",
    "regr_avgy",
    "regr_sxx",
    "regr_syy",
    "regr_sxy",
    "grouping",
];

const TABLE: &[&str] = &["generate_series", "range"];

/// `builder` with only the allowed functions, the growing ones capped, and only the syntax
/// planners whose functions are allowed (no array, map or struct literals, no `OVERLAY`).
pub fn install(builder: SessionStateBuilder) -> SessionStateBuilder {
    let defaults = SessionStateDefaults::default_scalar_functions();
    let mut scalar: Vec<Arc<ScalarUDF>> = defaults.iter().filter(|f| SCALAR.contains(&f.name())).cloned().collect();
    for f in defaults.iter() {
        let guard = match f.name() {
            name if GROWING.contains(&name) => Guard::OutputBytes,
            "arrow_cast" => Guard::ScalarTypes,
            _ => continue,
        };
        scalar.push(Arc::new(ScalarUDF::new_from_impl(Guarded { inner: f.clone(), guard })));
    }
    let concat_op = Arc::new(ScalarUDF::new_from_impl(StringConcat::default()));
    scalar.push(concat_op.clone());
    let aggregate = SessionStateDefaults::default_aggregate_functions()
        .into_iter()
        .filter(|f| AGGREGATE.contains(&f.name()))
        .collect();
    let table = SessionStateDefaults::default_table_functions()
        .into_iter()
        .filter(|f| TABLE.contains(&f.name()))
        .map(|f| (f.name().to_owned(), f))
        .collect();
    let planners: Vec<Arc<dyn ExprPlanner>> = vec![
        Arc::new(ConcatPlanner { concat_op }),
        Arc::new(datafusion::functions::datetime::planner::DatetimeFunctionPlanner),
        Arc::new(datafusion::functions::unicode::planner::UnicodeFunctionPlanner),
        Arc::new(datafusion::functions_aggregate::planner::AggregateFunctionPlanner),
        Arc::new(datafusion::functions_window::planner::WindowFunctionPlanner),
    ];
    builder
        .with_scalar_functions(scalar)
        .with_higher_order_functions(Vec::new())
        .with_aggregate_functions(aggregate)
        .with_window_functions(SessionStateDefaults::default_window_functions())
        .with_table_functions(table)
        .with_expr_planners(planners)
}

/// The refusal of a call over the cap: names the function and the limit, never a value.
fn over_cap(function: &str) -> DataFusionError {
    DataFusionError::External(Box::new(QueryError::Limit(format!(
        "{function}: the result would be larger than {} MiB (the limit of one call)",
        MAX_OUTPUT_BYTES >> 20
    ))))
}

/// Bytes of each row's value of a string argument (0 for null), as many as `rows`.
fn string_lengths(arg: &ColumnarValue, rows: usize) -> DfResult<Vec<u64>> {
    let lengths = |a: &ArrayRef| -> DfResult<Vec<u64>> {
        if !matches!(a.data_type(), DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) {
            // Numbers and the like, printed: short.
            return Ok(vec![32; a.len()]);
        }
        let l = datafusion::arrow::compute::kernels::length::length(a.as_ref())?;
        let l = datafusion::arrow::compute::cast(&l, &DataType::Int64)?;
        Ok(l.as_primitive::<Int64Type>().iter().map(|v| v.unwrap_or(0).max(0) as u64).collect())
    };
    match arg {
        ColumnarValue::Array(a) => lengths(a),
        ColumnarValue::Scalar(s) => Ok(vec![lengths(&s.to_array_of_size(1)?)?[0]; rows]),
    }
}

/// Each row's value of an integer argument (0 for null or negative), as many as `rows`.
fn counts(arg: &ColumnarValue, rows: usize) -> DfResult<Vec<u64>> {
    let array = arg.to_array(rows)?;
    let array = datafusion::arrow::compute::cast(&array, &DataType::Int64)?;
    Ok(array.as_primitive::<Int64Type>().iter().map(|v| v.unwrap_or(0).max(0) as u64).collect())
}

/// The most bytes `function` can return for `args`, from the arguments alone.
fn output_bound(function: &str, args: &[ColumnarValue], rows: usize) -> DfResult<u128> {
    let total = |v: Vec<u64>| v.into_iter().map(u128::from).sum::<u128>();
    Ok(match (function, args) {
        ("repeat", [text, n]) => string_lengths(text, rows)?
            .into_iter()
            .zip(counts(n, rows)?)
            .map(|(l, n)| u128::from(l) * u128::from(n))
            .sum(),
        // `n` characters (the text cut, or padded with the fill, at most 4 bytes a character).
        ("lpad" | "rpad", [text, n, rest @ ..]) => {
            let fill_char = match rest.first() {
                None => 1,
                Some(ColumnarValue::Scalar(
                    ScalarValue::Utf8(Some(f)) | ScalarValue::LargeUtf8(Some(f)) | ScalarValue::Utf8View(Some(f)),
                )) => f.chars().map(char::len_utf8).max().unwrap_or(1) as u128,
                Some(_) => 4,
            };
            string_lengths(text, rows)?
                .into_iter()
                .zip(counts(n, rows)?)
                .map(|(l, n)| u128::from(l) + u128::from(n) * fill_char)
                .sum()
        }
        ("concat" | CONCAT_OP, _) => args.iter().map(|a| string_lengths(a, rows).map(total)).sum::<DfResult<u128>>()?,
        ("concat_ws", [separator, rest @ ..]) => {
            let separators = total(string_lengths(separator, rows)?) * rest.len().saturating_sub(1) as u128;
            separators + rest.iter().map(|a| string_lengths(a, rows).map(total)).sum::<DfResult<u128>>()?
        }
        // A shape the function itself refuses.
        _ => 0,
    })
}

/// What a [`Guarded`] function checks.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Guard {
    /// A growing function: at most [`MAX_OUTPUT_BYTES`] a call, from its arguments.
    OutputBytes,
    /// `arrow_cast`: scalar target types only (see the module docs).
    ScalarTypes,
}

/// One of DataFusion's functions with a check before it runs. It keeps DataFusion's own
/// implementation but not a growing function's `simplify`, which could rebuild the call
/// without the check.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Guarded {
    inner: Arc<ScalarUDF>,
    guard: Guard,
}

/// Whether a cast to `t` allocates no more than its values need.
fn scalar_type(t: &DataType) -> bool {
    !(t.is_nested()
        || matches!(t, DataType::FixedSizeBinary(_) | DataType::Dictionary(..) | DataType::RunEndEncoded(..)))
}

impl ScalarUDFImpl for Guarded {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(
        &self,
        args: datafusion::logical_expr::ReturnFieldArgs,
    ) -> DfResult<datafusion::arrow::datatypes::FieldRef> {
        let field = self.inner.return_field_from_args(args)?;
        if self.guard == Guard::ScalarTypes && !scalar_type(field.data_type()) {
            return Err(DataFusionError::External(Box::new(QueryError::Limit(
                "arrow_cast: only to scalar types (no fixed-size, nested or dictionary types)".into(),
            ))));
        }
        Ok(field)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if self.guard == Guard::OutputBytes
            && output_bound(self.name(), &args.args, args.number_rows)? > MAX_OUTPUT_BYTES as u128
        {
            return Err(over_cap(self.name()));
        }
        self.inner.invoke_with_args(args)
    }

    fn simplify(
        &self,
        args: Vec<Expr>,
        info: &datafusion::logical_expr::simplify::SimplifyContext,
    ) -> DfResult<datafusion::logical_expr::simplify::ExprSimplifyResult> {
        match self.guard {
            // A cast to the type asked for: checked already by the return type.
            Guard::ScalarTypes => self.inner.simplify(args, info),
            Guard::OutputBytes => Ok(datafusion::logical_expr::simplify::ExprSimplifyResult::Original(args)),
        }
    }
}

/// `a || b` on text: null if either is null (unlike `concat`), under the cap.
#[derive(Debug, PartialEq, Eq, Hash)]
struct StringConcat {
    signature: Signature,
}

impl Default for StringConcat {
    fn default() -> Self {
        StringConcat { signature: Signature::new(TypeSignature::UserDefined, Volatility::Immutable) }
    }
}

impl ScalarUDFImpl for StringConcat {
    fn name(&self) -> &str {
        CONCAT_OP
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        if arg_types.len() != 2 || arg_types.iter().any(DataType::is_nested) {
            return Err(DataFusionError::Plan("|| joins two values of text".into()));
        }
        let large = arg_types.contains(&DataType::LargeUtf8);
        Ok(vec![if large { DataType::LargeUtf8 } else { DataType::Utf8 }; 2])
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Utf8))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if output_bound(CONCAT_OP, &args.args, args.number_rows)? > MAX_OUTPUT_BYTES as u128 {
            return Err(over_cap("||"));
        }
        let scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if scalar { 1 } else { args.number_rows };
        let [left, right] = [&args.args[0], &args.args[1]].map(|a| a.to_array(rows));
        let joined = datafusion::arrow::compute::kernels::concat_elements::concat_elements_dyn(&left?, &right?)?;
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&joined, 0)?)
        } else {
            ColumnarValue::Array(joined)
        })
    }
}

/// Plans `a || b` as [`StringConcat`], so that it passes the cap like `concat` does.
#[derive(Debug)]
struct ConcatPlanner {
    concat_op: Arc<ScalarUDF>,
}

impl ExprPlanner for ConcatPlanner {
    fn plan_binary_op(&self, expr: RawBinaryExpr, _schema: &DFSchema) -> DfResult<PlannerResult<RawBinaryExpr>> {
        if expr.op != BinaryOperator::StringConcat {
            return Ok(PlannerResult::Original(expr));
        }
        let call = ScalarFunction::new_udf(self.concat_op.clone(), vec![expr.left, expr.right]);
        Ok(PlannerResult::Planned(Expr::ScalarFunction(call)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every allowed name is one of DataFusion's (a typo would silently drop a function), and
    /// the session offers exactly the allowed ones.
    #[test]
    fn the_allow_list_names_real_functions_and_only_those_are_registered() {
        let scalar = SessionStateDefaults::default_scalar_functions();
        for name in SCALAR.iter().chain(&GROWING[..5]).chain(&["arrow_cast"]) {
            assert!(scalar.iter().any(|f| f.name() == *name), "{name} is not a DataFusion function");
        }
        let aggregate = SessionStateDefaults::default_aggregate_functions();
        for name in AGGREGATE {
            assert!(aggregate.iter().any(|f| f.name() == *name), "{name} is not a DataFusion aggregate");
        }
        let state = install(SessionStateBuilder::new()).build();
        let mut offered: Vec<&str> = state.scalar_functions().values().map(|f| f.name()).collect();
        offered.sort_unstable();
        offered.dedup();
        let mut allowed: Vec<&str> = SCALAR.iter().chain(&GROWING).chain(&["arrow_cast"]).copied().collect();
        allowed.sort_unstable();
        assert_eq!(offered, allowed);
        for refused in [
            "replace",
            "regexp_replace",
            "translate",
            "overlay",
            "encode",
            "to_char",
            "array_repeat",
            "make_array",
            "range",
            "levenshtein",
            "version",
        ] {
            assert!(!state.scalar_functions().contains_key(refused), "{refused} is offered");
        }
        assert!(state.table_functions().contains_key("generate_series"));
    }

    #[test]
    fn bounds_come_from_the_arguments() {
        let text = |s: &str| ColumnarValue::Scalar(ScalarValue::Utf8(Some(s.into())));
        let int = |n: i64| ColumnarValue::Scalar(ScalarValue::Int64(Some(n)));
        assert_eq!(output_bound("repeat", &[text("ab"), int(1_000_000_000_000)], 1).unwrap(), 2_000_000_000_000);
        assert_eq!(output_bound("repeat", &[text("ab"), int(-5)], 3).unwrap(), 0);
        assert_eq!(output_bound("lpad", &[text("ab"), int(10)], 2).unwrap(), 24);
        assert_eq!(output_bound("rpad", &[text("ab"), int(10), text("é")], 1).unwrap(), 22);
        assert_eq!(output_bound("concat_ws", &[text(","), text("ab"), text("cde")], 4).unwrap(), 4 * (1 + 5));
        let column = ColumnarValue::Array(Arc::new(datafusion::arrow::array::StringArray::from(vec![
            Some("a"),
            None,
            Some("abc"),
        ])));
        assert_eq!(output_bound(CONCAT_OP, &[column.clone(), column], 3).unwrap(), 8);
    }
}
