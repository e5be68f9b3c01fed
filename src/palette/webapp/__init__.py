"""``palette serve``: a Gradio page over the Python API.

Upload a photo, pick the task, draw the inpainting mask with the brush (or pick a generated one), pick the uncropping
side, set samples, steps, sampler, seed and guidance, and get the samples in a gallery with a progress bar. Two
options go beyond the model's size: tiled sampling at the photo's own resolution, and panoramas (uncropping repeated
on both sides). The page's steps and sampler start at the model's own (docs/webapp.md).

A server is shared, so each request is bounded (``limits``, docs/limits.md): uploads above ``max_upload_mb`` and
images above ``max_pixels`` (checked from the header) are refused, and so are requests whose work, network
evaluations times the pixels of each, is above ``request_budget``, and images sampled at their own size (tiled, or a
panorama) above ``max_tiled_pixels``. One request runs at a time; the others wait in a queue whose position the page
shows, and Stop ends a request at its next network evaluation (``run``). The server binds 127.0.0.1 unless told
otherwise.

The model is the one of ``checkpoint``, the same for everyone. Without it, and only with ``allow_load``, a visitor
may load a checkpoint found under that folder, for their own session: what one visitor loads never changes what
another samples, and no message names a path outside the folder (``models``).

The page itself (``page``) imports gradio, so it is imported only when :func:`build_app` or :func:`serve` is asked for.
"""

from .limits import (DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_TILED_PIXELS, DEFAULT_REQUEST_BUDGET, Limits,
                     check_output_size, check_request, read_upload)
from .models import Models, describe, sampling_defaults
from .run import DRAWN, Cancelled, PageRequest, run_request

__all__ = ["DEFAULT_MAX_OUTPUT_PIXELS", "DEFAULT_MAX_TILED_PIXELS", "DEFAULT_REQUEST_BUDGET", "DRAWN", "Cancelled",
           "Limits", "Models", "build_app", "check_output_size", "check_request", "describe", "read_upload",
           "PageRequest", "run_request", "sampling_defaults", "serve"]


def __getattr__(name: str):
    if name in ("build_app", "serve"):
        from . import page

        return getattr(page, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
