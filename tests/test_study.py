"""The human 2AFC study: pairing, the design, the server's rules, the fool rate's interval, an observer in a browser."""

import json
import os
import shutil
import socket
import sqlite3
import sys
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from palette.cli import main
from palette.errors import ArgumentError, PaletteError
from palette.study import StudyOptions, create_study, study_report
from palette.study import db as study_db
from palette.study.design import observer_trials
from palette.study.report import excluded_observers, fool_rate
from palette.study.sessions import Study

from conftest import start_server


def _photos(folder: Path, count: int, size=(12, 12), seed=0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        array = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
        Image.fromarray(array).save(folder / f"img{i:02d}.png")
    return folder


def _pair_folders(root: Path, count: int, conditions: int = 1, size=(12, 12)) -> tuple[Path, list[str]]:
    real = _photos(root / "real", count, size)
    fakes = [str(_photos(root / f"model{c}", count, size, seed=c + 1)) for c in range(conditions)]
    return real, fakes


def _decode(png: bytes) -> np.ndarray:
    import io

    return np.asarray(Image.open(io.BytesIO(png)))


# ---------------------------------------------------------------- the design


def test_an_observer_sees_each_condition_and_side_in_balance():
    walks = [list(range(100, 130)), list(range(200, 230)), list(range(300, 330))]
    for observer in range(6):
        trials = observer_trials(walks, [900, 901, 902], test_trials=14, catch_trials=2, seed=3, observer=observer)
        by_condition = Counter(t.pair_id // 100 for t in trials)
        assert by_condition[9] == 2 and sorted(by_condition[c] for c in (1, 2, 3)) == [4, 5, 5]  # 14 = 5 + 5 + 4
        for c in (1, 2, 3, 9):
            sides = Counter(t.real_side for t in trials if t.pair_id // 100 == c)
            assert abs(sides["left"] - sides["right"]) <= 1


def test_every_pair_is_shown_equally_often_across_observers():
    walks = [list(range(17)), list(range(100, 117))]
    shown = Counter(t.pair_id for n in range(23) for t in observer_trials(walks, [], 9, 0, seed=1, observer=n))
    for walk in walks:  # 23 observers x 9 trials over 2 conditions of 17 pairs: each pair 6 or 7 times
        counts = [shown[p] for p in walk]
        assert max(counts) - min(counts) <= 1 and sum(counts) in (103, 104)


def test_the_design_is_fixed_by_seed_and_observer():
    walks = [list(range(20))]
    first = observer_trials(walks, [50, 51], 8, 2, seed=5, observer=4)
    assert first == observer_trials(walks, [50, 51], 8, 2, seed=5, observer=4)
    assert first != observer_trials(walks, [50, 51], 8, 2, seed=6, observer=4)


def test_an_observer_meets_each_original_once_across_conditions(tmp_path):
    real, fakes = _pair_folders(tmp_path, 24, conditions=3)
    db = tmp_path / "s.sqlite"
    create_study(db, real, fakes, StudyOptions("s", trials_per_observer=20, catch_trials=2), progress=False)
    study = Study(study_db.open_database(db))
    for _ in range(5):
        observer = study.observer(study.register())
        keys = [r[0] for r in study.conn.execute("SELECT p.image_key FROM trials t JOIN pairs p ON p.id = t.pair_id "
                                                 "WHERE t.observer_id = ? AND p.condition_id IS NOT NULL",
                                                 (observer,))]
        assert len(keys) == 18 and len(set(keys)) == 18  # 3 conditions x 6 trials, 24 originals


# ---------------------------------------------------------------- create: pairing and bad input


def test_eval_output_pairs_each_sample_with_its_own_original(tmp_path):
    from palette.evaluate import prepare
    from palette.imagefile import to_pil

    real = _photos(tmp_path / "real" / "cats", 3, size=(20, 14))  # ids cats__img00 ...: the eval folder naming
    out = tmp_path / "eval"
    (out / "samples").mkdir(parents=True)
    rng = np.random.default_rng(7)
    samples = {}
    for i in range(3):
        for k in range(2):
            samples[f"cats__img{i:02d}", k] = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
            Image.fromarray(samples[f"cats__img{i:02d}", k]).save(out / "samples" / f"cats__img{i:02d}_{k}.png")
    (out / "metrics.json").write_text('{"name": "palette (ddim, 50 steps)"}')
    db = tmp_path / "s.sqlite"
    create_study(db, tmp_path / "real", [str(out)], StudyOptions("s", trials_per_observer=4, catch_trials=1),
                 progress=False)
    conn = study_db.open_database(db)
    assert [r[0] for r in conn.execute("SELECT name FROM conditions")] == ["palette (ddim, 50 steps)"]
    rows = conn.execute("SELECT p.image_key, p.sample, r.png AS real, f.png AS fake FROM pairs p JOIN images r "
                        "ON r.id = p.real_image JOIN images f ON f.id = p.fake_image "
                        "WHERE p.condition_id IS NOT NULL").fetchall()
    assert sorted((r["image_key"], r["sample"]) for r in rows) == sorted(samples)
    for r in rows:
        original = real / f"{r['image_key'].split('__')[1]}.png"
        expected = np.asarray(to_pil(prepare(original, 8, 3) * 2 - 1))  # palette eval's view of the original
        assert np.array_equal(_decode(r["real"]), expected)
        assert np.array_equal(_decode(r["fake"]), samples[r["image_key"], r["sample"]])


def test_an_eval_sample_without_its_original_is_an_error_that_names_it(tmp_path):
    real = _photos(tmp_path / "real", 2)
    (tmp_path / "eval" / "samples").mkdir(parents=True)
    for name in ("img00_0.png", "img01_0.png", "img07_0.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / "eval" / "samples" / name)
    with pytest.raises(PaletteError, match="img07_0.png has no real image among the real ones"):
        create_study(tmp_path / "s.sqlite", real, [str(tmp_path / "eval")], StudyOptions("s", trials_per_observer=2,
                                                                                         catch_trials=0),
                     progress=False)


def test_a_catch_pair_is_a_real_photo_against_its_blocky_copy(tmp_path):
    real, fakes = _pair_folders(tmp_path, 4, size=(16, 16))
    db = tmp_path / "s.sqlite"
    create_study(db, real, fakes, StudyOptions("s", trials_per_observer=3, catch_trials=1), progress=False)
    conn = study_db.open_database(db)
    for real_png, fake_png in conn.execute("SELECT r.png, f.png FROM pairs p JOIN images r ON r.id = p.real_image "
                                           "JOIN images f ON f.id = p.fake_image WHERE p.condition_id IS NULL"):
        photo, copy = _decode(real_png).astype(float), _decode(fake_png).astype(float)
        blocks = photo.reshape(2, 8, 2, 8, 3).mean(axis=(1, 3))  # 8x8 box averages, each repeated over its block
        assert np.abs(copy - np.repeat(np.repeat(blocks, 8, 0), 8, 1)).max() <= 1


def _bad_input(tmp_path, case):
    real, fakes = _pair_folders(tmp_path, 3)
    if case == "unpaired":
        Image.new("RGB", (12, 12)).save(tmp_path / "model0" / "stray.png")
        return real, fakes, "stray.png"
    if case == "mixed sizes":
        Image.new("RGB", (12, 10)).save(tmp_path / "model0" / "img01.png")
        return real, fakes, "img01.png is 12x10 but its real image"
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        return tmp_path / "empty", fakes, "empty: the folder holds no images"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["unpaired", "mixed sizes", "empty folder"])
def test_bad_input_is_a_clear_error_that_names_the_file(tmp_path, case):
    real, fakes, message = _bad_input(tmp_path, case)
    with pytest.raises(PaletteError, match=message):
        create_study(tmp_path / "s.sqlite", real, fakes, StudyOptions("s", trials_per_observer=3, catch_trials=1),
                     progress=False)
    assert not (tmp_path / "s.sqlite").exists()  # nothing half-written is left


def test_a_database_of_another_version_or_program_is_refused(tmp_path):
    real, fakes = _pair_folders(tmp_path, 3)
    db = tmp_path / "s.sqlite"
    create_study(db, real, fakes, StudyOptions("s", trials_per_observer=3, catch_trials=1), progress=False)
    with pytest.raises(PaletteError, match="exists"):  # a study is never overwritten
        create_study(db, real, fakes, StudyOptions("s", trials_per_observer=3, catch_trials=1), progress=False)
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {study_db.SCHEMA_VERSION + 1}")
    conn.close()
    newer = study_db.SCHEMA_VERSION + 1
    with pytest.raises(PaletteError, match=f"s.sqlite: a study database of schema version {newer}"):
        study_db.open_database(db)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(PaletteError, match="other.sqlite: a SQLite database, but not a palette study"):
        study_db.open_database(other)
    (tmp_path / "text.sqlite").write_text("hello " * 200)
    with pytest.raises(PaletteError, match="text.sqlite: not a SQLite database"):
        study_db.open_database(tmp_path / "text.sqlite")


BAD_ARGUMENTS = {  # argument: a call that passes it wrong, given the folder
    "display_ms": lambda d: StudyOptions("s", display_ms=50).check(),
    "catch_trials": lambda d: StudyOptions("s", trials_per_observer=3, catch_trials=3).check(),
    "fakes": lambda d: create_study(d / "s.sqlite", _pair_folders(d, 3)[0], [], StudyOptions("s"), progress=False),
    "real": lambda d: create_study(d / "s.sqlite", d / "nowhere", _pair_folders(d, 3)[1], StudyOptions("s")),
    "db_path": lambda d: study_db.open_database(d / "missing.sqlite"),
    "min_catch_accuracy": lambda d: study_report(d / "missing.sqlite", min_catch_accuracy=1.5),
}


@pytest.mark.parametrize("argument", BAD_ARGUMENTS)
def test_a_bad_argument_is_an_error_naming_it_as_the_function_takes_it(tmp_path, argument):
    """The library names its own arguments; only the command line speaks of flags."""
    with pytest.raises(ArgumentError) as caught:
        BAD_ARGUMENTS[argument](tmp_path)
    assert caught.value.argument == argument and str(caught.value).startswith(argument)
    assert "--" not in str(caught.value)


def test_the_cli_reports_bad_input_in_one_line_with_exit_code_2(tmp_path, capsys):
    real, fakes, _ = _bad_input(tmp_path, "unpaired")
    code = main(["study", "create", "--real", str(real), "--fake", fakes[0], "--name", "s", "--db",
                 str(tmp_path / "s.sqlite"), "--trials-per-observer", "3", "--catch-trials", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "stray.png has no real image of the same name" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------- the server's rules


@pytest.fixture
def client(tmp_path):
    from starlette.testclient import TestClient

    from palette.study.server import make_app

    real, fakes = _pair_folders(tmp_path, 4)
    db = tmp_path / "s.sqlite"
    create_study(db, real, fakes, StudyOptions("s", trials_per_observer=3, catch_trials=1, min_response_ms=150),
                 progress=False)
    with TestClient(make_app(db)) as c:
        yield c, db


def _answer(c, position, choice="left", ms=900):
    return c.post("/api/answer", json={"position": position, "choice": choice, "response_ms": ms, "shown_ms": 400})


def test_the_server_accepts_one_answer_for_a_trial_it_handed_out(client):
    c, db = client
    assert _answer(c, 0).status_code == 403  # no observer yet
    c.post("/api/start", json={})
    assert _answer(c, 0).status_code == 409  # not handed out yet
    assert c.post("/api/next", json={}).json()["position"] == 0
    assert _answer(c, 1).status_code == 409  # not the trial handed out
    assert c.get("/api/image/1/left").status_code == 404 and c.get("/api/image/0/left").status_code == 200
    assert _answer(c, 0).json()["answered"] == 1
    assert _answer(c, 0).status_code == 409  # once only
    rows = sqlite3.connect(db).execute("SELECT observer_id, trial, choice FROM answer_log").fetchall()
    assert rows == [(1, 0, "left")]


def test_answers_faster_than_a_human_are_kept_but_flagged(client):
    c, db = client
    c.post("/api/start", json={})
    c.post("/api/next", json={})
    _answer(c, 0, ms=120)
    c.post("/api/next", json={})
    _answer(c, 1, ms=150)
    assert sqlite3.connect(db).execute("SELECT trial, too_fast FROM answer_log").fetchall() == [(0, 1), (1, 0)]


def test_the_server_bounds_request_bodies(client):
    c, _ = client
    c.post("/api/start", json={})
    response = c.post("/api/answer", content=b"{" + b" " * 4000 + b"}", headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize("body", [b"[" * 1000, b'{"position": %d, "choice": "left", "response_ms": 900}' % 2**70,
                                  b'{"position": -1, "choice": "left", "response_ms": 900}'])
def test_a_malformed_answer_is_a_bad_request_not_a_server_error(client, body):
    c, db = client
    c.post("/api/start", json={})
    c.post("/api/next", json={})
    response = c.post("/api/answer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM answers").fetchone()[0] == 0


# ---------------------------------------------------------------- the report


P_FAKE = {"A": 0.3, "B": 0.5}  # the simulated observers' chance of picking the generated image
INATTENTIVE = 3  # observers who pick at random and fail the catch trials


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A study of two conditions answered by 40 simulated observers; the truth they answered from."""
    root = tmp_path_factory.mktemp("simulated")
    real, fakes = _pair_folders(root, 40, conditions=2, size=(4, 4))
    db = root / "s.sqlite"
    create_study(db, real, [f"A={fakes[0]}", f"B={fakes[1]}"], StudyOptions("sim", trials_per_observer=24,
                                                                             catch_trials=4, seed=2), progress=False)
    conn = study_db.open_database(db)
    conn.execute("PRAGMA synchronous = OFF")  # simulated answers need no durability
    study, rng, record = Study(conn), np.random.default_rng(11), []
    names = {i: n for i, n in conn.execute("SELECT id, name FROM conditions")}
    for n in range(40):
        observer = study.observer(study.register())
        while (position := study.hand_out(observer)) is not None:
            real_side, condition = conn.execute("SELECT t.real_side, p.condition_id FROM trials t JOIN pairs p ON "
                                                "p.id = t.pair_id WHERE observer_id = ? AND position = ?",
                                                (observer, position)).fetchone()
            attentive = n >= INATTENTIVE
            p = P_FAKE[names[condition]] if condition is not None and attentive else 0.0 if attentive else 1.0
            fake = rng.random() < p
            ms = 100.0 if rng.random() < 0.04 else 900.0
            choice = {"left": "right", "right": "left"}[real_side] if fake else real_side
            study.answer(observer, position, choice, ms, 400.0)
            record.append((observer, names.get(condition, "catch"), fake, ms, attentive))
    conn.close()
    return db, record


def test_an_observer_exactly_at_the_catch_threshold_is_kept():
    catch = {1: (7, 25), 2: (6, 25), 3: (3, 3)}  # right, answered
    assert excluded_observers(catch, 0.28) == [2]  # 7/25 is not below 0.28, 6/25 is
    assert excluded_observers(catch, 1.0) == [1, 2]


def test_the_fool_rate_counts_attentive_observers_fake_picks(simulated):
    db, record = simulated
    report = study_report(db, min_catch_accuracy=0.8, draws=500)
    assert report["excluded_observers"] == list(range(1, INATTENTIVE + 1))  # ids start at 1
    for condition in report["conditions"]:
        counted = [fake for _, name, fake, ms, attentive in record
                   if name == condition["name"] and attentive and ms >= 150]
        assert condition["trials"] == len(counted) and condition["observers"] == 40 - INATTENTIVE
        assert condition["fool_rate"] == pytest.approx(np.mean(counted))
        assert condition["too_fast"] == sum(1 for _, name, _, ms, a in record if name == condition["name"] and a
                                            and ms < 150)
    catch = [not fake for _, name, fake, _, _ in record if name == "catch"]
    assert report["catch_accuracy"] == pytest.approx(np.mean(catch))


def test_the_interval_of_independent_answers_is_sqrt3_binomial_widths(simulated):
    """Observers and images that do not differ: the pigeonhole bootstrap's variance is 3 p(1-p)/n (rows, columns and
    cells each count once; see palette.study.report), so its 95% half-width is 1.96 sqrt(3 p(1-p)/n)."""
    db, _ = simulated
    for condition in study_report(db, draws=4000)["conditions"]:
        p, n = condition["fool_rate"], condition["trials"]
        assert condition["ci_low"] < P_FAKE[condition["name"]] < condition["ci_high"]
        half_width = (condition["ci_high"] - condition["ci_low"]) / 2
        assert half_width == pytest.approx(1.96 * np.sqrt(3 * p * (1 - p) / n), rel=0.12)


def test_the_interval_covers_the_spread_between_observers():
    """Observers who differ (their own chance ~ Beta, mean 0.3, sd 0.15): the interval is at least as wide as the
    spread of the fool rate over repeated studies (simulated), and at most sqrt(3) times wider."""
    rng = np.random.default_rng(4)
    observers, images, per_observer = 40, 40, 20
    obs = np.repeat(np.arange(observers), per_observer)
    img = (np.arange(per_observer)[None] + per_observer * np.arange(observers)[:, None]).ravel() % images
    a = 0.3 * (0.3 * 0.7 / 0.15**2 - 1)
    b = a * 0.7 / 0.3

    def study():
        return (rng.random(len(obs)) < rng.beta(a, b, observers)[obs]).astype(float)

    truth_sd = np.std([study().mean() for _ in range(2000)])
    trial_only_sd = np.sqrt(0.3 * 0.7 / len(obs))
    assert truth_sd > 1.5 * trial_only_sd  # resampling trials alone would be far too narrow here
    widths = [np.subtract(*fool_rate(obs, img, study(), draws=1000, seed=s)[:0:-1]) / (2 * 1.96) for s in range(8)]
    assert truth_sd * 0.95 < np.mean(widths) < np.sqrt(3) * truth_sd


def test_the_report_command_writes_a_table_and_a_chart(simulated, tmp_path, capsys):
    db, _ = simulated
    code = main(["study", "report", "--db", str(db), "--out", str(tmp_path / "report"), "--bootstrap", "300"])
    out = capsys.readouterr().out
    assert code == 0
    table = (tmp_path / "report" / "table.md").read_text()
    assert table.splitlines()[0] == "| Model | Fool rate (3 s) ↑ | 95% CI | Observers | Trials |"
    assert [line.split(" | ")[0] for line in table.splitlines()[2:4]] == ["| A", "| B"] and table in out
    with Image.open(tmp_path / "report" / "fool_rate.png") as chart:
        assert chart.format == "PNG" and chart.size[0] > 300


# ---------------------------------------------------------------- an observer in a real browser

CHROMIUM = "/usr/bin/chromium"
DISPLAY_MS = 400
LONG_DISPLAY_MS = 60_000  # long enough that a click always lands while the pair is shown, however slow the machine
WAIT_MS = 60_000  # waits for a condition are generous: a loaded machine is slow, never wrong


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM) or shutil.which("chromium") is None:
        if os.environ.get("CI"):
            raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium for the browser tests")
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """``palette study serve`` as a subprocess that can be killed and started again on the same port."""

    def __init__(self, db: Path):
        self.db, self.port, self.proc = db, _free_port(), None
        self.url = f"http://127.0.0.1:{self.port}/"

    def start(self):
        # the server prints its address once its port takes connections; 120 s: importing palette on a loaded machine
        self.proc = start_server([sys.executable, "-m", "palette", "study", "serve", "--db", str(self.db), "--port",
                                  str(self.port)], f"http://127.0.0.1:{self.port}/", self.db.parent / "serve.log", 120)
        return self

    def kill(self):
        self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def served(tmp_path, request):
    """A served 4-trial study; its display time is DISPLAY_MS unless the test parametrizes ``served``."""
    real, fakes = _pair_folders(tmp_path, 6, size=(32, 32))
    db = tmp_path / "study.sqlite"
    display_ms = getattr(request, "param", DISPLAY_MS)
    create_study(db, real, fakes, StudyOptions("browser", display_ms=display_ms, trials_per_observer=4,
                                               catch_trials=1), progress=False)
    server = _Server(db).start()
    yield server
    server.kill()


@pytest.mark.integration  # a server process
def test_the_server_says_where_it_serves_once_its_port_takes_connections(served):
    # start_server returned on that line, and nothing was retried: the first request is answered
    with urllib.request.urlopen(served.url + "api/state", timeout=60) as response:
        assert json.loads(response.read()) == {"observer": False}


def _state(page, *states):
    page.wait_for_function(f"{list(states)}.includes(document.body.dataset.state)", timeout=WAIT_MS)


def _answered(page, count):
    page.wait_for_function(f"document.querySelector('#progress').getAttribute('aria-valuenow') == '{count}'",
                           timeout=WAIT_MS)


def _answers(db):
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT trial, choice, response_ms, shown_ms FROM answer_log ORDER BY trial").fetchall()
    finally:
        conn.close()


def _begin(browser, server):
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    page.goto(server.url, timeout=WAIT_MS)
    _state(page, "instructions")
    page.locator("#consent").check()
    page.locator("#start").click()
    return page


@pytest.mark.integration  # a server process and a browser
def test_an_observer_completes_the_study_by_keyboard(browser, served):
    page = _begin(browser, served)
    keys = ["ArrowLeft", "ArrowRight", "ArrowRight", "ArrowLeft"]
    for i, key in enumerate(keys):
        _state(page, "hidden")  # the pair was shown for the display time, then hidden
        page.keyboard.press(key)
        _answered(page, i + 1)
    _state(page, "done")
    rows = _answers(served.db)
    assert [r[1] for r in rows] == ["left", "right", "right", "left"] and [r[0] for r in rows] == [0, 1, 2, 3]
    for _, _, response_ms, shown_ms in rows:
        # never hidden early (the page hides at display time less half a frame); late by a frame, or by a few
        # when a loaded machine delays the browser's frames
        assert DISPLAY_MS - 10 <= shown_ms <= DISPLAY_MS + 250 and response_ms >= shown_ms


@pytest.mark.integration  # a server process and a browser
@pytest.mark.parametrize("served", [LONG_DISPLAY_MS], indirect=True)
def test_an_observer_answers_by_mouse_while_the_pair_is_shown(browser, served):
    page = _begin(browser, served)
    sides = ["right", "left", "left", "right"]
    for i, side in enumerate(sides):
        _state(page, "showing")
        page.locator(f"#{side}").click(timeout=WAIT_MS)
        _answered(page, i + 1)
    _state(page, "done")
    rows = _answers(served.db)
    assert [r[1] for r in rows] == sides
    for _, _, response_ms, shown_ms in rows:  # the click came during the display and ended it
        assert response_ms <= shown_ms < LONG_DISPLAY_MS


@pytest.mark.integration  # a server process and a browser
def test_a_killed_server_loses_nothing_and_the_observer_resumes(browser, served, tmp_path):
    page = _begin(browser, served)
    _state(page, "showing", "hidden")
    page.keyboard.press("ArrowLeft")
    _state(page, "showing", "hidden")  # the second trial: the first answer is committed
    served.kill()
    page.keyboard.press("ArrowRight")  # answered while the server is down: the page keeps it and retries
    _state(page, "retrying")
    page.screenshot(path=str(tmp_path / "retrying.png"))
    served.start()
    _answered(page, 2)
    page.goto(served.url, timeout=WAIT_MS)  # coming back later, in the same browser
    _state(page, "resume")
    assert page.locator("#resume-count").text_content() == "2"
    page.locator("#continue").click()
    for key in ("ArrowLeft", "ArrowLeft"):
        _state(page, "showing", "hidden")
        page.keyboard.press(key)
    _state(page, "done")
    assert [(r[0], r[1]) for r in _answers(served.db)] == [(0, "left"), (1, "right"), (2, "left"), (3, "left")]
