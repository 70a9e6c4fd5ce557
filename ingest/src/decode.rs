//! Request bodies to validated Arrow, in one pass: NDJSON, a JSON array and CSV are read row
//! by row straight into typed column builders (no intermediate JSON values; JSON by a reader
//! of its own, `decode/json.rs`); an Arrow IPC stream is checked column by column. Values
//! may be JSON numbers or strings holding them, as Mydex clients send. Every refusal names
//! the row (1-based) and field, never the value.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use catalog::{FieldType, RESERVED_FIELDS};
use datafusion::arrow::array::{Array, ArrayRef, Int64Array, RecordBatch};

use crate::columns::ColumnBuilder;
use crate::schema::{DatasetSchema, INSTANCE, MEMBER_UID};

/// Most row problems reported in one answer.
pub const MAX_ROW_ERRORS: usize = 100;

/// One refused row: which (1-based), which field, why. Never the value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RowError {
    pub row: usize,
    pub field: Option<String>,
    pub reason: String,
}

/// Body formats of `POST /v1/ingest/{dataset}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ndjson,
    JsonArray,
    Csv,
    ArrowIpc,
}

impl Format {
    /// From a `Content-Type` (parameters ignored).
    pub fn from_content_type(ct: &str) -> Option<Format> {
        match ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase().as_str() {
            "application/x-ndjson" | "application/jsonl" | "application/ndjson" => Some(Format::Ndjson),
            "application/json" => Some(Format::JsonArray),
            "text/csv" => Some(Format::Csv),
            "application/vnd.apache.arrow.stream" => Some(Format::ArrowIpc),
            _ => None,
        }
    }
}

/// Why a body was refused as a whole.
#[derive(Debug)]
pub enum DecodeError {
    /// The body is not the format it claims (e.g. broken JSON); 400.
    Malformed(String),
    /// Rows that do not fit the schema; 422.
    Rows(Vec<RowError>),
    /// More rows than one body may hold (the limit); 413.
    TooManyRows(usize),
    /// The decoded columns need more memory than the budget grants now; 429.
    OverBudget,
}

/// What decoding one body may take. Columns decoded from a body can be far larger than
/// it (a row of `1\n` into a dataset of 28 columns is 8 bytes a column), so the decoder asks
/// for memory as they grow.
pub struct Budget<'a> {
    /// Most rows in one body.
    pub max_rows: usize,
    /// Asked, every few thousand rows and before large allocations, whether the decoded
    /// columns may hold this many bytes in all; `false` refuses the body.
    pub memory: &'a mut dyn FnMut(usize) -> bool,
}

impl std::fmt::Debug for Budget<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget").field("max_rows", &self.max_rows).finish_non_exhaustive()
    }
}

/// How often (in rows) decoding asks its budget for memory.
const BUDGET_EVERY_ROWS: usize = 1024;

/// Decodes `body` into one batch of `schema.input`, without a limit on rows or memory (for
/// bodies already bounded, tests and benches).
pub fn decode(schema: &DatasetSchema, format: Format, body: &[u8]) -> Result<RecordBatch, DecodeError> {
    decode_within(schema, format, body, &mut Budget { max_rows: usize::MAX, memory: &mut |_| true })
}

/// Decodes `body` into one batch of `schema.input` within `budget`.
pub fn decode_within(
    schema: &DatasetSchema,
    format: Format,
    body: &[u8],
    budget: &mut Budget<'_>,
) -> Result<RecordBatch, DecodeError> {
    match format {
        Format::Ndjson => {
            let mut rows = RowsBuilder::new(schema, budget);
            json::ndjson(&mut rows, utf8(body)?)?;
            rows.finish()
        }
        Format::JsonArray => {
            let mut rows = RowsBuilder::new(schema, budget);
            json::array(&mut rows, utf8(body)?)?;
            rows.finish()
        }
        Format::Csv => decode_csv(schema, body, budget),
        Format::ArrowIpc => ipc::decode_ipc(schema, body, budget),
    }
}

/// A JSON body as text, checked once, so strings are borrowed from it without checking
/// each again.
fn utf8(body: &[u8]) -> Result<&str, DecodeError> {
    std::str::from_utf8(body).map_err(|e| {
        let line = body[..e.valid_up_to()].iter().filter(|b| **b == b'\n').count() + 1;
        DecodeError::Malformed(format!("line {line}: not UTF-8"))
    })
}

/// Column builders for one batch, plus the problems found so far.
struct RowsBuilder<'a, 'b> {
    schema: &'a DatasetSchema,
    columns: Vec<Column>,
    names: Vec<&'a str>,
    index: HashMap<&'a str, usize>,
    /// The column of each key of the row before, in its order: rows name their fields in
    /// the same order, and comparing a name is cheaper than hashing it.
    order: Vec<usize>,
    /// Keys of the current row so far.
    keys: usize,
    /// Which columns the current row has set.
    set: Vec<bool>,
    errors: Vec<RowError>,
    rows: usize,
    max_rows: usize,
    /// See [`Budget::memory`].
    memory: &'b mut dyn FnMut(usize) -> bool,
    /// Bytes a row takes in the builders besides its text.
    row_bytes: usize,
    text_bytes: usize,
    /// Why decoding stops early (a limit), once known.
    stop: Option<DecodeError>,
}

/// A column being decoded.
struct Column {
    b: ColumnBuilder,
    /// Text only: the longest value (bytes), and whether it must hold a JSON object or array.
    max: usize,
    json: bool,
}

impl Column {
    fn append_null(&mut self) {
        self.b.append_null();
    }

    fn finish(&mut self) -> ArrayRef {
        self.b.finish()
    }

    /// Bytes one value takes in this column's builder, text aside (its offset, or its
    /// value), plus a byte of validity (generous: a bit is needed).
    fn row_bytes(&self) -> usize {
        1 + match self.b {
            ColumnBuilder::Int(_) | ColumnBuilder::Float(_) => 8,
            ColumnBuilder::Decimal(_) => 16,
            ColumnBuilder::Text(_) => 4,
            ColumnBuilder::Bool(_) => 1,
        }
    }

    /// Appends one cell, converting as docs/api.md ("Rows and values") says: the text bytes it added, or the
    /// reason it was refused.
    #[inline]
    fn append(&mut self, cell: Cell<'_>) -> Result<usize, &'static str> {
        let (max, json) = (self.max, self.json);
        match (&mut self.b, cell) {
            (c, Cell::Null) => {
                c.append_null();
                Ok(0)
            }
            (ColumnBuilder::Int(b), cell) => {
                let v = match cell {
                    Cell::I(i) => Some(i),
                    Cell::U(u) => i64::try_from(u).ok(),
                    Cell::S(s) => s.trim().parse::<i64>().ok(),
                    _ => None,
                };
                b.append_value(v.ok_or("expected a 64-bit integer")?);
                Ok(0)
            }
            (ColumnBuilder::Float(b), cell) => {
                let v = match cell {
                    Cell::I(i) => Some(i as f64),
                    Cell::U(u) => Some(u as f64),
                    Cell::F(f) => Some(f),
                    Cell::S(s) => s.trim().parse::<f64>().ok(),
                    _ => None,
                };
                b.append_value(v.filter(|f| f.is_finite()).ok_or("expected a number")?);
                Ok(0)
            }
            (ColumnBuilder::Decimal(b), cell) => {
                let text: Cow<'_, str> = match cell {
                    Cell::I(i) => i.to_string().into(),
                    Cell::U(u) => u.to_string().into(),
                    Cell::F(f) => format!("{f}").into(),
                    Cell::S(s) => s,
                    _ => return Err("expected a decimal with at most 2 places"),
                };
                b.append_value(parse_cents(text.trim()).ok_or("expected a decimal with at most 2 places")? as i128);
                Ok(0)
            }
            (ColumnBuilder::Bool(b), cell) => {
                let v = match cell {
                    Cell::B(v) => Some(v),
                    Cell::I(0) | Cell::U(0) => Some(false),
                    Cell::I(1) | Cell::U(1) => Some(true),
                    Cell::S(s) => match s.trim() {
                        "true" | "1" => Some(true),
                        "false" | "0" => Some(false),
                        _ => None,
                    },
                    _ => None,
                };
                b.append_value(v.ok_or("expected a boolean")?);
                Ok(0)
            }
            (ColumnBuilder::Text(b), cell) => {
                let text: Cow<'_, str> = match (cell, json) {
                    (Cell::Nested(v), true) => v.to_string().into(),
                    (Cell::S(s), true) => match serde_json::from_str::<serde_json::Value>(&s) {
                        Ok(v @ (serde_json::Value::Object(_) | serde_json::Value::Array(_))) => v.to_string().into(),
                        _ => return Err("expected a JSON object or array"),
                    },
                    (_, true) => return Err("expected a JSON object or array"),
                    (Cell::S(s), false) => s,
                    (Cell::I(i), false) => i.to_string().into(),
                    (Cell::U(u), false) => u.to_string().into(),
                    (Cell::F(f), false) => f.to_string().into(),
                    (Cell::B(v), false) => v.to_string().into(),
                    (_, false) => return Err("expected text"),
                };
                if text.len() > max {
                    return Err("value too long");
                }
                let added = text.len();
                b.append_value(text);
                Ok(added)
            }
        }
    }
}

/// `-12.3` → -1230 cents; at most 2 places and 16 integer digits (Decimal(18, 2)).
pub(crate) fn parse_cents(s: &str) -> Option<i64> {
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

impl<'a, 'b> RowsBuilder<'a, 'b> {
    fn new(schema: &'a DatasetSchema, budget: &'b mut Budget<'_>) -> Self {
        let columns = schema
            .input
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let field = schema.field(i);
                let max = field.map_or(usize::MAX, |f| f.max_bytes as usize);
                let json = field.is_some_and(|f| f.data_type == FieldType::Json);
                Column { b: ColumnBuilder::new(f.data_type()), max, json }
            })
            .collect::<Vec<_>>();
        let names: Vec<&str> = schema.input.fields().iter().map(|f| f.name().as_str()).collect();
        let index = names.iter().enumerate().map(|(i, name)| (*name, i)).collect();
        let set = vec![false; columns.len()];
        let row_bytes = columns.iter().map(Column::row_bytes).sum();
        let (max_rows, memory) = (budget.max_rows, &mut *budget.memory);
        RowsBuilder {
            schema,
            columns,
            names,
            index,
            order: Vec::new(),
            keys: 0,
            set,
            errors: Vec::new(),
            rows: 0,
            max_rows,
            memory,
            row_bytes,
            text_bytes: 0,
            stop: None,
        }
    }

    fn error(&mut self, row: usize, field: Option<&str>, reason: &str) {
        if self.errors.len() < MAX_ROW_ERRORS {
            self.errors.push(RowError { row, field: field.map(str::to_owned), reason: reason.to_owned() });
        }
    }

    fn cell(&mut self, row: usize, key: &str, cell: Cell<'_>) {
        if let Some(i) = self.column_of(row, key) {
            self.put(row, i, cell);
        }
    }

    /// The column a key of the current row names, or `None` (with the row's problem
    /// noted) for an unknown, reserved or repeated name.
    fn column_of(&mut self, row: usize, key: &str) -> Option<usize> {
        let k = self.keys;
        self.keys += 1;
        let i = match self.order.get(k) {
            Some(&i) if self.names[i] == key => Some(i),
            _ => self.index.get(key).copied().inspect(|&i| {
                if k < self.order.len() {
                    self.order[k] = i;
                } else if k == self.order.len() && k < self.names.len() {
                    self.order.push(i);
                }
            }),
        };
        let Some(i) = i else {
            let reason = if RESERVED_FIELDS.contains(&key) {
                "reserved: assigned by the server"
            } else {
                "not a field of this dataset"
            };
            self.error(row, Some(key), reason);
            return None;
        };
        self.claim(row, i)
    }

    /// The name the current row's next key is expected to be (the row before's).
    fn predicted(&self) -> Option<&'a str> {
        self.order.get(self.keys).map(|&i| self.names[i])
    }

    /// [`Self::column_of`] for a key that matched [`Self::predicted`].
    fn column_of_predicted(&mut self, row: usize) -> Option<usize> {
        let i = self.order[self.keys];
        self.keys += 1;
        self.claim(row, i)
    }

    /// Column `i` for the current row, unless the row has set it already (noted).
    fn claim(&mut self, row: usize, i: usize) -> Option<usize> {
        if std::mem::replace(&mut self.set[i], true) {
            let name = self.names[i];
            self.error(row, Some(name), "given twice");
            return None;
        }
        Some(i)
    }

    /// Appends the current row's value of column `i`.
    #[inline]
    fn put(&mut self, row: usize, i: usize, cell: Cell<'_>) {
        match self.columns[i].append(cell) {
            Ok(added) => self.text_bytes += added,
            Err(reason) => {
                self.columns[i].append_null();
                let name = self.names[i];
                self.error(row, Some(name), reason);
            }
        }
    }

    /// Ends a row: unset columns become null, so every builder has one value per row.
    fn end_row(&mut self) {
        self.keys = 0;
        for (i, set) in self.set.iter_mut().enumerate() {
            if !std::mem::replace(set, false) {
                self.columns[i].append_null();
            }
        }
        self.rows += 1;
        if self.rows > self.max_rows {
            self.stop.get_or_insert(DecodeError::TooManyRows(self.max_rows));
        } else if self.rows.is_multiple_of(BUDGET_EVERY_ROWS)
            && !(self.memory)(self.rows * self.row_bytes + self.text_bytes)
        {
            self.stop.get_or_insert(DecodeError::OverBudget);
        }
    }

    fn finish(mut self) -> Result<RecordBatch, DecodeError> {
        if let Some(e) = self.stop.take() {
            return Err(e);
        }
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        finish_batch(self.schema, arrays, self.errors)
    }
}

/// Checks the reserved columns and builds the batch: `member_uid` is required, `instance`
/// defaults to 0.
fn finish_batch(
    schema: &DatasetSchema,
    mut arrays: Vec<ArrayRef>,
    mut errors: Vec<RowError>,
) -> Result<RecordBatch, DecodeError> {
    let members = arrays[0].as_any().downcast_ref::<Int64Array>().expect("member_uid is Int64");
    for (i, m) in members.iter().enumerate() {
        if errors.len() >= MAX_ROW_ERRORS {
            break;
        }
        match m {
            Some(m) if m > 0 => {}
            _ => errors.push(RowError {
                row: i + 1,
                field: Some(MEMBER_UID.into()),
                reason: "a positive member uid is required".into(),
            }),
        }
    }
    let instances = arrays[1].as_any().downcast_ref::<Int64Array>().expect("instance is Int64");
    if let Some(i) = instances.iter().position(|v| v.is_some_and(|v| v < 0)) {
        errors.push(RowError { row: i + 1, field: Some(INSTANCE.into()), reason: "instance must be 0 or more".into() });
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.row);
        errors.truncate(MAX_ROW_ERRORS);
        return Err(DecodeError::Rows(errors));
    }
    if instances.null_count() > 0 {
        arrays[1] = Arc::new(Int64Array::from_iter_values(instances.iter().map(|v| v.unwrap_or(0))));
    }
    RecordBatch::try_new(schema.input.clone(), arrays).map_err(|e| DecodeError::Malformed(e.to_string()))
}

/// One JSON value, borrowed where the input allows.
enum Cell<'de> {
    Null,
    I(i64),
    U(u64),
    F(f64),
    B(bool),
    S(Cow<'de, str>),
    /// Boxed: a value is large, and every cell is moved on the hot path.
    Nested(Box<serde_json::Value>),
}

/// Rows given as JSON objects (the Mydex transaction API): the same checks as a body.
pub fn decode_objects(
    schema: &DatasetSchema,
    rows: &[serde_json::Map<String, serde_json::Value>],
    budget: &mut Budget<'_>,
) -> Result<RecordBatch, DecodeError> {
    let mut builder = RowsBuilder::new(schema, budget);
    for (i, row) in rows.iter().enumerate() {
        for (key, value) in row {
            let cell = match value {
                serde_json::Value::Null => Cell::Null,
                serde_json::Value::Bool(b) => Cell::B(*b),
                serde_json::Value::Number(n) => n
                    .as_i64()
                    .map(Cell::I)
                    .or(n.as_u64().map(Cell::U))
                    .unwrap_or(Cell::F(n.as_f64().unwrap_or(f64::NAN))),
                serde_json::Value::String(s) => Cell::S(Cow::Borrowed(s)),
                other => Cell::Nested(Box::new(other.clone())),
            };
            builder.cell(i + 1, key, cell);
        }
        builder.end_row();
        if builder.stop.is_some() {
            break;
        }
    }
    builder.finish()
}

/// CSV with a header row of field names; an empty cell is null (RFC 4180 quoting).
fn decode_csv(schema: &DatasetSchema, body: &[u8], budget: &mut Budget<'_>) -> Result<RecordBatch, DecodeError> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).from_reader(body);
    let headers = reader.headers().map_err(|_| DecodeError::Malformed("CSV without a header row".into()))?.clone();
    let mut rows = RowsBuilder::new(schema, budget);
    let mut record = csv::StringRecord::new();
    let mut row = 0;
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => return Err(DecodeError::Malformed(format!("CSV row {}: {}", row + 1, csv_reason(&e)))),
        }
        row += 1;
        for (key, value) in headers.iter().zip(record.iter()) {
            let cell = if value.is_empty() { Cell::Null } else { Cell::S(Cow::Borrowed(value)) };
            rows.cell(row, key, cell);
        }
        rows.end_row();
        if let Some(e) = rows.stop.take() {
            return Err(e);
        }
    }
    rows.finish()
}

fn csv_reason(e: &csv::Error) -> &'static str {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { .. } => "wrong number of fields",
        csv::ErrorKind::Utf8 { .. } => "not UTF-8",
        _ => "malformed CSV",
    }
}

mod ipc;
mod json;
#[cfg(test)]
mod tests;

pub(crate) use ipc::read_ipc;
