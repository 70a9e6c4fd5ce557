use datafusion::arrow::array::{AsArray, Decimal128Array};
use datafusion::arrow::datatypes::{Float64Type, Int64Type};

use super::*;

fn schema(name: &str) -> DatasetSchema {
    let d = catalog::builtin_datasets().into_iter().find(|d| d.name.as_str() == name).unwrap();
    DatasetSchema::new(Arc::new(d)).unwrap()
}

fn rows(e: DecodeError) -> Vec<(usize, Option<String>)> {
    match e {
        DecodeError::Rows(r) => r.into_iter().map(|e| (e.row, e.field)).collect(),
        other => panic!("not refused rows: {other:?}"),
    }
}

#[test]
fn ndjson_json_and_csv_decode_to_the_same_batch() {
    let s = schema("ds_energy_consumption");
    let ndjson = b"{\"member_uid\": 7, \"field_energy_reading_timestamp\": 1700000000, \"field_energy_reading_value\": \"12.5\", \"field_energy_source_name\": \"Kettle\"}\n\n{\"member_uid\": \"8\", \"instance\": 2, \"field_energy_reading_timestamp\": \"1700000900\", \"field_energy_reading_value\": 3}\n";
    let array = b"[{\"member_uid\": 7, \"field_energy_reading_timestamp\": 1700000000, \"field_energy_reading_value\": 12.5, \"field_energy_source_name\": \"Kettle\"},
                   {\"member_uid\": 8, \"instance\": \"2\", \"field_energy_reading_timestamp\": 1700000900, \"field_energy_reading_value\": \"3\"}]";
    let csv = b"member_uid,instance,field_energy_reading_timestamp,field_energy_reading_value,field_energy_source_name\n7,,1700000000,12.5,Kettle\n8,2,1700000900,3,\n";
    let a = decode(&s, Format::Ndjson, ndjson).unwrap();
    let b = decode(&s, Format::JsonArray, array).unwrap();
    let c = decode(&s, Format::Csv, csv).unwrap();
    assert_eq!(a, b);
    assert_eq!(a, c);
    assert_eq!(a.num_rows(), 2);
    assert_eq!(a.column(0).as_primitive::<Int64Type>().values(), &[7, 8]);
    assert_eq!(a.column(1).as_primitive::<Int64Type>().values(), &[0, 2], "instance defaults to 0");
    let value = a.column_by_name("field_energy_reading_value").unwrap().as_primitive::<Float64Type>();
    assert_eq!(value.values(), &[12.5, 3.0]);

    // The same rows as Arrow IPC, with only some columns.
    let ipc_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
        s.input.field(0).clone(),
        s.input.field_with_name("field_energy_reading_timestamp").unwrap().clone(),
    ]));
    let batch = RecordBatch::try_new(
        ipc_schema.clone(),
        vec![Arc::new(Int64Array::from(vec![7, 8])), Arc::new(Int64Array::from(vec![1700000000, 1700000900]))],
    )
    .unwrap();
    let mut buf = Vec::new();
    let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut buf, &ipc_schema).unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let d = decode(&s, Format::ArrowIpc, &buf).unwrap();
    assert_eq!(d.num_rows(), 2);
    assert_eq!(d.column_by_name("field_energy_reading_value").unwrap().null_count(), 2);
}

#[test]
fn refusals_name_rows_and_fields_never_values() {
    let s = schema("ds_energy_consumption");
    let body = b"{\"member_uid\": 1, \"field_energy_reading_value\": \"canary-1\"}\n{\"member_uid\": 1, \"surprise\": 1}\n{\"field_energy_source_name\": \"ok\"}\n{\"member_uid\": 1, \"id\": 4}\n{\"member_uid\": 1, \"field_energy_homeid\": 1.5}\n";
    let Err(DecodeError::Rows(errors)) = decode(&s, Format::Ndjson, body) else { panic!() };
    let got: Vec<_> = errors.iter().map(|e| (e.row, e.field.as_deref().unwrap_or(""))).collect();
    assert_eq!(
        got,
        [(1, "field_energy_reading_value"), (2, "surprise"), (3, "member_uid"), (4, "id"), (5, "field_energy_homeid")]
    );
    assert!(!format!("{errors:?}").contains("canary"));
    assert!(matches!(decode(&s, Format::Ndjson, b"{\"member_uid\": 1,"), Err(DecodeError::Malformed(_))));
    assert!(
        matches!(decode(&s, Format::Ndjson, b"{\"member_uid\": \"canary\"\"x\"}"), Err(DecodeError::Malformed(m)) if !m.contains("canary"))
    );
    let csv = b"member_uid,nope\n1,2\n";
    assert_eq!(rows(decode(&s, Format::Csv, csv).unwrap_err()), [(1, Some("nope".into()))]);
}

#[test]
fn decimals_json_and_text_caps() {
    let s = schema("ds_bank_account_transactions");
    let body = b"{\"member_uid\": 1, \"ba_transaction_value\": \"111.1\"}\n{\"member_uid\": 1, \"ba_transaction_value\": -2}\n";
    let b = decode(&s, Format::Ndjson, body).unwrap();
    let v = b.column_by_name("ba_transaction_value").unwrap().as_any().downcast_ref::<Decimal128Array>().unwrap();
    assert_eq!(v.values(), &[11110, -200]);
    assert_eq!(v.value_as_string(0), "111.10");
    let bad = b"{\"member_uid\": 1, \"ba_transaction_value\": \"1.234\"}\n";
    assert_eq!(rows(decode(&s, Format::Ndjson, bad).unwrap_err()), [(1, Some("ba_transaction_value".into()))]);

    let r = schema("ds_referrals");
    let body = b"{\"member_uid\": 1, \"referree_availability\": {\"AM\": [\"Monday\"]}}\n{\"member_uid\": 1, \"referree_availability\": \"[1, 2]\"}\n";
    let b = decode(&r, Format::Ndjson, body).unwrap();
    let col = b.column_by_name("referree_availability").unwrap().as_string::<i32>();
    assert_eq!((col.value(0), col.value(1)), ("{\"AM\":[\"Monday\"]}", "[1,2]"));
    let long = format!("{{\"member_uid\": 1, \"memo\": \"{}\"}}\n", "x".repeat(70 * 1024));
    assert_eq!(rows(decode(&r, Format::Ndjson, long.as_bytes()).unwrap_err()), [(1, Some("memo".into()))]);
}

/// Found by `fuzz/` (decode_arrow_ipc): arrow-ipc panicked on a schema field of type NONE and
/// on a buffer past its message's body, allocated the 738 MB of metadata a 144-byte body
/// claimed, and took a batch without columns to hold the rows it claimed; a compressed buffer
/// may claim any size. Each is a malformed body (400), not a 500 or what it claims allocated.
#[test]
fn malformed_arrow_ipc_is_refused_without_panics_or_claimed_allocations() {
    let s = schema("ds_energy_consumption");
    let refused = |body: &[u8]| matches!(decode(&s, Format::ArrowIpc, body), Err(DecodeError::Malformed(_)));
    assert!(refused(include_bytes!("../../../fuzz/regressions/decode_arrow_ipc/field_of_type_none")));
    assert!(refused(include_bytes!("../../../fuzz/regressions/decode_arrow_ipc/buffer_past_message_body")));
    assert!(refused(include_bytes!("../../../fuzz/regressions/decode_arrow_ipc/metadata_length_738mb")));
    assert!(refused(include_bytes!("../../../fuzz/regressions/decode_arrow_ipc/rows_claimed_without_columns")));
    assert!(refused(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]), "2 GiB of metadata claimed");

    use datafusion::arrow::ipc::{CompressionType, writer::IpcWriteOptions};
    let ipc_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![s.input.field(0).clone()]));
    let batch = RecordBatch::try_new(ipc_schema.clone(), vec![Arc::new(Int64Array::from(vec![7; 100]))]).unwrap();
    let stream = |options: IpcWriteOptions| {
        let mut buf = Vec::new();
        let mut w =
            datafusion::arrow::ipc::writer::StreamWriter::try_new_with_options(&mut buf, &ipc_schema, options).unwrap();
        w.write(&batch).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        buf
    };
    let zstd = IpcWriteOptions::default().try_with_compression(Some(CompressionType::ZSTD)).unwrap();
    assert!(refused(&stream(zstd)), "compressed buffers");
    // The same stream uncompressed, its length fields checked, still decodes.
    assert_eq!(decode(&s, Format::ArrowIpc, &stream(IpcWriteOptions::default())).unwrap().num_rows(), 200);
}

/// Found by `fuzz/` (decode_arrow_ipc): an IPC body could carry a decimal wider than
/// Decimal(18, 2), which Parquet would store cut, and floats that no other format admits.
#[test]
fn arrow_ipc_values_pass_the_checks_of_the_other_formats() {
    let s = schema("ds_bank_account_transactions");
    let e = schema("ds_energy_consumption");
    let value = s.input.field_with_name("ba_transaction_value").unwrap().clone();
    let reading = e.input.field_with_name("field_energy_reading_value").unwrap().clone();
    let stream = |field: datafusion::arrow::datatypes::Field, values: ArrayRef| {
        let ipc_schema = Arc::new(datafusion::arrow::datatypes::Schema::new(vec![s.input.field(0).clone(), field]));
        let members = Arc::new(Int64Array::from(vec![1; values.len()]));
        let batch = RecordBatch::try_new(ipc_schema.clone(), vec![members, values]).unwrap();
        let mut buf = Vec::new();
        let mut w = datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut buf, &ipc_schema).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        drop(w);
        buf
    };
    let cents = Decimal128Array::from(vec![999_999_999_999_999_999, 10i128.pow(18), -10i128.pow(18), i128::MIN])
        .with_precision_and_scale(18, 2)
        .unwrap();
    let got = rows(decode(&s, Format::ArrowIpc, &stream(value, Arc::new(cents))).unwrap_err());
    assert_eq!(
        got,
        [
            (2, Some("ba_transaction_value".into())),
            (3, Some("ba_transaction_value".into())),
            (4, Some("ba_transaction_value".into()))
        ]
    );
    let floats = datafusion::arrow::array::Float64Array::from(vec![1.5, f64::NAN, f64::INFINITY]);
    let got = rows(decode(&e, Format::ArrowIpc, &stream(reading, Arc::new(floats))).unwrap_err());
    assert_eq!(got, [(2, Some("field_energy_reading_value".into())), (3, Some("field_energy_reading_value".into()))]);
}

/// A body of a few bytes a row decodes into columns of several bytes a row each (`1\n` into
/// 28 columns is about 5 GB for a 64 MiB body): decoding asks for memory as they grow, and
/// stops at the first refusal; rows past the cap are refused as such.
#[test]
fn decoded_columns_ask_for_memory_as_they_grow_and_rows_are_capped() {
    let s = schema("ds_bank_account_transactions");
    let rows = 10_000;
    let mut csv = String::from("member_uid\n");
    csv.push_str(&"1\n".repeat(rows));
    let ndjson = "{\"member_uid\": 1}\n".repeat(rows);
    let array = format!("[{}]", vec!["{\"member_uid\": 1}"; rows].join(","));
    for (format, body) in
        [(Format::Csv, csv.as_bytes()), (Format::Ndjson, ndjson.as_bytes()), (Format::JsonArray, array.as_bytes())]
    {
        let mut asked = Vec::new();
        let mut budget = Budget {
            max_rows: usize::MAX,
            memory: &mut |bytes| {
                asked.push(bytes);
                bytes < 300_000
            },
        };
        assert!(matches!(decode_within(&s, format, body, &mut budget), Err(DecodeError::OverBudget)), "{format:?}");
        // Every column of every row counts, though the body holds 2-17 bytes a row.
        assert!(asked.len() >= 2 && asked[0] >= 1024 * s.input.fields().len(), "{format:?}: {asked:?}");
        assert!(asked.windows(2).all(|w| w[0] < w[1]), "asked as the columns grow");
        let mut capped = Budget { max_rows: 5_000, memory: &mut |_| true };
        assert!(
            matches!(decode_within(&s, format, body, &mut capped), Err(DecodeError::TooManyRows(5_000))),
            "{format:?}"
        );
        let mut enough = Budget { max_rows: rows, memory: &mut |_| true };
        assert_eq!(decode_within(&s, format, body, &mut enough).unwrap().num_rows(), rows);
    }
}

/// A dictionary-encoded column (and so any dictionary delta, which arrow-ipc concatenates
/// onto the dictionary before, quadratically) is refused before the stream is read.
#[test]
fn arrow_ipc_dictionaries_are_refused_before_reading() {
    use datafusion::arrow::array::DictionaryArray;
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema};
    use datafusion::arrow::ipc::writer::{DictionaryHandling, IpcWriteOptions, StreamWriter};
    let s = schema("ds_energy_consumption");
    let dict = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    let ipc_schema =
        Arc::new(Schema::new(vec![s.input.field(0).clone(), Field::new("field_energy_source_name", dict, true)]));
    let mut buf = Vec::new();
    let options = IpcWriteOptions::default().with_dictionary_handling(DictionaryHandling::Delta);
    let mut w = StreamWriter::try_new_with_options(&mut buf, &ipc_schema, options).unwrap();
    for i in 0..3 {
        let values: DictionaryArray<Int32Type> = [format!("name {i}")].iter().map(String::as_str).collect();
        let batch =
            RecordBatch::try_new(ipc_schema.clone(), vec![Arc::new(Int64Array::from(vec![1])), Arc::new(values)])
                .unwrap();
        w.write(&batch).unwrap();
    }
    w.finish().unwrap();
    drop(w);
    let Err(DecodeError::Malformed(reason)) = decode(&s, Format::ArrowIpc, &buf) else { panic!("refused") };
    assert!(reason.contains("dictionary"), "{reason}");
}

#[test]
fn fields_in_any_order_land_in_their_columns_and_bad_utf8_names_its_line() {
    let s = schema("ds_energy_consumption");
    // Each row names its fields in another order (the decoder guesses each key's column from
    // the row before; a name may be written with escapes), one twice and one unknown.
    let body = "{\"member_uid\": 1, \"field_energy_reading_value\": 1.5, \"field_energy_source_name\": \"a\"}\n\
                {\"field_energy_source_name\": \"b\", \"member\\u005fuid\": 2, \"field_energy_reading_value\": 2.5}\n\
                {\"field_energy_reading_value\": 3.5, \"field_energy_source_name\": \"c\", \"member_uid\": 3}\n\
                {\"member_uid\": 4, \"field_energy_reading_value\": 4.5}\n";
    let b = decode(&s, Format::Ndjson, body.as_bytes()).unwrap();
    assert_eq!(b.column(0).as_primitive::<Int64Type>().values(), &[1, 2, 3, 4]);
    let value = b.column_by_name("field_energy_reading_value").unwrap().as_primitive::<Float64Type>();
    assert_eq!(value.values(), &[1.5, 2.5, 3.5, 4.5]);
    let name = b.column_by_name("field_energy_source_name").unwrap().as_string::<i32>();
    assert_eq!(name.iter().collect::<Vec<_>>(), [Some("a"), Some("b"), Some("c"), None]);
    let twice =
        "{\"member_uid\": 1, \"field_energy_reading_value\": 1}\n{\"member_uid\": 1, \"member_uid\": 2, \"x\": 1}\n";
    assert_eq!(
        rows(decode(&s, Format::Ndjson, twice.as_bytes()).unwrap_err()),
        [(2, Some("member_uid".into())), (2, Some("x".into()))]
    );

    let mut bad = b"{\"member_uid\": 1}\n{\"member_uid\": 1, \"field_energy_source_name\": \"".to_vec();
    bad.extend_from_slice(&[0xff, 0xfe]);
    bad.extend_from_slice(b"\"}\n");
    for format in [Format::Ndjson, Format::JsonArray] {
        let Err(DecodeError::Malformed(m)) = decode(&s, format, &bad) else { panic!("{format:?} refused") };
        assert_eq!(m, "line 2: not UTF-8");
    }
}

/// The hand-written JSON reader keeps JSON's grammar and serde_json's reading of numbers
/// (`fuzz/`'s `decode_ndjson` compares the two on arbitrary bodies).
#[test]
fn json_is_read_by_its_grammar_and_numbers_as_serde_json_reads_them() {
    let s = schema("ds_energy_consumption");
    let ok = |body: &str| decode(&s, Format::Ndjson, body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e:?}"));
    let malformed = |body: &str| match decode(&s, Format::Ndjson, body.as_bytes()) {
        Err(DecodeError::Malformed(m)) => m,
        other => panic!("{body}: {other:?}"),
    };
    let refused = |body: &str| rows(decode(&s, Format::Ndjson, body.as_bytes()).unwrap_err());
    let homeid = Some("field_energy_homeid".to_string());

    // Whitespace JSON allows, CRLF line ends, an empty object's row refused for its member.
    let b = ok(
        "\t{ \"member_uid\" :\r 1 , \"field_energy_reading_value\":-2.5e1 }\r\n{\"member_uid\":9223372036854775807}",
    );
    assert_eq!(b.column(0).as_primitive::<Int64Type>().values(), &[1, i64::MAX]);
    let value = b.column_by_name("field_energy_reading_value").unwrap().as_primitive::<Float64Type>();
    assert_eq!(value.value(0), -25.0);
    assert_eq!(refused("{}"), [(1, Some("member_uid".into()))]);

    // Escapes are decoded; raw control characters and bad escapes are not JSON.
    let b = ok(r#"{"member_uid": 1, "field_energy_source_name": "a\"b\\c\u00e9\ud83d\ude00\n"}"#);
    let name = b.column_by_name("field_energy_source_name").unwrap().as_string::<i32>();
    assert_eq!(name.value(0), "a\"b\\c\u{e9}\u{1f600}\n");
    assert_eq!(
        malformed("{\"member_uid\": 1, \"field_energy_source_name\": \"a\tb\"}"),
        "line 1: malformed JSON at column 49"
    );
    for bad in [r#""\x""#, r#""\ud83d""#, r#""\u12""#, r#""abc"#, r#""abc\"#] {
        malformed(&format!("{{\"member_uid\": 1, \"field_energy_source_name\": {bad}}}"));
    }

    // Numbers: JSON's grammar, serde_json's types. A negative zero and an integer past 64
    // bits are floats, so an integer column refuses them; a float past f64 is not JSON.
    for bad in ["01", "-", "1.", ".5", "1e", "1e+", "+1", "0x10", "1e400", "-1e400", "NaN", "Infinity", "1 2"] {
        malformed(&format!("{{\"member_uid\": 1, \"field_energy_homeid\": {bad}}}"));
    }
    for refused_int in ["-0", "1.0", "1e2", "9223372036854775808", "18446744073709551616", "-9223372036854775809"] {
        let body = format!("{{\"member_uid\": 1, \"field_energy_homeid\": {refused_int}}}");
        assert_eq!(refused(&body), [(1, homeid.clone())], "{refused_int}");
    }
    let b = ok(
        "{\"member_uid\": 1, \"field_energy_homeid\": -9223372036854775808, \"field_energy_reading_value\": 18446744073709551616}",
    );
    assert_eq!(b.column_by_name("field_energy_homeid").unwrap().as_primitive::<Int64Type>().value(0), i64::MIN);
    let value = b.column_by_name("field_energy_reading_value").unwrap().as_primitive::<Float64Type>();
    assert_eq!(value.value(0), 18446744073709551616.0);

    // Literals and nested values: read whole, then refused by type or field.
    assert_eq!(
        refused("{\"member_uid\": 1, \"field_energy_homeid\": true, \"x\": {\"a\": [1, {\"b\": null}]}}"),
        [(1, homeid.clone()), (1, Some("x".into()))]
    );
    let b = ok("{\"member_uid\": 1, \"field_energy_homeid\": null}");
    assert_eq!(b.column_by_name("field_energy_homeid").unwrap().null_count(), 1);
    for bad in ["tru", "nul", "True", "{\"a\" 1}", "[1,]", "{}}"] {
        malformed(&format!("{{\"member_uid\": 1, \"field_energy_homeid\": {bad}}}"));
    }

    // Structure: a row is an object, and nothing follows it on its line.
    for bad in [
        "[1]",
        "1",
        "\"x\"",
        "{\"member_uid\": 1,}",
        "{\"member_uid\" 1}",
        "{member_uid: 1}",
        "{\"member_uid\": 1} x",
        "{\"member_uid\": 1}{}",
    ] {
        malformed(bad);
    }
    // Rows are counted as in the other formats: blank lines are not rows (found by fuzz/:
    // the member check counted rows, the field checks lines).
    assert_eq!(
        refused("\n \r\n{\"member_uid\": 1, \"nope\": 1}\n\n{}\n"),
        [(1, Some("nope".into())), (2, Some("member_uid".into()))]
    );
    // A JSON array's refusal names its line and column.
    let array = "[\n  {\"member_uid\": 1},\n  {\"member_uid\": 2,}\n]";
    let Err(DecodeError::Malformed(m)) = decode(&s, Format::JsonArray, array.as_bytes()) else { panic!() };
    assert_eq!(m, "line 3: malformed JSON at column 20");
    for bad in ["", "[", "[{\"member_uid\": 1}", "[{\"member_uid\": 1},]", "[{\"member_uid\": 1}] []", "{}"] {
        assert!(matches!(decode(&s, Format::JsonArray, bad.as_bytes()), Err(DecodeError::Malformed(_))), "{bad}");
    }
    assert_eq!(decode(&s, Format::JsonArray, b" [ ] ").unwrap().num_rows(), 0);
}
