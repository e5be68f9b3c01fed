"""Data: finding, decoding (gray, RGBA, 16-bit) and cropping images; bad files reported by name."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from palette.crops import random_square_crop
from palette.data import load_image
from palette.data_files import list_images
from palette.data_scan import scan_images
from palette.training_data import TrainingData, sample_rng
from palette.errors import ArgumentError, PaletteError
from palette.tasks import make_task


def test_folders_are_searched_recursively_for_image_extensions(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/one.png", "a/b/two.JPG", "three.webp", "four.tiff", "five.bmp"):
        Image.new("RGB", (4, 4)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in list_images(tmp_path)] == ["two.JPG", "one.png", "five.bmp", "four.tiff", "three.webp"]


def test_list_files_name_images_relative_to_the_list(tmp_path):
    (tmp_path / "n01").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "n01" / "x.png")
    listing = tmp_path / "list.txt"
    listing.write_text("# ctest10k style\n/n01/x.png 3\n\nn01/x.png\n")
    assert list_images(listing) == [tmp_path / "n01" / "x.png"] * 2


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_missing_or_empty_data_is_a_clear_error(tmp_path, kind):
    target = tmp_path / "nothing" if kind == "missing" else tmp_path
    with pytest.raises(ArgumentError, match="data.path") as error:
        list_images(target)
    assert error.value.argument == "data.path"


@pytest.mark.parametrize("path", ["", None])
def test_no_data_path_is_refused_not_read_as_the_current_folder(tmp_path, monkeypatch, path):
    Image.new("RGB", (4, 4)).save(tmp_path / "stray.png")  # what the current folder would have given
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArgumentError, match="data.path is not set") as error:
        list_images(path)
    assert error.value.argument == "data.path"


def test_sixteen_bit_gray_png_keeps_its_precision(tmp_path):
    values = np.arange(0, 65536, 257 * 3 + 1, dtype=np.uint16)[:64].reshape(8, 8)
    Image.fromarray(values).save(tmp_path / "g16.png")
    image = load_image(tmp_path / "g16.png", channels=1)
    assert image.shape == (1, 8, 8)
    torch.testing.assert_close(image[0], torch.from_numpy(values.astype(np.float32) / 65535), atol=1e-7, rtol=0)


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(image[:, 3, 0], torch.tensor([1.0, 1.0, 1.0]))


def test_gray_files_become_three_channels_and_colour_files_one(tmp_path):
    Image.fromarray(np.full((4, 4), 128, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((4, 4, 3), (255, 0, 0), np.uint8)).save(tmp_path / "c.png")
    assert load_image(tmp_path / "g.png", 3).shape == (3, 4, 4)
    assert load_image(tmp_path / "c.png", 1)[0, 0, 0].item() == pytest.approx(0.299)


def test_largest_square_crop_spans_the_short_side():
    image = torch.zeros(1, 20, 50)
    image[:, :, 10:30] = 1  # a stripe narrower than the square: a largest square crop always overlaps it
    rng = np.random.default_rng(0)
    out = random_square_crop(image, 10, rng, scale_min=1.0, flip=False)
    assert out.shape == (1, 10, 10) and out.max() > 0.5


def test_small_images_are_upscaled_with_a_warning(tmp_path, caplog):
    Image.new("RGB", (8, 6), "red").save(tmp_path / "tiny.png")
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "big.png")
    with caplog.at_level(logging.WARNING):
        report = scan_images(list_images(tmp_path), 32, 0.01, progress=False)
    assert report.small == [tmp_path / "tiny.png"] and "upscaled" in caplog.text and "tiny.png" in caplog.text
    out = random_square_crop(load_image(tmp_path / "tiny.png"), 32, np.random.default_rng(0))
    assert out.shape == (3, 32, 32)
    torch.testing.assert_close(out, torch.tensor([1.0, 0, 0])[:, None, None].expand(3, 32, 32))


def test_unreadable_files_are_named_and_skipped_below_the_threshold(tmp_path, caplog):
    for i in range(200):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i:03d}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with caplog.at_level(logging.WARNING):
        report = scan_images(list_images(tmp_path), 4, 0.01, progress=False)
    assert [p.name for p, _ in report.unreadable] == ["broken.png"] and len(report.readable) == 200
    assert "broken.png" in caplog.text


def test_too_many_unreadable_files_stop_with_the_list(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "good.png")
    for name in ("bad1.png", "bad2.jpg"):
        (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(PaletteError, match=r"2 of 3 files(.|\n)*bad1\.png(.|\n)*bad2\.jpg"):
        scan_images(list_images(tmp_path), 4, 0.01, progress=False)


def test_truncated_files_are_skipped_when_decoding(tmp_path, caplog):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b_truncated.png").write_bytes(data[: len(data) // 2])
    paths = sorted(tmp_path.glob("*.png"))
    ds = TrainingData(paths, make_task("jpeg"), 16, 3, seed=0)
    with caplog.at_level(logging.WARNING):
        items = [ds[n] for n in range(4)]
    assert all(item["y"].shape == (3, 16, 16) for item in items)
    assert "b_truncated.png" in caplog.text


def test_examples_are_a_function_of_seed_and_number(photo_dir):
    paths = list_images(photo_dir)
    a = TrainingData(paths, make_task("inpainting"), 16, 3, seed=3)
    b = TrainingData(paths, make_task("inpainting"), 16, 3, seed=3)
    for n in (5, 0, 17):
        assert torch.equal(a[n]["x"], b[n]["x"]) and torch.equal(a[n]["mask"], b[n]["mask"])
    assert not torch.equal(a[0]["x"], TrainingData(paths, make_task("inpainting"), 16, 3, seed=4)[0]["x"])


def test_each_epoch_visits_every_file_once(photo_dir):
    paths = list_images(photo_dir)
    ds = TrainingData(paths, make_task("jpeg"), 16, 3, seed=0)
    for epoch in range(3):
        assert sorted(ds.file_for(epoch * len(paths) + i) for i in range(len(paths))) == list(range(len(paths)))
    assert sample_rng(0, 1).random() != sample_rng(0, 2).random()


def test_horizontal_flip_happens_about_half_the_time_and_only_when_asked():
    image = torch.linspace(0, 1, 8).expand(1, 8, 8).clone()  # brighter to the right
    rng = np.random.default_rng(0)
    flipped = [random_square_crop(image, 8, rng, flip=True)[0, 0, 0] > 0.5 for _ in range(400)]
    assert 150 < sum(bool(f) for f in flipped) < 250
    assert not any(random_square_crop(image, 8, rng, flip=False)[0, 0, 0] > 0.5 for _ in range(50))
