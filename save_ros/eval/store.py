"""The results store of a campaign: one SQLite row per trial, written as trials finish.

A trial's primary key is its `TrialKey` (method, point index, trial index), so a trial that is
delivered twice (a Ray task retried after its node died, a chunk re-run after a restart) is
stored once; the second copy is compared with the first and counted (`duplicates`, and
`conflicts` if it differs, which would mean a trial is not a pure function of its key). The
store is bound to one campaign by a key, the hash of everything that decides its trials (the
config, the model and how it was given, the device kind); a store of another campaign is
refused, so `--resume` can never mix two campaigns. SQLite runs in WAL mode with a commit per
delivered chunk: a campaign killed at any moment keeps every chunk committed before, and its
readers (a progress monitor, a test) read while it writes.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from save_ros.errors import UserError
from save_ros.eval.trial import TrialKey, reproducible

SCHEMA = """
CREATE TABLE IF NOT EXISTS campaign (
    key TEXT PRIMARY KEY, spec TEXT NOT NULL, meta TEXT);
CREATE TABLE IF NOT EXISTS trials (
    method TEXT NOT NULL, point INTEGER NOT NULL, trial INTEGER NOT NULL,
    seed INTEGER NOT NULL, record TEXT NOT NULL, worker TEXT,
    PRIMARY KEY (method, point, trial));
"""


class StoreError(UserError, ValueError):
    """A results store that cannot be used for this campaign (the message says why)."""


def campaign_key(spec: dict) -> str:
    """A short stable hash of a campaign's identity (JSON with sorted keys)."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class TrialStore:
    """The trials of one campaign in an SQLite file (`:memory:` keeps them in this process)."""

    def __init__(self, path: str | Path, spec: dict, resume: bool = False) -> None:
        self.path, self.spec, self.key = str(path), spec, campaign_key(spec)
        self.duplicates = self.conflicts = 0
        if self.path != ":memory:" and not resume and Path(self.path).exists():
            raise StoreError(f"{self.path} already exists; pass --resume to continue the "
                             "campaign it holds, or choose another --store")
        if resume and self.path != ":memory:" and not Path(self.path).exists():
            raise StoreError(f"--resume: {self.path} does not exist (nothing to resume)")
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)  # like --json's folders
        try:
            self.db = sqlite3.connect(self.path)
            if self.path != ":memory:":
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")  # durable against a killed process
            self.db.executescript(SCHEMA)
            row = self.db.execute("SELECT key, spec FROM campaign").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"--store {self.path}: cannot use it as a campaign store ({exc}); "
                             "give a new file, or the store of the campaign to resume") from None
        if row is None:
            with self.db:
                self.db.execute("INSERT INTO campaign (key, spec) VALUES (?, ?)",
                                (self.key, json.dumps(spec, sort_keys=True, default=list)))
        elif row[0] != self.key:
            theirs = json.loads(row[1])
            ours = json.loads(json.dumps(spec, default=list))
            diff = sorted(_differences(theirs, ours))
            raise StoreError(f"{self.path} holds another campaign (key {row[0]}, this one "
                             f"{self.key}; they differ in {', '.join(diff) or 'format'}); "
                             "resume with the same options, or choose another --store")

    def done(self) -> set[TrialKey]:
        """The keys of the trials already stored."""
        return {TrialKey(m, p, t) for m, p, t in
                self.db.execute("SELECT method, point, trial FROM trials")}

    def add(self, records: Iterable[dict], worker: str | None = None) -> int:
        """Store trial records in one transaction; returns how many were new.

        `worker` names where they ran (host:pid), kept beside the record for the curious."""
        new = 0
        with self.db:
            for r in records:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO trials (method, point, trial, seed, record, worker) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (r["method"], r["point"], r["trial"], r["seed"], json.dumps(r), worker))
                if cur.rowcount:
                    new += 1
                    continue
                self.duplicates += 1
                (old,) = self.db.execute(
                    "SELECT record FROM trials WHERE method = ? AND point = ? AND trial = ?",
                    (r["method"], r["point"], r["trial"])).fetchone()
                if _canonical(reproducible(json.loads(old))) != _canonical(reproducible(r)):
                    self.conflicts += 1
        return new

    def records(self) -> list[dict]:
        """Every stored trial record, in key order."""
        return [json.loads(r) for (r,) in self.db.execute(
            "SELECT record FROM trials ORDER BY method, point, trial")]

    def workers(self) -> dict[str, int]:
        """Worker (host:pid) -> how many of the stored trials it ran."""
        return dict(self.db.execute("SELECT worker, COUNT(*) FROM trials GROUP BY worker"))

    def set_meta(self, meta: dict) -> None:
        """Keep what the workers reported about the prepared model (for a resumed result)."""
        with self.db:
            self.db.execute("UPDATE campaign SET meta = ?", (json.dumps(meta),))

    def meta(self) -> dict | None:
        """The prepared model's description, once a worker has reported it."""
        (text,) = self.db.execute("SELECT meta FROM campaign").fetchone()
        return None if text is None else json.loads(text)

    def close(self) -> None:
        """Close the database (every chunk is already committed)."""
        self.db.close()

    def __enter__(self) -> TrialStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _canonical(record: dict) -> str:
    """A record as text, so that NaN equals NaN (a crashed fine-tune's accuracy)."""
    return json.dumps(record, sort_keys=True)


def _differences(a: dict, b: dict, prefix: str = "") -> Iterable[str]:
    for k in set(a) | set(b):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            yield from _differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            yield f"{prefix}{k}"
