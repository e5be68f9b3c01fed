"""Paired data: 16-bit files read and written exactly, pairs found by name or CSV, aligned crops, any channel count."""

import struct
import zlib

import numpy as np
import pytest
import tifffile
import torch
from conftest import MICRO
from PIL import Image

from palette import checkpoint as ckpt
from palette.cli import main
from palette.data import load_image
from palette.data_files import list_pairs
from palette.config import Config, apply_overrides
from palette.data_scan import scan_images
from palette.errors import ArgumentError, PaletteError
from palette.imagefile import probe, read_png16, save_image, write_png16
from palette.sheets import training_rows
from palette.tasks import make_task
from palette.training_data import TrainingData

MICRO_FLAGS = [o for o in MICRO if not o.startswith("model.image_size")]


def _values(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 65536, shape, dtype=np.uint16)


def _exact(image: torch.Tensor, array: np.ndarray) -> bool:
    """Whether a (C, H, W) float image in [0, 1] holds exactly the 16-bit values of an (H, W[, C]) array."""
    expected = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return np.array_equal((image.double().numpy() * 65535).round().astype(np.uint16), expected)


@pytest.mark.parametrize("shape", [(9, 13), (9, 13, 3)], ids=["gray", "rgb"])
def test_sixteen_bit_png_round_trips_exactly(tmp_path, shape):
    array = _values(shape)
    write_png16(tmp_path / "a.png", array)
    assert np.array_equal(read_png16(tmp_path / "a.png"), array)
    assert _exact(load_image(tmp_path / "a.png", channels=len(shape) == 3 and 3 or 1), array)
    info = probe(tmp_path / "a.png")
    assert (info.width, info.height, info.channels, info.bits) == (13, 9, 1 if len(shape) == 2 else 3, 16)


def _png_with_every_filter(array: np.ndarray) -> bytes:
    """A 16-bit RGB PNG whose rows cycle through filter types 0-4 (the PNG spec's forward filters)."""
    h = array.shape[0]
    rows = array.astype(">u2").reshape(h, -1).view(np.uint8).astype(np.int32)
    bpp = 6
    out = []
    for r in range(h):
        x, up = rows[r], rows[r - 1] if r else np.zeros_like(rows[r])
        left = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
        upper_left = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        kind = r % 5
        if kind == 0:
            predicted = 0
        elif kind == 1:
            predicted = left
        elif kind == 2:
            predicted = up
        elif kind == 3:
            predicted = (left + up) // 2
        else:
            p = left + up - upper_left
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
            predicted = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, upper_left))
        out.append(bytes([kind]) + ((x - predicted) % 256).astype(np.uint8).tobytes())

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", array.shape[1], h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(out)))
            + chunk(b"IEND", b""))


def test_sixteen_bit_png_rows_with_every_filter_type_decode_exactly(tmp_path):
    array = _values((10, 11, 3), seed=1)
    (tmp_path / "f.png").write_bytes(_png_with_every_filter(array))
    assert np.array_equal(read_png16(tmp_path / "f.png"), array)
    # Pillow decodes the same file to the high bytes of each sample: an independent check of the unfiltering
    assert np.array_equal(np.asarray(Image.open(tmp_path / "f.png")), (array >> 8).astype(np.uint8))


@pytest.mark.parametrize("shape", [(9, 13), (9, 13, 3)], ids=["gray", "rgb"])
def test_sixteen_bit_tiff_reads_exactly(tmp_path, shape):
    array = _values(shape)
    tifffile.imwrite(tmp_path / "a.tif", array, photometric="rgb" if len(shape) == 3 else "minisblack")
    assert _exact(load_image(tmp_path / "a.tif", channels=3 if len(shape) == 3 else 1), array)
    assert probe(tmp_path / "a.tif").bits == 16


def test_samples_are_written_back_as_16_bit_exactly(tmp_path):
    array = _values((7, 5, 3))
    image = torch.from_numpy(array.astype(np.float64).transpose(2, 0, 1) / 65535 * 2 - 1).float()
    save_image(image, tmp_path / "out.png", bits=16)
    assert np.array_equal(read_png16(tmp_path / "out.png"), array)
    save_image(image[:1], tmp_path / "gray.png", bits=16)
    assert np.array_equal(read_png16(tmp_path / "gray.png"), array[:, :, 0])


def _pair_folder(root, names=("a", "b", "c"), size=(24, 20), source_rgb=True, target_rgb=True, bits=16,
                 inverted=False, target_ext=".png"):
    """source/ and target/ of random images; with ``inverted`` each source is the negative of its target."""
    for side in ("source", "target"):
        (root / side).mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        w, h = size
        target = _values((h, w, 3) if target_rgb else (h, w), seed=i)
        source = 65535 - target if inverted else _values((h, w, 3) if source_rgb else (h, w), seed=100 + i)
        for side, array, ext in (("source", source, ".png"), ("target", target, target_ext)):
            path = root / side / f"{name}{ext}"
            if ext == ".tif":
                tifffile.imwrite(path, array if bits == 16 else (array >> 8).astype(np.uint8))
            elif bits == 16:
                write_png16(path, array)
            else:
                Image.fromarray((array >> 8).astype(np.uint8)).save(path)
    return root


def test_pairs_match_by_name_across_extensions_and_subfolders(tmp_path):
    root = _pair_folder(tmp_path, target_ext=".tif")
    (root / "source" / "sub").mkdir()
    (root / "target" / "sub").mkdir()
    Image.new("L", (24, 20)).save(root / "source" / "sub" / "d.png")
    Image.new("L", (24, 20)).save(root / "target" / "sub" / "d.jpg")
    pairs = list_pairs(root)
    assert [(s.relative_to(root).as_posix(), t.relative_to(root).as_posix()) for s, t in pairs] == [
        ("source/a.png", "target/a.tif"), ("source/b.png", "target/b.tif"), ("source/c.png", "target/c.tif"),
        ("source/sub/d.png", "target/sub/d.jpg"),
    ]


def test_a_csv_lists_pairs_relative_to_itself(tmp_path):
    root = _pair_folder(tmp_path / "data")
    listing = tmp_path / "pairs.csv"
    listing.write_text("source,target\ndata/source/a.png,data/target/b.png\n\n" + f"{root}/source/c.png,{root}/target/c.png\n")
    assert list_pairs(listing) == [(root / "source" / "a.png", root / "target" / "b.png"),
                                   (root / "source" / "c.png", root / "target" / "c.png")]


def test_a_missing_partner_is_named(tmp_path):
    root = _pair_folder(tmp_path)
    (root / "target" / "b.png").unlink()
    Image.new("L", (4, 4)).save(root / "target" / "zz.png")
    with pytest.raises(PaletteError, match=r"1 source image\(s\) have no target of the same name: .*source/b\.png"
                                           r".*1 target image\(s\) have no source: .*target/zz\.png"):
        list_pairs(root)


def test_pairs_of_different_sizes_are_named(tmp_path):
    root = _pair_folder(tmp_path, bits=8)
    Image.new("RGB", (10, 8)).save(root / "target" / "b.png")
    with pytest.raises(PaletteError, match=r"1 pair\(s\) .*different sizes:\n.*source/b\.png \(24x20\) vs "
                                           r".*target/b\.png \(10x8\)"):
        scan_images(list_pairs(root), 16, 0.01, progress=False)


@pytest.mark.parametrize("content,match", [
    ("a.png\n", "line 1: expected two columns source,target"),
    ("source,target\nnowhere.png,a.png\n", "line 2: no such file: .*nowhere.png"),
    ("", "no image pairs"),
])
def test_bad_csv_files_name_the_line(tmp_path, content, match):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    (tmp_path / "pairs.csv").write_text(content)
    with pytest.raises(ArgumentError, match=match) as error:
        list_pairs(tmp_path / "pairs.csv")
    assert error.value.argument == "data.path"  # the config field; the command line calls it --data


def test_a_folder_without_source_and_target_is_refused(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "a.png")
    with pytest.raises(PaletteError, match="source/ and target/"):
        list_pairs(tmp_path)


def test_two_files_of_one_name_are_refused(tmp_path):
    root = _pair_folder(tmp_path, bits=8)
    Image.new("RGB", (24, 20)).save(root / "source" / "a.jpg")
    with pytest.raises(PaletteError, match=r"a\.(jpg|png) and .*a\.(jpg|png) have the same name"):
        list_pairs(root)


def test_a_paired_example_is_its_source_and_target_generated_everywhere():
    source, target = torch.rand(1, 4, 6) * 2 - 1, torch.rand(3, 4, 6) * 2 - 1
    sample = make_task("paired").example((source, target), np.random.default_rng(0))
    assert sample.x is source and sample.y is target and sample.info["task"] == "paired"
    assert torch.equal(sample.mask, torch.ones(1, 4, 6))


def test_paired_training_sheets_show_each_source_beside_its_target(tmp_path):
    root = _pair_folder(tmp_path, size=(40, 28), inverted=True)
    config = apply_overrides(Config(), ["task.name=paired", "model.image_size=16", "train.sheet_images=2"])
    rows = training_rows(list_pairs(root), config)
    assert [(r.sheet, r.index, r.condition.masked) for r in rows] == [("paired", 0, False), ("paired", 1, False)]
    for row in rows:
        # the source is the negative of the target
        torch.testing.assert_close(row.condition.x, -row.condition.original, atol=1e-5, rtol=0)
        assert row.condition.original.shape == (3, 16, 16) and row.condition.mask.min() == 1


def test_paired_random_crops_and_flips_stay_aligned(tmp_path):
    root = _pair_folder(tmp_path, size=(40, 28), inverted=True)
    data = TrainingData(list_pairs(root), make_task("paired"), 16, 3, seed=0, crop_scale_min=0.4, flip=True)
    crops = set()
    for n in range(30):
        example = data[n]
        torch.testing.assert_close(example["x"], -example["y"], atol=1e-5, rtol=0)  # the source is the negative
        assert example["mask"].min() == 1 and example["task"] == "paired"
        crops.add(round(float(example["y"][0, 0, 0]), 4))
    assert len(crops) > 20  # the crops do move


@pytest.mark.parametrize("source_rgb,target_rgb", [(False, False), (False, True), (True, False)],
                         ids=["gray-to-gray", "gray-to-rgb", "rgb-to-gray"])
def test_paired_training_and_sampling_take_their_channels_from_the_data(capsys, tmp_path, source_rgb, target_rgb):
    root = _pair_folder(tmp_path / "data", source_rgb=source_rgb, target_rgb=target_rgb)
    run_dir = tmp_path / "run"
    code = main(["train", "--task", "paired", "--data", str(root), "--out", str(run_dir), "--preset", "tiny",
                 "--image-size", "16", "--steps", "2", "--no-progress", *MICRO_FLAGS, "train.sample_every=2",
                 "train.sheet_images=2"])
    assert code == 0, capsys.readouterr().err
    _, metadata = ckpt.read_weights(ckpt.resolve_weights(run_dir))
    model_config = ckpt.config_of(metadata, run_dir).model
    assert (model_config.source_channels, model_config.channels) == (3 if source_rgb else 1, 3 if target_rgb else 1)
    assert ckpt.config_of(metadata, run_dir).data.target_bits == 16
    assert (run_dir / "samples" / "step0000002_paired.png").is_file()

    code = main(["sample", "--checkpoint", str(run_dir), "--task", "paired", "--input", str(root / "source"),
                 "--steps", "2", "--num-samples", "2", "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    for name in ("a_0.png", "a_1.png", "b_0.png", "c_1.png"):
        info = probe(tmp_path / "out" / name)
        assert (info.width, info.height, info.channels, info.bits) == (24, 20, 3 if target_rgb else 1, 16)


def test_a_paired_model_writes_8_bit_samples_of_8_bit_data(capsys, tmp_path):
    root = _pair_folder(tmp_path / "data", bits=8, names=("a", "b"))
    run_dir = tmp_path / "run"
    assert main(["train", "--task", "paired", "--data", str(root), "--out", str(run_dir), "--preset", "tiny",
                 "--image-size", "16", "--steps", "1", "--no-progress", *MICRO_FLAGS]) == 0
    assert main(["sample", "--checkpoint", str(run_dir), "--task", "paired", "--input", str(root / "source" / "a.png"),
                 "--steps", "2", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert probe(tmp_path / "out" / "a_0.png").bits == 8


def test_paired_cannot_join_a_multi_task(capsys, tmp_path, photo_dir):
    code = main(["train", "--task", "multi", "--data", str(photo_dir), "--out", str(tmp_path / "r"),
                 "task.tasks=colorization,paired"])
    assert code == 2 and "paired data cannot be mixed" in capsys.readouterr().err


def test_paired_training_errors_name_the_files(capsys, tmp_path):
    root = _pair_folder(tmp_path / "data", bits=8)
    Image.new("RGB", (10, 8)).save(root / "target" / "c.png")
    code = main(["train", "--task", "paired", "--data", str(root), "--out", str(tmp_path / "r"), "--preset", "tiny",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "source/c.png (24x20) vs" in err and "target/c.png (10x8)" in err and "Traceback" not in err
