-- The manifest as a change feed, so every node's read index follows files other nodes
-- flush and compact: each commit takes the next `manifest` number; added files carry it,
-- and replaced files leave a tombstone with it. Keep in step with the other dialect.
INSERT INTO counters (name, value) VALUES ('manifest', 0);
ALTER TABLE parquet_files ADD COLUMN seq BIGINT NOT NULL DEFAULT 0;
CREATE INDEX parquet_files_seq ON parquet_files (seq);
CREATE TABLE parquet_file_removals (
    seq        BIGINT NOT NULL,
    path       TEXT NOT NULL,
    removed_at BIGINT NOT NULL
);
CREATE INDEX parquet_file_removals_seq ON parquet_file_removals (seq);
