-- The access log as events and their members. An event is what one request's entries for
-- one dataset share (when, who, under which connection and purpose, the decision); each
-- member it names is a narrow row after it, in event order. A read across 10,000 members
-- stored 10,000 wide rows in three b-trees before, two of them in member order (a page
-- write per entry); now it is one event row, 10,000 rows appended in order, and a row in
-- `access_member_blocks` per member the first time it is named in a block of 64 events:
-- a member's entries are found block by block, newest first. An entry naming no member (an
-- SQL refusal) is an event without member rows, keeping its own version and row count.
-- Keep in step with ../postgres and EVENTS_PER_BLOCK.
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
    event_seq         BIGINT NOT NULL,
    member_uid        BIGINT NOT NULL,
    agreement_version BIGINT,
    row_count         BIGINT NOT NULL,
    PRIMARY KEY (event_seq, member_uid)
) WITHOUT ROWID;
CREATE TABLE access_member_blocks (
    member_uid BIGINT NOT NULL,
    block      BIGINT NOT NULL,
    PRIMARY KEY (member_uid, block)
) WITHOUT ROWID;

INSERT INTO access_events (seq, at, subscriber_id, connection_id, purpose, dataset, action, decision, agreement_version, row_count)
    SELECT seq, at, subscriber_id, connection_id, purpose, dataset, action, decision,
        CASE WHEN member_uid IS NULL THEN agreement_version END, CASE WHEN member_uid IS NULL THEN row_count END
    FROM access_log;
INSERT INTO access_event_members (event_seq, member_uid, agreement_version, row_count)
    SELECT seq, member_uid, agreement_version, row_count FROM access_log WHERE member_uid IS NOT NULL;
INSERT INTO access_member_blocks (member_uid, block)
    SELECT DISTINCT member_uid, seq / 64 FROM access_log WHERE member_uid IS NOT NULL;
DROP TABLE access_log;
