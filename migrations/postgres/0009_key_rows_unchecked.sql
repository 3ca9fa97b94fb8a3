-- A record's key rows are written in the transaction that writes the record, and removed by
-- the one that removes it (`delete_records`). The foreign key checked each row again with a
-- per-row trigger that looks its record up and locks it, about eight times per resolved
-- record: the insert took 4.1 ms per batch of 32 records with the check and 1.2 ms without
-- (`pg_stat_statements`, 100,000 records). SQLite keeps the constraint: there
-- the check is a look-up in pages the insert just touched, and dropping it measured no gain.
ALTER TABLE record_keys DROP CONSTRAINT record_keys_record_id_fkey;
