//! Arrow IPC bodies: the stream is checked before arrow-ipc reads it (lengths within the
//! body, no compression, no dictionaries), then its columns are matched to the dataset's by
//! name and type and given the same value checks as the other formats.

use catalog::FieldType;
use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Float64Type, SchemaRef};

use super::{Budget, DecodeError, MAX_ROW_ERRORS, RowError, finish_batch};
use crate::schema::{DECIMAL_PRECISION, DatasetSchema};

/// An Arrow IPC stream whose schema uses the dataset's names and types; columns it leaves
/// out are null, extra or mistyped ones are refused.
pub(super) fn decode_ipc(
    schema: &DatasetSchema,
    body: &[u8],
    budget: &mut Budget<'_>,
) -> Result<RecordBatch, DecodeError> {
    let (given, batches) = read_ipc(body).map_err(|reason| DecodeError::Malformed(reason.into()))?;
    let mut errors = Vec::new();
    let mut mapping = Vec::with_capacity(given.fields().len());
    for f in given.fields() {
        match schema.input.index_of(f.name()) {
            Ok(i) if schema.input.field(i).data_type() == f.data_type() => mapping.push(i),
            Ok(i) => errors.push(RowError {
                row: 0,
                field: Some(f.name().clone()),
                reason: format!("expected {}", schema.input.field(i).data_type()),
            }),
            Err(_) => errors.push(RowError {
                row: 0,
                field: Some(f.name().clone()),
                reason: "not a field of this dataset".into(),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(DecodeError::Rows(errors));
    }
    // Arrow takes a batch's row count as its message claims (a batch without columns could
    // claim any), and null columns are allocated for it: a row's member uid alone takes 8
    // bytes of the body, as buffers are not compressed.
    let most = body.len() / 8;
    let Some(rows) = batches.iter().try_fold(0usize, |n, b| n.checked_add(b.num_rows()).filter(|n| *n <= most)) else {
        return Err(DecodeError::Malformed("more rows than the body holds".into()));
    };
    if rows > budget.max_rows {
        return Err(DecodeError::TooManyRows(budget.max_rows));
    }
    // What the read batches hold, their concatenation, and the null columns the stream
    // leaves out: asked for before it is allocated.
    let read: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
    let row_bytes: usize = schema.input.fields().iter().map(|f| 1 + f.data_type().primitive_width().unwrap_or(4)).sum();
    if !(budget.memory)(2 * read + rows * row_bytes) {
        return Err(DecodeError::OverBudget);
    }
    let batch = datafusion::arrow::compute::concat_batches(&given, &batches)
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    let rows = batch.num_rows();
    let mut arrays: Vec<ArrayRef> =
        schema.input.fields().iter().map(|f| datafusion::arrow::array::new_null_array(f.data_type(), rows)).collect();
    for (col, &i) in batch.columns().iter().zip(&mapping) {
        arrays[i] = col.clone();
    }
    // The checks of the other formats hold for IPC too: text caps, JSON validity, finite
    // floats, and decimals within their precision (Parquet keeps Decimal(18, 2) in 64 bits:
    // a wider value would be stored cut).
    let decimal_limit = 10u128.pow(DECIMAL_PRECISION as u32);
    for (i, array) in arrays.iter().enumerate() {
        let Some(field) = schema.field(i) else { continue };
        let bad: Vec<(usize, &str)> = match array.data_type() {
            DataType::Utf8 => array
                .as_string::<i32>()
                .iter()
                .enumerate()
                .filter_map(|(r, v)| {
                    let v = v?;
                    if v.len() > field.max_bytes as usize {
                        Some((r, "value too long"))
                    } else if field.data_type == FieldType::Json
                        && !matches!(
                            serde_json::from_str::<serde_json::Value>(v),
                            Ok(serde_json::Value::Object(_) | serde_json::Value::Array(_))
                        )
                    {
                        Some((r, "expected a JSON object or array"))
                    } else {
                        None
                    }
                })
                .collect(),
            DataType::Float64 => array
                .as_primitive::<Float64Type>()
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_some_and(|v| !v.is_finite()))
                .map(|(r, _)| (r, "expected a number"))
                .collect(),
            DataType::Decimal128(..) => array
                .as_primitive::<Decimal128Type>()
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_some_and(|v| v.unsigned_abs() >= decimal_limit))
                .map(|(r, _)| (r, "expected a decimal with at most 2 places"))
                .collect(),
            _ => Vec::new(),
        };
        for (r, reason) in bad.into_iter().take(MAX_ROW_ERRORS.saturating_sub(errors.len())) {
            errors.push(RowError { row: r + 1, field: Some(field.name.to_string()), reason: reason.into() });
        }
    }
    finish_batch(schema, arrays, errors)
}

/// A whole Arrow IPC stream held in memory: its schema and batches, or why it is refused.
/// Where arrow-ipc would allocate what a stream's lengths claim, or panic on a malformed
/// stream (a field of type NONE, a buffer outside its message) instead of returning an
/// error, the stream is refused here first or the panic caught: bad bytes are an error.
pub(crate) fn read_ipc(body: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), &'static str> {
    use datafusion::arrow::ipc::reader::StreamReader;
    check_ipc_lengths(body)?;
    // Unwind safe: a panic leaves nothing behind but the reader's own state.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let reader = StreamReader::try_new(body, None).map_err(|_| "not an Arrow IPC stream")?;
        let schema = reader.schema();
        let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|_| "truncated Arrow IPC stream")?;
        Ok((schema, batches))
    }))
    .unwrap_or(Err("not an Arrow IPC stream"))
}

/// arrow-ipc allocates what a stream's length fields and compressed buffers claim before it
/// reads the bytes, so a body of a few bytes could make it allocate gigabytes or abort the
/// process. Here every message and its body must lie within `body`, and buffers must not be
/// compressed (only then does the body limit bound the memory a request takes). The framing
/// is `MessageReader`'s: an optional continuation marker, a length, the message, its body;
/// a zero length or the end of the bytes ends the stream.
fn check_ipc_lengths(body: &[u8]) -> Result<(), &'static str> {
    use datafusion::arrow::ipc::{MessageHeader, root_as_message};
    const MALFORMED: &str = "not an Arrow IPC stream";
    let word = |at: usize| body.get(at..at + 4).map(|w| i32::from_le_bytes(w.try_into().expect("4 bytes")));
    let mut at = 0;
    loop {
        let Some(mut len) = word(at) else { return Ok(()) };
        at += 4;
        if len == -1 {
            len = word(at).ok_or(MALFORMED)?;
            at += 4;
        }
        if len == 0 {
            return Ok(());
        }
        let len = usize::try_from(len).map_err(|_| MALFORMED)?;
        let message = body.get(at..at + len).and_then(|m| root_as_message(m).ok()).ok_or(MALFORMED)?;
        at += len;
        // No field of a dataset is dictionary-encoded, and arrow-ipc concatenates every
        // delta dictionary onto the last (quadratic in the stream): refused before reading.
        if message.header_type() == MessageHeader::DictionaryBatch {
            return Err("dictionary-encoded Arrow IPC columns are not accepted; send plain columns");
        }
        let batch = match message.header_type() {
            MessageHeader::RecordBatch => message.header_as_record_batch(),
            _ => None,
        };
        if batch.is_some_and(|b| b.compression().is_some()) {
            return Err("compressed Arrow IPC buffers are not accepted");
        }
        at += usize::try_from(message.bodyLength()).ok().filter(|n| *n <= body.len() - at).ok_or(MALFORMED)?;
    }
}
