-- The newest row version a file holds: replay skips WAL rows whose version a recorded file
-- already has (updates reuse row ids, so ids alone cannot tell). Keep in step with ../postgres.
ALTER TABLE parquet_files ADD COLUMN max_version BIGINT NOT NULL DEFAULT 0;
