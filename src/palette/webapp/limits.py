"""What one request may ask of a shared server (docs/limits.md), checked before any sampling.

Each refusal is a message for the visitor that says what to reduce, and names no folder of the server's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ..conditions import tiled_canvas
from ..errors import PaletteError
from ..imagefile import DEFAULT_MAX_PIXELS, PixelLimitError, probe
from ..panorama import panorama_size
from ..sampling_options import SamplingOptions
from ..tasks import make_task
from ..tiling import tile_starts

# about 3,000 network evaluations of a 256x256 network (3 samples of 1000 steps) or 48,000 of a 64x64 one
DEFAULT_REQUEST_BUDGET = 200_000_000
DEFAULT_MAX_TILED_PIXELS = 4_000_000  # 2000x2000: a tiled canvas or a panorama
DEFAULT_MAX_OUTPUT_PIXELS = 32_000_000  # the samples of one request together, at their full size (float32 copies)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (docs/limits.md)."""

    max_upload_mb: float = 20
    max_pixels: int = DEFAULT_MAX_PIXELS  # of an uploaded image, from its header
    request_budget: int = DEFAULT_REQUEST_BUDGET  # network evaluations x pixels per evaluation
    max_tiled_pixels: int = DEFAULT_MAX_TILED_PIXELS  # an image sampled at its own size: tiled, or a panorama
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS  # all samples of a request at full size (x4 for sr-x4)


def read_upload(path: str | None, limits: Limits) -> Image.Image:
    """An uploaded photo as RGB, refused from its header when above the limits."""
    if not path:
        raise PaletteError("Upload a photo first.")
    name = Path(path).name  # never the server's folder
    size = Path(path).stat().st_size
    if size > limits.max_upload_mb * 1e6:
        raise PaletteError(f"The file is {size / 1e6:.1f} MB; the limit is {limits.max_upload_mb:g} MB.")
    try:
        info = probe(path, max_pixels=None)  # from the header, before any decoding
    except PixelLimitError:  # above Pillow's own limit; its message names the server's upload folder
        raise PaletteError(f"{name} claims more pixels than this server's limit of {limits.max_pixels:,}.") from None
    except (OSError, ValueError) as err:
        raise PaletteError(f"{name} is not an image that can be read ({type(err).__name__}).") from None
    if info.width * info.height > limits.max_pixels:
        raise PaletteError(f"{name} is {info.width}x{info.height} ({info.width * info.height:,} pixels); the "
                           f"limit is {limits.max_pixels:,} pixels.")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise PaletteError(f"{name} is not an image that can be read ({type(err).__name__}).") from None


def check_request(model, photo_size: tuple[int, int], task: str, options: SamplingOptions, extend: int, side: str,
                  limits: Limits) -> None:
    """Refuse a request whose work (network evaluations x pixels each) or own-size image is above the limits, for
    resolved ``options``. Guidance evaluates the network twice per step."""
    num_samples, steps, tile, guidance = options.num_samples, options.steps, options.tile, options.guidance
    size = model.config.model.image_size
    width, height = photo_size
    if task == "uncropping" and extend > 0:
        per_step, reduce = _panorama_evaluations(width, height, extend, side, limits)
    elif tile:
        per_step, reduce = _tiled_evaluations(width, height, make_task(task).scale, num_samples, size, limits)
    else:
        per_step, reduce = num_samples, "the samples or the steps"
    if guidance:
        per_step, reduce = 2 * per_step, reduce + " (guidance doubles the evaluations)"
    if not (task == "uncropping" and extend > 0):
        check_output_size(width, height, make_task(task).scale, num_samples, limits)
    evaluations = per_step * steps
    work = evaluations * size * size
    if work > limits.request_budget:
        raise PaletteError(f"This request needs {evaluations:,} network evaluations of {size}x{size} pixels "
                           f"({work / 1e6:,.0f} million pixel-evaluations); this server allows "
                           f"{limits.request_budget / 1e6:,.0f} million per request. Reduce {reduce}.")


def most_affordable_steps(size: int, num_samples: int, limits: Limits) -> int:
    """The most steps of a plain request (untiled, unguided) of ``num_samples`` that the budget allows: as in
    :func:`check_request`, its work is ``num_samples`` x steps network evaluations of ``size`` x ``size`` pixels."""
    return limits.request_budget // (num_samples * size * size)


def _panorama_evaluations(width: int, height: int, extend: int, side: str, limits: Limits) -> tuple[int, str]:
    """Network evaluations per step of a panorama (two sides, ``extend`` times) and what to reduce, refusing a
    panorama above ``limits.max_tiled_pixels``."""
    if side == "all":
        raise PaletteError("A panorama extends left and right, or top and bottom: pick one of those sides.")
    out_h, out_w = panorama_size(height, width, extend, "horizontal" if side in ("left", "right") else "vertical")
    if out_w * out_h > limits.max_tiled_pixels:
        raise PaletteError(f"The panorama would be {out_w}x{out_h} ({out_w * out_h:,} pixels), above this "
                           f"server's limit of {limits.max_tiled_pixels:,} pixels for one image: extend it fewer "
                           "times or upload a smaller photo.")
    return 2 * extend, "the steps or the extensions"


def _tiled_evaluations(width: int, height: int, scale: int, num_samples: int, size: int,
                       limits: Limits) -> tuple[int, str]:
    """Network evaluations per step of tiled sampling (one per tile and sample) and what to reduce, refusing a
    canvas above ``limits.max_tiled_pixels``."""
    canvas_h, canvas_w = tiled_canvas(height * scale, width * scale, size)
    if canvas_w * canvas_h > limits.max_tiled_pixels:
        raise PaletteError(f"Tiled sampling works at the photo's own size{f' times {scale}' if scale > 1 else ''}"
                           f": {canvas_w}x{canvas_h} ({canvas_w * canvas_h:,} pixels) is above this server's limit "
                           f"of {limits.max_tiled_pixels:,} pixels for it: upload a smaller photo or untick tiled "
                           "sampling.")
    overlap = size // 4  # the overlap SamplingOptions gives tiles by default, which the page does not change
    tiles = len(tile_starts(canvas_h, size, overlap)) * len(tile_starts(canvas_w, size, overlap))
    return num_samples * tiles, f"the samples, the steps or the photo ({tiles} tiles)"


def check_output_size(width: int, height: int, scale: int, num_samples: int, limits: Limits) -> None:
    """Refuse a request whose samples, at the photo's size times the task's scale, hold more pixels together than
    ``limits.max_output_pixels``: each is finished at full size in float32 (a 2000x2000 photo at sr-x4 with 2 samples
    took 4.6 GB without this cap)."""
    pixels = width * scale * height * scale * num_samples
    if pixels > limits.max_output_pixels:
        raise PaletteError(f"The samples would hold {pixels:,} pixels together ({num_samples} of "
                           f"{width * scale}x{height * scale}), above this server's limit of "
                           f"{limits.max_output_pixels:,}: ask for fewer samples or upload a smaller photo.")
