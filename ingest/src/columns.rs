//! A column of a dataset being built, in the Arrow type its schema gives: what decoding
//! fills value by value and the buffer fills by copying rows of stored batches.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanBuilder, Decimal128Builder, Float64Builder, Int64Builder,
    PrimitiveArray, PrimitiveBuilder, StringBuilder,
};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float64Type, Int64Type};

use crate::schema::{DECIMAL_PRECISION, DECIMAL_SCALE};

/// A column being filled.
#[derive(Debug)]
pub(crate) enum ColumnBuilder {
    Int(Int64Builder),
    Float(Float64Builder),
    Decimal(Decimal128Builder),
    Text(StringBuilder),
    Bool(BooleanBuilder),
}

impl ColumnBuilder {
    /// A builder for a column of type `t` (one of the types [`crate::schema`] maps to).
    pub(crate) fn new(t: &DataType) -> ColumnBuilder {
        match t {
            DataType::Int64 => ColumnBuilder::Int(Int64Builder::new()),
            DataType::Float64 => ColumnBuilder::Float(Float64Builder::new()),
            DataType::Decimal128(..) => ColumnBuilder::Decimal(Decimal128Builder::new()),
            DataType::Boolean => ColumnBuilder::Bool(BooleanBuilder::new()),
            _ => ColumnBuilder::Text(StringBuilder::new()),
        }
    }

    pub(crate) fn append_null(&mut self) {
        match self {
            ColumnBuilder::Int(b) => b.append_null(),
            ColumnBuilder::Float(b) => b.append_null(),
            ColumnBuilder::Decimal(b) => b.append_null(),
            ColumnBuilder::Text(b) => b.append_null(),
            ColumnBuilder::Bool(b) => b.append_null(),
        }
    }

    /// Copies rows `start..start + len` of `a`, a column of the same type.
    pub(crate) fn extend(&mut self, a: &ArrayRef, start: usize, len: usize) {
        let range = start..start + len;
        let nulls = a.null_count() > 0;
        match self {
            ColumnBuilder::Int(b) => extend_primitive(b, a.as_primitive::<Int64Type>(), range, nulls),
            ColumnBuilder::Float(b) => extend_primitive(b, a.as_primitive::<Float64Type>(), range, nulls),
            ColumnBuilder::Decimal(b) => extend_primitive(b, a.as_primitive::<Decimal128Type>(), range, nulls),
            ColumnBuilder::Text(b) => {
                let a = a.as_string::<i32>();
                for i in range {
                    b.append_option(a.is_valid(i).then(|| a.value(i)));
                }
            }
            ColumnBuilder::Bool(b) => {
                let a = a.as_boolean();
                for i in range {
                    b.append_option(a.is_valid(i).then(|| a.value(i)));
                }
            }
        }
    }

    /// A copy of the column built so far; the builder keeps it.
    pub(crate) fn finish_cloned(&self) -> ArrayRef {
        match self {
            ColumnBuilder::Int(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Float(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Decimal(b) => Arc::new(
                b.finish_cloned()
                    .with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE)
                    .expect("valid decimal type"),
            ),
            ColumnBuilder::Text(b) => Arc::new(b.finish_cloned()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish_cloned()),
        }
    }

    /// The column built so far; the builder starts empty again.
    pub(crate) fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Int(b) => Arc::new(b.finish()),
            ColumnBuilder::Float(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(b) => Arc::new(
                b.finish().with_precision_and_scale(DECIMAL_PRECISION, DECIMAL_SCALE).expect("valid decimal type"),
            ),
            ColumnBuilder::Text(b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => Arc::new(b.finish()),
        }
    }
}

fn extend_primitive<T: ArrowPrimitiveType>(
    b: &mut PrimitiveBuilder<T>,
    a: &PrimitiveArray<T>,
    range: std::ops::Range<usize>,
    nulls: bool,
) {
    if nulls {
        for i in range {
            b.append_option(a.is_valid(i).then(|| a.value(i)));
        }
    } else {
        b.append_slice(&a.values()[range]);
    }
}
