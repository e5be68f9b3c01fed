"""What a study compares: each generated image paired with the real photo it was made from.

A ``--fake`` folder written by ``palette eval`` (it holds ``samples/``) pairs every sample ``samples/<id>_<k>.png``
with its own original, the ``--real`` image whose id is ``<id>`` (its path below ``--real`` without the extension,
``/`` written ``__``, as ``palette eval`` names them; a protocol's ids are file stems, matched too). The original is
shown as ``palette eval`` fed it to the model and measured it: the centred largest square at the samples' size. Any
other folder (or list file) pairs by file name: ``fake/a/b.png`` with ``real/a/b.jpg``; a pair's two images must then
have one size. A generated image without its real one is an error that names it; real photos no condition uses are
simply not shown.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..data import IMAGE_EXTENSIONS
from ..errors import ArgumentError, PaletteError

CATCH_DOWNSCALE = 8  # a catch trial's degraded photo: 1/8 of the size in box-averaged blocks, blown back up


@dataclass(frozen=True)
class Pair:
    image_key: str  # the original photo's id
    sample: int  # which sample of it (palette eval's k; 0 for a folder paired by name)
    real: Path
    fake: Path


@dataclass
class Condition:
    name: str
    source: Path
    pairs: list[Pair]
    eval_size: int | None  # palette eval output: the samples' size, the size the originals are cut to
    unused_reals: int  # real photos this condition has no generated image for


def _key(path: Path, root: Path) -> str:
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    return rel.with_suffix("").as_posix().replace("/", "__")


def images_by_key(source: str | Path, argument: str) -> dict[str, Path]:
    """The images of a folder (recursive) or a list file (one path per line, relative to the list), by id; errors
    name ``source`` as the ``argument`` it was passed as."""
    source = Path(source)
    if source.is_dir():
        root = source
        paths = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not paths:
            raise ArgumentError(argument, f"{source}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
    elif source.is_file():
        root, paths = source.parent, []
        for line in source.read_text().splitlines():
            if line.strip() and not line.strip().startswith("#"):
                path = Path(line.split()[0])
                paths.append(path if path.is_absolute() else root / path)
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise ArgumentError(argument, f"{source}: lists {missing[0]}, which does not exist")
        if not paths:
            raise ArgumentError(argument, f"{source}: the list file names no images")
    else:
        raise ArgumentError(argument, f"{source}: no such file or folder")
    named: dict[str, Path] = {}
    for path in paths:
        key = _key(path, root)
        if key in named:
            raise ArgumentError(argument, f"{source}: {named[key]} and {path} have the same name; a pair needs one "
                                "file per name")
        named[key] = path
    return named


def is_eval_output(folder: Path) -> bool:
    return (folder / "samples").is_dir()


def _eval_pairs(folder: Path, reals: dict[str, Path]) -> list[Pair]:
    from ..evaluate import sample_paths
    from ..protocols import EvalItem

    by_stem: dict[str, list[str]] = {}
    for key, path in reals.items():
        by_stem.setdefault(path.stem, []).append(key)
    pairs, used = [], set()
    for key, path in reals.items():
        # a folder's ids are its relative paths; a protocol's (ctest10k, places10k) are file stems
        ids = [key] + ([path.stem] if path.stem != key and len(by_stem[path.stem]) == 1 else [])
        for image_id in ids:
            k = 0
            while (sample := sample_paths(folder, EvalItem(image_id, path), k)).is_file():
                pairs.append(Pair(key, k, path, sample))
                used.add(sample.resolve())
                k += 1
            if k:
                break
    lonely = sorted(p for p in (folder / "samples").glob("*") if p.is_file() and p.resolve() not in used
                    and not p.name.startswith("."))
    if lonely:
        raise ArgumentError("fakes", f"{folder}: {lonely[0]} has no real image among the real ones (palette eval "
                            f"names a sample <id>_<k>.png after its original's id); {len(lonely)} sample(s) are "
                            "unpaired")
    return pairs


def _name_pairs(folder: Path, reals: dict[str, Path]) -> list[Pair]:
    fakes = images_by_key(folder, "fakes")
    lonely = [path for key, path in fakes.items() if key not in reals]
    if lonely:
        raise ArgumentError("fakes", f"{folder}: {lonely[0]} has no real image of the same name among the real "
                            f"ones; {len(lonely)} generated image(s) are unpaired")
    return [Pair(key, 0, reals[key], path) for key, path in fakes.items()]


def _eval_name(folder: Path) -> str | None:
    try:
        return json.loads((folder / "metrics.json").read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None


def parse_fake(argument: str) -> tuple[str | None, Path]:
    """``--fake PATH`` or ``--fake NAME=PATH``: the condition's name (None: from the folder) and its images."""
    if Path(argument).exists() or "=" not in argument:
        return None, Path(argument)
    name, path = argument.split("=", 1)
    return name.strip(), Path(path)


def load_condition(argument: str, reals: dict[str, Path]) -> Condition:
    name, source = parse_fake(argument)
    if not source.exists():
        raise ArgumentError("fakes", f"{source}: no such file or folder")
    evaluated = source.is_dir() and is_eval_output(source)
    pairs = _eval_pairs(source, reals) if evaluated else _name_pairs(source, reals)
    if not pairs:
        raise ArgumentError("fakes", f"{source}: holds no generated images")
    eval_size = None
    if evaluated:  # palette eval's samples are squares of the model's size
        from ..imagefile import probe

        try:
            eval_size = probe(pairs[0].fake).width
        except (OSError, ValueError) as err:
            raise PaletteError(f"{pairs[0].fake}: cannot be read as an image ({err})") from None
    name = name or (_eval_name(source) if evaluated else None) or source.name
    return Condition(name, source, pairs, eval_size, len(reals) - len({p.image_key for p in pairs}))


def _read(path: Path) -> Image.Image:
    """An image file as 8-bit L or RGB (16-bit files rounded), as a browser can show it."""
    from ..imagefile import read_image, to_pil

    try:
        return to_pil(read_image(path) * 2 - 1)
    except (OSError, ValueError) as err:
        raise PaletteError(f"{path}: cannot be read as an image ({err})") from None


def fake_image(pair: Pair) -> Image.Image:
    return _read(pair.fake)


def real_image(pair: Pair, fake: Image.Image, eval_size: int | None) -> Image.Image:
    """The real photo as observers see it beside ``fake``."""
    if eval_size is not None:  # as palette eval prepared it for the model and the metrics
        from ..evaluate import prepare
        from ..imagefile import to_pil

        if fake.size != (eval_size, eval_size):
            raise PaletteError(f"{pair.fake} is {fake.size[0]}x{fake.size[1]}, unlike the other samples of its "
                               f"folder ({eval_size}x{eval_size}): one palette eval run has one size")
        channels = 1 if fake.mode == "L" else 3
        return to_pil(prepare(pair.real, eval_size, channels) * 2 - 1)
    real = _read(pair.real)
    if real.size != fake.size:
        raise PaletteError(f"{pair.fake} is {fake.size[0]}x{fake.size[1]} but its real image {pair.real} is "
                           f"{real.size[0]}x{real.size[1]}: a pair must have one size (resize one side first)")
    return real


def degraded(real: Image.Image) -> Image.Image:
    """A catch trial's obviously fake image: the photo in blocks of ``CATCH_DOWNSCALE`` pixels."""
    w, h = real.size
    small = real.resize((max(1, w // CATCH_DOWNSCALE), max(1, h // CATCH_DOWNSCALE)), Image.BOX)
    return small.resize((w, h), Image.NEAREST)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
