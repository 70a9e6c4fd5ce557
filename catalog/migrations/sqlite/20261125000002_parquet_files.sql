-- The manifest of Parquet files in object storage: a file exists for readers only once it
-- is recorded here, after its put succeeded. Keep in step with ../postgres.
CREATE TABLE parquet_files (
    file_id        INTEGER PRIMARY KEY,
    environment    TEXT NOT NULL CHECK (environment IN ('sandbox', 'production')),
    dataset        TEXT NOT NULL,
    member_uid     BIGINT NOT NULL,
    path           TEXT NOT NULL UNIQUE,
    row_count      BIGINT NOT NULL,
    size_bytes     BIGINT NOT NULL,
    min_event_time BIGINT NOT NULL,
    max_event_time BIGINT NOT NULL,
    min_id         BIGINT NOT NULL,
    max_id         BIGINT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX parquet_files_partition ON parquet_files (environment, dataset, member_uid, min_event_time);
