"""The header scan of a data set before training: which files can be read, which are small, and what the data decides
(the channels and bit depth of each side of an item), without decoding a pixel."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .data_files import Item, item_files
from .errors import PaletteError
from .imagefile import DEFAULT_MAX_PIXELS, PixelLimitError, probe

log = logging.getLogger(__name__)


@dataclass
class ScanReport:
    readable: list[Item]
    unreadable: list[tuple[Path, str]]
    small: list[Item]
    channels: tuple[int, ...] = (3,)  # per file of an item: 3 if any such file is in colour, else 1
    bits: tuple[int, ...] = (8,)  # per file of an item: 16 if any such file has 16-bit samples, else 8


def probe_items(items: Sequence[Item], progress: bool = True,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[tuple]:
    """Read the header of every file of every item: one small outcome per item, ``("ok", min side, channels, bits)``,
    ``("unreadable", path, why)`` or ``("mismatched", sizes)``; :func:`summarize_scan` turns them into a report.
    Processes of a launched run each probe a slice of the items and pool the outcomes. A file above ``max_pixels``
    is unreadable (with the pixel limit's message)."""
    from tqdm.auto import tqdm

    outcomes = []
    for item in tqdm(items, desc="checking images", unit="file", disable=not progress or len(items) < 200, leave=False):
        infos = []
        for path in item_files(item):
            try:
                infos.append(probe(path, max_pixels))
            except (OSError, ValueError, PixelLimitError) as err:
                outcomes.append(("unreadable", path, str(err) or type(err).__name__))
                break
        else:
            sizes = [(i.width, i.height) for i in infos]
            if len(set(sizes)) > 1:
                outcomes.append(("mismatched", sizes))
            else:
                outcomes.append(("ok", min(sizes[0]), tuple(i.channels for i in infos), tuple(i.bits for i in infos)))
    return outcomes


def summarize_scan(items: Sequence[Item], outcomes: Sequence[tuple], min_size: int, max_bad_fraction: float,
                   warn: bool = True) -> ScanReport:
    """The report of :func:`probe_items`' outcomes: the unreadable are reported by name and skipped, the small are
    upscaled later. More than ``max_bad_fraction`` unreadable files stop the run with the list, and so does any pair
    whose source and target differ in size (every such pair is named). ``warn=False`` keeps the warnings to
    another process."""
    readable, unreadable, small, mismatched = [], [], [], []
    width = 2 if items and isinstance(items[0], tuple) else 1
    channels, bits = [1] * width, [8] * width
    for item, outcome in zip(items, outcomes, strict=True):
        if outcome[0] == "unreadable":
            unreadable.append(outcome[1:])
        elif outcome[0] == "mismatched":
            mismatched.append(" vs ".join(f"{p} ({w}x{h})" for p, (w, h) in zip(item, outcome[1])))
        else:
            _, side, item_channels, item_bits = outcome
            readable.append(item)
            if side < min_size:
                small.append(item)
            channels = [max(a, b) for a, b in zip(channels, item_channels)]
            bits = [max(a, b) for a, b in zip(bits, item_bits)]
    _refuse_mismatched(mismatched)
    for path, why in unreadable if warn else ():
        log.warning("skipping %s: cannot be read as an image (%s)", path, why)
    _refuse_unreadable(unreadable, len(items), max_bad_fraction, "pairs" if width == 2 else "files")
    if not readable:
        raise PaletteError("none of the data files can be read as images")
    if small and warn:
        names = ", ".join(str(item_files(p)[-1]) for p in small[:5]) + (" ..." if len(small) > 5 else "")
        log.warning("%d image(s) are smaller than %dpx and will be upscaled: %s", len(small), min_size, names)
    return ScanReport(readable, unreadable, small, tuple(channels), tuple(bits))


def _refuse_mismatched(mismatched: Sequence[str]) -> None:
    """Stop on pairs whose source and target differ in size, naming each (the first 50)."""
    if mismatched:
        more = f"\n  ... and {len(mismatched) - 50} more" if len(mismatched) > 50 else ""
        listing = "\n  ".join(mismatched[:50]) + more
        raise PaletteError(f"{len(mismatched)} pair(s) have a source and a target of different sizes:\n  {listing}")


def _refuse_unreadable(unreadable: Sequence[tuple[Path, str]], total: int, max_bad_fraction: float,
                       kind: str) -> None:
    """Stop when more than ``max_bad_fraction`` of the ``total`` items cannot be read, naming them (the first 50)."""
    if unreadable and len(unreadable) > max_bad_fraction * total:
        listing = "\n  ".join(f"{p}: {why}" for p, why in unreadable[:50])
        raise PaletteError(
            f"{len(unreadable)} of {total} {kind} cannot be read as images (more than {max_bad_fraction:.0%}; "
            f"set data.max_bad_fraction to accept more):\n  {listing}"
        )


def scan_images(items: Sequence[Item], min_size: int, max_bad_fraction: float, progress: bool = True,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ScanReport:
    """Read every file's header and report (:func:`probe_items`, then :func:`summarize_scan`)."""
    return summarize_scan(items, probe_items(items, progress, max_pixels), min_size, max_bad_fraction)
