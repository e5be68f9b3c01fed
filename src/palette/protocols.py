"""Evaluation protocols as data: which images, which labels (and in which classes), which FID reference, which masks.

- ``ctest10k``: the 10,000 ImageNet validation images of Larsson et al. (2016) the paper evaluates on, shipped as
  ``palette/resources/ctest10k.txt`` (lines ``/wnid/ILSVRC2012_val_XXXXXXXX.JPEG label``, ImageNet-1k labels).
  ``--data`` is the ImageNet validation folder, either in class folders (``val/n01440764/...``) or flat
  (``val/ILSVRC2012_val_...``); the FID reference is that whole folder (the paper: the 50,000 validation images).
- ``places10k``: 30 images per class for each of the 365 Places2 classes (10,950). No list was published; the rule
  here is: from Places365's ``places365_val.txt`` (``Places365_val_00000001.jpg 165``), for each class the first 30
  file names in sorted order. ``--data`` is the validation folder holding the images and that file; the FID reference
  is every image the file lists (the paper: the 36,500 validation images). Labels are Places365 classes.
- ``fid5k``: ColTran's colorization FID-5K: the first 5,000 ImageNet validation images in TensorFlow Datasets' read
  order, against images 10,000-15,000 of that order as the reference. The two file lists are google-research/
  big_vision's (its ColTran FID-5K evaluator's); palette does not ship them but reads them from ``--fid5k-lists``
  or the cache folder (:func:`fid5k_lists_dir`). Labels come from the class folders when ``--data`` has them.
- any folder or list file: every image, labels taken from a second column when the list has one (in which classes
  is unknown unless said: ``label_space``), the evaluated originals as the FID reference.

Evaluation masks are generated per image index with a fixed seed (:data:`EVAL_MASK_SEED`) so every run and every
shard sees the same masks; the paper's released mask file (an ``.npz`` with one bit-packed array of N x 256 x 256
masks per category, 1 = hole) is read and written by :func:`load_mask_file` / :func:`save_mask_file`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from . import masks as mask_shapes
from .data import IMAGE_EXTENSIONS
from .errors import ArgumentError, PaletteError

log = logging.getLogger(__name__)

PROTOCOLS = ("ctest10k", "places10k", "fid5k")
EVAL_MASK_SEED = 2021
PLACES_PER_CLASS, PLACES_CLASSES = 30, 365
FID5K_SIZE = 5000
IMAGENET_VALIDATION_SIZE, PLACES_VALIDATION_SIZE = 50_000, 36_500  # the paper's FID references
# the class sets labels can index; classification accuracy needs IMAGENET_1K's, the classifier's own
IMAGENET_1K, PLACES365 = "imagenet-1k", "places365"
LABEL_SPACES = (IMAGENET_1K, PLACES365)
MASK_FILE_SIZE = 256
# the paper's mask file names its categories like this
MASK_FILE_CATEGORIES = {f"freeform-{r}": f"{r}% freeform" for r in mask_shapes.EVAL_FREE_FORM_RANGES}


@dataclass(frozen=True)
class EvalItem:
    id: str  # unique, usable as a file stem
    path: Path
    label: int | None = None


@dataclass
class EvalSet:
    name: str
    items: list[EvalItem]
    reference: list[EvalItem] | None = None  # None: the evaluated images' own originals are the FID reference
    label_space: str | None = None  # the classes the items' labels index (IMAGENET_1K, PLACES365); None: unknown
    reference_name: str = ""  # what ``reference`` is, for metrics.json


def classification_unavailable(eval_set: EvalSet) -> str | None:
    """Why classification accuracy cannot be computed on ``eval_set`` (None when it can).

    The classifier predicts ImageNet-1k classes, so CA needs every image labelled in ImageNet-1k's classes (the paper
    reports CA on ImageNet only)."""
    if eval_set.label_space == PLACES365:
        return (f"{eval_set.name}'s labels are Places365 classes (0..364), not the ImageNet-1k classes the ResNet-50 "
                "predicts; the paper reports CA on ImageNet only")
    if eval_set.label_space != IMAGENET_1K:
        return (f"{eval_set.name}'s labels are not known to be ImageNet-1k classes (use the ctest10k or fid5k "
                "protocol, or the label space imagenet-1k for a list of ImageNet class indices)")
    unlabelled = sum(item.label is None for item in eval_set.items)
    if unlabelled:
        return (f"{unlabelled} of {len(eval_set.items)} images have no label (for fid5k: a validation folder in class "
                "folders, val/n01440764/...)")
    return None


def _item(path: Path, root: Path, label: int | None) -> EvalItem:
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    return EvalItem(str(rel.with_suffix("")).replace("/", "__").replace("\\", "__"), path, label)


def _parse_list(lines: list[str], where: str) -> list[tuple[str, int | None]]:
    entries = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        label = None
        if len(parts) > 1:
            try:
                label = int(parts[1])
            except ValueError:
                raise PaletteError(f"{where} line {number}: the label {parts[1]!r} is not an integer") from None
        entries.append((parts[0], label))
    return entries


def read_list(source: Path) -> list[tuple[str, int | None]]:
    """The (path, label or None) entries of a list file."""
    return _parse_list(Path(source).read_text().splitlines(), str(source))


def folder_or_list(data: str | Path) -> EvalSet:
    """Every image of a folder (recursive, sorted), or the entries of a list file (paths relative to the list)."""
    data = Path(data)
    if data.is_dir():
        paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not paths:
            raise ArgumentError("data", f"{data}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return EvalSet(data.name, [_item(p, data, None) for p in paths])
    if data.is_file():
        items = []
        for name, label in read_list(data):
            path = Path(name)
            if not path.is_absolute() or not path.exists():
                path = data.parent / name.lstrip("/")
            items.append(_item(path, data.parent, label))
        if not items:
            raise ArgumentError("data", f"{data}: the list file names no images")
        return EvalSet(data.stem, items)
    raise ArgumentError("data", f"{data}: no such file or folder")


def _resource_list(name: str) -> list[tuple[str, int | None]]:
    text = resources.files("palette").joinpath(f"resources/{name}").read_text()
    return _parse_list(text.splitlines(), name)


def ctest10k_entries() -> list[tuple[str, int | None]]:
    return _resource_list("ctest10k.txt")


def imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet-1k class folders (WordNet ids) in label order: sorted, as ctest10k's labels confirm."""
    return sorted({name.strip("/").split("/")[0] for name, _ in ctest10k_entries()})


FID5K_LIST_FILES = ("eval_file_names.txt", "reference_file_names.txt")  # the evaluated images, the reference
FID5K_SOURCE = "google-research/big_vision, folder big_vision/evaluators/proj/uvim/coltran_fid_data/"


def fid5k_lists_dir() -> Path:
    """Where ColTran's FID-5K lists are looked for by default: ``$PALETTE_CACHE_DIR/fid5k`` or ~/.cache/palette/fid5k."""
    root = os.environ.get("PALETTE_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "palette") / "fid5k"


def coltran_fid5k_names(folder: str | Path | None = None) -> tuple[list[str], list[str]]:
    """ColTran's FID-5K file names, read from ``folder`` (default :func:`fid5k_lists_dir`): (the 5,000 evaluated,
    the 5,000 of the reference), each in its file's order (TFDS's read order, not sorted by name)."""
    folder = Path(folder) if folder is not None else fid5k_lists_dir()
    lists = []
    for name in FID5K_LIST_FILES:
        path = folder / name
        if not path.is_file():
            raise ArgumentError("fid5k_lists", f"{folder}: {name} is missing: fid5k needs ColTran's file lists "
                                               f"{' and '.join(FID5K_LIST_FILES)}, from {FID5K_SOURCE}, in this "
                                               "folder (copy them there, or give the folder that holds them)")
        names = [line.split()[0] for line in path.read_text().splitlines()
                 if line.strip() and not line.startswith("#")]
        if len(set(names)) != FID5K_SIZE or len(names) != FID5K_SIZE:
            raise PaletteError(f"{path}: ColTran's list names {FID5K_SIZE} distinct images, this one {len(names)} "
                               f"({len(set(names))} distinct)")
        lists.append(names)
    if set(lists[0]) & set(lists[1]):
        raise PaletteError(f"{folder}: the evaluated and the reference lists share images; ColTran's do not")
    return lists[0], lists[1]


def imagenet_validation_images(root: Path) -> dict[str, Path]:
    """Every ImageNet validation image under ``root`` (class folders or flat), by file stem (ILSVRC2012_val_...)."""
    return {p.stem: p for p in sorted(root.rglob("ILSVRC2012_val_*"))
            if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()}


def _warn_if_not_full(reference: list[EvalItem], expected: int, protocol: str, root: Path) -> None:
    if len(reference) != expected:
        log.warning("%s: the FID reference (every validation image in %s) holds %d images, not the "
                    "paper's %d; FID will not be comparable with the paper's", protocol, root, len(reference), expected)


def _check_exist(items: list[EvalItem], protocol: str, root: Path) -> None:
    missing = [i.path for i in items if not i.path.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:3])
        raise ArgumentError("data", f"{root}: {len(missing)} of {len(items)} {protocol} images are missing (e.g. "
                                    f"{shown}); it must be the folder that holds them")


def ctest10k(root: str | Path) -> EvalSet:
    """ctest10k resolved against an ImageNet validation folder (class folders or flat), the whole folder as the
    FID reference."""
    root = Path(root)
    found = imagenet_validation_images(root)
    items = []
    for name, label in ctest10k_entries():
        stem = Path(name).stem
        items.append(EvalItem(stem, found.get(stem, root / name.lstrip("/")), label))
    _check_exist(items, "ctest10k", root)
    reference = [EvalItem(stem, path) for stem, path in found.items()]
    _warn_if_not_full(reference, IMAGENET_VALIDATION_SIZE, "ctest10k", root)
    return EvalSet("ctest10k", items, reference, IMAGENET_1K,
                   f"the ImageNet validation set in {root} ({len(reference)} images)")


def places10k_entries(val_list: str | Path) -> list[tuple[str, int]]:
    """The places10k rule applied to Places365's validation list: per class, the first 30 names in sorted order."""
    by_class: dict[int, list[str]] = {}
    for name, label in read_list(Path(val_list)):
        if label is None:
            raise PaletteError(f"{val_list}: every line needs a class label (``file label``)")
        by_class.setdefault(label, []).append(name)
    short = {c: len(v) for c, v in by_class.items() if len(v) < PLACES_PER_CLASS}
    if len(by_class) != PLACES_CLASSES or short:
        raise PaletteError(f"{val_list}: places10k needs {PLACES_CLASSES} classes with at least {PLACES_PER_CLASS} "
                           f"images each; found {len(by_class)} classes, {len(short)} of them short")
    return [(name, c) for c in sorted(by_class) for name in sorted(by_class[c])[:PLACES_PER_CLASS]]


def places10k(root: str | Path, val_list: str | Path | None = None) -> EvalSet:
    root = Path(root)
    val_list = Path(val_list) if val_list else root / "places365_val.txt"
    if not val_list.is_file():
        raise ArgumentError("places_list", f"{val_list}: no such file; places10k needs Places365's validation list "
                                           "(from filelist_places365-standard.tar, lines "
                                           "'Places365_val_00000001.jpg 165')")
    items = [EvalItem(Path(n).stem, root / n.lstrip("/"), c) for n, c in places10k_entries(val_list)]
    _check_exist(items, "places10k", root)
    reference = [EvalItem(Path(n).stem, root / n.lstrip("/")) for n, _ in read_list(val_list)]
    _warn_if_not_full(reference, PLACES_VALIDATION_SIZE, "places10k", root)
    return EvalSet("places10k", items, reference, PLACES365,
                   f"the Places365 validation set listed in {val_list} ({len(reference)} images)")


def fid5k(root: str | Path, lists: str | Path | None = None) -> EvalSet:
    """ColTran's FID-5K resolved against an ImageNet validation folder: its 5,000 images, its 5,000 as reference, from
    the lists in ``lists`` (:func:`coltran_fid5k_names`).

    Labels (ImageNet-1k) come from the class folders (``val/n01440764/...``); a flat folder leaves them unknown."""
    root = Path(root)
    found = imagenet_validation_images(root)
    label_of = {wnid: label for label, wnid in enumerate(imagenet_wnids())}

    def items(names: list[str]) -> list[EvalItem]:
        resolved = [(Path(n).stem, found.get(Path(n).stem, root / n)) for n in names]
        return [EvalItem(stem, path, label_of.get(path.parent.name)) for stem, path in resolved]

    evaluated, reference = (items(names) for names in coltran_fid5k_names(lists))
    _check_exist(evaluated + reference, "fid5k", root)
    return EvalSet("fid5k", evaluated, reference, IMAGENET_1K,
                   "ColTran's FID-5K reference: ImageNet validation images 10,000-15,000 in TFDS read order")


def resolve(protocol: str | None, data: str | Path, places_list: str | Path | None = None,
            label_space: str | None = None, fid5k_lists: str | Path | None = None) -> EvalSet:
    """The evaluation set of ``protocol`` (or of a plain folder / list when None, whose labels index the classes
    of ``label_space`` when it is given)."""
    if label_space is not None and label_space not in LABEL_SPACES:
        raise ArgumentError("label_space", f"{label_space!r} is unknown: choose one of {', '.join(LABEL_SPACES)}")
    if protocol is None:
        eval_set = folder_or_list(data)
        eval_set.label_space = label_space
        return eval_set
    makers = {"ctest10k": ctest10k, "places10k": lambda d: places10k(d, places_list), "fid5k": lambda d: fid5k(d, fid5k_lists)}
    if protocol not in makers:
        raise ArgumentError("protocol", f"{protocol!r} is unknown: choose one of {', '.join(PROTOCOLS)}")
    eval_set = makers[protocol](data)
    if label_space is not None and label_space != eval_set.label_space:
        raise ArgumentError("label_space", f"{label_space}: the {protocol} protocol's labels are "
                                           f"{eval_set.label_space}")
    return eval_set


def eval_mask(name: str, index: int, size: int) -> np.ndarray:
    """The evaluation mask ``name`` of image ``index`` at ``size`` x ``size``, the same in every run."""
    return mask_shapes.named_mask(name, size, size, np.random.default_rng([EVAL_MASK_SEED, index]))


def save_mask_file(path: str | Path, masks: dict[str, np.ndarray]) -> None:
    """Write masks ({category: (N, H, W) bool}) as the paper's file: each category bit-packed in one flat array."""
    np.savez_compressed(path, **{k: np.packbits(np.asarray(v, dtype=bool), axis=None) for k, v in masks.items()})


def load_mask_file(path: str | Path, category: str, count: int | None = None,
                   size: int = MASK_FILE_SIZE) -> np.ndarray:
    """The (N, size, size) boolean masks (True = hole) of ``category`` in a bit-packed mask archive.

    ``category`` is the file's key (``"20-30% freeform"``) or palette's name for it (``freeform-20-30``); the count
    is what the archive holds unless ``count`` says otherwise.
    """
    path = Path(path)
    key = MASK_FILE_CATEGORIES.get(category, category)
    try:
        with np.load(path) as archive:
            if key not in archive.files:
                raise ArgumentError("mask_file", f"{path} has no category {key!r}; it has "
                                                 f"{', '.join(archive.files)}")
            packed = archive[key]
    except (OSError, ValueError) as err:
        raise ArgumentError("mask_file", f"{path}: not a numpy mask archive ({err})") from None
    per_mask = size * size
    n = len(packed) * 8 // per_mask if count is None else count
    bits = np.unpackbits(packed, axis=None)
    if n < 1 or len(bits) < n * per_mask:
        raise ArgumentError("mask_file", f"{path}: category {key!r} holds {len(bits) // per_mask} masks of "
                                         f"{size}x{size}, fewer than {n}")
    return bits[: n * per_mask].reshape(n, size, size).astype(bool)
