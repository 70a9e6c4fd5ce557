-- A refused read that names no member (an SQL query refused before any table was scanned)
-- is logged against the connection alone: member_uid becomes nullable. SQLite cannot drop a
-- NOT NULL constraint in place, so the table is rebuilt. Keep in step with ../postgres.
CREATE TABLE access_log_new (
    seq               INTEGER PRIMARY KEY,
    at                BIGINT NOT NULL,
    member_uid        BIGINT,
    subscriber_id     BIGINT NOT NULL,
    connection_id     BIGINT NOT NULL,
    agreement_version BIGINT,
    purpose           TEXT NOT NULL,
    dataset           TEXT NOT NULL,
    action            TEXT NOT NULL CHECK (action IN ('read', 'write')),
    row_count         BIGINT NOT NULL,
    decision          TEXT NOT NULL CHECK (decision IN ('allowed', 'refused'))
);
INSERT INTO access_log_new SELECT seq, at, member_uid, subscriber_id, connection_id, agreement_version, purpose,
    dataset, action, row_count, decision FROM access_log;
DROP TABLE access_log;
ALTER TABLE access_log_new RENAME TO access_log;
CREATE INDEX access_log_member ON access_log (member_uid, seq);
CREATE INDEX access_log_connection ON access_log (connection_id, seq);
