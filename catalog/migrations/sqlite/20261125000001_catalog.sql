-- trove catalog, SQLite dialect. Keep in step with ../postgres: same tables, same columns.
-- Times are epoch milliseconds; secrets are hex SHA-256.

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO counters (name, value) VALUES ('nid', 0);

CREATE TABLE datasets (
    name             TEXT PRIMARY KEY,
    title            TEXT NOT NULL,
    description      TEXT NOT NULL,
    kind             TEXT NOT NULL CHECK (kind IN ('metadata', 'transactional')),
    environment      TEXT NOT NULL CHECK (environment IN ('sandbox', 'production')),
    event_time_field TEXT,
    fields           TEXT NOT NULL,
    builtin          BIGINT NOT NULL,
    created_at       BIGINT NOT NULL
);

CREATE TABLE members (
    uid         INTEGER PRIMARY KEY,
    mydexid     TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

CREATE TABLE subscribers (
    id                 INTEGER PRIMARY KEY,
    name               TEXT NOT NULL UNIQUE,
    client_id          TEXT NOT NULL UNIQUE,
    client_secret_hash TEXT NOT NULL,
    api_key_hash       TEXT NOT NULL UNIQUE,
    created_at         BIGINT NOT NULL
);

CREATE TABLE access_tokens (
    token_hash    TEXT PRIMARY KEY,
    subscriber_id BIGINT NOT NULL REFERENCES subscribers (id),
    expires_at    BIGINT NOT NULL
);
CREATE INDEX access_tokens_expiry ON access_tokens (expires_at);

CREATE TABLE connections (
    id                INTEGER PRIMARY KEY,
    subscriber_id     BIGINT NOT NULL REFERENCES subscribers (id),
    nid               BIGINT UNIQUE,
    key_hash          TEXT,
    environment       TEXT NOT NULL CHECK (environment IN ('sandbox', 'live')),
    promote_requested BIGINT NOT NULL,
    approved_version  BIGINT,
    created_at        BIGINT NOT NULL
);
CREATE INDEX connections_subscriber ON connections (subscriber_id);

CREATE TABLE connection_revisions (
    connection_id BIGINT NOT NULL REFERENCES connections (id),
    version       BIGINT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('draft', 'requested', 'approved', 'superseded')),
    terms         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    PRIMARY KEY (connection_id, version)
);

CREATE TABLE agreements (
    member_uid    BIGINT NOT NULL REFERENCES members (uid),
    connection_id BIGINT NOT NULL REFERENCES connections (id),
    version       BIGINT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    key_hash      TEXT NOT NULL,
    approved_at   BIGINT NOT NULL,
    revoked_at    BIGINT,
    PRIMARY KEY (member_uid, connection_id)
);
CREATE INDEX agreements_connection ON agreements (connection_id);

CREATE TABLE metadata_instances (
    member_uid  BIGINT NOT NULL REFERENCES members (uid),
    dataset     TEXT NOT NULL REFERENCES datasets (name),
    environment TEXT NOT NULL CHECK (environment IN ('sandbox', 'production')),
    id          BIGINT NOT NULL,
    field_values TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (member_uid, dataset, environment, id)
);

CREATE TABLE access_log (
    seq               INTEGER PRIMARY KEY,
    at                BIGINT NOT NULL,
    member_uid        BIGINT NOT NULL,
    subscriber_id     BIGINT NOT NULL,
    connection_id     BIGINT NOT NULL,
    agreement_version BIGINT,
    purpose           TEXT NOT NULL,
    dataset           TEXT NOT NULL,
    action            TEXT NOT NULL CHECK (action IN ('read', 'write')),
    row_count         BIGINT NOT NULL,
    decision          TEXT NOT NULL CHECK (decision IN ('allowed', 'refused'))
);
CREATE INDEX access_log_member ON access_log (member_uid, seq);
