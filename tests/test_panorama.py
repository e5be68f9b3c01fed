"""Panoramas: the size of N applications on each side, the original pixels kept, seeds, errors."""

import numpy as np
import pytest
import torch
from PIL import Image

from palette import Palette, PaletteError
from palette.errors import ArgumentError
from palette.cli import main
from palette.panorama import panorama_size


@pytest.fixture(scope="module")
def palette(trained_run):
    return Palette.load(trained_run, device="cpu")


def test_the_papers_panorama_is_256_by_2304():
    assert panorama_size(256, 256, 8) == (256, 2304)  # 128 px per application, 8 on each side
    assert panorama_size(256, 256, 8, "vertical") == (2304, 256)
    assert panorama_size(15, 20, 2) == (15, 20 + 2 * (7 + 7))  # an odd height: the uncropping masks generate 7 of 15


@pytest.mark.parametrize("direction,size", [("horizontal", (16, 16)), ("horizontal", (20, 12)), ("vertical", (12, 18)),
                                            ("horizontal", (16, 15))])
def test_a_panorama_has_the_right_size_and_keeps_the_original_pixels(palette, direction, size):
    w, h = size
    image = torch.rand(3, h, w)
    out = palette.panorama(image, extend=2, direction=direction, steps=2, output="tensor")
    height, width = panorama_size(h, w, 2, direction)
    assert out.shape == (3, height, width)
    if direction == "horizontal":
        left = 2 * (h // 2)  # the left uncropping mask generates the left w // 2 columns of each window
        kept = out[:, :, left : left + w]
    else:
        top = 2 * (w // 2)
        kept = out[:, top : top + h, :]
    torch.testing.assert_close(kept, image, atol=1e-6, rtol=0)


def test_the_same_seed_gives_the_same_panorama(palette):
    image = torch.rand(3, 16, 16)
    a, b, c = (palette.panorama(image, 1, steps=2, seed=s, output="tensor") for s in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[:, :, :8], a[:, :, -8:].flip(-1))  # two sides, two seeds


def test_the_command_writes_the_panorama_and_keeps_the_input(capsys, tmp_path, trained_run, photo_dir):
    source = tmp_path / "centre.png"
    Image.open(photo_dir / "coffee.png").convert("RGB").resize((16, 16)).save(source)
    code = main(["panorama", "--checkpoint", str(trained_run), "--input", str(source), "--extend", "3", "--steps", "2",
                 "--sampler", "ddim", "--out", str(tmp_path / "pano.png"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    pano = np.asarray(Image.open(tmp_path / "pano.png"))
    assert pano.shape == (16, 16 + 2 * 3 * 8, 3)
    assert np.array_equal(pano[:, 24:40], np.asarray(Image.open(source)))


@pytest.mark.parametrize("argv,phrase", [
    (["--extend", "0"], "--extend must be at least 1"),
    (["--extend", "1", "--steps", "0"], "--steps must be between 1"),
])
def test_panorama_flag_errors(capsys, tmp_path, trained_run, photo_dir, argv, phrase):
    code = main(["panorama", "--checkpoint", str(trained_run), "--input", str(photo_dir / "coffee.png"),
                 "--out", str(tmp_path / "p.png"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and phrase in err and "Traceback" not in err


def test_a_too_narrow_image_is_refused(palette):
    with pytest.raises(PaletteError, match="needs a width of at least 8"):
        palette.panorama(torch.rand(3, 16, 5), extend=1, steps=1)
    with pytest.raises(PaletteError, match="horizontal or vertical"):
        palette.panorama(torch.rand(3, 16, 16), extend=1, direction="diagonal", steps=1)


def test_a_model_without_uncropping_cannot_make_panoramas(capsys, tmp_path, photo_dir):
    from conftest import MICRO

    run_dir = tmp_path / "jpeg"
    flags = [o for o in MICRO if not o.startswith("model.image_size")]
    assert main(["train", "--task", "jpeg", "--data", str(photo_dir), "--out", str(run_dir), "--preset", "tiny",
                 "--image-size", "16", "--steps", "1", "--no-progress", *flags]) == 0
    code = main(["panorama", "--checkpoint", str(run_dir), "--input", str(photo_dir / "coffee.png"), "--extend", "1",
                 "--out", str(tmp_path / "p.png"), "--no-progress"])
    assert code == 2 and "cannot do uncropping" in capsys.readouterr().err


def test_progress_counts_every_network_evaluation(palette):
    seen = []
    palette.panorama(torch.rand(3, 16, 16), extend=2, steps=3, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (6, 6) and len(seen) == 6  # both sides share each evaluation: one batch per application
    seen.clear()
    palette.panorama(torch.rand(3, 16, 16), extend=2, steps=3, batch_size=1, progress=lambda *a: seen.append(a))
    assert seen[-1] == (6, 6) and len(seen) == 6  # however small a batch was asked for


@pytest.mark.parametrize("setting", [{"num_samples": 2}, {"tile": True}, {"save_process": 4}])
def test_a_sampling_setting_a_panorama_has_no_use_for_is_refused_not_ignored(palette, setting):
    with pytest.raises(ArgumentError, match="is not a panorama setting") as caught:
        palette.panorama(torch.rand(3, 16, 16), extend=1, steps=1, **setting)
    assert caught.value.argument == next(iter(setting))
