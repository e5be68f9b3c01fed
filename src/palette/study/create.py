"""``palette study create``: pair the images, fix the design and write everything to a new study database."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArgumentError
from . import db
from .design import trials_per_condition
from .pairs import Condition, degraded, fake_image, images_by_key, load_condition, png_bytes, real_image

QUESTION = "Which image would you guess is from a camera?"  # the paper's wording


@dataclass(frozen=True)
class StudyOptions:
    name: str
    display_ms: int = 3000  # the paper: 3 s (and 5 s)
    trials_per_observer: int = 50  # catch trials included
    catch_trials: int = 5
    min_response_ms: int = 150  # faster answers are kept but flagged, and left out of the report
    seed: int = 0

    def check(self) -> None:
        if not self.name.strip():
            raise ArgumentError("name", ": the study needs a name")
        if not 100 <= self.display_ms <= 60_000:
            raise ArgumentError("display_ms", f"{self.display_ms}: give a display time between 100 and 60000 ms")
        if not 0 <= self.catch_trials < self.trials_per_observer:
            raise ArgumentError("catch_trials", f"{self.catch_trials}: must be at least 0 and below the trials "
                                f"per observer ({self.trials_per_observer})")
        if self.min_response_ms < 0:
            raise ArgumentError("min_response_ms", f"{self.min_response_ms}: must not be negative")


def _walk_orders(conditions: list[Condition], seed: int) -> list[list[int]]:
    """Each condition's pairs (indices) in walking order: by sample, then by one seeded shuffle of the originals,
    condition c starting c/C of the way along, so the conditions an observer meets start at different originals."""
    keys = sorted({p.image_key for c in conditions for p in c.pairs})
    rank = {keys[i]: r for r, i in enumerate(np.random.default_rng(seed).permutation(len(keys)))}
    orders = []
    for c, condition in enumerate(conditions):
        order = sorted(range(len(condition.pairs)), key=lambda i: (condition.pairs[i].sample,
                                                                   rank[condition.pairs[i].image_key]))
        shift = c * len(order) // len(conditions)
        orders.append(order[shift:] + order[:shift])
    return orders


def _check_enough_pairs(conditions: list[Condition], options: StudyOptions) -> None:
    test_trials = options.trials_per_observer - options.catch_trials
    most = max(trials_per_condition(test_trials, len(conditions), 0))
    for condition in conditions:
        if len(condition.pairs) < most:
            raise ArgumentError("trials_per_observer", f"{options.trials_per_observer}: an observer would see up "
                                f"to {most} pairs of {condition.name!r} ({condition.source}), which has only "
                               f"{len(condition.pairs)}; lower it or add images")


class _Images:
    """Inserts image rows, each real photo once whatever the number of conditions that show it."""

    def __init__(self, conn):
        self.conn, self.ids = conn, {}

    def add(self, image, source: str, reuse_key=None) -> int:
        if reuse_key is not None and reuse_key in self.ids:
            return self.ids[reuse_key]
        cursor = self.conn.execute("INSERT INTO images (png, width, height, source) VALUES (?, ?, ?, ?)",
                                   (png_bytes(image), image.size[0], image.size[1], source))
        if reuse_key is not None:
            self.ids[reuse_key] = cursor.lastrowid
        return cursor.lastrowid


def _catch_keys(conditions: list[Condition], options: StudyOptions, rng: np.random.Generator) -> set[str]:
    """The originals whose real photo gets a catch pair: a few times more than an observer needs, so catch pairs
    rotate between observers too."""
    shown_keys = sorted({p.image_key for c in conditions for p in c.pairs})
    if len(shown_keys) < options.catch_trials:
        raise ArgumentError("catch_trials", f"{options.catch_trials}: the study shows only {len(shown_keys)} real "
                            "photos to degrade; lower it")
    if not options.catch_trials:
        return set()
    count = min(len(shown_keys), max(4 * options.catch_trials, 20))
    return set(rng.choice(shown_keys, size=count, replace=False).tolist())


def _write_pairs(conn, conditions: list[Condition], options: StudyOptions, catch_keys: set[str],
                 rng: np.random.Generator, progress: bool) -> int:
    """Every condition's pairs in walking order, then the catch pairs in a seeded order; returns their number."""
    from tqdm.auto import tqdm

    images, catch_reals = _Images(conn), {}
    total = sum(len(c.pairs) for c in conditions)
    with tqdm(total=total, desc="study: images", unit="pair", disable=not progress) as bar:
        for condition, order in zip(conditions, _walk_orders(conditions, options.seed)):
            condition_id = conn.execute("INSERT INTO conditions (name, source) VALUES (?, ?)",
                                        (condition.name, str(condition.source))).lastrowid
            for i in order:
                pair = condition.pairs[i]
                fake = fake_image(pair)
                real = real_image(pair, fake, condition.eval_size)
                real_id = images.add(real, str(pair.real), (pair.real, real.size, real.mode))
                if pair.image_key in catch_keys and pair.image_key not in catch_reals:
                    catch_reals[pair.image_key] = (real, real_id, str(pair.real))
                conn.execute("INSERT INTO pairs (condition_id, image_key, sample, real_image, fake_image) "
                             "VALUES (?, ?, ?, ?, ?)", (condition_id, pair.image_key, pair.sample, real_id,
                                                        images.add(fake, str(pair.fake))))
                bar.update()
    catch_order = sorted(catch_reals)
    for key in (catch_order[i] for i in rng.permutation(len(catch_order))):
        real, real_id, source = catch_reals[key]
        conn.execute("INSERT INTO pairs (condition_id, image_key, sample, real_image, fake_image) "
                     "VALUES (NULL, ?, 0, ?, ?)", (key, real_id, images.add(degraded(real), f"degraded:{source}")))
    return len(catch_reals)


def create_study(db_path: str | Path, real: str | Path, fakes: list[str], options: StudyOptions,
                 progress: bool = True) -> dict:
    """Write a new study database; returns a summary (conditions, pairs, catch pairs)."""
    options.check()
    if not fakes:
        raise ArgumentError("fakes", ": give at least one folder of generated images")
    reals = images_by_key(real, "real")
    conditions = [load_condition(argument, reals) for argument in fakes]
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ArgumentError("fakes", f": two conditions are named {max(names, key=names.count)!r}; name them as "
                            "NAME=PATH")
    _check_enough_pairs(conditions, options)
    rng = np.random.default_rng([options.seed, 1])
    catch_keys = _catch_keys(conditions, options, rng)

    db_path = Path(db_path)
    conn = db.create_database(db_path)
    try:
        with db.transaction(conn):
            db.write_settings(conn, {"name": options.name, "question": QUESTION, "display_ms": options.display_ms,
                                     "trials_per_observer": options.trials_per_observer,
                                     "catch_trials": options.catch_trials, "min_response_ms": options.min_response_ms,
                                     "seed": options.seed, "created_at": time.time(),
                                     "cookie": f"palette_study_{secrets.token_hex(4)}"})
            catch_pairs = _write_pairs(conn, conditions, options, catch_keys, rng, progress)
    except BaseException:
        conn.close()
        db_path.unlink(missing_ok=True)  # no half-written study left behind
        for suffix in ("-wal", "-shm"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        raise
    conn.close()
    return {"db": str(db_path), "name": options.name,
            "conditions": [{"name": c.name, "source": str(c.source), "pairs": len(c.pairs),
                            "originals": len({p.image_key for p in c.pairs}), "unused_reals": c.unused_reals}
                           for c in conditions],
            "catch_pairs": catch_pairs}
