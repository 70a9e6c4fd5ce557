-- A refused read that names no member (an SQL query refused before any table was scanned)
-- is logged against the connection alone. Keep in step with ../sqlite.
ALTER TABLE access_log ALTER COLUMN member_uid DROP NOT NULL;
CREATE INDEX access_log_connection ON access_log (connection_id, seq);
