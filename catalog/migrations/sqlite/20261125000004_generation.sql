-- A counter bumped in the same transaction as every change to what a credential may do
-- (connection approval and promotion, agreement approval and revocation, dataset changes),
-- so nodes may cache authorization state and check one number per request.
INSERT INTO counters (name, value) VALUES ('generation', 0);
