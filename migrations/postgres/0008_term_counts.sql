-- Term-frequency adjustments: how many records carry each value of a counted attribute
-- (`term` hashes `attribute=value`) and how many carry the attribute at all (`term` hashes
-- `attribute`). Each record keeps the terms it added, so that removing it takes them back.
CREATE TABLE term_counts (term BIGINT PRIMARY KEY, records BIGINT NOT NULL);
ALTER TABLE source_records ADD COLUMN terms TEXT;
