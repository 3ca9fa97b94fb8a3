-- One open review item per pair of profiles, and open items closed when a merge brings both
-- of their records into one profile: both look items up by either record.
CREATE INDEX review_items_open_record ON review_items (record_id) WHERE status = 'open';
CREATE INDEX review_items_open_other ON review_items (other_record_id) WHERE status = 'open';
