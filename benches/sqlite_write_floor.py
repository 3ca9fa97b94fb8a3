#!/usr/bin/env python3
"""The fastest SQLite can store what resolving a record writes, with no resolving at all.

Applies the project's SQLite migrations to a fresh file (same tables, indexes and pragmas as
the store), queues N records, then, batch by batch in one transaction each, writes for every
record what the matcher's batch writes: the record row (attributes, normalised values,
evidence, terms), its key rows (8 blocking/lookup keys, most shared with the person's other
records), a new profile or its golden record rewritten, 4 term counts (2 of them every
record's), 2 outbox events, and the intake row marked done. No candidate is read and nothing
is compared, so the rate is a ceiling for `cdp bench throughput` on the same machine.

People come back across the stream as in the throughput generator (3 records per person).

    python3 benches/sqlite_write_floor.py --records 1000000 --batch 4096
"""
import argparse
import json
import os
import random
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations" / "sqlite"
# share of a record's keys that differ from the person's other records (typos, moves)
KEY_NOISE = 0.25
PRAGMAS = """PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;
PRAGMA cache_size = -65536; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0;"""


def key_hash(*parts: int) -> int:
    """A 63-bit hash of integers (Python hashes integer tuples the same in every run)."""
    return hash(parts) & ((1 << 63) - 1)


def checkpointer(path: str, writer: threading.Lock, done: threading.Event) -> None:
    """The store's checkpointer: a passive checkpoint every second beside the writer, the
    rest under the writer's lock once the log passes 32,768 frames."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    while not done.wait(1.0):
        if db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1] >= 32768:
            with writer:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
    db.close()


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args.add_argument("--records", type=int, default=200_000)
    args.add_argument("--batch", type=int, default=4096)
    args.add_argument("--seed", type=int, default=42)
    args.add_argument("--keys-per-record", type=int, default=8, help="key rows per record (0: what the rest costs)")
    opts = args.parse_args()
    rng = random.Random(opts.seed)
    workdir = tempfile.mkdtemp()
    path = os.path.join(workdir, "floor.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(PRAGMAS)
    for migration in sorted(MIGRATIONS.glob("*.sql")):
        db.executescript("BEGIN;" + migration.read_text() + "COMMIT;")

    attributes = json.dumps({"givenName": "Jean-Pierre", "familyName": "de la Fontaine", "birthDate": "1984-03-07",
                             "email": "jean-pierre.delafontaine@example.org", "phone": "+33 6 12 34 56 78",
                             "street": "12 rue des Lilas", "postcode": "75011", "city": "Paris"})
    normalised = attributes.lower()
    evidence = json.dumps({"decision": "linked", "links": [{"profileId": 1, "probability": 0.99, "pair": {
        "weight": 21.5, "comparisons": [{"name": n, "level": "exact", "weight": 4.2} for n in range(6)]}}]})
    golden = json.dumps({"attributes": {a: {"value": "x" * 16, "source": "pos", "rule": "trust"} for a in range(10)}})
    people = max(1, opts.records // 3)
    persons = [rng.randrange(people) for _ in range(opts.records)]

    started = time.time()
    db.execute("BEGIN")
    db.executemany("INSERT INTO intake (id, source, source_record_id, received_at_ms, record) VALUES (?, 'pos', ?, 0, ?)",
                   ((i + 1, str(i + 1), attributes) for i in range(opts.records)))
    db.execute("COMMIT")
    queued = time.time() - started

    profile_of: dict[int, int] = {}
    writer, done = threading.Lock(), threading.Event()
    checkpoints = threading.Thread(target=checkpointer, args=(path, writer, done))
    checkpoints.start()
    marks, started = [], time.time()
    tenth = max(1, opts.records // 10)
    for first in range(0, opts.records, opts.batch):
        ids = range(first + 1, min(first + opts.batch, opts.records) + 1)
        new_profiles, goldens, records, keys, terms, events = [], {}, [], [], [], []
        for rid in ids:
            person = persons[rid - 1]
            profile = profile_of.get(person)
            if profile is None:
                profile = profile_of[person] = rid
                new_profiles.append((profile, golden))
            else:
                goldens[profile] = golden
            records.append((rid, "pos", str(rid), 0, 0, profile, attributes, normalised, evidence, "[1,2,3,4]"))
            for k in range(opts.keys_per_record):
                owner = (1, rid) if rng.random() < KEY_NOISE else (0, person)
                keys.append((key_hash(opts.seed, k, *owner), profile, rid))
            terms += [(key_hash(opts.seed, 10, person % 5000),), (key_hash(opts.seed, 11, person % 20000),), (1,), (2,)]
            events += [(profile, rid, "record.received", evidence), (profile, rid, "profile.updated", golden)]
        writer.acquire()
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO profiles (id, created_at_ms, updated_at_ms, golden, record_count) VALUES (?, 0, 0, ?, 1)",
                       new_profiles)
        db.executemany("INSERT INTO source_records (id, source, source_record_id, observed_at_ms, received_at_ms, profile_id,"
                       " attributes, normalised, evidence, terms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", records)
        db.executemany("INSERT OR IGNORE INTO record_keys (hash, profile_id, record_id) VALUES (?, ?, ?)", keys)
        db.executemany("UPDATE profiles SET golden = ?, record_count = record_count + 1, updated_at_ms = 1 WHERE id = ?",
                       [(g, p) for p, g in goldens.items()])
        db.executemany("INSERT INTO term_counts (term, records) VALUES (?, 1)"
                       " ON CONFLICT (term) DO UPDATE SET records = records + 1", terms)
        db.executemany("INSERT INTO outbox (profile_id, record_id, type, payload, created_at_ms) VALUES (?, ?, ?, ?, 0)",
                       events)
        db.executemany("UPDATE intake SET state = 'done', record = NULL WHERE id = ?", ((i,) for i in ids))
        db.execute("COMMIT")
        writer.release()
        if ids[-1] // tenth > (ids[0] - 1) // tenth:
            marks.append((ids[-1], time.time()))
    elapsed = time.time() - started
    done.set()
    checkpoints.join()
    tenths, last = [], (0, started)
    for written, at in marks:
        tenths.append(round((written - last[0]) / (at - last[1])))
        last = (written, at)
    print(json.dumps({"records": opts.records, "batch": opts.batch, "keysPerRecord": opts.keys_per_record,
                      "enqueuePerSecond": round(opts.records / queued), "writtenPerSecond": round(opts.records / elapsed),
                      "byTenth": tenths, "databaseMb": round(sum(os.path.getsize(os.path.join(workdir, f)) for f in os.listdir(workdir)) / 2**20)}))
    db.close()
    for name in os.listdir(workdir):
        os.remove(os.path.join(workdir, name))
    os.rmdir(workdir)


if __name__ == "__main__":
    main()
