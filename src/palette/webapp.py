"""``palette serve``: a Gradio page over the Python API.

Upload a photo, pick the task, draw the inpainting mask with the brush (or pick a generated one), pick the uncropping
side, set samples, steps, sampler and seed, and get the samples in a gallery with a progress bar. Two options go
beyond the model's size: tiled sampling at the photo's own resolution, and panoramas (uncropping repeated on both
sides). The server binds 127.0.0.1 unless told otherwise, refuses uploads above ``max_upload_mb`` and images above
``max_pixels`` with a message, runs one model call at a time (the queue shows each request's position), and a bad
upload is an error message on the page, never a crash.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .api import Palette
from .errors import PaletteError
from .masks import MASK_NAMES
from .samplers import SAMPLERS

DRAWN = "drawn with the brush"
NO_MODEL = "No checkpoint is loaded: enter the path of a run folder or a .safetensors file above and press Load."


def build_app(checkpoint: str | None = None, device: str = "auto", max_upload_mb: float = 20,
              max_pixels: int = 16_000_000, queue_size: int = 32):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    state: dict[str, Palette | None] = {"model": None}

    def describe() -> str:
        model = state["model"]
        if model is None:
            return NO_MODEL
        c = model.config
        return (f"Loaded a {c.task.name} model ({', '.join(model.tasks)}), {c.model.image_size}x{c.model.image_size}, "
                f"preset {c.preset}.")

    def load(path: str):
        try:
            state["model"] = Palette.load(path.strip(), device=device)
        except PaletteError as err:
            raise gr.Error(str(err))
        tasks = state["model"].tasks
        return describe(), gr.update(choices=list(tasks), value=tasks[0])

    if checkpoint:
        state["model"] = Palette.load(checkpoint, device=device)

    def read_upload(path: str | None) -> Image.Image:
        if not path:
            raise gr.Error("Upload a photo first.")
        size = Path(path).stat().st_size
        if size > max_upload_mb * 1e6:
            raise gr.Error(f"The file is {size / 1e6:.1f} MB; the limit is {max_upload_mb:g} MB.")
        try:
            with Image.open(path) as img:
                w, h = img.size
                if w * h <= max_pixels:
                    img.load()
                    photo = img.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
            raise gr.Error(f"{Path(path).name} is not an image that can be read ({type(err).__name__}).")
        if w * h > max_pixels:
            raise gr.Error(f"The image is {w}x{h} ({w * h:,} pixels); the limit is {max_pixels:,} pixels.")
        return photo

    def run(path, editor, task, mask_choice, side, num_samples, steps, sampler, seed, tile, extend,
            progress=gr.Progress()):
        model = state["model"]
        if model is None:
            raise gr.Error(NO_MODEL)
        photo = read_upload(path)
        mask = None
        if task == "inpainting":
            if mask_choice == DRAWN:
                layers = (editor or {}).get("layers") or []
                drawn = [np.asarray(layer)[..., 3] > 0 for layer in layers if layer is not None]
                mask = np.any(drawn, axis=0) if drawn else None
                if mask is None or not mask.any():
                    raise gr.Error("Draw the region to fill with the brush, or pick a generated mask.")
                if mask.shape != (photo.height, photo.width):
                    mask = np.asarray(Image.fromarray(mask).resize(photo.size, Image.NEAREST))
            else:
                mask = mask_choice

        def report(done, total):
            progress(done / total, desc=f"sampling: step {done} of {total}")

        try:
            if task == "uncropping" and int(extend) > 0:
                if side == "all":
                    raise gr.Error("A panorama extends left and right, or top and bottom: pick one of those sides.")
                direction = "horizontal" if side in ("left", "right") else "vertical"
                return [model.panorama(photo, int(extend), direction, progress=report, steps=int(steps),
                                       sampler=sampler, seed=int(seed))]
            samples = model(photo, task, mask=mask, side=side, num_samples=int(num_samples), steps=int(steps),
                            sampler=sampler, seed=int(seed), progress=report, tile=bool(tile))
        except PaletteError as err:
            raise gr.Error(str(err))
        return samples

    with gr.Blocks(title="palette") as app:
        gr.Markdown("# palette\nImage-to-image diffusion (Saharia et al., SIGGRAPH 2022).")
        status = gr.Markdown(describe(), elem_id="status")
        with gr.Row():
            path_box = gr.Textbox(label="checkpoint", value=checkpoint or "", scale=4)
            load_button = gr.Button("Load", scale=1)
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="photo", file_types=["image"], type="filepath", elem_id="upload")
                editor = gr.ImageEditor(label="draw the region to fill (inpainting)", type="pil", elem_id="editor",
                                        sources=(), brush=gr.Brush(colors=["#ff0000"], default_size=24),
                                        transforms=(), layers=False)
            with gr.Column():
                tasks = list(state["model"].tasks) if state["model"] else []
                task = gr.Radio(tasks, value=tasks[0] if tasks else None, label="task", elem_id="task")
                mask_choice = gr.Radio([DRAWN, *[m for m in MASK_NAMES if not m.startswith("uncrop")]], value=DRAWN,
                                       label="inpainting mask")
                side = gr.Radio(["left", "right", "top", "bottom", "all"], value="right", label="uncropping side")
                num_samples = gr.Slider(1, 8, value=2, step=1, label="samples")
                steps = gr.Slider(1, 1000, value=20, step=1, label="steps (network evaluations)")
                sampler = gr.Dropdown(list(SAMPLERS), value="dpmpp-2m", label="sampler")
                seed = gr.Number(value=0, precision=0, label="seed")
                tile = gr.Checkbox(False, label="sample at the photo's own size, in tiles of the model's size",
                                   elem_id="tile")
                extend = gr.Slider(0, 8, value=0, step=1, elem_id="extend",
                                   label="uncropping: a panorama extended this many times on both sides (0: off)")
                run_button = gr.Button("Run", variant="primary", elem_id="run")
        gallery = gr.Gallery(label="samples", elem_id="gallery", columns=4, format="png")
        load_button.click(load, path_box, [status, task])
        upload.upload(read_upload, upload, editor)
        run_button.click(run, [upload, editor, task, mask_choice, side, num_samples, steps, sampler, seed, tile,
                               extend], gallery, concurrency_limit=1)
    app.queue(max_size=queue_size, default_concurrency_limit=1)
    return app


def serve(checkpoint: str | None, host: str = "127.0.0.1", port: int = 7860, device: str = "auto",
          max_upload_mb: float = 20, max_pixels: int = 16_000_000) -> None:
    app = build_app(checkpoint, device, max_upload_mb, max_pixels)
    app.launch(server_name=host, server_port=port, max_file_size=f"{max_upload_mb:g}mb", ssr_mode=False,
               show_error=True, quiet=False)
