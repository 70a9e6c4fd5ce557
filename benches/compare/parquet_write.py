"""pyarrow or DuckDB writing the comparison's rows as Parquet partitioned by (member, day), as
the rows of benches/README.md for them: what a user without trove would run to get per-member files.

    python3 parquet_write.py pyarrow|duckdb WORK_DIR OUT.json

Both start from WORK_DIR/data.ndjson (gen.py), as trove does, and their time includes reading and
parsing it (as trove's includes parsing its bodies); pyarrow's parse time is reported on its own
too. Files go to WORK_DIR/parquet-<writer>/member_uid=M/day=D/ (hive layout), with each
library's default compression and row-group settings; nothing is fsynced (neither offers it).
"""
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from gen import COLUMNS  # noqa: E402


def tree(path):
    files = size = 0
    for root, _, names in os.walk(path):
        for n in names:
            files += 1
            size += os.path.getsize(os.path.join(root, n))
    return files, size


def with_pyarrow(src, dst):
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.json as pj

    types = {"bigint": pa.int64(), "bigint NOT NULL": pa.int64(), "double precision": pa.float64(), "text": pa.string()}
    schema = pa.schema([(c, types[t]) for c, t in COLUMNS])
    started = time.perf_counter()
    table = pj.read_json(src, parse_options=pj.ParseOptions(explicit_schema=schema))
    parsed = time.perf_counter() - started
    table = table.append_column("day", pc.divide(table["field_energy_reading_timestamp"], 86400))
    ds.write_dataset(
        table,
        dst,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("member_uid", pa.int64()), ("day", pa.int64())]), flavor="hive"),
        # The defaults (1,024 partitions, 1,024 open files) refuse or split 2M rows' 20,000.
        max_partitions=1 << 20,
        max_open_files=1 << 14,
        existing_data_behavior="overwrite_or_ignore",
    )
    return {"version": pa.__version__, "rows": table.num_rows, "parse_seconds": parsed, "seconds": time.perf_counter() - started}


def with_duckdb(src, dst):
    import duckdb

    types = {"bigint NOT NULL": "BIGINT", "bigint": "BIGINT", "double precision": "DOUBLE", "text": "VARCHAR"}
    columns = "{" + ", ".join(f"'{c}': '{types[t]}'" for c, t in COLUMNS) + "}"
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    started = time.perf_counter()
    con.execute(
        f"COPY (SELECT *, field_energy_reading_timestamp // 86400 AS day "
        f"FROM read_json('{src}', format = 'newline_delimited', columns = {columns})) "
        f"TO '{dst}' (FORMAT parquet, PARTITION_BY (member_uid, day))"
    )
    seconds = time.perf_counter() - started
    rows = con.execute(f"SELECT count(*) FROM read_parquet('{dst}/**/*.parquet')").fetchone()[0]
    return {"version": duckdb.__version__, "rows": rows, "seconds": seconds}


def main():
    which, work, out = sys.argv[1], sys.argv[2], sys.argv[3]
    src, dst = os.path.join(work, "data.ndjson"), os.path.join(work, f"parquet-{which}")
    shutil.rmtree(dst, ignore_errors=True)
    r = {"pyarrow": with_pyarrow, "duckdb": with_duckdb}[which](src, dst)
    files, size = tree(dst)
    r.update(rows_per_sec=r["rows"] / r["seconds"], files=files, bytes=size, bytes_per_row=size / r["rows"])
    r["files_per_sec"] = files / r["seconds"]
    print(
        f"  {which} {r['version']}: {r['rows']:,} rows in {r['seconds']:.1f} s = {r['rows_per_sec']:,.0f} rows/s, "
        f"{files:,} files ({r['files_per_sec']:.0f}/s), {r['bytes_per_row']:.0f} bytes/row",
        flush=True,
    )
    with open(out, "w") as f:
        json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
