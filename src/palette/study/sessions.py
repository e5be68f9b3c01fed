"""An observer's session: registration, the next trial, its images and the answer, each a small transaction.

The server decides everything: an observer gets the first trial they have not answered, its images are served only
while it is the one handed out, and an answer is accepted for a handed-out trial once. Everything lives in the
database, so a restarted server continues every session where it stopped.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from dataclasses import dataclass

from . import db
from .design import SIDES, observer_trials


class Refused(Exception):
    """A request the session does not allow (an answer for a trial not handed out, or given twice)."""


@dataclass(frozen=True)
class Progress:
    answered: int
    total: int

    @property
    def finished(self) -> bool:
        return self.answered >= self.total


class Study:
    """One open study database and its settings."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.settings = db.read_settings(conn)
        self.walks = [[row[0] for row in conn.execute("SELECT id FROM pairs WHERE condition_id = ? ORDER BY id",
                                                      (condition_id,))]
                      for (condition_id,) in conn.execute("SELECT id FROM conditions ORDER BY id").fetchall()]
        self.catch_walk = [row[0] for row in conn.execute("SELECT id FROM pairs WHERE condition_id IS NULL "
                                                          "ORDER BY id")]

    def register(self) -> str:
        """A new observer with their trials; returns the token that identifies them."""
        token = secrets.token_urlsafe(18)
        s = self.settings
        with db.transaction(self.conn):
            observer_id = self.conn.execute("INSERT INTO observers (token, started_at) VALUES (?, ?)",
                                            (token, time.time())).lastrowid
            trials = observer_trials(self.walks, self.catch_walk, s["trials_per_observer"] - s["catch_trials"],
                                     s["catch_trials"], s["seed"], observer_id - 1)
            self.conn.executemany("INSERT INTO trials (observer_id, position, pair_id, real_side) VALUES (?, ?, ?, ?)",
                                  [(observer_id, i, t.pair_id, t.real_side) for i, t in enumerate(trials)])
        return token

    def observer(self, token: str | None) -> int | None:
        if not token:
            return None
        row = self.conn.execute("SELECT id FROM observers WHERE token = ?", (token,)).fetchone()
        return None if row is None else row[0]

    def progress(self, observer_id: int) -> Progress:
        answered = self.conn.execute("SELECT COUNT(*) FROM answers WHERE observer_id = ?", (observer_id,)).fetchone()[0]
        total = self.conn.execute("SELECT COUNT(*) FROM trials WHERE observer_id = ?", (observer_id,)).fetchone()[0]
        return Progress(answered, total)

    def _current(self, observer_id: int) -> sqlite3.Row | None:
        """The observer's first unanswered trial."""
        return self.conn.execute(
            "SELECT t.* FROM trials t WHERE t.observer_id = ? AND NOT EXISTS (SELECT 1 FROM answers a "
            "WHERE a.observer_id = t.observer_id AND a.position = t.position) ORDER BY t.position LIMIT 1",
            (observer_id,)).fetchone()

    def hand_out(self, observer_id: int) -> int | None:
        """Hand out the observer's next trial (again, after a reload or a restart); its position, None when done."""
        with db.transaction(self.conn):
            trial = self._current(observer_id)
            if trial is None:
                return None
            self.conn.execute("UPDATE trials SET handed_out_at = ?, times_shown = times_shown + 1 "
                              "WHERE observer_id = ? AND position = ?", (time.time(), observer_id, trial["position"]))
        return trial["position"]

    def image(self, observer_id: int, position: int, side: str) -> bytes | None:
        """A side's PNG of the handed-out trial at ``position``; None for any other trial."""
        trial = self._current(observer_id)
        if side not in SIDES or trial is None or trial["position"] != position or trial["handed_out_at"] is None:
            return None
        column = "real_image" if side == trial["real_side"] else "fake_image"
        return self.conn.execute(f"SELECT i.png FROM pairs p JOIN images i ON i.id = p.{column} WHERE p.id = ?",
                                 (trial["pair_id"],)).fetchone()[0]

    def answer(self, observer_id: int, position: int, choice: str, response_ms: float,
               shown_ms: float | None) -> Progress:
        """Record an answer to the handed-out trial at ``position``, committed before this returns."""
        if choice not in SIDES:
            raise Refused(f"choice must be one of {', '.join(SIDES)}")
        with db.transaction(self.conn):
            trial = self.conn.execute("SELECT t.*, p.condition_id FROM trials t JOIN pairs p ON p.id = t.pair_id "
                                      "WHERE t.observer_id = ? AND t.position = ?",
                                      (observer_id, position)).fetchone()
            if trial is None or trial["handed_out_at"] is None:
                raise Refused(f"trial {position} was not handed out to this observer")
            if self.conn.execute("SELECT 1 FROM answers WHERE observer_id = ? AND position = ?",
                                 (observer_id, position)).fetchone():
                raise Refused(f"trial {position} is answered already")
            self.conn.execute(
                "INSERT INTO answers (observer_id, position, pair_id, condition_id, real_side, choice, picked_fake, "
                "response_ms, shown_ms, too_fast, answered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (observer_id, position, trial["pair_id"], trial["condition_id"], trial["real_side"], choice,
                 int(choice != trial["real_side"]), response_ms, shown_ms,
                 int(response_ms < self.settings["min_response_ms"]), time.time()))
        return self.progress(observer_id)
