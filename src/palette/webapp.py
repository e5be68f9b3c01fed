"""``palette serve``: a Gradio page over the Python API.

Upload a photo, pick the task, draw the inpainting mask with the brush (or pick a generated one), pick the uncropping
side, set samples, steps, sampler, seed and guidance, and get the samples in a gallery with a progress bar. Two
options go beyond the model's size: tiled sampling at the photo's own resolution, and panoramas (uncropping repeated
on both sides).

A server is shared, so each request is bounded (docs/limits.md): uploads above ``max_upload_mb`` and images above
``max_pixels`` (checked from the header) are refused, and so are requests whose work, network evaluations times the
pixels of each, is above ``request_budget``, and images sampled at their own size (tiled, or a panorama) above
``max_tiled_pixels``. One request runs at a time; the others wait in a queue whose position the page shows, and Stop
ends a request at its next network evaluation. The server binds 127.0.0.1 unless told otherwise.

The model is the one of ``checkpoint``, the same for everyone. Without it, and only with ``allow_load``, a visitor
may load a checkpoint found under that folder, for their own session: what one visitor loads never changes what
another samples, and no message names a path outside the folder.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from . import checkpoint as ckpt
from .api import Palette
from .errors import PaletteError
from .imagefile import DEFAULT_MAX_PIXELS, PixelLimitError, probe
from .masks import MASK_NAMES
from .panorama import panorama_size
from .samplers import SAMPLERS
from .sampling import MAX_SEED, check_seed, tiled_canvas
from .tasks import make_task
from .tiling import tile_starts

DRAWN = "drawn with the brush"
NO_MODEL = ("No model is loaded: start the server with --checkpoint, or with --allow-load DIR to load one from the "
            "page.")
PICK_ONE = "No model is loaded yet: pick a checkpoint above and press Load."
# about 3,000 network evaluations of a 256x256 network (3 samples of 1000 steps) or 48,000 of a 64x64 one
DEFAULT_REQUEST_BUDGET = 200_000_000
DEFAULT_MAX_TILED_PIXELS = 4_000_000  # 2000x2000: a tiled canvas or a panorama
DEFAULT_MAX_OUTPUT_PIXELS = 32_000_000  # the samples of one request together, at their full size (float32 copies)
KEEP_LOADED = 2  # models loaded from the page kept in memory at once


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server (docs/limits.md)."""

    max_upload_mb: float = 20
    max_pixels: int = DEFAULT_MAX_PIXELS  # of an uploaded image, from its header
    request_budget: int = DEFAULT_REQUEST_BUDGET  # network evaluations x pixels per evaluation
    max_tiled_pixels: int = DEFAULT_MAX_TILED_PIXELS  # an image sampled at its own size: tiled, or a panorama
    max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS  # all samples of a request at full size (x4 for sr-x4)


class Cancelled(Exception):
    """The visitor pressed Stop."""


def describe(model: Palette | None, missing: str = NO_MODEL) -> str:
    if model is None:
        return missing
    c = model.config
    student = (f" A student distilled to {c.distill.steps} DDIM step(s): it samples with the ddim sampler in exactly "
               "that many steps." if c.distill.steps else "")
    return (f"Loaded a {c.task.name} model ({', '.join(model.tasks)}), {c.model.image_size}x{c.model.image_size}, "
            f"preset {c.preset}.{student}")


def sampling_defaults(model: Palette | None) -> tuple[int, str]:
    """The page's steps and sampler for ``model``: 20 DPM-Solver++(2M) steps, or a distilled student's own."""
    if model is not None and model.config.distill.steps:
        return model.config.distill.steps, "ddim"
    return 20, "dpmpp-2m"


class Models:
    """The model of each session: the server's ``checkpoint`` for all, or one a session loaded from under
    ``allow_load`` (a few kept in memory, reloaded when needed)."""

    def __init__(self, checkpoint: str | None, allow_load: str | Path | None, device: str,
                 max_pixels: int = DEFAULT_MAX_PIXELS):
        if checkpoint and allow_load:
            raise PaletteError("--checkpoint and --allow-load exclude each other: with --checkpoint, everyone samples "
                               "that model")
        self.device, self.max_pixels = device, max_pixels
        self.fixed = Palette.load(checkpoint, device=device, max_pixels=max_pixels) if checkpoint else None
        self.root = None
        if allow_load is not None:
            self.root = Path(allow_load).resolve()
            if not self.root.is_dir():
                raise PaletteError(f"--allow-load {allow_load}: no such folder")
        self._loaded: OrderedDict[str, Palette] = OrderedDict()
        self._lock = threading.Lock()

    def choices(self) -> list[str]:
        """What may be loaded: run folders, checkpoint folders and weights files under the folder, relative to it."""
        if self.root is None:
            return []
        found = set()
        for folder, dirs, files in os.walk(self.root):  # symbolic links to folders are not followed
            here = Path(folder)
            dirs.sort()
            if "checkpoints" in dirs:
                found.add(here)
            found.update(here / f for f in files if f.endswith(".safetensors") and f != "state.safetensors")
            if len(found) > 1000:
                break
        return sorted(str(p.relative_to(self.root)) for p in found if self._inside(p))

    def _inside(self, path: Path) -> bool:
        return path.resolve().is_relative_to(self.root)

    def load(self, choice: str) -> Palette:
        """The model ``choice`` (one of :meth:`choices`); errors name nothing outside the folder."""
        if self.root is None:
            raise PaletteError("This server does not load checkpoints from the page.")
        if choice not in self.choices():
            raise PaletteError("Pick a checkpoint from the list.")
        with self._lock:
            if choice in self._loaded:
                self._loaded.move_to_end(choice)
                return self._loaded[choice]
        try:
            weights = ckpt.resolve_weights(self.root / choice)
            if not self._inside(weights):
                raise PaletteError("its weights are outside the allowed folder")
            model = Palette.load(weights, device=self.device, max_pixels=self.max_pixels)
        except PaletteError as err:
            message = str(err).replace(f"{self.root}{os.sep}", "").replace(str(self.root), ".")
            raise PaletteError(f"{choice} cannot be loaded: {message}") from None
        with self._lock:
            self._loaded[choice] = model
            while len(self._loaded) > KEEP_LOADED:
                self._loaded.popitem(last=False)
        return model

    def get(self, choice: str | None) -> Palette | None:
        """The model of a session that loaded ``choice`` (None: the server's own)."""
        if self.fixed is not None or choice is None:
            return self.fixed
        return self.load(choice)


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


MAX_GUIDANCE = 10.0


def _guidance(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not 0 <= value <= MAX_GUIDANCE:
        raise PaletteError(f"guidance must be a number from 0 to {MAX_GUIDANCE:g}, got {value!r}")
    return float(value)


def _whole(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise PaletteError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def check_request(model: Palette, photo_size: tuple[int, int], task: str, num_samples: int, steps: int,
                  tile: bool, extend: int, side: str, limits: Limits, guidance: float = 0.0) -> None:
    """Refuse a request whose work (network evaluations x pixels each) or own-size image is above the limits.
    Guidance evaluates the network twice per step."""
    size = model.config.model.image_size
    width, height = photo_size
    if task == "uncropping" and extend > 0:
        if side == "all":
            raise PaletteError("A panorama extends left and right, or top and bottom: pick one of those sides.")
        out_h, out_w = panorama_size(height, width, extend, "horizontal" if side in ("left", "right") else "vertical")
        if out_w * out_h > limits.max_tiled_pixels:
            raise PaletteError(f"The panorama would be {out_w}x{out_h} ({out_w * out_h:,} pixels), above this "
                               f"server's limit of {limits.max_tiled_pixels:,} pixels for one image: extend it fewer "
                               "times or upload a smaller photo.")
        evaluations, reduce = 2 * extend * steps, "the steps or the extensions"
    elif tile:
        scale = make_task(task).scale
        canvas_h, canvas_w = tiled_canvas(height * scale, width * scale, size)
        if canvas_w * canvas_h > limits.max_tiled_pixels:
            raise PaletteError(f"Tiled sampling works at the photo's own size{f' times {scale}' if scale > 1 else ''}"
                               f": {canvas_w}x{canvas_h} ({canvas_w * canvas_h:,} pixels) is above this server's limit "
                               f"of {limits.max_tiled_pixels:,} pixels for it: upload a smaller photo or untick tiled "
                               "sampling.")
        overlap = size // 4  # the API's default
        tiles = len(tile_starts(canvas_h, size, overlap)) * len(tile_starts(canvas_w, size, overlap))
        evaluations, reduce = num_samples * steps * tiles, f"the samples, the steps or the photo ({tiles} tiles)"
    else:
        evaluations, reduce = num_samples * steps, "the samples or the steps"
    if guidance:
        evaluations, reduce = 2 * evaluations, reduce + " (guidance doubles the evaluations)"
    if not (task == "uncropping" and extend > 0):
        check_output_size(width, height, make_task(task).scale, num_samples, limits)
    work = evaluations * size * size
    if work > limits.request_budget:
        raise PaletteError(f"This request needs {evaluations:,} network evaluations of {size}x{size} pixels "
                           f"({work / 1e6:,.0f} million pixel-evaluations); this server allows "
                           f"{limits.request_budget / 1e6:,.0f} million per request. Reduce {reduce}.")


def check_output_size(width: int, height: int, scale: int, num_samples: int, limits: Limits) -> None:
    """Refuse a request whose samples, at the photo's size times the task's scale, hold more pixels together than
    ``limits.max_output_pixels``: each is finished at full size in float32 (a 2000x2000 photo at sr-x4 with 2 samples
    took 4.6 GB without this cap)."""
    pixels = width * scale * height * scale * num_samples
    if pixels > limits.max_output_pixels:
        raise PaletteError(f"The samples would hold {pixels:,} pixels together ({num_samples} of "
                           f"{width * scale}x{height * scale}), above this server's limit of "
                           f"{limits.max_output_pixels:,}: ask for fewer samples or upload a smaller photo.")


def drawn_mask(editor: dict | None, photo: Image.Image) -> np.ndarray:
    layers = (editor or {}).get("layers") or []
    drawn = [np.asarray(layer)[..., 3] > 0 for layer in layers if layer is not None]
    mask = np.any(drawn, axis=0) if drawn else None
    if mask is None or not mask.any():
        raise PaletteError("The drawn mask is empty: once the photo shows in the editor, draw the region to fill "
                           "with the brush, or pick a generated mask.")
    if mask.shape != (photo.height, photo.width):
        mask = np.asarray(Image.fromarray(mask).resize(photo.size, Image.NEAREST))
    return mask


def run_request(model: Palette | None, path: str | None, editor: dict | None, task: str, mask_choice: str, side: str,
                num_samples: Any, steps: Any, sampler: str, seed: Any, tile: bool, extend: Any, limits: Limits,
                progress: Callable[[int, int], None] | None = None,
                cancelled: Callable[[], bool] = lambda: False, guidance: Any = 0.0) -> list:
    """One request of the page: the checks, then the samples (raises :class:`Cancelled` when ``cancelled()``
    turns true, at the next network evaluation)."""
    if model is None:
        raise PaletteError(PICK_ONE)
    num_samples = _whole(num_samples, "samples", 1, 8)
    steps = _whole(steps, "steps", 1, 1000)
    extend = _whole(extend, "panorama extensions", 0, 8)
    guidance = _guidance(guidance)
    seed = check_seed(int(seed) if isinstance(seed, float) and seed.is_integer() else seed, "seed")
    photo = read_upload(path, limits)
    mask = None
    if task == "inpainting":
        mask = drawn_mask(editor, photo) if mask_choice == DRAWN else mask_choice
    check_request(model, photo.size, task, num_samples, steps, bool(tile), extend, side, limits, guidance)

    def report(done, total):
        if cancelled():
            raise Cancelled
        if progress is not None:
            progress(done, total)

    if task == "uncropping" and extend > 0:
        direction = "horizontal" if side in ("left", "right") else "vertical"
        return [model.panorama(photo, extend, direction, progress=report, steps=steps, sampler=sampler, seed=seed,
                               guidance=guidance)]
    return model(photo, task, mask=mask, side=side, num_samples=num_samples, steps=steps, sampler=sampler, seed=seed,
                 progress=report, tile=bool(tile), guidance=guidance)


def build_app(checkpoint: str | None = None, device: str = "auto", max_upload_mb: float = 20,
              max_pixels: int = DEFAULT_MAX_PIXELS, queue_size: int = 32, allow_load: str | Path | None = None,
              request_budget: int = DEFAULT_REQUEST_BUDGET, max_tiled_pixels: int = DEFAULT_MAX_TILED_PIXELS,
              max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    limits = Limits(max_upload_mb, max_pixels, request_budget, max_tiled_pixels, max_output_pixels)
    models = Models(checkpoint, allow_load, device, max_pixels)
    stops: dict[str, threading.Event] = {}  # per session: Stop pressed

    def shown(fn):
        """``fn`` with a PaletteError shown on the page."""
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except PaletteError as err:
                raise gr.Error(str(err)) from None
        return wrapper

    @shown
    def load(choice: str | None):
        model = models.load(choice or "")
        tasks = model.tasks
        default_steps, default_sampler = sampling_defaults(model)
        return (describe(model), gr.update(choices=list(tasks), value=tasks[0]), choice, gr.update(value=default_steps),
                gr.update(value=default_sampler))

    @shown
    def upload(path):
        return read_upload(path, limits)

    def run(chosen, path, editor, task, mask_choice, side, num_samples, steps, sampler, seed, tile, extend, guidance,
            request: gr.Request, progress=gr.Progress()):
        stop = stops.setdefault(request.session_hash or "", threading.Event())
        stop.clear()

        def report(done, total):
            progress(done / total, desc=f"sampling: step {done} of {total}")

        if models.fixed is None and models.root is None:
            raise gr.Error(NO_MODEL)
        try:
            return run_request(models.get(chosen), path, editor, task, mask_choice, side, num_samples, steps, sampler,
                               seed, tile, extend, limits, report, stop.is_set, guidance)
        except PaletteError as err:
            raise gr.Error(str(err)) from None
        except Cancelled:
            raise gr.Error("Stopped.") from None

    def cancel(request: gr.Request):
        stops.setdefault(request.session_hash or "", threading.Event()).set()

    for handler in (run, cancel):  # Gradio finds the request by its type; gr is not a module global to resolve it
        handler.__annotations__["request"] = gr.Request

    fixed = models.fixed
    with gr.Blocks(title="palette") as app:
        gr.Markdown("# palette\nImage-to-image diffusion (Saharia et al., SIGGRAPH 2022).")
        chosen = gr.State(None)
        status = gr.Markdown(describe(fixed, PICK_ONE if models.root else NO_MODEL), elem_id="status")
        if models.root is not None:
            with gr.Row():
                path_box = gr.Dropdown(models.choices(), value=None, label="checkpoint", scale=4,
                                       info="a run folder or weights file under the folder this server allows")
                load_button = gr.Button("Load", scale=1)
        with gr.Row():
            with gr.Column():
                upload_box = gr.File(label="photo", file_types=["image"], type="filepath", elem_id="upload")
                editor = gr.ImageEditor(label="draw the region to fill (inpainting)", type="pil", elem_id="editor",
                                        sources=(), brush=gr.Brush(colors=["#ff0000"], default_size=24),
                                        transforms=(), layers=False)
            with gr.Column():
                tasks = list(fixed.tasks) if fixed else []
                task = gr.Radio(tasks, value=tasks[0] if tasks else None, label="task", elem_id="task")
                mask_choice = gr.Radio([DRAWN, *[m for m in MASK_NAMES if not m.startswith("uncrop")]], value=DRAWN,
                                       label="inpainting mask")
                side = gr.Radio(["left", "right", "top", "bottom", "all"], value="right", label="uncropping side")
                num_samples = gr.Slider(1, 8, value=2, step=1, label="samples", elem_id="samples")
                default_steps, default_sampler = sampling_defaults(fixed)
                steps = gr.Slider(1, 1000, value=default_steps, step=1, label="steps (network evaluations)",
                                  elem_id="steps")
                sampler = gr.Dropdown(list(SAMPLERS), value=default_sampler, label="sampler")
                seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
                guidance = gr.Slider(0, MAX_GUIDANCE, value=0, step=0.5, elem_id="guidance",
                                     label="guidance (0: off; models trained with condition dropout only)")
                tile = gr.Checkbox(False, label="sample at the photo's own size, in tiles of the model's size",
                                   elem_id="tile")
                extend = gr.Slider(0, 8, value=0, step=1, elem_id="extend",
                                   label="uncropping: a panorama extended this many times on both sides (0: off)")
                with gr.Row():
                    run_button = gr.Button("Run", variant="primary", elem_id="run")
                    stop_button = gr.Button("Stop", elem_id="stop")
        gallery = gr.Gallery(label="samples", elem_id="gallery", columns=4, format="png")
        if models.root is not None:
            load_button.click(load, path_box, [status, task, chosen, steps, sampler])
            app.load(lambda: gr.update(choices=models.choices()), None, path_box)  # what is there now
        upload_box.upload(upload, upload_box, editor)
        running = run_button.click(run, [chosen, upload_box, editor, task, mask_choice, side, num_samples, steps,
                                         sampler, seed, tile, extend, guidance], gallery, concurrency_limit=1)
        stop_button.click(cancel, None, None, cancels=[running], queue=False)
    app.queue(max_size=queue_size, default_concurrency_limit=1)
    return app


def serve(checkpoint: str | None, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          max_upload_mb: float = 20, max_pixels: int = DEFAULT_MAX_PIXELS, allow_load: str | None = None,
          request_budget: int = DEFAULT_REQUEST_BUDGET, max_tiled_pixels: int = DEFAULT_MAX_TILED_PIXELS,
          max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS) -> None:
    app = build_app(checkpoint, device, max_upload_mb, max_pixels, allow_load=allow_load,
                    request_budget=request_budget, max_tiled_pixels=max_tiled_pixels,
                    max_output_pixels=max_output_pixels)
    app.launch(server_name=host, server_port=port, max_file_size=f"{max_upload_mb:g}mb", ssr_mode=False,
               show_error=True, quiet=False)
