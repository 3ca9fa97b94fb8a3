-- GDPR: erasure audit, suppression list and the key of their hashes. Nothing here holds PII:
-- identifiers appear only as keyed hashes (HMAC-SHA256 under privacy_key.secret).

-- The secret of the keyed identifier hashes, made once per store.
CREATE TABLE privacy_key (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    secret TEXT NOT NULL
);

-- One row per erasure: whom (keyed hashes and profile ids), when, why (a code), by which token.
CREATE TABLE erasures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    erased_at_ms BIGINT NOT NULL,
    subject_hashes TEXT NOT NULL,     -- JSON array of keyed hashes of the person's identifiers
    profile_ids TEXT NOT NULL,        -- JSON array of the erased profile ids (live and aliases)
    reason TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    removed TEXT NOT NULL             -- JSON object: rows removed per kind
);

-- Identifiers of erased people: a record carrying one is refused at intake unless its Source
-- lets the person start a new profile.
CREATE TABLE suppressed_identifiers (
    hash TEXT PRIMARY KEY,
    erasure_id BIGINT NOT NULL REFERENCES erasures (id),
    created_at_ms BIGINT NOT NULL
);

-- Retention purges by source and age.
CREATE INDEX source_records_age ON source_records (source, observed_at_ms);
CREATE INDEX quarantine_age ON quarantine (source, received_at_ms);
