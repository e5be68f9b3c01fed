"""The Gradio page of ``palette serve``: its layout, and the handlers that connect its buttons to a request."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # read when gradio is imported
import gradio as gr  # noqa: E402

from ..errors import PaletteError  # noqa: E402
from ..imagefile import DEFAULT_MAX_PIXELS  # noqa: E402
from ..masks import MASK_NAMES  # noqa: E402
from ..samplers import SAMPLERS  # noqa: E402
from ..sampling_options import MAX_SEED  # noqa: E402
from .limits import (DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_TILED_PIXELS, DEFAULT_REQUEST_BUDGET,  # noqa: E402
                     Limits, read_upload)
from .models import MAX_STEPS, NO_MODEL, PAGE_SAMPLES, PICK_ONE, Models, describe, sampling_defaults  # noqa: E402
from .run import DRAWN, MAX_EXTEND, MAX_GUIDANCE, MAX_SAMPLES, Cancelled, PageRequest, run_request  # noqa: E402


@dataclass
class RequestInputs:
    """The page's inputs of one request, in the order :meth:`Handlers.run` takes them after the session's model."""

    upload: Any
    editor: Any
    task: Any
    mask_choice: Any
    side: Any
    num_samples: Any
    steps: Any
    sampler: Any
    seed: Any
    tile: Any
    extend: Any
    guidance: Any

    def in_order(self) -> list:
        return [getattr(self, f.name) for f in fields(self)]


def _shown(error: PaletteError) -> gr.Error:
    """A PaletteError as a message on the page."""
    return gr.Error(str(error))


class Handlers:
    """What the page's buttons do, for every session of one server."""

    def __init__(self, models: Models, limits: Limits):
        self.models, self.limits = models, limits
        self._stops: dict[str, threading.Event] = {}  # per session: Stop pressed

    def _stop_of(self, request: gr.Request) -> threading.Event:
        return self._stops.setdefault(request.session_hash or "", threading.Event())

    def load(self, choice: str | None):
        """Load a checkpoint for this session; the page's tasks and sampling settings become the model's."""
        try:
            model = self.models.load(choice or "")
        except PaletteError as err:
            raise _shown(err) from None
        steps, sampler = sampling_defaults(model, self.limits)
        return (describe(model), gr.update(choices=list(model.tasks), value=model.tasks[0]), choice,
                gr.update(value=steps), gr.update(value=sampler))

    def upload(self, path: str | None):
        try:
            return read_upload(path, self.limits)
        except PaletteError as err:
            raise _shown(err) from None

    def run(self, chosen, path, editor, task, mask_choice, side, num_samples, steps, sampler, seed, tile, extend,
            guidance, request: gr.Request, progress=gr.Progress()):
        stop = self._stop_of(request)
        stop.clear()

        def report(done, total):
            progress(done / total, desc=f"sampling: step {done} of {total}")

        if self.models.fixed is None and self.models.root is None:
            raise gr.Error(NO_MODEL)
        try:
            request = PageRequest(path, task, editor, mask_choice, side, num_samples, steps, sampler, seed, tile,
                                  extend, guidance)
            return run_request(self.models.get(chosen), request, self.limits, report, stop.is_set)
        except PaletteError as err:
            raise _shown(err) from None
        except Cancelled:
            raise gr.Error("Stopped.") from None

    def cancel(self, request: gr.Request):
        self._stop_of(request).set()


def _photo_inputs() -> tuple[gr.File, gr.ImageEditor]:
    upload = gr.File(label="photo", file_types=["image"], type="filepath", elem_id="upload")
    editor = gr.ImageEditor(label="draw the region to fill (inpainting)", type="pil", elem_id="editor", sources=(),
                            brush=gr.Brush(colors=["#ff0000"], default_size=24), transforms=(), layers=False)
    return upload, editor


def _request_inputs(models: Models, limits: Limits, upload: gr.File, editor: gr.ImageEditor) -> RequestInputs:
    """The inputs of a request: the photo's (given), then the task and sampling controls, which start at the
    server's model's own settings (without one, the library's)."""
    tasks = list(models.fixed.tasks) if models.fixed else []
    task = gr.Radio(tasks, value=tasks[0] if tasks else None, label="task", elem_id="task")
    mask_choice = gr.Radio([DRAWN, *[m for m in MASK_NAMES if not m.startswith("uncrop")]], value=DRAWN,
                           label="inpainting mask")
    side = gr.Radio(["left", "right", "top", "bottom", "all"], value="right", label="uncropping side")
    num_samples = gr.Slider(1, MAX_SAMPLES, value=PAGE_SAMPLES, step=1, label="samples", elem_id="samples")
    default_steps, default_sampler = sampling_defaults(models.fixed, limits)
    steps = gr.Slider(1, MAX_STEPS, value=default_steps, step=1, label="steps (network evaluations)", elem_id="steps")
    sampler = gr.Dropdown(list(SAMPLERS), value=default_sampler, label="sampler")
    seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="seed")
    guidance = gr.Slider(0, MAX_GUIDANCE, value=0, step=0.5, elem_id="guidance",
                         label="guidance (0: off; models trained with condition dropout only)")
    tile = gr.Checkbox(False, label="sample at the photo's own size, in tiles of the model's size", elem_id="tile")
    extend = gr.Slider(0, MAX_EXTEND, value=0, step=1, elem_id="extend",
                       label="uncropping: a panorama extended this many times on both sides (0: off)")
    return RequestInputs(upload, editor, task, mask_choice, side, num_samples, steps, sampler, seed, tile, extend,
                         guidance)


def _lay_out_and_connect(app: gr.Blocks, models: Models, limits: Limits, handlers: Handlers) -> None:
    gr.Markdown("# palette\nImage-to-image diffusion (Saharia et al., SIGGRAPH 2022).")
    chosen = gr.State(None)  # the checkpoint this session loaded
    status = gr.Markdown(describe(models.fixed, PICK_ONE if models.root else NO_MODEL), elem_id="status")
    if models.root is not None:
        with gr.Row():
            path_box = gr.Dropdown(models.choices(), value=None, label="checkpoint", scale=4,
                                   info="a run folder or weights file under the folder this server allows")
            load_button = gr.Button("Load", scale=1)
    with gr.Row():
        with gr.Column():
            upload, editor = _photo_inputs()
        with gr.Column():
            inputs = _request_inputs(models, limits, upload, editor)
            with gr.Row():
                run_button = gr.Button("Run", variant="primary", elem_id="run")
                stop_button = gr.Button("Stop", elem_id="stop")
    gallery = gr.Gallery(label="samples", elem_id="gallery", columns=4, format="png")
    if models.root is not None:
        load_button.click(handlers.load, path_box, [status, inputs.task, chosen, inputs.steps, inputs.sampler])
        app.load(lambda: gr.update(choices=models.choices()), None, path_box)  # what is there now
    upload.upload(handlers.upload, upload, editor)
    running = run_button.click(handlers.run, [chosen, *inputs.in_order()], gallery, concurrency_limit=1)
    stop_button.click(handlers.cancel, None, None, cancels=[running], queue=False)


def build_app(checkpoint: str | None = None, device: str = "auto", max_upload_mb: float = 20,
              max_pixels: int = DEFAULT_MAX_PIXELS, queue_size: int = 32, allow_load: str | Path | None = None,
              request_budget: int = DEFAULT_REQUEST_BUDGET, max_tiled_pixels: int = DEFAULT_MAX_TILED_PIXELS,
              max_output_pixels: int = DEFAULT_MAX_OUTPUT_PIXELS) -> gr.Blocks:
    """The page, serving ``checkpoint`` to everyone or letting each session load one from under ``allow_load``;
    requests beyond the one running wait in a queue of ``queue_size``."""
    limits = Limits(max_upload_mb, max_pixels, request_budget, max_tiled_pixels, max_output_pixels)
    models = Models(checkpoint, allow_load, device, max_pixels)
    with gr.Blocks(title="palette") as app:
        _lay_out_and_connect(app, models, limits, Handlers(models, limits))
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
