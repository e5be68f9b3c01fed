"""A standing guard: hostile inputs to every reader and interface end in one clear error, in little time and memory.

Tables of inputs for the image readers (files whose header claims a huge size), `palette sample` and `palette eval`
(exit code 2, one line naming the input, nothing overwritten), the Python API (a PaletteError naming the argument)
and the web app's handlers (called directly, without a browser).
"""

import io
import json
import os
import shutil
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from palette import Palette, PaletteError
from palette.cli import main
from palette.data_scan import scan_images
from palette.imagefile import PNG_SIGNATURE, PixelLimitError, probe, read_image, read_png16
from palette.sampling import output_stems
from palette.sampling_options import MAX_SEED, SamplingOptions

# ---- files that claim a size they do not hold --------------------------------------------------------------------


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_claiming(path: Path, width: int, height: int, depth: int = 8, idat: bytes | None = None) -> Path:
    """An RGB PNG whose header claims ``width`` x ``height``; its image data is ``idat`` (default: none to speak of)."""
    header = struct.pack(">IIBBBBB", width, height, depth, 2, 0, 0, 0)
    body = zlib.compress(b"\0" * 64) if idat is None else idat
    path.write_bytes(PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b""))
    return path


def tiff_claiming(path: Path, width: int, height: int) -> Path:
    """A baseline gray TIFF (little-endian) whose one strip of 8 bytes claims ``width`` x ``height`` pixels."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8), (277, 3, 1),
            (278, 4, height), (279, 4, 8)]  # size, bits, no compression, black is zero, strip at 8, one sample
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
        for tag, kind, value in tags) + struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", 16) + b"\0" * 8 + ifd)
    return path


def jpeg_claiming(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose start-of-frame header is rewritten to claim ``width`` x ``height``."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "gray").save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


BOMBS = {  # name: (maker, claimed width, claimed height)
    "png-8bit": (lambda p: png_claiming(p / "bomb.png", 12000, 12000), 12000, 12000),  # the 429-byte file
    "png-16bit": (lambda p: png_claiming(p / "bomb16.png", 14000, 14000, depth=16), 14000, 14000),
    "tiff": (lambda p: tiff_claiming(p / "bomb.tif", 20000, 20000), 20000, 20000),
    "jpeg": (lambda p: jpeg_claiming(p / "bomb.jpg", 9000, 9000), 9000, 9000),
}


@pytest.mark.parametrize("kind", BOMBS)
@pytest.mark.parametrize("reader", [read_image, probe])
def test_a_file_claiming_more_pixels_than_the_limit_is_refused_from_its_header(tmp_path, kind, reader):
    make, width, height = BOMBS[kind]
    path = make(tmp_path)
    assert path.stat().st_size < 2000
    tracemalloc.start()
    try:
        with pytest.raises(PixelLimitError, match=f"{path.name} is {width}x{height} \\({width * height:,} pixels\\)"):
            reader(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000  # decoding would take width x height bytes at least: 81 to 400 MB


def test_pillow_s_own_refusal_is_reported_as_the_pixel_limit(tmp_path):
    path = jpeg_claiming(tmp_path / "huge.jpg", 30000, 30000)  # above twice Pillow's limit: Pillow refuses first
    with pytest.raises(PixelLimitError, match=f"huge.jpg has {30000 * 30000:,} pixels, above the pixel limit"):
        read_image(path)


def test_the_limit_is_inclusive_and_can_be_raised(tmp_path):
    path = tmp_path / "photo.png"
    Image.new("RGB", (40, 25), "red").save(path)
    assert read_image(path, max_pixels=40 * 25).shape == (3, 25, 40)
    with pytest.raises(PixelLimitError, match="above the pixel limit of 999"):
        read_image(path, max_pixels=40 * 25 - 1)


def test_a_16_bit_png_never_inflates_beyond_its_header(tmp_path):
    inflate = zlib.compressobj(9)
    data = b"".join(inflate.compress(bytes(1 << 20)) for _ in range(64)) + inflate.flush()  # 64 MB of zeros
    path = png_claiming(tmp_path / "small.png", 10, 10, depth=16, idat=data)
    tracemalloc.start()
    try:
        assert read_png16(path).shape == (10, 10, 3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(data) + 2_000_000  # the file, not the 64 MB it inflates to


def test_training_skips_a_file_above_the_limit_by_name(tmp_path, photo_dir):
    bomb = png_claiming(tmp_path / "bomb.png", 12000, 12000)
    files = [bomb, *sorted(photo_dir.glob("*.png"))]
    report = scan_images(files, 16, max_bad_fraction=0.5, progress=False)
    assert report.readable == files[1:]
    ((path, why),) = report.unreadable
    assert path == bomb and "12000x12000" in why and "pixel limit" in why
    assert not scan_images(files, 16, 0.5, progress=False, max_pixels=12000 * 12000).unreadable


def test_palette_train_applies_its_pixel_limit_flag(tmp_path, photo_dir, capsys):
    """The 40x48 photos are under the default limit; below ``--max-pixels 100`` none of them may be read."""
    code = main(["train", "--task", "jpeg", "--data", str(photo_dir), "--out", str(tmp_path / "run"), "--preset",
                 "tiny", "--steps", "1", "--device", "cpu", "--max-pixels", "100", "model.image_size=16",
                 "data.num_workers=0", "--no-progress"])
    assert code == 2
    assert "above the pixel limit of 100" in capsys.readouterr().err


def test_the_training_config_has_the_pixel_limit():
    from palette.config import preset

    config = preset("tiny")
    config.data.max_pixels = 0
    with pytest.raises(PaletteError, match="data.max_pixels must be at least 1"):
        config.validate()


# ---- palette sample ------------------------------------------------------------------------------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _cli_refuses(capsys, argv: list[str], out: Path, *names: str) -> str:
    """Run the command: exit 2, one line naming ``names``, no traceback, in time, and every file of ``out`` as it
    was."""
    before = _snapshot(out)
    start = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - start < 60
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in err, err
    after = _snapshot(out)
    assert {name: after.get(name) for name in before} == before
    return err


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


SAMPLE_CASES = {  # name: (make the input in a folder -> (path, extra flags), what the message names)
    "a 429-byte PNG claiming 12000x12000": (lambda d: (png_claiming(d / "bomb.png", 12000, 12000), []),
                                            ["bomb.png", "12000x12000", "pixel limit"]),
    "a 16-bit PNG claiming 14000x14000": (lambda d: (png_claiming(d / "bomb16.png", 14000, 14000, 16), []),
                                          ["bomb16.png", "14000x14000"]),
    "a TIFF claiming 20000x20000": (lambda d: (tiff_claiming(d / "bomb.tif", 20000, 20000), []), ["bomb.tif"]),
    "an empty file": (lambda d: (_write(d / "empty.png", b""), []), ["empty.png"]),
    "text named .png": (lambda d: (_write(d / "text.png", b"not an image"), []), ["text.png"]),
    "seed -1": (lambda d: (None, ["--seed", "-1"]), ["--seed", "-1"]),
    "seed 2**70": (lambda d: (None, ["--seed", str(2**70)]), ["--seed", str(2**70)]),
    "a mask larger than the image": (lambda d: (None, ["--task", "inpainting", "--mask",
                                                       str(png_claiming(d / "mask.png", 5000, 5000))]),
                                     ["--mask", "mask.png", "larger than the image"]),
    "a photo above a lowered --max-pixels": (lambda d: (None, ["--max-pixels", "100"]), ["--max-pixels"]),
}


@pytest.mark.parametrize("case", SAMPLE_CASES)
def test_palette_sample_refuses_in_one_line(capsys, tmp_path, trained_run, photo_dir, case):
    make, names = SAMPLE_CASES[case]
    given, flags = make(tmp_path)
    path = given or photo_dir / "chelsea.png"
    out = tmp_path / "out"
    out.mkdir()
    (out / "chelsea_0.png").write_bytes(b"an earlier sample")
    task = [] if "--task" in flags else ["--task", "jpeg"]
    _cli_refuses(capsys, ["sample", "--checkpoint", str(trained_run), *task, "--input", str(path), "--out", str(out),
                          "--steps", "2", "--device", "cpu", "--no-progress", *flags], out, *names)
    assert [p.name for p in out.iterdir()] == ["chelsea_0.png"]  # nothing written: every input is read first


def test_inputs_that_share_a_stem_keep_their_extension_in_the_output_names(tmp_path, trained_run, photo_dir, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(photo_dir / "chelsea.png", folder / "a.png")
    Image.open(photo_dir / "coffee.png").convert("RGB").save(folder / "a.jpg")
    shutil.copy(photo_dir / "rocket.png", folder / "b.png")
    out = tmp_path / "out"
    assert main(["sample", "--checkpoint", str(trained_run), "--task", "jpeg", "--input", str(folder), "--out",
                 str(out), "--steps", "2", "--device", "cpu", "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a_jpg_0.png", "a_jpg_input.png", "a_png_0.png",
                                                     "a_png_input.png", "b_0.png", "b_input.png"]
    assert "wrote 3 sample(s)" in capsys.readouterr().out


def test_names_that_would_still_collide_are_refused_before_sampling():
    assert output_stems([Path("x/a.png"), Path("x/b.png")]) == ["a", "b"]
    with pytest.raises(PaletteError, match="a.png and .*a_png.jpg would both write a_png_0.png"):
        output_stems([Path("x/a.png"), Path("x/a.jpg"), Path("x/a_png.jpg")])
    with pytest.raises(PaletteError, match="would both write"):  # one file on a case-insensitive file system
        output_stems([Path("x/a.png"), Path("x/A.PNG")])


# ---- palette eval --------------------------------------------------------------------------------------------------


def _eval_args(out: Path, trained_run: Path, data: Path, *extra: str) -> list[str]:
    return ["eval", "--checkpoint", str(trained_run), "--task", "jpeg", "--data", str(data), "--out", str(out),
            "--steps", "2", "--sampler", "ddim", "--metrics", "psnr", "--device", "cpu", "--no-progress", *extra]


@pytest.fixture
def eval_data(tmp_path, photo_dir) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("chelsea.png", "coffee.png"):
        shutil.copy(photo_dir / name, folder / name)
    return folder


@pytest.fixture
def evaluated(tmp_path, trained_run, eval_data, capsys) -> Path:
    out = tmp_path / "eval"
    assert main(_eval_args(out, trained_run, eval_data)) == 0
    capsys.readouterr()
    return out


def test_eval_refuses_an_evaluation_image_above_the_limit(capsys, tmp_path, trained_run, eval_data):
    png_claiming(eval_data / "bomb.png", 12000, 12000)
    _cli_refuses(capsys, _eval_args(tmp_path / "eval", trained_run, eval_data), tmp_path / "eval", "bomb.png",
                 "12000x12000")


def test_eval_refuses_seed_minus_one(capsys, tmp_path, trained_run, eval_data):
    _cli_refuses(capsys, _eval_args(tmp_path / "eval", trained_run, eval_data, "--seed", "-1"), tmp_path / "eval",
                 "--seed")


@pytest.mark.parametrize("damage,names", [
    (lambda p: p.write_bytes(b""), ["chelsea_0.png", "not a readable sample"]),
    (lambda p: Image.new("RGB", (17, 16)).save(p), ["chelsea_0.png", "17x16, not 16x16"]),
])
def test_eval_names_a_damaged_sample(capsys, evaluated, trained_run, eval_data, damage, names):
    damage(evaluated / "samples" / "chelsea_0.png")
    _cli_refuses(capsys, _eval_args(evaluated, trained_run, eval_data), evaluated / "samples", *names)


@pytest.mark.parametrize("flags,differs", [
    (["--no-ema"], "weights_sha256"),  # another weights file: another model's samples
    (["--seed", "1"], "seed 0 there, 1 now"),
    (["--sampler", "ancestral"], "sampler 'ddim' there, 'ancestral' now"),
])
def test_eval_refuses_to_mix_samples_made_otherwise(capsys, evaluated, trained_run, eval_data, flags, differs):
    args = _eval_args(evaluated, trained_run, eval_data)
    args = [a for a in args if a not in ("--sampler", "ddim")] + (["--sampler", "ddim"] if "--sampler" not in flags
                                                                  else []) + flags
    _cli_refuses(capsys, args, evaluated / "samples", differs)


def test_eval_records_what_made_its_samples(evaluated, trained_run):
    import hashlib

    from palette.checkpoint import resolve_weights

    manifest = json.loads((evaluated / "samples" / "manifest.json").read_text())
    digest = hashlib.sha256(resolve_weights(trained_run).read_bytes()).hexdigest()
    assert manifest["weights_sha256"] == digest
    assert (manifest["sampler"], manifest["steps"], manifest["seed"]) == ("ddim", 2, 0)
    assert json.loads((evaluated / "metrics.json").read_text())["weights_sha256"] == digest


def test_eval_refuses_samples_without_a_record(capsys, evaluated, trained_run, eval_data):
    (evaluated / "samples" / "manifest.json").unlink()
    _cli_refuses(capsys, _eval_args(evaluated, trained_run, eval_data), evaluated / "samples", "without manifest.json")


# ---- the Python API ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def palette(trained_run):
    return Palette.load(trained_run, device="cpu")


def _gray_255(dtype) -> np.ndarray:
    return np.full((20, 24, 3), 127, dtype=dtype)


API_CASES = {  # name: (call, expected message)
    "floats in 0..255": (lambda p, d: p.restore_jpeg(_gray_255(np.float32), steps=1),
                         r"images: float values must be in \[0, 1\], got 127 to 127; for 0..255 values divide by 255"),
    "int64 in 0..255": (lambda p, d: p.restore_jpeg(_gray_255(np.int64), steps=1),
                        "images: int64 values are ambiguous.*astype"),
    "a PIL image of mode F in 0..255": (lambda p, d: p.restore_jpeg(Image.fromarray(_gray_255(np.float32)[:, :, 0]),
                                                                    steps=1), "images: float values must be in"),
    "all NaN": (lambda p, d: p.restore_jpeg(np.full((20, 24), np.nan, np.float32), steps=1),
                "images holds NaN or infinite values"),
    "infinity in a tensor": (lambda p, d: p.restore_jpeg(torch.full((3, 8, 8), float("inf")), steps=1),
                             "images holds NaN"),
    "a 0x0 array": (lambda p, d: p.restore_jpeg(np.zeros((0, 0), np.uint8), steps=1), "images: an empty 0x0 image"),
    "the second of a batch": (lambda p, d: p.restore_jpeg([_gray_255(np.uint8), _gray_255(np.float64)], steps=1),
                              r"images\[1\]: float values"),
    "steps=2.5": (lambda p, d: p.restore_jpeg(_gray_255(np.uint8), steps=2.5), "steps must be a whole number"),
    "num_samples=True": (lambda p, d: p.restore_jpeg(_gray_255(np.uint8), num_samples=True),
                         "num_samples must be a whole number"),
    "seed=2**70": (lambda p, d: p.restore_jpeg(_gray_255(np.uint8), steps=1, seed=2**70),
                   f"seed must be a whole number from 0 to {MAX_SEED}"),
    "seed=-1": (lambda p, d: p.restore_jpeg(_gray_255(np.uint8), steps=1, seed=-1), "seed must be"),
    "a missing path": (lambda p, d: p.restore_jpeg(str(d / "missing.png"), steps=1), "images: .*missing.png: no such"),
    "a non-image path": (lambda p, d: p.restore_jpeg(_write(d / "notes.png", b"text"), steps=1),
                         "images: .*notes.png cannot be read as an image"),
    "a path claiming 12000x12000": (lambda p, d: p.restore_jpeg(png_claiming(d / "bomb.png", 12000, 12000)),
                                    "bomb.png is 12000x12000"),
    "a lazily opened JPEG claiming 9000x9000": (lambda p, d: p.restore_jpeg(Image.open(jpeg_claiming(d / "b.jpg", 9000,
                                                                                                     9000))),
                                                "images is 9000x9000"),
    "a panorama with seed=-1": (lambda p, d: p.panorama(_gray_255(np.uint8), 1, seed=-1), "seed must be"),
    "a panorama extended 1.5 times": (lambda p, d: p.panorama(_gray_255(np.uint8), 1.5), "extend must be a whole"),
}


@pytest.mark.parametrize("case", API_CASES)
def test_the_api_names_the_argument_it_refuses(palette, tmp_path, case):
    call, match = API_CASES[case]
    with pytest.raises(PaletteError, match=match):
        call(palette, tmp_path)


def test_the_api_takes_floats_with_rounding_errors_and_integers_as_before(palette):
    from palette.api import _one_image

    photo = np.random.default_rng(0).integers(0, 256, (20, 24, 3)).astype(np.uint8)
    exact = _one_image(photo, 3)
    torch.testing.assert_close(_one_image(photo / 255.0, 3), exact)
    torch.testing.assert_close(_one_image(np.clip(photo / 255.0 + 5e-5, 0, 1 + 5e-5), 3), exact, atol=1e-4, rtol=0)
    torch.testing.assert_close(_one_image(torch.from_numpy(photo).permute(2, 0, 1), 3), exact)


def test_a_raised_api_limit_lets_a_large_input_through(trained_run):
    small = Palette.load(trained_run, device="cpu", max_pixels=100)
    with pytest.raises(PaletteError, match="images is 24x20"):
        small.restore_jpeg(_gray_255(np.uint8), steps=1)
    assert len(Palette.load(trained_run, device="cpu", max_pixels=24 * 20).restore_jpeg(_gray_255(np.uint8),
                                                                                     steps=1)) == 1


# ---- the web app's handlers ----------------------------------------------------------------------------------------

W = pytest.importorskip("palette.webapp")


@pytest.fixture(scope="module")
def allowed(tmp_path_factory, trained_run) -> Path:
    """A folder the server allows: a copy of the run, and a link to a run outside it."""
    root = tmp_path_factory.mktemp("allowed")
    shutil.copytree(trained_run, root / "run")
    (root / "escape").symlink_to(trained_run, target_is_directory=True)
    return root


def test_a_server_with_a_checkpoint_loads_nothing_else(trained_run, allowed):
    models = W.Models(str(trained_run), None, "cpu")
    with pytest.raises(PaletteError, match="does not load checkpoints"):
        models.load("run")
    with pytest.raises(PaletteError, match="exclude each other"):
        W.Models(str(trained_run), allowed, "cpu")


def test_loading_is_limited_to_the_allowed_folder_and_names_nothing_outside(allowed, trained_run):
    models = W.Models(None, allowed, "cpu")
    choices = models.choices()
    assert "run" in choices and not any(c.startswith("escape") for c in choices)
    for outside in (str(trained_run), "../" + trained_run.name, "escape", "escape/checkpoints", "/etc/passwd"):
        with pytest.raises(PaletteError) as caught:
            models.load(outside)
        assert str(caught.value) == "Pick a checkpoint from the list."


def test_what_one_session_loads_is_not_what_another_samples(allowed):
    models = W.Models(None, allowed, "cpu")
    assert models.get("run") is models.load("run")
    assert models.get(None) is None  # a session that loaded nothing has no model, whoever loaded what
    with pytest.raises(PaletteError, match="No model is loaded yet"):
        W.run_request(models.get(None), W.PageRequest(None, "jpeg", steps=1, sampler="ddim"), W.Limits())


def test_a_broken_checkpoint_s_error_names_no_server_path(allowed, tmp_path):
    (allowed / "broken.safetensors").write_bytes(b"garbage")
    models = W.Models(None, allowed, "cpu")
    with pytest.raises(PaletteError) as caught:
        models.load("broken.safetensors")
    assert str(caught.value).startswith("broken.safetensors cannot be loaded") and str(allowed) not in str(caught.value)


@pytest.fixture(scope="module")
def web_model(trained_run):
    return W.Models(str(trained_run), None, "cpu").get(None)


def _request(model, path, limits=W.Limits(), task="jpeg", samples=2, steps=3, seed=0, tile=False, extend=0,
             side="right", **kwargs):
    request = W.PageRequest(str(path), task, None, W.DRAWN, side, samples, steps, "ddim", seed, tile, extend)
    return W.run_request(model, request, limits, **kwargs)


def _options(model, **settings):
    return SamplingOptions(**{"steps": 1, **settings}).resolved(model.config)


WEB_CASES = {  # name: (request arguments given the folder, expected message)
    "seed -1": (lambda d: {"seed": -1}, "seed must be a whole number from 0"),
    "seed 2**70": (lambda d: {"seed": 2**70}, "seed must be"),
    "steps 2.5": (lambda d: {"steps": 2.5}, "steps must be a whole number from 1 to 1000"),
    "9 samples": (lambda d: {"samples": 9}, "samples must be a whole number from 1 to 8"),
    "a PNG claiming 12000x12000": (lambda d: {"path": png_claiming(d / "bomb.png", 12000, 12000)},
                                   "bomb.png is 12000x12000"),
    "text named .png": (lambda d: {"path": _write(d / "fake.png", b"text")}, "fake.png is not an image"),
    "work above the budget": (lambda d: {"samples": 8, "steps": 1000, "limits": W.Limits(request_budget=10**6)},
                              "needs 8,000 network evaluations of 16x16 pixels .*Reduce the samples or the steps"),
    "a tiled canvas above the cap": (lambda d: {"tile": True, "limits": W.Limits(max_tiled_pixels=48 * 40 - 1)},
                                     "48x40 \\(1,920 pixels\\) is above this server's limit of 1,919"),
    "a panorama above the cap": (lambda d: {"task": "uncropping", "extend": 2,
                                            "limits": W.Limits(max_tiled_pixels=4000)}, "panorama would be 128x40"),
    "a panorama of all sides": (lambda d: {"task": "uncropping", "extend": 2, "side": "all"}, "A panorama extends"),
    "samples above the output cap": (lambda d: {"samples": 2, "limits": W.Limits(max_output_pixels=2 * 48 * 40 - 1)},
                                     "3,840 pixels together \\(2 of 48x40\\), above this server's limit of 3,839"),
    "a JPEG claiming 20000x20000": (lambda d: {"path": jpeg_claiming(d / "huge.jpg", 20000, 20000)},
                                    "huge.jpg claims more pixels than this server's limit"),
    "inpainting with no stroke drawn": (lambda d: {"task": "inpainting"}, "The drawn mask is empty: once the photo "
                                        "shows in the editor, draw the region to fill with the brush"),
}


@pytest.mark.parametrize("case", WEB_CASES)
def test_the_web_app_refuses_with_a_message(web_model, photo_dir, tmp_path, case):
    make, match = WEB_CASES[case]
    kwargs = {"path": photo_dir / "chelsea.png", **make(tmp_path)}
    with pytest.raises(PaletteError, match=match) as caught:
        _request(web_model, **kwargs)
    assert str(tmp_path) not in str(caught.value)  # the server's folders stay its own


def test_super_resolution_output_counts_its_scale_against_the_output_cap(web_model):
    limits = W.Limits(max_output_pixels=48 * 4 * 40 * 4)
    W.check_request(web_model, (48, 40), "sr-x4", _options(web_model, num_samples=1), 0, "right", limits)
    with pytest.raises(PaletteError, match="2 of 192x160"):
        W.check_request(web_model, (48, 40), "sr-x4", _options(web_model, num_samples=2), 0, "right", limits)


def test_a_file_above_pillows_own_limit_is_a_pixel_limit_error_without_palettes(tmp_path):
    with pytest.raises(PixelLimitError, match="above Pillow's own limit"):
        probe(jpeg_claiming(tmp_path / "huge.jpg", 20000, 20000), max_pixels=None)


def test_a_panorama_above_the_pixel_limit_is_refused_before_sampling(trained_run):
    small = Palette.load(trained_run, device="cpu", max_pixels=16 * 48 - 1)  # 16x16 grows by 16 px each extension
    assert small.panorama(np.zeros((16, 16, 3), np.uint8), extend=1, steps=1).size == (32, 16)
    with pytest.raises(PixelLimitError, match="the panorama \\(extend=2\\) is 48x16"):
        small.panorama(np.zeros((16, 16, 3), np.uint8), extend=2, steps=1)


def test_panorama_refuses_an_eta_its_sampler_would_ignore(palette):
    with pytest.raises(PaletteError, match="eta"):
        palette.panorama(np.zeros((16, 16, 3), np.uint8), extend=1, steps=1, sampler="ancestral", eta=0.5)


def test_tiled_work_counts_one_evaluation_per_tile(web_model):
    # a 16 px model tiles a 48x40 photo with overlap 4 (a quarter): ceil((40 - 4) / 12) = 3 rows, ceil(44 / 12) = 4
    # columns, so 2 samples of 10 steps are 2 * 10 * 12 evaluations of 16x16 pixels
    work = 2 * 10 * 12 * 16 * 16
    options = _options(web_model, num_samples=2, steps=10, tile=True)
    W.check_request(web_model, (48, 40), "jpeg", options, 0, "right", W.Limits(request_budget=work))
    with pytest.raises(PaletteError, match="needs 240 network evaluations"):
        W.check_request(web_model, (48, 40), "jpeg", options, 0, "right", W.Limits(request_budget=work - 1))


def test_stop_ends_a_request_at_the_next_network_evaluation(web_model, photo_dir):
    seen = []
    with pytest.raises(W.Cancelled):
        _request(web_model, photo_dir / "chelsea.png", steps=50, progress=lambda done, total: seen.append(done),
                 cancelled=lambda: len(seen) >= 3)
    assert seen == [1, 2, 3]


def test_shard_jobs_racing_to_write_the_manifest_keep_the_first_and_compare_with_it(tmp_path, monkeypatch):
    from palette import eval_files, evaluate

    real_link = os.link

    def another_job_first(src, dst):  # another shard job writes its manifest between our check and our write
        Path(dst).write_text(json.dumps({"seed": 1}))
        return real_link(src, dst)

    monkeypatch.setattr(os, "link", another_job_first)
    reason = evaluate.check_manifest(tmp_path, {"seed": 0})
    assert "seed 1 there, 0 now" in reason
    assert json.loads((tmp_path / "samples" / eval_files.MANIFEST).read_text()) == {"seed": 1}
    assert [p.name for p in (tmp_path / "samples").iterdir()] == [eval_files.MANIFEST]  # no temporary file left
