-- Idempotency keys of writes whose WAL segments were deleted: a retry with the same key
-- must still find the first answer. Keep in step with ../postgres.
CREATE TABLE idempotency_keys (
    connection_id   BIGINT NOT NULL,
    idempotency_key TEXT NOT NULL,
    body_hash       TEXT NOT NULL,
    accepted        BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (connection_id, idempotency_key)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
