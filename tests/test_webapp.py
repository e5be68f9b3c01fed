"""The web app in a real browser: Debian's chromium driven by Playwright against `palette serve` on loopback."""

import io
import os
import shutil
import socket
import sys
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import start_server

pytestmark = pytest.mark.integration  # a server process and a browser

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM) or shutil.which("chromium") is None:
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium for the browser tests")
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")


# Deadlines are generous, for a loaded 2-core machine: a passing test waits for what the page shows, never for them.
START_S = 300  # importing torch and gradio, loading the model
WAIT_MS = 300_000  # a request's samples
SHOWN_MS = 60_000  # what the page shows at once: a message, a queue position
# the uploaded photo is the editor's background: its "select the draw tool" placeholder is gone
EDITOR_READY = "!document.querySelector('#editor .empty')"
ERROR_SHOWN = "document.querySelector('[data-testid=toast-body].error [data-testid=toast-text]')"


def _new_page(browser):
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    page.set_default_timeout(SHOWN_MS)  # clicks and page loads too
    return page


def _wait_for_gallery(page, count: int) -> None:
    """Wait until the gallery shows ``count`` loaded images; an error the page shows instead fails the test at once,
    with its message."""
    outcome = page.wait_for_function(f"""count => {{
        const error = {ERROR_SHOWN};
        if (error) return 'the page shows an error: ' + error.innerText;
        const images = Array.from(document.querySelectorAll('#gallery img'));
        return images.length >= count && images.every(i => i.complete && i.naturalWidth > 0) && 'shown';
    }}""", arg=count, timeout=WAIT_MS).json_value()
    if outcome != "shown":
        pytest.fail(outcome)


def _gallery_images(page) -> list[np.ndarray]:
    """The gallery's images as the server sent them, RGB arrays."""
    sources = page.evaluate("Array.from(document.querySelectorAll('#gallery img')).map(i => i.src)")
    return [np.asarray(Image.open(io.BytesIO(urllib.request.urlopen(src, timeout=60).read())).convert("RGB"))
            for src in sources]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path_factory, *args):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    command = [sys.executable, "-m", "palette", "serve", "--port", str(port), "--device", "cpu", *map(str, args)]
    # Gradio prints its address once its server has started
    proc = start_server(command, "Running on local URL:", log, START_S, env)
    return proc, f"http://127.0.0.1:{port}/", log


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    proc, url, log = _start(tmp_path_factory, "--checkpoint", trained_run)
    yield url, log
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def bare_server(tmp_path_factory, trained_run):
    """No checkpoint, loading allowed from a folder holding a copy of the run, and a limit of 1000 pixels per image."""
    allowed = tmp_path_factory.mktemp("allowed")
    shutil.copytree(trained_run, allowed / "run")
    proc, url, log = _start(tmp_path_factory, "--max-pixels", 1000, "--allow-load", allowed)
    yield url, log
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        yield browser
        browser.close()


@pytest.fixture
def page(server, browser):
    page = _new_page(browser)
    page.goto(server[0])
    yield page
    page.close()


def test_the_server_binds_loopback_only(server):
    url, log = server
    assert "127.0.0.1" in url and "Running on local URL:  http://127.0.0.1" in log.read_text()


def test_inpainting_a_drawn_stroke_fills_the_gallery(page, photo_dir):
    page.locator("#upload input[type=file]").set_input_files(str(photo_dir / "chelsea.png"))
    page.wait_for_function(EDITOR_READY, timeout=SHOWN_MS)
    canvas = page.locator("#editor canvas").first
    page.get_by_label("Brush", exact=True).first.click()
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2 - 60, box["y"] + box["height"] / 2 - 20
    page.mouse.move(x, y)
    page.mouse.down()
    for i in range(1, 21):
        page.mouse.move(x + 6 * i, y + 2 * i)
    page.mouse.up()
    page.get_by_label("inpainting", exact=True).check()
    page.locator("#gallery").scroll_into_view_if_needed()
    page.locator("#run").click()
    _wait_for_gallery(page, 2)  # a stroke that did not register fails here with the page's message
    photo = np.asarray(Image.open(photo_dir / "chelsea.png").convert("RGB"))
    samples = _gallery_images(page)
    assert len(samples) == 2  # the default of two samples
    for sample in samples:
        assert sample.shape == photo.shape
        filled = (sample != photo).any(axis=-1)
        h, w = filled.shape
        assert filled[h // 2, w // 2]  # the stroke crosses the middle of the photo
        assert not filled.all()  # the photo is kept, pixel for pixel, where the stroke did not pass


def test_a_non_image_upload_shows_an_error_and_the_app_survives(page, server, tmp_path, photo_dir):
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"this is not an image at all")
    page.locator("#upload input[type=file]").set_input_files(str(fake))
    page.get_by_text("fake.png is not an image that can be read").first.wait_for(timeout=SHOWN_MS)
    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)
    urllib.request.urlopen(server[0], timeout=5)  # still serving


def test_a_second_visitor_sees_the_queue_and_runs_once_the_first_stops(server, browser, photo_dir):
    first, second = (_new_page(browser) for _ in range(2))
    for page in (first, second):
        page.goto(server[0])
        page.locator("#upload input[type=file]").set_input_files(str(photo_dir / "chelsea.png"))
        page.get_by_label("jpeg", exact=True).check()
    for name, value in (("samples", "8"), ("steps", "1000")):  # long enough to queue behind: until Stop
        number = first.locator(f"#{name} input[type=number]")
        number.fill(value)
        number.press("Enter")
    first.locator("#run").click()
    first.get_by_text("sampling: step").first.wait_for(timeout=WAIT_MS)
    second.locator("#run").click()
    second.get_by_text("queue").first.wait_for(timeout=SHOWN_MS)  # Gradio's queue position: queue: 1/1
    first.locator("#stop").click()
    _wait_for_gallery(second, 2)
    assert first.locator("#gallery img").count() == 0
    first.close()
    second.close()


def test_without_a_checkpoint_the_page_asks_for_one_and_loads_it(bare_server, browser, trained_run, photo_dir,
                                                                   tmp_path):
    page = _new_page(browser)
    page.goto(bare_server[0])
    page.get_by_text("No model is loaded yet").first.wait_for(timeout=SHOWN_MS)
    page.locator("#upload input[type=file]").set_input_files(str(photo_dir / "chelsea.png"))  # 48x40 > 1000 px
    page.get_by_text("the limit is 1,000 pixels").first.wait_for(timeout=SHOWN_MS)
    page.get_by_label("checkpoint").click()
    page.get_by_role("option", name="run", exact=True).click()
    page.get_by_role("button", name="Load").click()
    page.get_by_text("Loaded a multi model").first.wait_for(timeout=WAIT_MS)
    page.screenshot(path=str(tmp_path / "loaded.png"), full_page=True)
    page.close()


def _natural_sizes(page):
    return page.evaluate("Array.from(document.querySelectorAll('#gallery img')).map(i => [i.naturalWidth, "
                         "i.naturalHeight])")


def test_an_uncropping_panorama_is_one_wide_image(page, photo_dir, tmp_path):
    page.locator("#upload input[type=file]").set_input_files(str(photo_dir / "chelsea.png"))
    page.get_by_label("uncropping", exact=True).check()
    number = page.locator("#extend input[type=number]")
    number.fill("2")
    number.press("Enter")
    page.locator("#run").click()
    _wait_for_gallery(page, 1)
    page.screenshot(path=str(tmp_path / "panorama.png"), full_page=True)
    ((width, height),) = _natural_sizes(page)  # one image, whatever the number of samples
    assert (width, height) == (48 + 2 * 2 * 20, 40)  # 48x40, extended twice on each side by half its height


def test_tiled_sampling_runs_from_the_page_and_a_panorama_needs_a_side_pair(page, photo_dir, tmp_path):
    page.locator("#upload input[type=file]").set_input_files(str(photo_dir / "chelsea.png"))
    page.get_by_label("jpeg", exact=True).check()
    page.locator("#tile input[type=checkbox]").check()
    page.locator("#run").click()
    _wait_for_gallery(page, 2)
    assert {tuple(s) for s in _natural_sizes(page)} == {(48, 40)}  # the photo's own size
    page.get_by_label("uncropping", exact=True).check()  # the checkbox reaches the API, which refuses tiled uncropping
    page.locator("#run").click()
    page.get_by_text("uncropping continues the image as a whole").first.wait_for(timeout=SHOWN_MS)
    page.get_by_label("all", exact=True).check()
    number = page.locator("#extend input[type=number]")
    number.fill("1")
    number.press("Enter")
    page.locator("#run").click()
    page.get_by_text("A panorama extends left and right, or top and bottom").first.wait_for(timeout=SHOWN_MS)
