"""The web app in a real browser: Debian's chromium driven by Playwright against `palette serve` on loopback."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM) or shutil.which("chromium") is None:
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium for the browser tests")
    pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp_path_factory, *args):
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "palette", "serve", "--port", str(port), "--device", "cpu",
                                 *map(str, args)], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"palette serve exited:\n{log.read_text()}")
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError(f"palette serve did not answer in 120 s:\n{log.read_text()}")
    return proc, url, log


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
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    page.goto(server[0])
    yield page
    page.close()


def test_the_server_binds_loopback_only(server):
    url, log = server
    assert "127.0.0.1" in url and "Running on local URL:  http://127.0.0.1" in log.read_text()


def test_inpainting_a_drawn_stroke_fills_the_gallery(page, photo_dir, tmp_path):
    page.locator("#upload input[type=file]").set_input_files(str(photo_dir / "chelsea.png"))
    canvas = page.locator("#editor canvas").first
    canvas.wait_for()
    page.wait_for_timeout(1500)
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
    page.wait_for_selector("#gallery img", timeout=120_000)
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 2", timeout=30_000)
    page.screenshot(path=str(tmp_path / "inpainting.png"), full_page=True)
    assert page.locator("#gallery img").count() == 2  # the default of two samples
    assert (tmp_path / "inpainting.png").stat().st_size > 10_000


def test_a_non_image_upload_shows_an_error_and_the_app_survives(page, server, tmp_path, photo_dir):
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"this is not an image at all")
    page.locator("#upload input[type=file]").set_input_files(str(fake))
    page.get_by_text("fake.png is not an image that can be read").first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "error.png"), full_page=True)
    urllib.request.urlopen(server[0], timeout=5)  # still serving


def test_a_second_visitor_sees_the_queue_and_runs_once_the_first_stops(server, browser, photo_dir):
    first, second = (browser.new_page(viewport={"width": 1300, "height": 1100}) for _ in range(2))
    for page in (first, second):
        page.goto(server[0])
        page.locator("#upload input[type=file]").set_input_files(str(photo_dir / "chelsea.png"))
        page.get_by_label("jpeg", exact=True).check()
    for name, value in (("samples", "8"), ("steps", "1000")):  # long enough to queue behind: until Stop
        number = first.locator(f"#{name} input[type=number]")
        number.fill(value)
        number.press("Enter")
    first.locator("#run").click()
    first.get_by_text("sampling: step").first.wait_for(timeout=60_000)
    second.locator("#run").click()
    second.get_by_text("queue").first.wait_for(timeout=30_000)  # Gradio's queue position: queue: 1/1
    first.locator("#stop").click()
    second.wait_for_function("document.querySelectorAll('#gallery img').length >= 2", timeout=120_000)
    assert first.locator("#gallery img").count() == 0
    first.close()
    second.close()


def test_without_a_checkpoint_the_page_asks_for_one_and_loads_it(bare_server, browser, trained_run, photo_dir,
                                                                   tmp_path):
    page = browser.new_page(viewport={"width": 1300, "height": 1100})
    page.goto(bare_server[0])
    page.get_by_text("No model is loaded yet").first.wait_for(timeout=30_000)
    page.locator("#upload input[type=file]").set_input_files(str(photo_dir / "chelsea.png"))  # 48x40 > 1000 px
    page.get_by_text("the limit is 1,000 pixels").first.wait_for(timeout=30_000)
    page.get_by_label("checkpoint").click()
    page.get_by_role("option", name="run", exact=True).click()
    page.get_by_role("button", name="Load").click()
    page.get_by_text("Loaded a multi model").first.wait_for(timeout=60_000)
    page.screenshot(path=str(tmp_path / "loaded.png"), full_page=True)
    page.close()


ALL_LOADED = "Array.from(document.querySelectorAll('#gallery img')).every(i => i.complete && i.naturalWidth > 0)"


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
    page.wait_for_selector("#gallery img", timeout=120_000)
    page.wait_for_function(ALL_LOADED, timeout=30_000)
    page.screenshot(path=str(tmp_path / "panorama.png"), full_page=True)
    ((width, height),) = _natural_sizes(page)  # one image, whatever the number of samples
    assert (width, height) == (48 + 2 * 2 * 20, 40)  # 48x40, extended twice on each side by half its height


def test_tiled_sampling_runs_from_the_page_and_a_panorama_needs_a_side_pair(page, photo_dir, tmp_path):
    page.locator("#upload input[type=file]").set_input_files(str(photo_dir / "chelsea.png"))
    page.get_by_label("jpeg", exact=True).check()
    page.locator("#tile input[type=checkbox]").check()
    page.locator("#run").click()
    page.wait_for_function("document.querySelectorAll('#gallery img').length >= 2", timeout=120_000)
    page.wait_for_function(ALL_LOADED, timeout=30_000)
    assert {tuple(s) for s in _natural_sizes(page)} == {(48, 40)}  # the photo's own size
    page.get_by_label("uncropping", exact=True).check()  # the checkbox reaches the API, which refuses tiled uncropping
    page.locator("#run").click()
    page.get_by_text("uncropping continues the image as a whole").first.wait_for(timeout=30_000)
    page.get_by_label("all", exact=True).check()
    number = page.locator("#extend input[type=number]")
    number.fill("1")
    number.press("Enter")
    page.locator("#run").click()
    page.get_by_text("A panorama extends left and right, or top and bottom").first.wait_for(timeout=30_000)
