-- The generation that last changed each agreement: a node's cache of a connection's
-- agreements reads only the rows changed since the generation it holds, not a million
-- rows after every approval. Rows are never deleted (a revocation is a status), so a
-- change is always a row with a newer generation.
ALTER TABLE agreements ADD COLUMN generation BIGINT NOT NULL DEFAULT 0;
DROP INDEX agreements_connection;
CREATE INDEX agreements_connection_generation ON agreements (connection_id, generation);
