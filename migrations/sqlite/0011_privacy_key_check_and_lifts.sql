-- GDPR, continued: the key of the identifier hashes may come from outside the store, the
-- suppression list is paged by id, and lifting a suppression is audited.

-- A store whose hashes are made with a key given from outside (a Kubernetes Secret) keeps
-- only this check value of it (HMAC-SHA256 of a fixed label under the key), never the key:
-- a different or a missing key is then refused instead of making hashes that no longer
-- match the suppression list.
CREATE TABLE privacy_key_check (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    check_value TEXT NOT NULL
);

-- The suppression list again, with an id to page by (SQLite cannot add one in place).
CREATE TABLE suppressed_identifiers_paged (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL UNIQUE,
    erasure_id BIGINT NOT NULL REFERENCES erasures (id),
    created_at_ms BIGINT NOT NULL
);
INSERT INTO suppressed_identifiers_paged (hash, erasure_id, created_at_ms)
    SELECT hash, erasure_id, created_at_ms FROM suppressed_identifiers ORDER BY created_at_ms, hash;
DROP TABLE suppressed_identifiers;
ALTER TABLE suppressed_identifiers_paged RENAME TO suppressed_identifiers;

-- One row per suppression lifted (a person who asked to be forgotten came back): which keyed
-- hash, from which erasure, when, why (a code) and by which token. No value of the person.
CREATE TABLE suppression_lifts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    lifted_at_ms BIGINT NOT NULL,
    hash TEXT NOT NULL,
    erasure_id BIGINT NOT NULL REFERENCES erasures (id),
    reason TEXT NOT NULL,
    requested_by TEXT NOT NULL
);
