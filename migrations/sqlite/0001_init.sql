-- Data-plane schema. PII lives only in the columns marked PII, so an erasure can remove it
-- by deleting or blanking those few columns; everything else holds ids, hashes and counters.

-- Intake queue and idempotency in one table: (source, source_record_id) is unique, so a
-- redelivered record is absorbed at insert. A processed row stays (state 'done', record
-- blanked) to keep absorbing redeliveries.
CREATE TABLE intake (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    source_record_id TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    record TEXT,                      -- PII: the canonical record (JSON), blanked once resolved
    state TEXT NOT NULL DEFAULT 'queued',
    claimed_by TEXT,
    claimed_at_ms BIGINT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    UNIQUE (source, source_record_id)
);
CREATE INDEX intake_queued ON intake (id) WHERE state = 'queued';

-- Invalid input, kept with every failing field; replayable after a Source fix.
CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    payload TEXT NOT NULL,            -- PII: the payload as received (JSON)
    errors TEXT NOT NULL              -- [{field, code, message}] (no values)
);
CREATE INDEX quarantine_source ON quarantine (source, id);

-- Profiles: stable ids; a merged-away profile keeps its row with merged_into set (an alias).
CREATE TABLE profiles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    merged_into BIGINT REFERENCES profiles (id),
    golden TEXT,                      -- PII: golden profile (JSON); NULL for aliases
    record_count INTEGER NOT NULL DEFAULT 0,
    version BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX profiles_merged_into ON profiles (merged_into) WHERE merged_into IS NOT NULL;

-- Source records and their link to a profile, with the evidence of that link.
CREATE TABLE source_records (
    id BIGINT PRIMARY KEY,            -- the intake id
    source TEXT NOT NULL,
    source_record_id TEXT NOT NULL,
    observed_at_ms BIGINT NOT NULL,
    received_at_ms BIGINT NOT NULL,
    profile_id BIGINT NOT NULL REFERENCES profiles (id),
    attributes TEXT NOT NULL,         -- PII: canonical attributes as sent (JSON)
    normalised TEXT NOT NULL,         -- PII: normalised values (JSON)
    evidence TEXT NOT NULL,           -- why the record is in its profile (levels and weights, no values)
    UNIQUE (source, source_record_id)
);
CREATE INDEX source_records_profile ON source_records (profile_id);

-- Keyed hashes of a record's blocking keys and lookup identifiers (no plaintext values).
CREATE TABLE record_keys (
    hash BIGINT NOT NULL,
    record_id BIGINT NOT NULL REFERENCES source_records (id) ON DELETE CASCADE,
    PRIMARY KEY (hash, record_id)
);
CREATE INDEX record_keys_record ON record_keys (record_id);

-- Pairs a person must look at. Approve merges, reject records a never-merge pair.
CREATE TABLE review_items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    record_id BIGINT NOT NULL REFERENCES source_records (id) ON DELETE CASCADE,
    other_record_id BIGINT NOT NULL REFERENCES source_records (id) ON DELETE CASCADE,
    reason TEXT NOT NULL,
    probability REAL NOT NULL,
    evidence TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'open',
    created_at_ms BIGINT NOT NULL,
    decided_at_ms BIGINT,
    decided_by TEXT
);
CREATE INDEX review_items_open ON review_items (id) WHERE status = 'open';

-- Records that must never end up in one profile (a rejected review, a manual unmerge).
CREATE TABLE never_merge (
    record_a BIGINT NOT NULL REFERENCES source_records (id) ON DELETE CASCADE,
    record_b BIGINT NOT NULL REFERENCES source_records (id) ON DELETE CASCADE,
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (record_a, record_b)
);
CREATE INDEX never_merge_b ON never_merge (record_b);

-- Outbox: every change as an event, written in the transaction that made it. Ordered by id.
CREATE TABLE outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    profile_id BIGINT,
    record_id BIGINT,
    type TEXT NOT NULL,
    payload TEXT NOT NULL,            -- PII possible (changed attributes)
    created_at_ms BIGINT NOT NULL
);
CREATE INDEX outbox_profile ON outbox (profile_id, id);
