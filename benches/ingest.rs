//! Micro and component benches of the ingest path (criterion), on the energy readings the
//! load generator sends (`trove_load::rows`, `trove-load --workload energy`): row `i` of a
//! batch is reading `i / M` of member `1 + i % M`, one every 15 minutes, with the eight
//! fields of `ds_energy_consumption` it sets. The main size is a batch of 1,000
//! rows for M = 100 members (10 readings each); decoding NDJSON and the ceiling also run
//! 10,000 rows (100 readings each).
//!
//! - `decode/<format>`: a body (NDJSON, JSON array, CSV, Arrow IPC) to validated Arrow, as
//!   `POST /v1/ingest` does it: decode with per-value checks, every row's write grant, event
//!   times.
//! - `ceiling/ndjson_decode_and_parquet_encode`: an NDJSON body decoded and encoded as one
//!   Parquet file, nothing else (no validation, WAL, buffer, object store or HTTP): the most
//!   one core could ingest, so the end-to-end figures of `trove-load` (the same rows) and
//!   `benches/wrk` can be given as a fraction of it.
//! - `wal/<fsync|process>`: one group commit (1 or 8 records of 1,000 rows) to a WAL segment
//!   in a temp dir: written, and in the `fsync` mode `fdatasync`ed before it returns.
//! - `buffer/insert`: a member-sorted batch of 100 members' rows buffered after an earlier
//!   one (the steady state): kept as a chunk.
//! - `buffer/snapshot/*`: what a read plans with, from 100 writes of 1,000 rows over 10,000
//!   members: one member's rows counted and taken, and all 10,000 members' (Q3's plan).
//! - `persist/encode_<lz4|zstd>`: the Parquet encode of a flush (LZ4, as flushes write) and the
//!   same with ZSTD (as compaction writes): one file per member (100 files of 10
//!   rows), and for comparison one member's 1,000 rows as one file.
//! - `compaction/merge`: one compaction round on a SQLite catalog and a local object store
//!   (the demo fixture of `test-helpers`): 32 members' 4 small files of a day each (24
//!   readings a file) read, merged into one file a member, put, swapped in the manifest.
//!
//! Each bench states the rows and the bytes of one iteration (`Throughput::ElementsAndBytes`),
//! so criterion prints both rates: rows/s as `elem/s`, and MiB/s. The bytes are what the step
//! takes in: the body (decode, ceiling), the records (WAL), the rows' Arrow arrays (buffer,
//! encode), the small Parquet files (compaction). Before timing, each bench runs once and
//! checks its result (rows decoded, records replayed, files merged), so a broken path fails
//! the run instead of timing nothing.
//!
//! Run in full (this bench and `benches/query.rs` together: about 5 minutes on 2 cores, plus
//! the release build), in the short mode (criterion's `--quick`: no warm-up, each bench stops
//! once two runs of n and 2n iterations agree within 5 %, or after about 5 s; both benches in
//! about a minute, with rougher figures), or one group by name:
//!
//! ```sh
//! cargo bench --bench ingest --bench query
//! cargo bench --bench ingest --bench query -- --quick
//! cargo bench --bench ingest -- --quick decode/
//! ```

use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use catalog::{ConnectionId, DataEnvironment, DatasetGrant, MemberId};
use criterion::{BatchSize, BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use datafusion::arrow::array::{AsArray, Int64Array, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take_record_batch;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::arrow::ipc::writer::StreamWriter;
use ingest::buffer::Buffer;
use ingest::decode::{Format, decode};
use ingest::persist::Codec;
use ingest::schema::{DatasetSchema, member_runs};
use ingest::wal::{self, Durability, Segments};
use ingest::{persist, validate};
use test_helpers::{Store, TestConfig, TestServer, now_secs};
use trove_load::{BodyFormat, Workload};

// As the server binary: glibc's allocator refaults large Arrow buffers (benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DATASET: &str = "ds_energy_consumption";
const ROWS: usize = 1_000;
const MEMBERS: usize = 100;
const DAY: i64 = 86_400;
/// The first reading of every member (2025-11-24): in the past, as event-time checks want.
const START: i64 = 1_763_942_400;

const FORMATS: [(Format, &str); 4] = [
    (Format::Ndjson, "ndjson"),
    (Format::JsonArray, "json_array"),
    (Format::Csv, "csv"),
    (Format::ArrowIpc, "arrow_ipc"),
];

fn energy_schema() -> Arc<DatasetSchema> {
    let dataset =
        catalog::builtin_datasets().into_iter().find(|d| d.name.as_str() == DATASET).expect("a built-in dataset");
    Arc::new(DatasetSchema::new(Arc::new(dataset)).expect("a transactional dataset"))
}

/// The load generator's energy readings as one body: row `i` is reading `i / M` of member
/// `1 + i % M`, the first at `start`, one every 15 minutes.
fn readings(schema: &DatasetSchema, format: BodyFormat, rows: usize, members: usize, start: i64) -> Vec<u8> {
    // The generator's newest reading is a quarter-hour before its `now`.
    let now = start + rows.div_ceil(members) as i64 * 900;
    let generated = trove_load::rows::generate(Workload::Energy, &schema.dataset, members, rows, now);
    let uids: Vec<i64> = (1..=members as i64).collect();
    trove_load::rows::bodies(&generated, &uids, rows, format).swap_remove(0).bytes.to_vec()
}

fn ndjson(schema: &DatasetSchema, rows: usize, members: usize, start: i64) -> Vec<u8> {
    readings(schema, BodyFormat::Ndjson, rows, members, start)
}

/// The readings as a body of `format`.
fn body(schema: &DatasetSchema, format: Format, rows: usize, members: usize) -> Vec<u8> {
    let lines = ndjson(schema, rows, members, START);
    match format {
        Format::Ndjson => lines,
        Format::JsonArray => {
            let lines = String::from_utf8(lines).expect("NDJSON is UTF-8");
            format!("[{}]", lines.trim_end().replace('\n', ",\n")).into_bytes()
        }
        // Only the columns sent (the others are all null), as a client's CSV writer would.
        Format::Csv => {
            let batch = decode(schema, Format::Ndjson, &lines).expect("NDJSON decodes");
            let sent: Vec<usize> =
                (0..batch.num_columns()).filter(|&i| batch.column(i).null_count() < batch.num_rows()).collect();
            let mut writer = datafusion::arrow::csv::Writer::new(Vec::new());
            writer.write(&batch.project(&sent).expect("columns of the batch")).expect("CSV write");
            writer.into_inner()
        }
        Format::ArrowIpc => readings(schema, BodyFormat::Arrow, rows, members, START),
    }
}

fn ipc(batch: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, &batch.schema()).expect("IPC writer");
    writer.write(batch).expect("IPC write");
    writer.finish().expect("IPC finish");
    drop(writer);
    out
}

/// A grant to write every field, as energy-co's agreements give.
fn write_everything(schema: &DatasetSchema) -> DatasetGrant {
    let fields: BTreeSet<String> = schema.dataset.data_fields().map(|f| f.name.as_str().to_owned()).collect();
    DatasetGrant { read: fields.clone(), write: fields }
}

/// What the ingest handler does with a body before the WAL.
fn decode_and_validate(
    schema: &DatasetSchema,
    grant: &DatasetGrant,
    format: Format,
    body: &[u8],
    now: i64,
) -> RecordBatch {
    let batch = decode(schema, format, body).unwrap_or_else(|e| panic!("{format:?} body refused: {e:?}"));
    validate::authorize_rows(schema, &batch, |_| Some(grant)).expect("every field is granted");
    validate::check_event_time(schema, batch, now).expect("event times in the past")
}

/// Input rows as stored: `id` (unique in the batch, so unique in every partition) and
/// `_version` inserted after `instance`.
fn with_ids(schema: &DatasetSchema, batch: &RecordBatch) -> RecordBatch {
    let n = batch.num_rows() as i64;
    let mut columns = batch.columns().to_vec();
    columns.insert(2, Arc::new(Int64Array::from_iter_values(1..=n)));
    columns.insert(3, Arc::new(Int64Array::from(vec![1; n as usize])));
    RecordBatch::try_new(schema.stored.clone(), columns).expect("the stored schema")
}

/// A stored batch sorted by member (stably), as the sequencer hands it to the WAL and buffer.
fn stored_by_member(schema: &DatasetSchema, rows: usize, members: usize) -> RecordBatch {
    let batch = decode(schema, Format::Ndjson, &ndjson(schema, rows, members, START)).expect("NDJSON decodes");
    let uids = batch.column(0).as_primitive::<Int64Type>().values();
    let mut order: Vec<u32> = (0..uids.len() as u32).collect();
    order.sort_by_key(|&i| uids[i as usize]);
    with_ids(schema, &take_record_batch(&batch, &UInt32Array::from(order)).expect("a permutation"))
}

fn bench_decode(c: &mut Criterion) {
    let schema = energy_schema();
    let grant = write_everything(&schema);
    let now = now_secs();
    let mut g = c.benchmark_group("decode");
    let sizes = FORMATS.iter().map(|&(f, name)| (f, name, ROWS)).chain([(Format::Ndjson, "ndjson", 10 * ROWS)]);
    for (format, name, rows) in sizes {
        let body = body(&schema, format, rows, MEMBERS);
        // Every format must give the very batch NDJSON gives.
        let want = decode_and_validate(&schema, &grant, Format::Ndjson, &ndjson(&schema, rows, MEMBERS, START), now);
        assert_eq!(want.num_rows(), rows);
        assert_eq!(decode_and_validate(&schema, &grant, format, &body, now), want, "{name}");
        g.throughput(Throughput::ElementsAndBytes { elements: rows as u64, bytes: body.len() as u64 });
        g.bench_with_input(BenchmarkId::new(name, format!("{rows}_rows_{MEMBERS}_members")), &body, |b, body| {
            b.iter(|| decode_and_validate(&schema, &grant, format, black_box(body), now))
        });
    }
    g.finish();
}

fn bench_ceiling(c: &mut Criterion) {
    let schema = energy_schema();
    let decode_and_encode = |body: &[u8]| {
        let batch = decode(&schema, Format::Ndjson, body).expect("NDJSON decodes");
        persist::encode(&schema, &[with_ids(&schema, &batch)], Codec::Settled).expect("Parquet encodes")
    };
    let mut g = c.benchmark_group("ceiling");
    for rows in [ROWS, 10 * ROWS] {
        let body = ndjson(&schema, rows, MEMBERS, START);
        let (parquet, sorted) = decode_and_encode(&body);
        assert_eq!(sorted.num_rows(), rows);
        assert!(parquet.starts_with(b"PAR1") && parquet.ends_with(b"PAR1"), "a Parquet file");
        g.throughput(Throughput::ElementsAndBytes { elements: rows as u64, bytes: body.len() as u64 });
        g.bench_with_input(
            BenchmarkId::new("ndjson_decode_and_parquet_encode", format!("{rows}_rows_{MEMBERS}_members")),
            &body,
            |b, body| b.iter(|| decode_and_encode(black_box(body))),
        );
    }
    g.finish();
}

fn bench_wal(c: &mut Criterion) {
    let schema = energy_schema();
    // A WAL record holds a stored batch as an Arrow IPC stream (plus a header of ~100 bytes).
    let record = ipc(&stored_by_member(&schema, ROWS, MEMBERS));
    let mut g = c.benchmark_group("wal");
    for (durability, mode) in [(Durability::Fsync, "fsync"), (Durability::Process, "process")] {
        for records in [1, 8] {
            let dir = tempfile::tempdir().expect("temp dir");
            // The server's segment size: rotations (a new file, a directory sync) are timed too.
            let mut segments = Segments::open(dir.path(), 64 << 20, durability).expect("WAL open");
            let group: Vec<&[u8]> = vec![&record; records];
            segments.write_group(&group).expect("WAL append");
            let replayed = wal::replay(dir.path()).expect("WAL replay");
            assert_eq!(replayed.len(), records);
            assert!(replayed.iter().all(|(_, r)| *r == record), "records replay as written");
            g.throughput(Throughput::ElementsAndBytes {
                elements: (records * ROWS) as u64,
                bytes: (records * record.len()) as u64,
            });
            g.bench_function(BenchmarkId::new(mode, format!("group_of_{records}x{ROWS}_rows")), |b| {
                b.iter_custom(|iters| {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        let started = Instant::now();
                        black_box(segments.write_group(&group).expect("WAL append"));
                        spent += started.elapsed();
                        // Closed segments go, untimed, as the flusher drops them, so the
                        // disk use stays flat however many iterations criterion asks for.
                        wal::remove_below(dir.path(), segments.current()).expect("WAL cleanup");
                    }
                    spent
                })
            });
        }
    }
    g.finish();
}

fn bench_buffer(c: &mut Criterion) {
    let schema = energy_schema();
    let env = DataEnvironment::Production;
    let batch = stored_by_member(&schema, ROWS, MEMBERS);
    let runs = member_runs(&batch).expect("stored batches have member uids");
    let bytes = batch.get_array_memory_size();
    // The buffer as after earlier writes: every member's partition exists and holds rows.
    let warm = || {
        let buffer = Buffer::default();
        buffer.insert_runs(env, &schema, &batch, &runs, 1, bytes);
        buffer
    };
    let buffer = warm();
    buffer.insert_runs(env, &schema, &batch, &runs, 1, bytes);
    let members: Vec<_> = runs.iter().map(|(m, _, _)| MemberId::new(*m).expect("a member uid")).collect();
    let snapshot = buffer.snapshot(env, &schema.dataset.name, members.iter().copied());
    assert_eq!(snapshot.members.len(), MEMBERS);
    assert!(
        snapshot.members.iter().all(|(_, s)| s.buffered.rows == 2 * ROWS / MEMBERS),
        "each member holds its rows of both inserts"
    );
    let rows = snapshot.rows(&members).expect("rows are taken");
    assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 2 * ROWS);

    let mut g = c.benchmark_group("buffer");
    g.throughput(Throughput::ElementsAndBytes { elements: ROWS as u64, bytes: bytes as u64 });
    g.bench_function(BenchmarkId::new("insert", format!("{ROWS}_rows_{MEMBERS}_members")), |b| {
        b.iter_batched_ref(
            warm,
            |buffer| buffer.insert_runs(env, &schema, &batch, &runs, 1, bytes),
            BatchSize::SmallInput,
        )
    });
    // What reads plan with: 100 writes of 1,000 rows over 10,000 members (each member's
    // rows in ten of them, with new ids each time), read for one member, and for all of
    // them (Q3's plan).
    let wide = Buffer::default();
    let all = stored_by_member(&schema, 10 * ROWS, 10 * ROWS);
    for write in 0..100 {
        let mut columns = all.slice((write % 10) * ROWS, ROWS).columns().to_vec();
        columns[2] = Arc::new(Int64Array::from_iter_values((1..=ROWS as i64).map(|i| (write * ROWS) as i64 + i)));
        let part = RecordBatch::try_new(schema.stored.clone(), columns).expect("the stored schema");
        let runs = member_runs(&part).expect("stored batches have member uids");
        wide.insert_runs(env, &schema, &part, &runs, 1, part.get_array_memory_size());
    }
    let everyone: Vec<MemberId> = (1..=10 * ROWS as i64).map(|m| MemberId::new(m).expect("a member uid")).collect();
    let read = |members: &[MemberId]| {
        let snapshot = wide.snapshot(env, &schema.dataset.name, members.iter().copied());
        let rows = snapshot.rows(members).expect("rows are taken");
        assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 10 * members.len());
        snapshot
    };
    g.bench_function("snapshot/one_of_10000_members_in_100_writes", |b| b.iter(|| read(&everyone[4321..4322])));
    g.bench_function("snapshot/10000_members_in_100_writes", |b| b.iter(|| read(&everyone)));
    g.finish();
}

fn bench_persist(c: &mut Criterion) {
    let schema = energy_schema();
    let batch = stored_by_member(&schema, ROWS, MEMBERS);
    let bytes = batch.get_array_memory_size() as u64;
    // A flush takes each member's rows as its own batch(es).
    let partitions: Vec<RecordBatch> = member_runs(&batch)
        .expect("stored batches have member uids")
        .iter()
        .map(|&(_, start, len)| batch.slice(start, len))
        .collect();
    let one_member = stored_by_member(&schema, ROWS, 1);
    let encode_all = |parts: &[RecordBatch], codec: Codec| {
        parts
            .iter()
            .map(|p| persist::encode(&schema, std::slice::from_ref(p), codec).expect("Parquet encodes").0.len())
            .sum::<usize>()
    };
    let (_, sorted) = persist::encode(&schema, &partitions[..1], Codec::Settled).expect("Parquet encodes");
    assert_eq!(sorted.num_rows(), ROWS / MEMBERS);

    // A flush's sort: 100 writes, each a reading of 1,000 members sorted by member, sorted
    // together by member, event time and id before the hot file is encoded.
    let flushed: Vec<RecordBatch> = (0..100)
        .map(|k| {
            let batch =
                decode(&schema, Format::Ndjson, &ndjson(&schema, ROWS, ROWS, START + k * 900)).expect("NDJSON decodes");
            with_ids(&schema, &batch)
        })
        .collect();
    let mut g = c.benchmark_group("persist");
    g.throughput(Throughput::Elements(100 * ROWS as u64));
    g.bench_function(BenchmarkId::new("sort_by_member", format!("100_writes_x_{ROWS}_rows")), |b| {
        b.iter(|| persist::sort_by_member(&schema, black_box(&flushed)).expect("sorts").num_rows())
    });
    // Flushes write LZ4 and compaction ZSTD: both are timed, so the per-file cost of ZSTD's
    // contexts stays visible.
    for (codec, name) in [(Codec::Settled, "lz4"), (Codec::Compacted, "zstd")] {
        let flush_bytes = encode_all(&partitions, codec);
        let one_bytes = encode_all(std::slice::from_ref(&one_member), codec);
        println!(
            "persist/encode {name}: a flush of {MEMBERS} files is {flush_bytes} bytes of Parquet, one member's {ROWS} rows {one_bytes}"
        );
        g.throughput(Throughput::ElementsAndBytes { elements: ROWS as u64, bytes });
        g.bench_function(
            BenchmarkId::new(format!("encode_{name}"), format!("flush_{MEMBERS}_members_x_{}_rows", ROWS / MEMBERS)),
            |b| b.iter(|| encode_all(black_box(&partitions), codec)),
        );
        g.throughput(Throughput::ElementsAndBytes {
            elements: ROWS as u64,
            bytes: one_member.get_array_memory_size() as u64,
        });
        g.bench_function(BenchmarkId::new(format!("encode_{name}"), format!("one_member_{ROWS}_rows")), |b| {
            b.iter(|| encode_all(black_box(std::slice::from_ref(&one_member)), codec))
        });
    }
    g.finish();
}

/// Members whose files one compaction round merges (a round takes up to 32 partitions).
const COMPACTED: usize = 32;
/// Small files a member has of a day before the round.
const FILES: usize = 4;

/// One day of readings for every compacted member, written and flushed in [`FILES`] parts:
/// [`FILES`] small files a member, all of one day. Returns their Parquet bytes.
async fn deliver_day(s: &TestServer, schema: &Arc<DatasetSchema>, day: i64) -> i64 {
    let connection = ConnectionId::new(s.creds.subscribers[0].connection.id).expect("a connection id");
    let env: DataEnvironment = s.creds.subscribers[0].connection.environment.into();
    let before: i64 = s.catalog.all_parquet_files().await.expect("manifest").iter().map(|f| f.size_bytes).sum();
    let rows = COMPACTED * 96 / FILES;
    for part in 0..FILES as i64 {
        let start = day * DAY + part * (96 / FILES as i64) * 900;
        let batch = decode(schema, Format::Ndjson, &ndjson(schema, rows, COMPACTED, start)).expect("NDJSON decodes");
        s.ingester.write(schema.clone(), env, connection, batch).await.expect("write");
        s.settle().await;
    }
    let after: i64 = s.catalog.all_parquet_files().await.expect("manifest").iter().map(|f| f.size_bytes).sum();
    after - before
}

fn bench_compaction(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut config = TestConfig::new(Store::Sqlite);
    config.members = COMPACTED as u32 + 1;
    let s = runtime.block_on(TestServer::start(config));
    let schema = runtime.block_on(async {
        let dataset = s.catalog.dataset(&DATASET.parse().expect("a dataset name")).await.expect("the dataset");
        s.ingester.schema(&Arc::new(dataset)).expect("a transactional dataset")
    });
    // Each round merges a new day: recent (merged by day, not month), so earlier merged files
    // stay apart and every round does the same work.
    let mut day = now_secs() / DAY - 6;
    let bytes = runtime.block_on(deliver_day(&s, &schema, day));
    let merged = runtime.block_on(s.ingester.compact_round()).expect("compaction");
    assert_eq!(merged, COMPACTED * FILES, "every small file merged");
    let files = runtime.block_on(s.catalog.all_parquet_files()).expect("manifest");
    assert_eq!(files.len(), COMPACTED, "one file a member");
    assert!(files.iter().all(|f| f.rows == 96), "a day of readings each");

    let mut g = c.benchmark_group("compaction");
    // Each iteration writes and flushes its files first (untimed): a few iterations suffice.
    g.sampling_mode(SamplingMode::Flat).sample_size(10);
    g.throughput(Throughput::ElementsAndBytes { elements: (COMPACTED * 96) as u64, bytes: bytes as u64 });
    g.bench_function(
        BenchmarkId::new("merge", format!("{COMPACTED}_members_x_{FILES}_files_x_{}_rows", 96 / FILES)),
        |b| {
            b.iter_custom(|iters| {
                runtime.block_on(async {
                    let mut spent = Duration::ZERO;
                    for _ in 0..iters {
                        day += 1;
                        deliver_day(&s, &schema, day).await;
                        let started = Instant::now();
                        let merged = s.ingester.compact_round().await.expect("compaction");
                        spent += started.elapsed();
                        assert_eq!(merged, COMPACTED * FILES);
                    }
                    spent
                })
            })
        },
    );
    g.finish();
    runtime.block_on(s.stop());
}

criterion_group!(benches, bench_decode, bench_ceiling, bench_wal, bench_buffer, bench_persist, bench_compaction);
criterion_main!(benches);
