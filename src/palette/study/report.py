"""``palette study report``: each condition's fool rate with a 95% interval, as a table and a bar chart.

The fool rate is the share of a condition's trials in which the observer picked the generated image as the camera's
(50% = indistinguishable). Observers whose catch-trial accuracy is below ``min_catch_accuracy`` are left out, and so
are answers faster than the study's ``min_response_ms`` (kept in the database, flagged).

The interval resamples observers and images at once (Owen's "pigeonhole" bootstrap for crossed designs, Owen 2007,
Ann. Appl. Stat.): each bootstrap draw gives every observer a multinomial weight and every original photo another,
a trial weighs their product, and the percentiles of the weighted fool rates bound the interval. Both observers and
photos vary (a lenient observer, an easy photo), and an interval that resampled trials alone would be too narrow.
When they do not vary it is conservative: its variance is then about three times the binomial p(1-p)/n
(rows, columns and cells each contribute once), so it is at most sqrt(3) times the binomial interval's width.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ArgumentError
from . import db

BATCH = 250  # bootstrap draws computed together (memory: BATCH x images)


def pigeonhole_bootstrap(observers: np.ndarray, images: np.ndarray, picked_fake: np.ndarray, draws: int,
                         rng: np.random.Generator) -> np.ndarray:
    """``draws`` bootstrap fool rates, observers and images resampled independently (see the module docstring)."""
    _, o = np.unique(observers, return_inverse=True)
    _, i = np.unique(images, return_inverse=True)
    n_obs, n_img = o.max() + 1, i.max() + 1
    fooled, shown = np.zeros((n_obs, n_img)), np.zeros((n_obs, n_img))
    np.add.at(fooled, (o, i), picked_fake)
    np.add.at(shown, (o, i), 1)
    rates = []
    for start in range(0, draws, BATCH):
        b = min(BATCH, draws - start)
        w_obs = rng.multinomial(n_obs, np.full(n_obs, 1 / n_obs), size=b)
        w_img = rng.multinomial(n_img, np.full(n_img, 1 / n_img), size=b)
        num = ((w_obs @ fooled) * w_img).sum(1)
        den = ((w_obs @ shown) * w_img).sum(1)
        rates.append(num[den > 0] / den[den > 0])  # a draw whose observers saw none of its images says nothing
    return np.concatenate(rates)


def fool_rate(observers, images, picked_fake, draws: int = 2000, seed: int = 0,
              level: float = 0.95) -> tuple[float, float, float]:
    """(fool rate, lower, upper bound of the ``level`` interval)."""
    picked_fake = np.asarray(picked_fake, dtype=float)
    rates = pigeonhole_bootstrap(np.asarray(observers), np.asarray(images), picked_fake, draws,
                                 np.random.default_rng(seed))
    low, high = np.quantile(rates, [(1 - level) / 2, (1 + level) / 2])
    return float(picked_fake.mean()), float(low), float(high)


def _answers(conn) -> list:
    return conn.execute("SELECT a.observer_id, a.condition_id, p.image_key, a.picked_fake, a.too_fast "
                        "FROM answers a JOIN pairs p ON p.id = a.pair_id").fetchall()


def catch_accuracy(rows) -> dict[int, tuple[int, int]]:
    """Per observer, (catch trials answered right, catch trials answered)."""
    scores: dict[int, list[int]] = {}
    for r in rows:
        if r["condition_id"] is None:
            score = scores.setdefault(r["observer_id"], [0, 0])
            score[0] += 1 - r["picked_fake"]
            score[1] += 1
    return {k: (v[0], v[1]) for k, v in scores.items()}


def excluded_observers(catch: dict[int, tuple[int, int]], min_catch_accuracy: float) -> list[int]:
    """The observers whose share of right catch answers is below ``min_catch_accuracy``."""
    # the share, not right < min x answered: 0.28 x 25 is 7.000000000000001 in floating point
    return sorted(o for o, (right, answered) in catch.items() if right / answered < min_catch_accuracy)


def study_report(db_path: str | Path, min_catch_accuracy: float = 0.8, draws: int = 2000, seed: int = 0) -> dict:
    if not 0 <= min_catch_accuracy <= 1:
        raise ArgumentError("min_catch_accuracy", f"{min_catch_accuracy}: give a share between 0 and 1")
    conn = db.open_database(db_path)
    try:
        s = db.read_settings(conn)
        conditions = conn.execute("SELECT id, name FROM conditions ORDER BY id").fetchall()
        rows = _answers(conn)
    finally:
        conn.close()
    catch = catch_accuracy(rows)
    excluded = excluded_observers(catch, min_catch_accuracy)
    kept = [r for r in rows if r["observer_id"] not in excluded]
    results = []
    for condition in conditions:
        mine = [r for r in kept if r["condition_id"] == condition["id"]]
        counted = [r for r in mine if not r["too_fast"]]
        result = {"name": condition["name"], "observers": len({r["observer_id"] for r in counted}),
                  "trials": len(counted), "images": len({r["image_key"] for r in counted}),
                  "too_fast": len(mine) - len(counted), "fool_rate": None, "ci_low": None, "ci_high": None}
        if counted:
            rate, low, high = fool_rate([r["observer_id"] for r in counted], [r["image_key"] for r in counted],
                                        [r["picked_fake"] for r in counted], draws, seed)
            result.update(fool_rate=rate, ci_low=low, ci_high=high)
        results.append(result)
    catch_answers = sum(n for _, n in catch.values())
    return {
        "name": s["name"], "question": s["question"], "display_ms": s["display_ms"],
        "min_response_ms": s["min_response_ms"], "min_catch_accuracy": min_catch_accuracy, "bootstrap_draws": draws,
        "observers": len({r["observer_id"] for r in rows}), "excluded_observers": excluded,
        "catch_answers": catch_answers,
        "catch_accuracy": sum(right for right, _ in catch.values()) / catch_answers if catch_answers else None,
        "conditions": results,
    }


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def markdown_table(report: dict) -> str:
    """The paper's fool-rate column (display time in its header), with the interval and the counts beside it."""
    seconds = f"{report['display_ms'] / 1000:g} s"
    lines = [f"| Model | Fool rate ({seconds}) ↑ | 95% CI | Observers | Trials |", "|---|---|---|---|---|"]
    for c in report["conditions"]:
        interval = "–" if c["ci_low"] is None else f"{100 * c['ci_low']:.1f}–{100 * c['ci_high']:.1f}%"
        lines.append(f"| {c['name']} | {_percent(c['fool_rate'])} | {interval} | {c['observers']} | {c['trials']} |")
    excluded = report["excluded_observers"]
    fast = sum(c["too_fast"] for c in report["conditions"])
    notes = [
        "",
        f"Fool rate: the share of trials in which the generated image was picked as the camera's (50% = "
        f"indistinguishable), {report['display_ms']} ms display; 95% interval from {report['bootstrap_draws']} "
        "bootstrap resamples of observers and images.",
        f"Catch trials: {_percent(report['catch_accuracy'])} correct ({report['catch_answers']} answers); "
        f"{len(excluded)} of {report['observers']} observers excluded below "
        f"{100 * report['min_catch_accuracy']:g}%" + (f" (observers {', '.join(map(str, excluded))})." if excluded
                                                      else "."),
        f"Answers faster than {report['min_response_ms']} ms: {fast}, left out.",
    ]
    return "\n".join(lines + notes) + "\n"


def bar_chart(report: dict, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = report["conditions"]
    names = [c["name"] for c in conditions]
    rates = [100 * (c["fool_rate"] or 0) for c in conditions]
    errors = np.array([[100 * (c["fool_rate"] - c["ci_low"]), 100 * (c["ci_high"] - c["fool_rate"])]
                       if c["fool_rate"] is not None else [0, 0] for c in conditions]).T
    fig, ax = plt.subplots(figsize=(1.3 * len(names) + 2.2, 3.2), dpi=100)
    ax.bar(names, rates, yerr=errors, capsize=6, color="#4a8", edgecolor="#275")
    ax.axhline(50, color="#a33", linestyle="--", linewidth=1)
    ax.text(len(names) - 0.5, 50.5, "indistinguishable", color="#a33", ha="right", va="bottom", fontsize=8)
    for x, (rate, c) in enumerate(zip(rates, conditions)):
        if c["fool_rate"] is not None:
            ax.text(x, 1.5, f"{rate:.1f}%", ha="center", va="bottom", color="white", fontsize=9, fontweight="bold")
    ax.set_ylim(0, max(60, 100 * max((c["ci_high"] or 0) for c in conditions) + 5))
    ax.set_ylabel("fool rate (%)")
    ax.set_title(f"{report['name']}: {report['display_ms'] / 1000:g} s display, 95% CI", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(report: dict, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "table": out_dir / "table.md", "chart": out_dir / "fool_rate.png"}
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    paths["table"].write_text(markdown_table(report))
    bar_chart(report, paths["chart"])
    return paths
