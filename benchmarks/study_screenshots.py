"""The pictures of docs/study.md: a trial as an observer sees it, and the report's chart.

    python benchmarks/study_screenshots.py --out docs/images

Builds a small study from photos bundled with scikit-image (the "generated" images are the photos desaturated, or
with their colours shifted: stand-ins, not a model's outputs), serves it with ``palette study serve`` and drives
Debian's chromium through Playwright to a trial, whose screenshot is ``study_trial.png``. It then answers the study
with simulated observers (picking the stand-in with probability 0.42 and 0.30) and writes the report's chart as
``study_report.png``; it prints the display times the browser measured for its own answers.
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from palette.study import StudyOptions, create_study, study_report
from palette.study import db as study_db
from palette.study.report import bar_chart
from palette.study.sessions import Study

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SIMULATED = {"desaturated": 0.42, "colour-shifted": 0.30}


def _squares(array: np.ndarray, size: int) -> list[Image.Image]:
    """The centred square and the four corner squares of 3/4 of the short side."""
    h, w = array.shape[:2]
    s = min(h, w)
    c = 3 * s // 4
    boxes = [((h - s) // 2, (w - s) // 2, s), (0, 0, c), (0, w - c, c), (h - c, 0, c), (h - c, w - c, c)]
    return [Image.fromarray(array[t:t + n, l:l + n]).resize((size, size), Image.BICUBIC) for t, l, n in boxes]


def make_images(root: Path, size: int = 192) -> tuple[Path, list[str]]:
    import skimage.data

    folders = {name: root / name for name in ("real", *SIMULATED)}
    for folder in folders.values():
        folder.mkdir(parents=True)
    for name in PHOTOS:
        for i, square in enumerate(_squares(getattr(skimage.data, name)(), size)):
            photo = np.asarray(square).astype(float)
            gray = photo.mean(axis=2, keepdims=True)
            file = f"{i}_{name}.png"  # the centred squares (0_) come first in the screenshot's study
            Image.fromarray(photo.astype(np.uint8)).save(folders["real"] / file)
            Image.fromarray((0.35 * photo + 0.65 * gray).astype(np.uint8)).save(folders["desaturated"] / file)
            shifted = np.clip(gray + (photo[..., [1, 2, 0]] - gray) * 0.8, 0, 255)
            Image.fromarray(shifted.astype(np.uint8)).save(folders["colour-shifted"] / file)
    return folders["real"], [f"{name}={folders[name]}" for name in SIMULATED]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trial_screenshot(db: Path, path: Path) -> list[float]:
    """The screenshot of a trial; the display times (ms) the browser measured for its answers."""
    from playwright.sync_api import sync_playwright

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "palette", "study", "serve", "--db", str(db), "--port",
                               str(port)])
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(300):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 900, "height": 560})
            page.goto(url)
            page.locator("#consent").check()
            page.locator("#start").click()
            for i in range(3):
                page.wait_for_function("document.body.dataset.state == 'hidden'")
                page.keyboard.press("ArrowRight" if i % 2 else "ArrowLeft")
                page.wait_for_function(f"document.querySelector('#progress').getAttribute('aria-valuenow') == "
                                       f"'{i + 1}'")
            page.wait_for_function("document.body.dataset.state == 'showing'")
            page.screenshot(path=str(path))
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    conn = study_db.open_database(db)
    shown = [r[0] for r in conn.execute("SELECT shown_ms FROM answers")]
    conn.close()
    return shown


def simulate(db: Path, observers: int, seed: int = 0) -> None:
    conn = study_db.open_database(db)
    study, rng = Study(conn), np.random.default_rng(seed)
    names = dict(conn.execute("SELECT id, name FROM conditions").fetchall())
    for _ in range(observers):
        observer = study.observer(study.register())
        while (position := study.hand_out(observer)) is not None:
            side, condition = conn.execute("SELECT t.real_side, p.condition_id FROM trials t JOIN pairs p ON "
                                           "p.id = t.pair_id WHERE observer_id = ? AND position = ?",
                                           (observer, position)).fetchone()
            fake = condition is not None and rng.random() < SIMULATED[names[condition]]
            study.answer(observer, position, ("right" if side == "left" else "left") if fake else side,
                         float(rng.normal(1400, 300)), 3000.0)
    conn.close()


def small_png(path: Path, colours: int = 256) -> None:
    """Keep a docs picture small: an adaptive palette of ``colours`` colours."""
    Image.open(path).convert("RGB").quantize(colours, method=Image.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="docs/images")
    args = parser.parse_args()
    out = Path(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        real, fakes = make_images(Path(tmp))
        trial_db = Path(tmp) / "trial.sqlite"
        create_study(trial_db, real, fakes, StudyOptions("screenshot", trials_per_observer=4, catch_trials=1),
                     progress=False)
        shown = trial_screenshot(trial_db, out / "study_trial.png")
        print(f"display times measured by the browser (3000 ms asked): {', '.join(f'{s:.1f}' for s in shown)} ms")
        report_db = Path(tmp) / "report.sqlite"
        create_study(report_db, real, fakes, StudyOptions("simulated observers", trials_per_observer=12,
                                                          catch_trials=2), progress=False)
        simulate(report_db, observers=40)
        bar_chart(study_report(report_db), out / "study_report.png")
    for name in ("study_trial.png", "study_report.png"):
        small_png(out / name)
        print(f"{out / name}: {(out / name).stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
