"""The study database: one SQLite file holds the images, the trial design and every answer.

The images are stored in it (PNG), so a study is one file that can be copied to the machine that serves it, and the
server never reads a path a request could name. Answers are committed one by one in WAL mode with
``synchronous=FULL``: a crash, a killed server or a closed tab loses nothing that was acknowledged.
``PRAGMA application_id`` marks the file as a palette study and ``PRAGMA user_version`` holds the schema version; a
file of another version is refused, never silently upgraded.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from ..errors import ArgumentError

APPLICATION_ID = 0x50414C53  # "PALS"
SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    png BLOB NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    source TEXT NOT NULL  -- the file it was made from (a catch image: 'degraded:' and its real image's file)
);
CREATE TABLE conditions (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, source TEXT NOT NULL);
CREATE TABLE pairs (
    id INTEGER PRIMARY KEY,  -- within a condition, the order observers walk through its pairs
    condition_id INTEGER REFERENCES conditions(id),  -- NULL: a catch pair (a real photo against a degraded copy)
    image_key TEXT NOT NULL,  -- the original photo: the unit the report resamples over
    sample INTEGER NOT NULL,  -- which of the model's samples of that photo
    real_image INTEGER NOT NULL REFERENCES images(id),
    fake_image INTEGER NOT NULL REFERENCES images(id)
);
CREATE TABLE observers (
    id INTEGER PRIMARY KEY,  -- id - 1 is the observer's index in the design
    token TEXT NOT NULL UNIQUE,
    started_at REAL NOT NULL
);
CREATE TABLE trials (
    observer_id INTEGER NOT NULL REFERENCES observers(id),
    position INTEGER NOT NULL,  -- 0-based order of presentation
    pair_id INTEGER NOT NULL REFERENCES pairs(id),
    real_side TEXT NOT NULL CHECK (real_side IN ('left', 'right')),
    handed_out_at REAL,  -- NULL until the server sends it; only a handed-out trial can be answered
    times_shown INTEGER NOT NULL DEFAULT 0,  -- above 1 when a reload or a server restart showed it again
    PRIMARY KEY (observer_id, position)
);
CREATE TABLE answers (
    observer_id INTEGER NOT NULL,
    position INTEGER NOT NULL,
    pair_id INTEGER NOT NULL REFERENCES pairs(id),
    condition_id INTEGER REFERENCES conditions(id),  -- NULL: a catch trial
    real_side TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('left', 'right')),
    picked_fake INTEGER NOT NULL,
    response_ms REAL NOT NULL,  -- from the pair's first frame on screen to the answer, measured in the browser
    shown_ms REAL,  -- how long the pair was on screen, measured in the browser
    too_fast INTEGER NOT NULL,  -- response_ms under the study's min_response_ms: kept, flagged, left out of the report
    answered_at REAL NOT NULL,
    PRIMARY KEY (observer_id, position),
    FOREIGN KEY (observer_id, position) REFERENCES trials(observer_id, position)
);
CREATE VIEW answer_log AS
    SELECT a.observer_id, a.position AS trial, COALESCE(c.name, 'catch') AS condition, a.real_side, a.choice,
           a.picked_fake, a.response_ms, a.shown_ms, a.too_fast, a.answered_at
    FROM answers a LEFT JOIN conditions c ON c.id = a.condition_id;
"""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # explicit BEGIN/COMMIT below
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def create_database(path: str | Path) -> sqlite3.Connection:
    """A new, empty study database at ``path``; an existing file is never overwritten (it may hold answers)."""
    path = Path(path)
    if path.exists():
        raise ArgumentError("db_path", f"{path} exists: a study database is never overwritten; choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = _connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    with transaction(conn):
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        for statement in SCHEMA.split(";\n"):
            if statement.strip():
                conn.execute(statement)
    return conn


def open_database(path: str | Path) -> sqlite3.Connection:
    """An existing study database, checked to be a palette study of this schema version."""
    path = Path(path)
    if not path.is_file():
        raise ArgumentError("db_path", f"{path}: no such file (create the study with `palette study create` first)")
    conn = _connect(path)
    try:
        application_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as err:
        conn.close()
        raise ArgumentError("db_path", f"{path}: not a SQLite database ({err})") from None
    if application_id != APPLICATION_ID:
        conn.close()
        raise ArgumentError("db_path", f"{path}: a SQLite database, but not a palette study (made by `palette study "
                            "create`)")
    if version != SCHEMA_VERSION:
        conn.close()
        raise ArgumentError("db_path", f"{path}: a study database of schema version {version}; this palette reads "
                            f"version {SCHEMA_VERSION} only (use the palette version that created it)")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    return conn


class transaction:
    """``with transaction(conn):`` BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, value, traceback):
        self.conn.execute("ROLLBACK" if kind else "COMMIT")
        return False


def write_settings(conn: sqlite3.Connection, values: dict) -> None:
    conn.executemany("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                     [(key, json.dumps(value)) for key, value in values.items()])


def read_settings(conn: sqlite3.Connection) -> dict:
    return {row["key"]: json.loads(row["value"]) for row in conn.execute("SELECT key, value FROM settings")}
