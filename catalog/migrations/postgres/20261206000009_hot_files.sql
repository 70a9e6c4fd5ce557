-- Hot files (several members' rows, member_uid 0) are few and found by age: compaction
-- settles those older than the hot window into per-member files.
CREATE INDEX parquet_files_hot ON parquet_files (created_at) WHERE member_uid = 0;
