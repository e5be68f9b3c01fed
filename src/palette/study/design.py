"""Who sees which pair, in which order and on which side: a balanced design, reproducible from (seed, observer).

Observer ``n`` (0-based, in the order observers arrive) answers ``test_trials`` pairs spread evenly over the C
conditions (C divides the remainder in turns: condition c gets one more when ``(c - n) mod C`` is below it) and
``catch_trials`` catch pairs. Each condition's pairs are walked in a fixed order: observer n takes the next pairs of
the walk after those of observers 0..n-1, so every pair is shown equally often (within one) however many observers
come. The study fixes the walks so that conditions start at different originals (see ``create``); an observer then
meets each original once when the study holds at least C x (trials per condition) originals. Within an observer the
real image is on the left in half of each condition's trials (one more on a random side when odd), and the order of
all trials is a random permutation; the random choices are drawn from ``numpy.random.default_rng([seed, n])``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SIDES = ("left", "right")


@dataclass(frozen=True)
class Trial:
    pair_id: int
    real_side: str  # "left" or "right"


def trials_per_condition(test_trials: int, conditions: int, observer: int) -> list[int]:
    """How many test trials of each condition observer ``observer`` answers."""
    base, extra = divmod(test_trials, conditions)
    return [base + ((c - observer) % conditions < extra) for c in range(conditions)]


def walk_start(test_trials: int, conditions: int, condition: int, observer: int) -> int:
    """How many pairs of the condition's walk observers 0..observer-1 took together."""
    base, extra = divmod(test_trials, conditions)
    cycles, rest = divmod(observer, conditions)
    return observer * base + cycles * extra + sum((condition - m) % conditions < extra for m in range(rest))


def balanced_sides(count: int, rng: np.random.Generator) -> list[str]:
    """``count`` sides, half of them left (the odd one drawn), in random order."""
    sides = [SIDES[i % 2] for i in range(count - count % 2)] + ([SIDES[rng.integers(2)]] if count % 2 else [])
    return [sides[i] for i in rng.permutation(count)]


def observer_trials(walks: list[list[int]], catch_walk: list[int], test_trials: int, catch_trials: int, seed: int,
                    observer: int) -> list[Trial]:
    """Observer ``observer``'s trials in presentation order.

    ``walks[c]`` holds condition c's pair ids in walking order, ``catch_walk`` the catch pairs'."""
    rng = np.random.default_rng([seed, observer])
    trials = []
    for c, count in enumerate(trials_per_condition(test_trials, len(walks), observer)):
        start = walk_start(test_trials, len(walks), c, observer)
        pairs = [walks[c][(start + j) % len(walks[c])] for j in range(count)]
        trials += [Trial(p, s) for p, s in zip(pairs, balanced_sides(count, rng))]
    if catch_trials:
        start = observer * catch_trials
        pairs = [catch_walk[(start + j) % len(catch_walk)] for j in range(catch_trials)]
        trials += [Trial(p, s) for p, s in zip(pairs, balanced_sides(catch_trials, rng))]
    return [trials[i] for i in rng.permutation(len(trials))]
