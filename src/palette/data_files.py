"""Which files a data source names: the images of a folder or a list file, or the (source, target) pairs of paired data.

A data source (``data.path``) is a folder (searched recursively) or a text file listing one image path per line
(relative paths are taken from the list's folder, as are ctest10k-style "/wnid/file.JPEG" entries; anything after the
path on a line, such as a class label, is ignored). Paired data is a folder holding source/ and target/, or a CSV of
pairs. Errors name ``data.path``, the config field (the command line calls it ``--data``).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from .data import IMAGE_EXTENSIONS
from .errors import ArgumentError, PaletteError

Item = Path | tuple[Path, Path]  # an image file, or a (source, target) pair for the paired task


def item_files(item: Item) -> tuple[Path, ...]:
    """The files of an item: the image alone, or the source then the target of a pair."""
    return item if isinstance(item, tuple) else (item,)


def item_files_with_channels(item: Item, channels: int, source_channels: int) -> list[tuple[Path, int]]:
    """Each file of an item with the channels to decode it with: a pair's source has the model's source channels,
    a target (or a lone image) the model's channels."""
    files = item_files(item)
    return list(zip(files, (source_channels, channels)[-len(files):]))


def _data_source(source: str | Path, expected: str) -> Path:
    """``data.path`` as a path that exists; ``expected`` says what it should be."""
    if source is None or str(source) == "":  # Path("") would be the current folder
        raise ArgumentError("data.path", f"is not set: give {expected}")
    source = Path(source)
    if not source.exists():
        raise ArgumentError("data.path", f"{source}: no such file or folder")
    return source


def _images_below(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def list_images(source: str | Path) -> list[Path]:
    """Image paths of a folder (recursive, sorted) or of a list file; a clear error when there are none."""
    source = _data_source(source, "a folder of images or a text file listing image paths")
    if source.is_dir():
        paths = _images_below(source)
        if not paths:
            raise ArgumentError(
                "data.path",
                f"{source}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively)",
            )
        return paths
    paths = []
    for line in source.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line.split()[0])
        if not path.exists():  # relative to the list's folder; ctest10k-style "/wnid/file.JPEG" too
            rebased = source.parent / str(path).lstrip("/")
            if rebased.exists() or not path.is_absolute():  # an absolute path found nowhere is reported as given
                path = rebased
        paths.append(path)
    if not paths:
        raise ArgumentError("data.path", f"{source}: the list file names no images")
    return paths


def list_pairs(source: str | Path) -> list[tuple[Path, Path]]:
    """(source, target) image pairs for the paired task.

    ``source`` is a folder holding ``source/`` and ``target/`` whose images pair up by name (their path below the
    folder without the extension, so ``source/a.png`` pairs with ``target/a.tif``), or a CSV file of
    ``source,target`` paths, relative to the CSV's folder (a first line ``source,target`` is a header). A file
    without a partner is an error that names it.
    """
    source = _data_source(source, "a folder holding source/ and target/, or a CSV file of source,target pairs")
    pairs = _folder_pairs(source) if source.is_dir() else _csv_pairs(source)
    if not pairs:
        raise ArgumentError("data.path", f"{source}: no image pairs found")
    return pairs


def _folder_pairs(root: Path) -> list[tuple[Path, Path]]:
    """The images of ``root/source`` and ``root/target`` paired by name; every file without a partner is named."""
    folders = [root / name for name in ("source", "target")]
    if not all(f.is_dir() for f in folders):
        raise ArgumentError(
            "data.path",
            f"{root}: paired data is a folder holding source/ and target/ (images with matching names) "
            "or a CSV file of source,target paths",
        )
    sources, targets = (_image_files(f) for f in folders)
    lonely = [sources[k] for k in sources if k not in targets]
    orphans = [targets[k] for k in targets if k not in sources]
    problems = []
    if lonely:
        problems.append(f"{len(lonely)} source image(s) have no target of the same name: {_names(lonely)}")
    if orphans:
        problems.append(f"{len(orphans)} target image(s) have no source: {_names(orphans)}")
    if problems:
        raise ArgumentError("data.path", f"{root}: " + "; ".join(problems))
    return [(sources[k], targets[k]) for k in sorted(sources)]


def _csv_pairs(listing: Path) -> list[tuple[Path, Path]]:
    """The pairs of a CSV file of ``source,target`` paths (relative to its folder), each checked to exist."""
    pairs = []
    with open(listing, newline="") as f:
        for number, row in enumerate(csv.reader(f), start=1):
            row = [cell.strip() for cell in row]
            if not any(row) or row[0].startswith("#"):
                continue
            if len(row) != 2:
                raise ArgumentError("data.path", f"{listing} line {number}: expected two columns source,target, "
                                                 f"got {row}")
            if number == 1 and [c.lower() for c in row] == ["source", "target"]:
                continue
            pair = tuple(Path(c) if Path(c).is_absolute() else listing.parent / c for c in row)
            missing = [p for p in pair if not p.is_file()]
            if missing:
                raise ArgumentError("data.path", f"{listing} line {number}: no such file: {_names(missing)}")
            pairs.append(pair)
    return pairs


def _image_files(folder: Path) -> dict[str, Path]:
    """The images below ``folder`` by name: their path relative to it without the extension."""
    named: dict[str, Path] = {}
    for path in _images_below(folder):
        key = path.relative_to(folder).with_suffix("").as_posix()
        if key in named:
            raise PaletteError(f"{named[key]} and {path} have the same name: a pair needs one file per name")
        named[key] = path
    return named


def _names(paths: Sequence[Path], most: int = 10) -> str:
    return ", ".join(str(p) for p in paths[:most]) + (f" ... and {len(paths) - most} more" if len(paths) > most else "")
