-- Outbound feeds: where each feed is in the outbox, and the events it still owes a destination.

-- One row per feed: its cursor (every outbox event up to it was delivered, filtered out or
-- moved to feed_deliveries), counters, and which replica works it (a lease).
CREATE TABLE feed_state (
    feed TEXT PRIMARY KEY,
    cursor_id BIGINT NOT NULL DEFAULT 0,
    delivered BIGINT NOT NULL DEFAULT 0,
    failures BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,                  -- no values: a status, a timeout, a refused connection
    owner TEXT,
    lease_until_ms BIGINT NOT NULL DEFAULT 0
);

-- Events a feed could not deliver yet: retrying (due at next_attempt_ms), held behind an
-- earlier event of the same profile, or dead-lettered (dead_at_ms set) after maxAttempts.
CREATE TABLE feed_deliveries (
    feed TEXT NOT NULL,
    event_id BIGINT NOT NULL,
    profile_id BIGINT,
    type TEXT NOT NULL,
    message TEXT NOT NULL,            -- PII: the minimised message as it is sent (JSON)
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms BIGINT NOT NULL,
    last_error TEXT,
    created_at_ms BIGINT NOT NULL,
    dead_at_ms BIGINT,
    PRIMARY KEY (feed, event_id)
);
CREATE INDEX feed_deliveries_profile ON feed_deliveries (feed, profile_id, event_id) WHERE dead_at_ms IS NULL;
CREATE INDEX feed_deliveries_dead ON feed_deliveries (feed, event_id) WHERE dead_at_ms IS NOT NULL;
