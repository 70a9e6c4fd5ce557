"""PostgreSQL taking the comparison's rows as the peers' figures in benches/README.md do: COPY of 1,000-row
batches into a logged table with the dataset's columns, a commit per batch (durable: fsync and
synchronous_commit on, checked), several writers at once.

    python3 pg_ingest.py URL WORK_DIR OUT.json [--writers 4] [--batch 1000] [--variants index,noindex]

`index` has the btree on (member_uid, field_energy_reading_timestamp) a reader of one member's
readings needs; `noindex` is the bare table. The CSV (WORK_DIR/data.csv, from gen.py) is read and
cut into batches before the clock starts, as a client that already holds its rows would; each
writer is its own process with its own connection (no GIL between them), taking every
`writers`-th batch in file order. A batch's time runs from the COPY's start to its commit's return.
"""
import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time

import psycopg

sys.path.insert(0, os.path.dirname(__file__))
from gen import COLUMNS  # noqa: E402

TABLE = "compare_readings"


def pick(samples, q):
    samples = sorted(samples)
    return samples[max(1, min(len(samples), math.ceil(len(samples) * q))) - 1]


def writer(url, batches, w, writers, ready, go, results):
    with psycopg.connect(url) as con:
        ready.wait()
        go.wait()
        lat, started = [], time.monotonic()
        for b in range(w, len(batches), writers):
            t = time.monotonic()
            with con.cursor().copy(f"COPY {TABLE} FROM STDIN (FORMAT csv)") as copy:
                copy.write(batches[b])
            con.commit()
            lat.append(time.monotonic() - t)
        results.put((w, started, time.monotonic(), lat))


def run(url, batches, rows, writers, index):
    with psycopg.connect(url, autocommit=True) as con:
        con.execute(f"DROP TABLE IF EXISTS {TABLE}")
        con.execute(f"CREATE TABLE {TABLE} ({', '.join(f'{c} {t}' for c, t in COLUMNS)})")
        if index:
            con.execute(f"CREATE INDEX ON {TABLE} (member_uid, field_energy_reading_timestamp)")
        # A previous variant's dirty pages are written now, not during this one.
        con.execute("CHECKPOINT")
    ctx = mp.get_context("fork")  # the children share the batches without copying them
    ready, go, results = ctx.Barrier(writers + 1), ctx.Barrier(writers + 1), ctx.Queue()
    procs = [ctx.Process(target=writer, args=(url, batches, w, writers, ready, go, results)) for w in range(writers)]
    for p in procs:
        p.start()
    ready.wait()  # every writer connected
    go.wait()
    done = [results.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode != 0:
            sys.exit(f"a PostgreSQL writer failed (exit {p.exitcode})")
    seconds = max(d[2] for d in done) - min(d[1] for d in done)
    lat = [x for d in done for x in d[3]]
    with psycopg.connect(url, autocommit=True) as con:
        stored = con.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]
        size = con.execute(f"SELECT pg_total_relation_size('{TABLE}')").fetchone()[0]
        con.execute(f"DROP TABLE {TABLE}")
    if stored != rows:
        sys.exit(f"PostgreSQL stored {stored} rows, not {rows}")
    return {
        "index": index,
        "rows": rows,
        "seconds": seconds,
        "rows_per_sec": rows / seconds,
        "batch_ms": {"p50": pick(lat, 0.5) * 1e3, "p99": pick(lat, 0.99) * 1e3, "max": max(lat) * 1e3},
        "batches": len(lat),
        "bytes": size,
        "bytes_per_row": size / rows,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("work")
    ap.add_argument("out")
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--variants", default="index,noindex")
    a = ap.parse_args()
    with open(os.path.join(a.work, "data.csv"), "rb") as f:
        lines = f.read().splitlines(keepends=True)
    rows = len(lines)
    batches = [b"".join(lines[i : i + a.batch]) for i in range(0, rows, a.batch)]
    del lines
    with psycopg.connect(a.url, autocommit=True) as con:
        settings = {
            k: con.execute(f"SHOW {k}").fetchone()[0]
            for k in ["server_version", "fsync", "synchronous_commit", "wal_sync_method", "full_page_writes", "shared_buffers"]
        }
    if settings["fsync"] != "on" or settings["synchronous_commit"] != "on":
        sys.exit(f"PostgreSQL is not durable here: {settings}")
    out = {"writers": a.writers, "batch": a.batch, "settings": settings, "runs": {}}
    for v in a.variants.split(","):
        r = run(a.url, batches, rows, a.writers, index=(v == "index"))
        out["runs"][v] = r
        print(
            f"  PostgreSQL COPY, {v}: {r['rows_per_sec']:,.0f} rows/s, batch p50 {r['batch_ms']['p50']:.1f} ms "
            f"p99 {r['batch_ms']['p99']:.1f} ms, {r['bytes_per_row']:.0f} bytes/row on disk",
            flush=True,
        )
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
