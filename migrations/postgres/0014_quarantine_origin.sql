-- Where a quarantined payload was read in Kafka (topic, partition, offset; JSON), so that an
-- operator can find the message again; NULL for HTTP intake and files.
ALTER TABLE quarantine ADD COLUMN origin TEXT;
