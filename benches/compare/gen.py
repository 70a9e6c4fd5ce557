"""Writes the comparison's one data set: energy readings as benches/README.md ("The data sets") defines them.

    python3 gen.py WORK_DIR ROWS MEMBERS

Row i (0-based) is member_uid = 1 + i % MEMBERS, reading number k = i // MEMBERS of that member,
one reading per member every 15 minutes, with `member_uid` and the 8 fields of
`ds_energy_consumption` (about 300 bytes as compact NDJSON). The same rows go to WORK_DIR/data.ndjson
(trove's load generator, DuckDB, pyarrow) and WORK_DIR/data.csv (PostgreSQL's COPY, columns in
the order of `COLUMNS`), and what was written to WORK_DIR/data.json. The readings end before
today, since trove refuses event times more than a day ahead.
"""
import json
import os
import sys
import time

# The PostgreSQL table's columns, in CSV order; pg_ingest.py creates the table from them.
COLUMNS = [
    ("member_uid", "bigint NOT NULL"),
    ("created_timestamp", "bigint"),
    ("field_energy_homeid", "bigint"),
    ("field_energy_reading_timestamp", "bigint"),
    ("field_energy_reading_value", "double precision"),
    ("field_energy_source_index_id", "text"),
    ("field_energy_source_name", "text"),
    ("field_energy_source_type", "text"),
    ("updated_timestamp", "bigint"),
]
DAY = 86400
STEP = 900


def main():
    work, rows, members = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    per_member = -(-rows // members)
    days = -(-per_member * STEP // DAY)
    start = (int(time.time()) // DAY - days - 1) * DAY
    started = time.perf_counter()
    # Compact JSON formatted by hand, not json.dumps per row: 2M rows in seconds rather than a minute.
    # Values are eighths, so NDJSON, CSV and every reader hold the same doubles.
    with open(os.path.join(work, "data.ndjson"), "w") as nd, open(os.path.join(work, "data.csv"), "w") as csv:
        nd_lines, csv_lines = [], []
        for i in range(rows):
            m, k = 1 + i % members, i // members
            t = start + k * STEP
            v = ((m * 7 + k) % 1000) / 8
            nd_lines.append(
                f'{{"member_uid":{m},"created_timestamp":{t},"field_energy_homeid":{m},'
                f'"field_energy_reading_timestamp":{t},"field_energy_reading_value":{v!r},'
                f'"field_energy_source_index_id":"{m}-1","field_energy_source_name":"Meter",'
                f'"field_energy_source_type":"electricity","updated_timestamp":{t}}}\n'
            )
            csv_lines.append(f"{m},{t},{m},{t},{v!r},{m}-1,Meter,electricity,{t}\n")
            if len(nd_lines) == 100_000:
                nd.write("".join(nd_lines))
                csv.write("".join(csv_lines))
                nd_lines, csv_lines = [], []
        nd.write("".join(nd_lines))
        csv.write("".join(csv_lines))
    ndjson_bytes = os.path.getsize(os.path.join(work, "data.ndjson"))
    meta = {
        "rows": rows,
        "members": members,
        "first_ts": start,
        "last_ts": start + (per_member - 1) * STEP,
        "days": days,
        "ndjson_bytes": ndjson_bytes,
        "csv_bytes": os.path.getsize(os.path.join(work, "data.csv")),
        "bytes_per_row": ndjson_bytes / rows,
        "seconds": time.perf_counter() - started,
    }
    # Written last: its presence says the data files are complete.
    with open(os.path.join(work, "data.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
