-- The access log as events and their members. An event is what one request's entries for
-- one dataset share (when, who, under which connection and purpose, the decision); each
-- member it names is a narrow row keyed by member. A read across 10,000 members stored
-- 10,000 wide rows in three b-trees before; now it is one event row and 10,000 rows of one
-- b-tree (plus an index appended in order). An entry naming no member (an SQL refusal) is
-- an event without member rows, keeping its own version and row count.
-- Keep in step with ../postgres.
CREATE TABLE access_events (
    seq               INTEGER PRIMARY KEY,
    at                BIGINT NOT NULL,
    subscriber_id     BIGINT NOT NULL,
    connection_id     BIGINT NOT NULL,
    purpose           TEXT NOT NULL,
    dataset           TEXT NOT NULL,
    action            TEXT NOT NULL CHECK (action IN ('read', 'write')),
    decision          TEXT NOT NULL CHECK (decision IN ('allowed', 'refused')),
    -- Only for an event naming no member.
    agreement_version BIGINT,
    row_count         BIGINT
);
CREATE INDEX access_events_connection ON access_events (connection_id, seq);
CREATE TABLE access_event_members (
    member_uid        BIGINT NOT NULL,
    event_seq         BIGINT NOT NULL,
    agreement_version BIGINT,
    row_count         BIGINT NOT NULL,
    PRIMARY KEY (member_uid, event_seq)
) WITHOUT ROWID;
CREATE INDEX access_event_members_event ON access_event_members (event_seq);

INSERT INTO access_events (seq, at, subscriber_id, connection_id, purpose, dataset, action, decision, agreement_version, row_count)
    SELECT seq, at, subscriber_id, connection_id, purpose, dataset, action, decision,
        CASE WHEN member_uid IS NULL THEN agreement_version END, CASE WHEN member_uid IS NULL THEN row_count END
    FROM access_log;
INSERT INTO access_event_members (member_uid, event_seq, agreement_version, row_count)
    SELECT member_uid, seq, agreement_version, row_count FROM access_log WHERE member_uid IS NOT NULL;
DROP TABLE access_log;
