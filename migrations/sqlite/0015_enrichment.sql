-- Enrichment: third-party data added to records before matching and to profiles after they change.

-- A record of a Source a PreMatch Enricher names is not claimed by the matcher before this
-- time, unless its enrichment is written first (the column is then cleared).
ALTER TABLE intake ADD COLUMN held_until_ms BIGINT;
CREATE INDEX intake_held ON intake (id) WHERE held_until_ms IS NOT NULL;

-- Enrichment work, one row per enricher and target (a profile, or an intake record for a
-- PreMatch enricher): due at due_at_ms, retried with backoff, dead-lettered (dead_at_ms set)
-- after the last attempt. No values: what is sent is read again at each attempt.
CREATE TABLE enrich_jobs (
    enricher TEXT NOT NULL,
    kind TEXT NOT NULL,               -- 'profile' or 'record'
    target BIGINT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    due_at_ms BIGINT NOT NULL,
    last_error TEXT,                  -- no values: a status, a timeout, a refused connection
    created_at_ms BIGINT NOT NULL,
    dead_at_ms BIGINT,
    PRIMARY KEY (enricher, kind, target)
);
CREATE INDEX enrich_jobs_due ON enrich_jobs (enricher, due_at_ms) WHERE dead_at_ms IS NULL;

-- Where each enricher is in the outbox (ProfileChange) or in the intake queue (PreMatch), and
-- how many records were matched before their enrichment answered.
CREATE TABLE enrich_state (
    enricher TEXT PRIMARY KEY,
    cursor_id BIGINT NOT NULL DEFAULT 0,
    matched_unenriched BIGINT NOT NULL DEFAULT 0
);

-- Answers by a keyed digest of the values sent, reused until they expire.
CREATE TABLE enrich_cache (
    enricher TEXT NOT NULL,
    digest TEXT NOT NULL,
    answer TEXT NOT NULL,             -- PII: the values written back (JSON)
    expires_at_ms BIGINT NOT NULL,
    PRIMARY KEY (enricher, digest)
);

-- Which profile or record each digest was looked up for: erasure removes the person's
-- cache entries.
CREATE TABLE enrich_lookups (
    enricher TEXT NOT NULL,
    kind TEXT NOT NULL,
    target BIGINT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (enricher, kind, target, digest)
);
CREATE INDEX enrich_lookups_digest ON enrich_lookups (enricher, digest);

-- Provenance of PreMatch enrichment: which attributes of a record an enricher wrote, by which
-- call, when (names only, no values).
CREATE TABLE enrich_applied (
    record_id BIGINT NOT NULL,        -- the intake id, which is the source record's id
    enricher TEXT NOT NULL,
    call_id TEXT NOT NULL,
    attributes TEXT NOT NULL,         -- JSON array of attribute names
    at_ms BIGINT NOT NULL,
    PRIMARY KEY (record_id, enricher)
);
