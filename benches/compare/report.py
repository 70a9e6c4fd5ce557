"""Turns what compare.sh measured into one Markdown table of ratios, with the details under it.

    python3 report.py WORK_DIR OUT.md

Reads from WORK_DIR: data.json (gen.py), trove-ingest.json (`trove-load --report`),
pg-ingest.json (pg_ingest.py), parquet-pyarrow.json and parquet-duckdb.json (parquet_write.py),
reads.json (`TROVE_BENCH_REPORT` of `cargo bench --bench reads`), run.json and steps.tsv
(compare.sh). Whatever is missing is shown as not run. Every ratio is written so that above 1
means trove did better: rows/s trove / peer, milliseconds and bytes peer / trove.
"""
import json
import os
import platform
import sys


def load(work, name):
    try:
        with open(os.path.join(work, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    return f"{os.cpu_count()} CPUs ({cpu}), {mem} memory, Linux {platform.release()}"


def num(x, digits=0):
    if x is None:
        return "-"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:,.{digits}f}"


def ms(x):
    if x is None:
        return "-"
    return f"{x:,.2f}" if x < 100 else f"{x:,.0f}"


def times(x):
    return f"{x:,.2f}" if x < 10 else f"{x:,.1f}" if x < 100 else f"{x:,.0f}"


def ratio(x):
    """`x` is trove's advantage (above 1: trove better): the ratio and it in words."""
    if x is None:
        return "-", "-"
    if x >= 1:
        return times(x), f"trove {times(x)}x better"
    return times(x), f"trove {times(1 / x)}x worse"


def main():
    work, out = sys.argv[1], sys.argv[2]
    data, run = load(work, "data.json") or {}, load(work, "run.json") or {}
    trove, pg = load(work, "trove-ingest.json"), load(work, "pg-ingest.json")
    pa, duck, reads = load(work, "parquet-pyarrow.json"), load(work, "parquet-duckdb.json"), load(work, "reads.json")

    rows = []  # (what, peer, trove figure, peer figure, trove's advantage)
    t_rps = trove.get("rows_per_sec") if trove else None
    t_p99 = (trove.get("ack_ms") or {}).get("p99") if trove else None
    pg_runs = (pg or {}).get("runs", {})
    pg_name = "PostgreSQL " + pg["settings"]["server_version"].split()[0] if pg else "PostgreSQL"
    writers = (pg or {}).get("writers", "?")
    peers = [
        (f"{pg_name} COPY, btree (member, ts), {writers} writers, commit per batch", pg_runs.get("index")),
        (f"{pg_name} COPY, no index, {writers} writers, commit per batch", pg_runs.get("noindex")),
        (f"pyarrow {pa['version'] if pa else ''} write_dataset, partitioned (member, day)", pa),
        (f"DuckDB {duck['version'] if duck else ''} COPY ... PARTITION_BY (member, day)", duck),
    ]
    for name, p in peers:
        p_rps = p.get("rows_per_sec") if p else None
        rows.append(("ingest rows/s", name, num(t_rps), num(p_rps), t_rps / p_rps if t_rps and p_rps else None))
    for name, p in peers[:2]:
        p_p99 = (p or {}).get("batch_ms", {}).get("p99")
        rows.append(("ingest p99 ms per 1,000-row batch", name, ms(t_p99), ms(p_p99), p_p99 / t_p99 if t_p99 and p_p99 else None))

    if reads:
        pg_read = reads.get("postgres") or {}
        read_peers = [("duckdb", f"DuckDB, all of trove's {reads.get('files', '?'):,} files"),
                      ("postgres", f"PostgreSQL {pg_read.get('version', '').split(' ')[0]}, btree (member, ts), prepared")]
        for r in reads["table"]:
            if r["key"] not in ("q1", "q2", "q3"):
                continue
            for peer, name in read_peers:
                for q in ("p50", "p99"):
                    t, p = r[f"trove_{q}_ms"], r[f"{peer}_{q}_ms"]
                    rows.append((f"{r['key'].upper()} {q} ms", name, ms(t), ms(p), p / t if t and p else None))

    L = []
    L.append(f"# trove next to its peers, {run.get('date', '?')}\n")
    L.append(
        f"Commit {run.get('commit', '?')}; {machine()}. One data set of {data.get('rows', 0):,} energy readings for "
        f"{data.get('members', '?')} members (benches/README.md: row i is member 1 + i % M, a reading every 15 minutes, "
        f"`member_uid` and the 8 fields of `ds_energy_consumption`), {data.get('bytes_per_row', 0):.0f} bytes per row as "
        f"NDJSON; trove, PostgreSQL and the Parquet writers each take all of it, one after the other, on the same cores. "
        f"Batches of {run.get('batch', '?')} rows. Load average before the run: {run.get('load_before', '?')}"
        f"{' (the machine was busy: noisy figures)' if float(run.get('load_before') or 0) >= 0.5 else ''}.\n"
    )
    L.append(
        "Every ratio reads the same way: **above 1, trove did better** (ingest: trove's rows/s / the peer's; "
        "milliseconds: the peer's / trove's, so 3.0 means trove answered 3 times faster).\n"
    )
    L.append("| measure | peer | trove's figure | peer's figure | ratio (>1: trove better) | |")
    L.append("|---|---|---|---|---|---|")
    for what, name, t, p, adv in rows:
        r, words = ratio(adv)
        L.append(f"| {what} | {name} | {t} | {p} | {r} | {words} |")

    L.append("\n## Ingest\n")
    dur = run.get("durability", "fsync")
    if trove:
        srv = trove.get("server") or {}
        ack = trove.get("ack_ms") or {}
        L.append(
            f"- **trove** (`trove-load --input`, {run.get('connections', '?')} connections, {run.get('batch', '?')}-row NDJSON "
            f"bodies over HTTP, durability `{dur}`: acknowledged after the write-ahead log's "
            f"{'fdatasync (group commit)' if dur == 'fsync' else 'write to the OS'}; rows reach Parquet afterwards, in the "
            f"background): {num(trove.get('rows'))} rows in {num(trove.get('seconds'), 1)} s = {num(t_rps)} rows/s, "
            f"{num(trove.get('mb_per_sec'), 1)} MB/s; ack p50 / p99 / p99.9 / max {ms(ack.get('p50'))} / {ms(ack.get('p99'))} / "
            f"{ms(ack.get('p999'))} / {ms(ack.get('max'))} ms; {trove.get('requests', '?')} requests, refused "
            f"{trove.get('refused', '?')}, retried {trove.get('retried', '?')}, failed {trove.get('failed', '?')}; server RSS "
            f"max {num((srv.get('rss_max_bytes') or 0) / 2**20)} MiB, CPU {num(srv.get('cpu_seconds'), 1)} s."
        )
        if (trove.get("requests") or 0) < 2000:
            L.append(
                "  A short run: its tail is the warm-up (the first requests load the agreements and create the members' "
                "buffers); the default 2,000,000 rows show the steady state better."
            )
        if run.get("trove_objects_bytes") is not None and trove.get("rows"):
            L.append(
                f"  On disk after the server stopped: Parquet {num(run['trove_objects_bytes'] / 2**20, 1)} MiB "
                f"({run['trove_objects_bytes'] / trove['rows']:.0f} bytes/row, uncompacted) in {run.get('trove_objects_files', '?')} "
                f"files, WAL {num(run.get('trove_wal_bytes', 0) / 2**20, 1)} MiB."
            )
    else:
        L.append(f"- **trove**: not run ({run.get('trove_skipped', 'see the log')}).")
    if pg:
        s = pg["settings"]
        L.append(
            f"- **PostgreSQL {s['server_version']}** (durable: fsync {s['fsync']}, synchronous_commit "
            f"{s['synchronous_commit']}, wal_sync_method {s['wal_sync_method']}, full_page_writes {s['full_page_writes']}, "
            f"shared_buffers {s['shared_buffers']}), COPY of pre-built CSV batches, a commit per batch, {pg['writers']} "
            f"writer processes:"
        )
        for v, r in pg["runs"].items():
            L.append(
                f"  - {'btree (member_uid, ts)' if r['index'] else 'no index'}: {num(r['rows_per_sec'])} rows/s, batch p50 / "
                f"p99 / max {ms(r['batch_ms']['p50'])} / {ms(r['batch_ms']['p99'])} / {ms(r['batch_ms']['max'])} ms, "
                f"{r['bytes_per_row']:.0f} bytes/row (table + index)"
            )
    else:
        L.append("- **PostgreSQL**: not run.")
    for name, p in (("pyarrow", pa), ("DuckDB", duck)):
        if p:
            parse = f" (of which parsing the NDJSON {p['parse_seconds']:.1f} s)" if "parse_seconds" in p else ""
            L.append(
                f"- **{name} {p['version']}** from the NDJSON file to Parquet partitioned by (member, day), its defaults, "
                f"no fsync: {num(p['rows_per_sec'])} rows/s, {p['seconds']:.1f} s{parse}, {p['files']:,} files "
                f"({p['files_per_sec']:.0f} files/s), {p['bytes_per_row']:.0f} bytes/row"
            )
        else:
            L.append(f"- **{name}**: not run.")

    L.append("\n## Reads\n")
    if reads:
        pgr = reads.get("postgres") or {}
        L.append(
            f"`cargo bench --bench reads{' -- --quick' if reads.get('quick') else ''}` at commit {reads.get('commit')}: its own "
            f"data sets ({reads['rows']:,} rows: 1,000 members x 30 days and 10,000 members x 1 day of 15-minute readings, "
            f"delivered over HTTP, flushed and compacted into {reads['files']:,} files, "
            f"{reads['parquet_bytes'] / 2**20:.1f} MiB), not the ingest data set above; trove {reads['iterations']} "
            f"iterations each, each peer {reads['peer_iterations']}, one client. DuckDB is handed "
            f"the list of every file trove wrote; PostgreSQL "
            + (
                f"{pgr['version']} holds the same rows (COPY {pgr['load_seconds']:.1f} s, index and VACUUM ANALYZE "
                f"{pgr['index_seconds']:.1f} s), queries prepared."
                if "version" in pgr
                else f"{pgr.get('error', 'not run')}."
            )
            + "\n"
        )
        L.append("| read, p50 / p99 ms | trove | DuckDB | PostgreSQL |")
        L.append("|---|---|---|---|")
        for r in reads["table"]:
            cell = lambda p: f"{ms(r[p + '_p50_ms'])} / {ms(r[p + '_p99_ms'])}" if r.get(p + "_p50_ms") is not None else "-"
            L.append(f"| {r['label']} | {cell('trove')} | {cell('duckdb')} | {cell('postgres')} |")
    else:
        L.append(f"Not run ({run.get('reads_skipped', 'see the log')}).")

    steps = os.path.join(work, "steps.tsv")
    if os.path.exists(steps):
        L.append("\n## Steps\n")
        L.append("| step | seconds |")
        L.append("|---|---|")
        with open(steps) as f:
            for line in f:
                name, secs = line.rstrip("\n").split("\t")
                L.append(f"| {name} | {secs} |")
    L.append(f"\nMade by `benches/compare.sh {run.get('args', '')}`; raw figures in {work}/*.json.")
    text = "\n".join(L) + "\n"
    with open(out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
