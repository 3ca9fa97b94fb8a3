-- A profile id stays valid after its profile is merged away: it names the records it held at
-- that moment, and leads to wherever they are. An unmerge that moves them sends the id after
-- them (`merged_into`), or, when they went to several profiles, marks it split
-- (`split_at_ms`): such an id answers with the profiles holding its records, never one of
-- them alone.
CREATE TABLE merged_records (
    profile_id BIGINT NOT NULL REFERENCES profiles (id) ON DELETE CASCADE,
    record_id BIGINT NOT NULL REFERENCES source_records (id) ON DELETE CASCADE,
    PRIMARY KEY (profile_id, record_id)
) WITHOUT ROWID;
CREATE INDEX merged_records_record ON merged_records (record_id);
ALTER TABLE profiles ADD COLUMN split_at_ms BIGINT;

-- What the ids merged away before this version named, read back from the outbox: the
-- records resolved into each (`record.received`), and those of the profiles it absorbed
-- before it was absorbed itself (`profile.merged`, ids as numbers or `p<number>`). A record
-- an unmerge moved out of a profile before that profile was merged away still counts: such
-- an id may come out split where it was not, never pointing at the wrong person.
WITH RECURSIVE
    absorptions (survivor, absorbed) AS (
        SELECT o.profile_id, CAST(ltrim(j.value, 'p') AS INTEGER)
        FROM outbox o, json_each(o.payload, '$.absorbed') j
        WHERE o.type = 'profile.merged' AND json_valid(o.payload)),
    named (alias, profile) AS (
        SELECT id, id FROM profiles WHERE merged_into IS NOT NULL
        UNION
        SELECT n.alias, a.absorbed FROM named n JOIN absorptions a ON a.survivor = n.profile)
INSERT OR IGNORE INTO merged_records (profile_id, record_id)
    SELECT n.alias, o.record_id FROM named n
    JOIN outbox o ON o.profile_id = n.profile AND o.type = 'record.received'
    JOIN source_records r ON r.id = o.record_id;

-- Ids an unmerge left behind before this version: sent after their records, or split.
UPDATE profiles SET merged_into = (
        SELECT MIN(r.profile_id) FROM merged_records m JOIN source_records r ON r.id = m.record_id
        WHERE m.profile_id = profiles.id)
    WHERE merged_into IS NOT NULL AND (
        SELECT COUNT(DISTINCT r.profile_id) FROM merged_records m JOIN source_records r ON r.id = m.record_id
        WHERE m.profile_id = profiles.id) = 1;
UPDATE profiles SET merged_into = NULL, split_at_ms = CAST(strftime('%s', 'now') AS INTEGER) * 1000
    WHERE merged_into IS NOT NULL AND (
        SELECT COUNT(DISTINCT r.profile_id) FROM merged_records m JOIN source_records r ON r.id = m.record_id
        WHERE m.profile_id = profiles.id) > 1;
