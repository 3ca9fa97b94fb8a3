-- The matcher finds candidates by the profiles of the records that share a blocking key. The
-- key rows now carry that profile (kept current by merges and unmerges), so a block is one
-- range of one B-tree, read without a join to the wide record rows.
CREATE TABLE record_keys_by_profile (
    hash BIGINT NOT NULL,
    profile_id BIGINT NOT NULL,
    record_id BIGINT NOT NULL REFERENCES source_records (id) ON DELETE CASCADE,
    PRIMARY KEY (hash, profile_id, record_id)
) WITHOUT ROWID;
INSERT INTO record_keys_by_profile (hash, profile_id, record_id)
    SELECT k.hash, r.profile_id, k.record_id FROM record_keys k JOIN source_records r ON r.id = k.record_id;
DROP TABLE record_keys;
ALTER TABLE record_keys_by_profile RENAME TO record_keys;
CREATE INDEX record_keys_record ON record_keys (record_id);

-- The records of a profile, answered from the index alone.
DROP INDEX source_records_profile;
CREATE INDEX source_records_profile ON source_records (profile_id, id);
