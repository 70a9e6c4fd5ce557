"""Writes the bodies the wrk ingest run posts: 10 bodies of 1,000 energy readings, each for
a different 1,000 of 10,000 members, as NDJSON and as an Arrow IPC stream (needs pyarrow)."""
import json
import sys
import time

import pyarrow as pa
import pyarrow.ipc as ipc

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/trove-wrk"
start = int(time.time()) - 2 * 86400
for b in range(10):
    rows = [
        {
            "member_uid": b * 1000 + i + 1,
            "field_energy_homeid": 1,
            "field_energy_reading_timestamp": start + i * 15,
            "field_energy_reading_value": round((i * 7 % 1000) / 4, 2),
            "field_energy_source_index_id": "1",
            "field_energy_source_name": "Kettle",
            "field_energy_source_type": "CAD",
        }
        for i in range(1000)
    ]
    with open(f"{out}/body{b}.ndjson", "w") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    types = {"field_energy_reading_value": pa.float64()}
    table = pa.table(
        {k: pa.array([r[k] for r in rows], types.get(k, pa.int64() if isinstance(rows[0][k], int) else pa.string())) for k in rows[0]}
    )
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    with open(f"{out}/body{b}.arrow", "wb") as f:
        f.write(sink.getvalue().to_pybytes())
