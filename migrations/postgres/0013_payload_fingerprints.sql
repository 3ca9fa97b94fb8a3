-- What each delivery held, as a digest of its payload (never the payload itself): a record
-- re-sent under an event id its source already used is a redelivery when the digests agree,
-- a conflict when they differ; an invalid payload re-sent is the entry already kept. Rows from
-- before have none: their redeliveries are absorbed as before.
ALTER TABLE intake ADD COLUMN fingerprint TEXT;
ALTER TABLE quarantine ADD COLUMN fingerprint TEXT;
CREATE UNIQUE INDEX quarantine_fingerprint ON quarantine (source, fingerprint);
