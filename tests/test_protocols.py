"""The evaluation protocols shipped as data: ctest10k, places10k, FID-5K, and the evaluation masks."""

import numpy as np
import pytest
from PIL import Image

from palette import masks as M
from palette import protocols as P
from palette.errors import PaletteError


def test_ctest10k_has_10000_unique_labelled_imagenet_validation_entries():
    entries = P.ctest10k_entries()
    names = [name for name, _ in entries]
    assert len(entries) == 10_000 and len(set(names)) == 10_000
    assert all(name.split("/")[-1].startswith("ILSVRC2012_val_") for name in names)
    assert all(label is not None and 0 <= label < 1000 for _, label in entries)


def test_ctest10k_resolves_class_folders_and_flat_folders_and_names_missing_images(tmp_path):
    (name_a, _), (name_b, _) = P.ctest10k_entries()[:2]
    nested = tmp_path / name_a.lstrip("/")
    nested.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(nested, format="JPEG")
    Image.new("RGB", (8, 8)).save(tmp_path / name_b.split("/")[-1], format="JPEG")
    with pytest.raises(PaletteError, match="9998 of 10000 images are missing"):
        P.ctest10k(tmp_path)


def _places_list(path, classes=365, per_class=40, seed=0):
    rng = np.random.default_rng(seed)
    lines = [f"Places365_val_{i:08d}.jpg {i % classes}" for i in range(classes * per_class)]
    rng.shuffle(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_places10k_picks_the_first_30_sorted_names_of_each_of_365_classes(tmp_path):
    entries = P.places10k_entries(_places_list(tmp_path / "places365_val.txt"))
    assert len(entries) == 30 * 365 == 10_950
    labels = [label for _, label in entries]
    assert all(labels.count(c) == 30 for c in range(365))
    class_7 = [name for name, label in entries if label == 7]
    expected = sorted(f"Places365_val_{i:08d}.jpg" for i in range(7, 365 * 40, 365))[:30]
    assert class_7 == expected
    assert P.places10k_entries(_places_list(tmp_path / "again.txt", seed=1)) == entries  # order of the list is moot


def test_places10k_refuses_a_list_with_too_few_images_per_class(tmp_path):
    with pytest.raises(PaletteError, match="at least 30"):
        P.places10k_entries(_places_list(tmp_path / "short.txt", per_class=20))


def test_fid5k_evaluates_the_first_5000_sorted_images_against_the_next_5000(tmp_path):
    listing = tmp_path / "val.txt"
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 10_051)]
    listing.write_text("\n".join(f"{n} {i % 1000}" for i, n in enumerate(reversed(names))))
    protocol = P.fid5k(listing)
    assert [i.path.name for i in protocol.items] == names[:5000]
    assert [i.path.name for i in protocol.reference] == names[5000:10_000]


@pytest.mark.parametrize("name,low,high", [("freeform-10-20", 0.1, 0.2), ("freeform-20-30", 0.2, 0.3),
                                           ("freeform-30-40", 0.3, 0.4)])
def test_evaluation_masks_have_their_coverage_and_are_the_same_in_every_run(name, low, high):
    masks = [P.eval_mask(name, i, 64) for i in range(20)]
    assert all(low <= M.coverage(m) <= high for m in masks)
    assert all(np.array_equal(m, P.eval_mask(name, i, 64)) for i, m in enumerate(masks))
    assert not np.array_equal(masks[0], masks[1])


def test_center_mask_is_the_papers_box():
    mask = P.eval_mask("center", 0, 256)
    assert mask.sum() == 128 * 128 and mask[64:192, 64:192].all()


def test_mask_file_round_trips_in_the_papers_bit_packed_format(tmp_path):
    masks = np.stack([P.eval_mask("freeform-20-30", i, 256) for i in range(3)])
    P.save_mask_file(tmp_path / "masks.npz", {"20-30% freeform": masks})
    with np.load(tmp_path / "masks.npz") as archive:  # one flat uint8 array per category, 8 pixels a byte
        assert archive["20-30% freeform"].dtype == np.uint8 and archive["20-30% freeform"].size == 3 * 256 * 256 // 8
    loaded = P.load_mask_file(tmp_path / "masks.npz", "freeform-20-30")
    assert loaded.shape == (3, 256, 256) and np.array_equal(loaded, masks)


def test_mask_file_errors_name_the_file_and_category(tmp_path):
    P.save_mask_file(tmp_path / "masks.npz", {"10-20% freeform": np.zeros((1, 256, 256), bool)})
    with pytest.raises(PaletteError, match="no category '20-30% freeform'"):
        P.load_mask_file(tmp_path / "masks.npz", "freeform-20-30")
    with pytest.raises(PaletteError, match="fewer than 5"):
        P.load_mask_file(tmp_path / "masks.npz", "10-20% freeform", count=5)
    (tmp_path / "junk.npz").write_text("not numpy")
    with pytest.raises(PaletteError, match="junk.npz"):
        P.load_mask_file(tmp_path / "junk.npz", "10-20% freeform")


def test_list_labels_must_be_integers(tmp_path):
    (tmp_path / "list.txt").write_text("a.png 3\nb.png cat\n")
    with pytest.raises(PaletteError, match="line 2"):
        P.folder_or_list(tmp_path / "list.txt")
