"""Seeding: sample k of an input is seeded by (seed, the input's key, k), so no two inputs share noise."""

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from palette import evaluate
from palette import protocols
from palette.cli import main
from palette.sampling import sample_seed


def test_sample_seeds_differ_across_inputs_and_samples_and_repeat_for_the_same_triple():
    seeds = {sample_seed(0, key, k) for key in (0, 1, 9999, "a.png", "b.png") for k in range(3)}
    assert len(seeds) == 15
    assert sample_seed(7, "a.png", 2) == sample_seed(7, "a.png", 2)
    assert sample_seed(0, 0, 1) != sample_seed(1, 0, 0)  # seed + k collided here before
    with pytest.raises(ValueError, match="non-negative"):
        sample_seed(-1, 0, 0)


def _pixels(path):
    return np.asarray(Image.open(path), dtype=np.int16)


def test_two_files_of_one_folder_get_different_noise(tmp_path, trained_run, photo_dir):
    """The same picture under two names: one seed, two different samples (they were identical)."""
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(photo_dir / "rocket.png", folder / "first.png")
    shutil.copy(photo_dir / "rocket.png", folder / "second.png")
    argv = ["sample", "--checkpoint", str(trained_run), "--task", "jpeg", "--steps", "3", "--sampler", "ddim",
            "--batch-invariant", "--no-progress", "--device", "cpu"]
    assert main([*argv, "--input", str(folder), "--out", str(tmp_path / "out")]) == 0
    first, second = _pixels(tmp_path / "out" / "first_0.png"), _pixels(tmp_path / "out" / "second_0.png")
    assert np.abs(first - second).max() > 10
    # a file's samples depend on its name, not on the other files of the folder
    assert main([*argv, "--input", str(folder / "second.png"), "--out", str(tmp_path / "alone")]) == 0
    assert np.array_equal(_pixels(tmp_path / "alone" / "second_0.png"), second)


def test_two_images_of_one_evaluation_get_different_noise(tmp_path, trained_run, photo_dir, random_weights_dir):
    for name in ("a.png", "b.png"):
        shutil.copy(photo_dir / "rocket.png", tmp_path / name)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'a.png'}\n{tmp_path / 'b.png'}\n")
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(trained_run), "--task", "jpeg", "--data", str(listing), "--out", str(out),
                 "--steps", "3", "--sampler", "ddim", "--batch-invariant", "--device", "cpu", "--metrics", "psnr",
                 "--weights-dir", str(random_weights_dir), "--no-progress"]) == 0
    items = protocols.folder_or_list(listing).items
    first, second = (_pixels(evaluate.sample_paths(out, item, 0)) for item in items)
    assert np.abs(first - second).max() > 10
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 2
