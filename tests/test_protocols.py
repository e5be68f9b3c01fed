"""The evaluation protocols shipped as data: ctest10k, places10k, FID-5K, and the evaluation masks."""

import numpy as np
import pytest
from PIL import Image

from palette import masks as mask_shapes
from palette import protocols
from palette.errors import ArgumentError, PaletteError


def test_ctest10k_has_10000_unique_labelled_imagenet_validation_entries():
    entries = protocols.ctest10k_entries()
    names = [name for name, _ in entries]
    assert len(entries) == 10_000 and len(set(names)) == 10_000
    assert all(name.split("/")[-1].startswith("ILSVRC2012_val_") for name in names)
    assert all(label is not None and 0 <= label < 1000 for _, label in entries)


def test_ctest10k_resolves_class_folders_and_flat_folders_and_names_missing_images(tmp_path):
    (name_a, _), (name_b, _) = protocols.ctest10k_entries()[:2]
    nested = tmp_path / name_a.lstrip("/")
    nested.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(nested, format="JPEG")
    Image.new("RGB", (8, 8)).save(tmp_path / name_b.split("/")[-1], format="JPEG")
    with pytest.raises(ArgumentError, match="9998 of 10000 ctest10k images are missing") as err:
        protocols.ctest10k(tmp_path)
    assert err.value.argument == "data"  # the folder given as data must hold them


def _places_list(path, classes=365, per_class=40, seed=0):
    rng = np.random.default_rng(seed)
    lines = [f"Places365_val_{i:08d}.jpg {i % classes}" for i in range(classes * per_class)]
    rng.shuffle(lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def test_places10k_picks_the_first_30_sorted_names_of_each_of_365_classes(tmp_path):
    entries = protocols.places10k_entries(_places_list(tmp_path / "places365_val.txt"))
    assert len(entries) == 30 * 365 == 10_950
    labels = [label for _, label in entries]
    assert all(labels.count(c) == 30 for c in range(365))
    class_7 = [name for name, label in entries if label == 7]
    expected = sorted(f"Places365_val_{i:08d}.jpg" for i in range(7, 365 * 40, 365))[:30]
    assert class_7 == expected
    assert protocols.places10k_entries(_places_list(tmp_path / "again.txt", seed=1)) == entries  # order of the list is moot


def test_places10k_refuses_a_list_with_too_few_images_per_class(tmp_path):
    with pytest.raises(PaletteError, match="at least 30"):
        protocols.places10k_entries(_places_list(tmp_path / "short.txt", per_class=20))


@pytest.mark.parametrize("name,low,high", [("freeform-10-20", 0.1, 0.2), ("freeform-20-30", 0.2, 0.3),
                                           ("freeform-30-40", 0.3, 0.4)])
def test_evaluation_masks_have_their_coverage_and_are_the_same_in_every_run(name, low, high):
    masks = [protocols.eval_mask(name, i, 64) for i in range(20)]
    assert all(low <= mask_shapes.coverage(m) <= high for m in masks)
    assert all(np.array_equal(m, protocols.eval_mask(name, i, 64)) for i, m in enumerate(masks))
    assert not np.array_equal(masks[0], masks[1])


def test_center_mask_is_the_papers_box():
    mask = protocols.eval_mask("center", 0, 256)
    assert mask.sum() == 128 * 128 and mask[64:192, 64:192].all()


def test_mask_file_round_trips_in_the_papers_bit_packed_format(tmp_path):
    masks = np.stack([protocols.eval_mask("freeform-20-30", i, 256) for i in range(3)])
    protocols.save_mask_file(tmp_path / "masks.npz", {"20-30% freeform": masks})
    with np.load(tmp_path / "masks.npz") as archive:  # one flat uint8 array per category, 8 pixels a byte
        assert archive["20-30% freeform"].dtype == np.uint8 and archive["20-30% freeform"].size == 3 * 256 * 256 // 8
    loaded = protocols.load_mask_file(tmp_path / "masks.npz", "freeform-20-30")
    assert loaded.shape == (3, 256, 256) and np.array_equal(loaded, masks)


def test_mask_file_errors_name_the_file_and_category(tmp_path):
    protocols.save_mask_file(tmp_path / "masks.npz", {"10-20% freeform": np.zeros((1, 256, 256), bool)})
    with pytest.raises(PaletteError, match="no category '20-30% freeform'"):
        protocols.load_mask_file(tmp_path / "masks.npz", "freeform-20-30")
    with pytest.raises(PaletteError, match="fewer than 5"):
        protocols.load_mask_file(tmp_path / "masks.npz", "10-20% freeform", count=5)
    (tmp_path / "junk.npz").write_text("not numpy")
    with pytest.raises(PaletteError, match="junk.npz"):
        protocols.load_mask_file(tmp_path / "junk.npz", "10-20% freeform")


def test_list_labels_must_be_integers(tmp_path):
    (tmp_path / "list.txt").write_text("a.png 3\nb.png cat\n")
    with pytest.raises(PaletteError, match="line 2"):
        protocols.folder_or_list(tmp_path / "list.txt")


@pytest.fixture(scope="module")
def imagenet_val(tmp_path_factory, fid5k_dir):
    """An ImageNet validation folder of empty files: ctest10k's in their class folders, ColTran's FID-5K images half
    in class folders (wnid chosen by image number) and half flat, and two images neither list names."""
    root = tmp_path_factory.mktemp("imagenet_val")
    wnids = protocols.imagenet_wnids()
    for name, _ in protocols.ctest10k_entries():
        (root / name.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / name.lstrip("/")).touch()
    in_ctest10k = {name.split("/")[-1] for name, _ in protocols.ctest10k_entries()}
    evaluated, reference = protocols.coltran_fid5k_names(fid5k_dir)
    for i, name in enumerate(evaluated + reference + ["ILSVRC2012_val_00050001.JPEG", "ILSVRC2012_val_00050002.JPEG"]):
        if name not in in_ctest10k:
            number = int(name[len("ILSVRC2012_val_"):-len(".JPEG")])
            folder = root / wnids[number % 1000] if i % 2 == 0 else root
            folder.mkdir(exist_ok=True)
            (folder / name).touch()
    return root


def test_imagenet_labels_index_the_sorted_class_folders_as_ctest10k_says():
    wnids = protocols.imagenet_wnids()
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    assert all(label == wnids.index(name.split("/")[1]) for name, label in protocols.ctest10k_entries()[:50])


@pytest.fixture(scope="module")
def fid5k_dir(tmp_path_factory):
    return fid5k_lists(tmp_path_factory.mktemp("fid5k"))


def fid5k_lists(folder):
    """Stand-ins for big_vision's two lists, in its layout: 5,000 names each, in a read order that is not sorted."""
    order = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in np.random.default_rng(5).permutation(50_000) + 1]
    for name, names in zip(protocols.FID5K_LIST_FILES, (order[:5000], order[10_000:15_000])):
        (folder / name).write_text("\n".join(names) + "\n")
    return folder


def test_fid5k_reads_coltrans_lists_from_the_cache_folder_in_their_order(tmp_path, monkeypatch):
    monkeypatch.setenv("PALETTE_CACHE_DIR", str(tmp_path))
    with pytest.raises(ArgumentError, match="eval_file_names.txt is missing.*big_vision") as err:
        protocols.coltran_fid5k_names()
    assert err.value.argument == "fid5k_lists"
    fid5k_lists((tmp_path / "fid5k").mkdir() or tmp_path / "fid5k")
    evaluated, reference = protocols.coltran_fid5k_names()
    written = (tmp_path / "fid5k" / "eval_file_names.txt").read_text().split()
    assert evaluated == written and evaluated != sorted(evaluated)  # the file's (read) order, not name order
    assert len(reference) == 5000 and not set(evaluated) & set(reference)
    (tmp_path / "fid5k" / "reference_file_names.txt").write_text("\n".join(evaluated[:4999]))
    with pytest.raises(PaletteError, match="5000 distinct images, this one 4999"):
        protocols.coltran_fid5k_names()


def test_fid5k_resolves_its_lists_in_any_layout_with_labels_from_class_folders(imagenet_val, fid5k_dir):
    protocol = protocols.resolve("fid5k", imagenet_val, fid5k_lists=fid5k_dir)
    evaluated, reference = protocols.coltran_fid5k_names(fid5k_dir)
    assert [i.path.name for i in protocol.items] == evaluated
    assert [i.path.name for i in protocol.reference] == reference
    wnids = protocols.imagenet_wnids()
    for item in protocol.items[:200]:
        in_class_folder = item.path.parent != imagenet_val
        assert item.label == (wnids.index(item.path.parent.name) if in_class_folder else None)
    assert protocol.label_space == protocols.IMAGENET_1K
    unlabelled = sum(i.label is None for i in protocol.items)
    assert 0 < unlabelled < 5000
    assert f"{unlabelled} of 5000 images have no label" in protocols.classification_unavailable(protocol)


def test_ctest10k_fid_reference_is_the_whole_validation_folder(imagenet_val):
    protocol = protocols.resolve("ctest10k", imagenet_val)
    every_image = sorted(p for p in imagenet_val.rglob("*.JPEG"))
    assert sorted(i.path for i in protocol.reference) == every_image
    assert len(protocol.reference) > len(protocol.items) == 10_000
    assert protocol.label_space == protocols.IMAGENET_1K and protocols.classification_unavailable(protocol) is None


def test_places10k_fid_reference_is_every_listed_validation_image_and_its_labels_are_not_imagenets(tmp_path):
    listing = _places_list(tmp_path / "places365_val.txt", per_class=31)
    names = [line.split()[0] for line in listing.read_text().splitlines()]
    for name in names:
        (tmp_path / name).touch()
    protocol = protocols.resolve("places10k", tmp_path)
    assert sorted(i.path.name for i in protocol.reference) == sorted(names)
    assert len(protocol.items) == 10_950
    assert protocol.label_space == protocols.PLACES365
    assert "Places365" in protocols.classification_unavailable(protocol)


def test_a_plain_lists_labels_count_for_classification_only_when_their_classes_are_given(tmp_path):
    (tmp_path / "list.txt").write_text("a.png 3\nb.png 7\n")
    assert "not known to be ImageNet-1k" in protocols.classification_unavailable(protocols.resolve(None, tmp_path / "list.txt"))
    labelled = protocols.resolve(None, tmp_path / "list.txt", label_space="imagenet-1k")
    assert protocols.classification_unavailable(labelled) is None


def test_a_label_space_that_contradicts_the_protocol_is_an_error(imagenet_val):
    with pytest.raises(ArgumentError, match="places365: the ctest10k protocol's labels are imagenet-1k") as err:
        protocols.resolve("ctest10k", imagenet_val, label_space="places365")
    assert err.value.argument == "label_space"


@pytest.mark.parametrize("call,argument", [
    (lambda tmp: protocols.folder_or_list(tmp / "nowhere"), "data"),
    (lambda tmp: protocols.resolve(None, tmp), "data"),  # a folder without images
    (lambda tmp: protocols.resolve("imagenet", tmp), "protocol"),
    (lambda tmp: protocols.resolve(None, tmp, label_space="coco"), "label_space"),
    (lambda tmp: protocols.places10k(tmp), "places_list"),
    (lambda tmp: protocols.coltran_fid5k_names(tmp), "fid5k_lists"),
    (lambda tmp: protocols.load_mask_file(tmp / "nowhere.npz", "freeform-20-30"), "mask_file"),
])
def test_errors_name_the_argument_given_never_a_flag(tmp_path, call, argument):
    """The command line turns the argument into its flag (palette.cli.flag_of); the library speaks of no flags."""
    with pytest.raises(ArgumentError) as err:
        call(tmp_path)
    assert err.value.argument == argument and "--" not in str(err.value)
