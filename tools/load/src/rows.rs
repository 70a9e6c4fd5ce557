//! The rows each workload sends and their request bodies (NDJSON or Arrow IPC, typed by the
//! dataset's schema as the server publishes it at `GET /v1/datasets/{name}`). The ingest
//! benches (`benches/ingest.rs`) time the server's stages on these same energy rows.

use std::sync::Arc;

use bytes::Bytes;
use catalog::{Dataset, FieldType};
use datafusion::arrow::array::{ArrayRef, Decimal128Builder, Float64Builder, Int64Builder, StringBuilder};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::{BodyFormat, Workload};

/// One value of a row, in the type its field has.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Int(i64),
    Float(f64),
    /// A decimal in hundredths (the server keeps 2 places).
    Cents(i64),
    Text(String),
    Null,
}

/// Rows of one dataset: the member of each row, and its cells in `columns` order.
#[derive(Debug)]
pub struct Rows {
    pub(crate) columns: Vec<(String, FieldType)>,
    pub(crate) rows: Vec<(usize, Vec<Cell>)>,
}

/// A request body and how many rows it carries.
#[derive(Debug, Clone)]
pub struct Body {
    pub bytes: Bytes,
    pub(crate) rows: usize,
}

/// The dataset a workload writes.
pub(crate) fn dataset_of(workload: Workload) -> &'static str {
    match workload {
        Workload::Energy | Workload::Mixed | Workload::Soak => "ds_energy_consumption",
        Workload::Browsing => "ds_browsing_history",
        Workload::Bank => "ds_bank_account_transactions",
    }
}

fn columns(dataset: &Dataset, names: &[&str]) -> Vec<(String, FieldType)> {
    names
        .iter()
        .map(|n| {
            (n.to_string(), dataset.field(n).unwrap_or_else(|| panic!("{} has no field {n}", dataset.name)).data_type)
        })
        .collect()
}

const HOSTS: [&str; 12] = [
    "news.example.co.uk",
    "shop.example.com",
    "video.example.net",
    "mail.example.org",
    "maps.example.com",
    "bank.example.co.uk",
    "energy.example.co.uk",
    "travel.example.com",
    "recipes.example.org",
    "sport.example.net",
    "wiki.example.org",
    "forum.example.com",
];
const WORDS: [&str; 24] = [
    "energy",
    "tariff",
    "review",
    "weekend",
    "recipe",
    "football",
    "results",
    "cheap",
    "flights",
    "weather",
    "forecast",
    "garden",
    "bike",
    "repair",
    "guide",
    "best",
    "price",
    "compare",
    "local",
    "news",
    "school",
    "holiday",
    "insurance",
    "mortgage",
];
const DEVICES: [&str; 5] =
    ["Firefox 140 / Linux", "Safari 19 / iPhone", "Chrome 150 / Android", "Edge 150 / Windows", "Chrome 150 / macOS"];
const TRANSITIONS: [&str; 5] = ["link", "typed", "bookmark", "reload", "form_submit"];
const PAYEES: [&str; 8] = [
    "TESCO STORES",
    "SAINSBURYS",
    "TFL TRAVEL CH",
    "AMAZON MKTPLACE",
    "OCTOPUS ENERGY",
    "COUNCIL TAX",
    "NETFLIX.COM",
    "PRET A MANGER",
];

/// `count` generated rows of `workload` over `members` members, the newest event times
/// close to `now` and none in the future. Deterministic for a given `now`.
pub fn generate(workload: Workload, dataset: &Dataset, members: usize, count: usize, now: i64) -> Rows {
    let mut rng = StdRng::seed_from_u64(0x7207e);
    let per_member = count.div_ceil(members) as i64;
    match workload {
        Workload::Energy | Workload::Mixed | Workload::Soak => {
            // The rows of benches/README.md ("The data sets"): row i for member 1 + i % M, a reading every 15 minutes.
            let start = now - per_member * 900;
            let columns = columns(
                dataset,
                &[
                    "field_energy_homeid",
                    "field_energy_reading_timestamp",
                    "field_energy_reading_value",
                    "field_energy_source_index_id",
                    "field_energy_source_name",
                    "field_energy_source_type",
                    "created_timestamp",
                    "updated_timestamp",
                ],
            );
            let rows = (0..count)
                .map(|i| {
                    let m = i % members;
                    let t = start + (i / members) as i64 * 900;
                    let cells = vec![
                        Cell::Int(100_000 + m as i64),
                        Cell::Int(t),
                        Cell::Float((rng.random_range(0..400_000u32) as f64) / 100.0),
                        Cell::Text(format!("meter-{:06}-{}", m, i % 3)),
                        Cell::Text(["Kettle", "Fridge", "Whole house"][i % 3].into()),
                        Cell::Text("smart-meter".into()),
                        Cell::Int(t + 30),
                        Cell::Int(t + 30),
                    ];
                    (m, cells)
                })
                .collect();
            Rows { columns, rows }
        }
        Workload::Browsing => {
            let start = now - per_member * 60;
            let columns = columns(
                dataset,
                &[
                    "browsing_url",
                    "browsing_title",
                    "browsing_visit_timestamp",
                    "browsing_visit_duration",
                    "browsing_visit_count",
                    "browsing_referrer_url",
                    "browsing_transition_type",
                    "browsing_device",
                ],
            );
            let url = |rng: &mut StdRng| {
                let host = HOSTS[rng.random_range(0..HOSTS.len())];
                let path: Vec<&str> =
                    (0..rng.random_range(2..6)).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
                format!("https://{host}/{}?id={:016x}&utm_source=newsletter", path.join("/"), rng.random::<u64>())
            };
            let rows = (0..count)
                .map(|i| {
                    let m = i % members;
                    let t = start + (i / members) as i64 * 60;
                    let title: Vec<&str> =
                        (0..rng.random_range(4..10)).map(|_| WORDS[rng.random_range(0..WORDS.len())]).collect();
                    let cells = vec![
                        Cell::Text(url(&mut rng)),
                        Cell::Text(title.join(" ")),
                        Cell::Int(t),
                        Cell::Int(rng.random_range(1..900)),
                        Cell::Int(rng.random_range(1..50)),
                        Cell::Text(url(&mut rng)),
                        Cell::Text(TRANSITIONS[rng.random_range(0..TRANSITIONS.len())].into()),
                        Cell::Text(DEVICES[m % DEVICES.len()].into()),
                    ];
                    (m, cells)
                })
                .collect();
            Rows { columns, rows }
        }
        Workload::Bank => {
            // A statement download: each member's transactions arrive in runs of 1 to 40.
            let start = now - per_member * 3_600;
            let columns = columns(
                dataset,
                &[
                    "ba_transaction_date",
                    "ba_transaction_description",
                    "ba_transaction_type",
                    "ba_transaction_value",
                    "ba_transaction_value_currency_code",
                    "created_timestamp",
                ],
            );
            let mut seen = vec![0i64; members];
            let (mut m, mut run) = (0usize, 0usize);
            let rows = (0..count)
                .map(|_| {
                    if run == 0 {
                        m = rng.random_range(0..members);
                        run = rng.random_range(1..=40);
                    }
                    run -= 1;
                    let t = (start + seen[m] * 3_600).min(now);
                    seen[m] += 1;
                    let credit = rng.random_ratio(1, 8);
                    let cents = rng.random_range(50..25_000i64);
                    let cells = vec![
                        Cell::Text(day_string(t)),
                        Cell::Text(format!(
                            "{} {}",
                            PAYEES[rng.random_range(0..PAYEES.len())],
                            rng.random_range(1000..9999)
                        )),
                        Cell::Text(
                            if credit {
                                "CREDIT"
                            } else {
                                ["DEBIT", "DIRECT DEBIT", "CARD PAYMENT"][rng.random_range(0..3)]
                            }
                            .into(),
                        ),
                        Cell::Cents(if credit { cents * 20 } else { -cents }),
                        Cell::Text("GBP".into()),
                        Cell::Int(t),
                    ];
                    (m, cells)
                })
                .collect();
            Rows { columns, rows }
        }
    }
}

/// `YYYY-MM-DD` of epoch seconds (civil from days, Howard Hinnant's algorithm).
fn day_string(t: i64) -> String {
    let z = t.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Rows of an NDJSON file of `dataset`: the file's `member_uid` k becomes member index
/// `(k - 1) % members`. Every field the file names must be one of the dataset's.
pub(crate) fn read_ndjson(text: &str, dataset: &Dataset, members: usize) -> Result<Rows, String> {
    let mut columns: Vec<(String, FieldType)> = Vec::new();
    let mut rows = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let Ok(Value::Object(map)) = serde_json::from_str::<Value>(line) else {
            return Err(format!("line {}: not a JSON object", n + 1));
        };
        let Some(uid) =
            map.get("member_uid").and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok())).filter(|&u| u > 0)
        else {
            return Err(format!("line {}: no positive member_uid", n + 1));
        };
        let mut cells = vec![Cell::Null; columns.len()];
        for (name, value) in map.iter().filter(|(k, _)| k.as_str() != "member_uid") {
            let i = match columns.iter().position(|(c, _)| c == name) {
                Some(i) => i,
                None => {
                    let field = dataset
                        .field(name)
                        .ok_or_else(|| format!("line {}: {} has no field {name}", n + 1, dataset.name))?;
                    columns.push((name.clone(), field.data_type));
                    cells.push(Cell::Null);
                    columns.len() - 1
                }
            };
            cells[i] = cell(columns[i].1, value)
                .ok_or_else(|| format!("line {}: {name} is not a {:?}", n + 1, columns[i].1))?;
        }
        rows.push((((uid - 1) as usize) % members, cells));
    }
    // Rows read before a column first appeared lack its cell.
    let width = columns.len();
    for (_, cells) in &mut rows {
        cells.resize(width, Cell::Null);
    }
    Ok(Rows { columns, rows })
}

fn cell(t: FieldType, v: &Value) -> Option<Cell> {
    let number = || v.as_f64().or_else(|| v.as_str()?.parse().ok());
    Some(match (t, v) {
        (_, Value::Null) => Cell::Null,
        (FieldType::Integer | FieldType::Timestamp, _) => Cell::Int(v.as_i64().or_else(|| v.as_str()?.parse().ok())?),
        (FieldType::Float, _) => Cell::Float(number()?),
        (FieldType::Decimal, _) => Cell::Cents((number()? * 100.0).round() as i64),
        (_, Value::String(s)) => Cell::Text(s.clone()),
        (_, other) => Cell::Text(other.to_string()),
    })
}

/// Request bodies of `batch` rows each, `member_uids[i]` standing for member index i.
pub fn bodies(rows: &Rows, member_uids: &[i64], batch: usize, format: BodyFormat) -> Vec<Body> {
    rows.rows
        .chunks(batch)
        .map(|chunk| {
            let bytes = match format {
                BodyFormat::Ndjson => ndjson(&rows.columns, chunk, member_uids),
                BodyFormat::Arrow => arrow_ipc(&rows.columns, chunk, member_uids),
            };
            Body { bytes: Bytes::from(bytes), rows: chunk.len() }
        })
        .collect()
}

fn ndjson(columns: &[(String, FieldType)], chunk: &[(usize, Vec<Cell>)], member_uids: &[i64]) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(chunk.len() * 300);
    for (m, cells) in chunk {
        write!(out, "{{\"member_uid\":{}", member_uids[*m]).expect("write to a Vec");
        for ((name, _), c) in columns.iter().zip(cells) {
            write!(out, ",\"{name}\":").expect("write to a Vec");
            match c {
                Cell::Int(v) => write!(out, "{v}"),
                Cell::Float(v) => write!(out, "{v}"),
                // Mydex clients send money as strings; the server takes both.
                Cell::Cents(v) => {
                    write!(out, "\"{}{}.{:02}\"", if *v < 0 { "-" } else { "" }, v.abs() / 100, v.abs() % 100)
                }
                Cell::Text(s) => serde_json::to_writer(&mut out, s).map_err(std::io::Error::other),
                Cell::Null => write!(out, "null"),
            }
            .expect("write to a Vec");
        }
        out.extend_from_slice(b"}\n");
    }
    out
}

fn arrow_ipc(columns: &[(String, FieldType)], chunk: &[(usize, Vec<Cell>)], member_uids: &[i64]) -> Vec<u8> {
    let mut fields = vec![Field::new("member_uid", ingest::schema::arrow_type(FieldType::Integer), false)];
    let mut arrays: Vec<ArrayRef> = vec![Arc::new(
        chunk.iter().map(|(m, _)| Some(member_uids[*m])).collect::<datafusion::arrow::array::Int64Array>(),
    )];
    for (i, (name, t)) in columns.iter().enumerate() {
        fields.push(Field::new(name, ingest::schema::arrow_type(*t), true));
        let cells = chunk.iter().map(|(_, cells)| &cells[i]);
        let array: ArrayRef = match t {
            FieldType::Integer | FieldType::Timestamp => {
                let mut b = Int64Builder::new();
                cells.for_each(|c| b.append_option(if let Cell::Int(v) = c { Some(*v) } else { None }));
                Arc::new(b.finish())
            }
            FieldType::Float => {
                let mut b = Float64Builder::new();
                cells.for_each(|c| b.append_option(if let Cell::Float(v) = c { Some(*v) } else { None }));
                Arc::new(b.finish())
            }
            FieldType::Decimal => {
                let mut b = Decimal128Builder::new();
                cells.for_each(|c| b.append_option(if let Cell::Cents(v) = c { Some(*v as i128) } else { None }));
                Arc::new(
                    b.finish()
                        .with_precision_and_scale(ingest::schema::DECIMAL_PRECISION, ingest::schema::DECIMAL_SCALE)
                        .expect("trove's decimal type"),
                )
            }
            _ => {
                let mut b = StringBuilder::new();
                cells.for_each(|c| b.append_option(if let Cell::Text(v) = c { Some(v.as_str()) } else { None }));
                Arc::new(b.finish())
            }
        };
        arrays.push(array);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).expect("columns match their fields");
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &batch.schema()).expect("IPC writer");
    writer.write(&batch).expect("IPC write to a Vec");
    writer.finish().expect("IPC finish");
    drop(writer);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_are_civil_dates() {
        assert_eq!(day_string(0), "1970-01-01");
        assert_eq!(day_string(951_782_400), "2000-02-29");
        assert_eq!(day_string(1_764_000_000), "2025-11-24");
    }
}
