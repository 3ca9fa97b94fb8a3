-- The matcher finds candidates by the profiles of the records that share a blocking key. The
-- key rows now carry that profile (kept current by merges and unmerges), so a block is one
-- index range, read without a join to the wide record rows.
ALTER TABLE record_keys ADD COLUMN profile_id BIGINT;
UPDATE record_keys k SET profile_id = r.profile_id FROM source_records r WHERE r.id = k.record_id;
ALTER TABLE record_keys ALTER COLUMN profile_id SET NOT NULL;
ALTER TABLE record_keys DROP CONSTRAINT record_keys_pkey;
ALTER TABLE record_keys ADD PRIMARY KEY (hash, profile_id, record_id);

-- The records of a profile, answered by an index-only scan.
DROP INDEX source_records_profile;
CREATE INDEX source_records_profile ON source_records (profile_id) INCLUDE (id);
