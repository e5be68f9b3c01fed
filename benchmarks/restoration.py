"""How much a restoration model improves on its inputs: PSNR and SSIM against the truth, of the degraded inputs and of
samples, on fixed random crops of held-out images, for each task the model was trained for.

    python benchmarks/restoration.py --checkpoint demo-restore/run --data demo-restore/photos/held_out \
        --crops 16 --samplers ancestral:200 dpmpp-2m-sde:20 --out benchmarks/results/restoration_demo.md

A diffusion sample is a draw from p(y | x), not the mean of it, so its PSNR is below what a regression to the mean
would score; the input's own PSNR is the bar it should clear for noise and blur, not necessarily for super-resolution,
whose bicubic input is already the smooth mean-like guess.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from palette.crops import random_square_crop
from palette.data import load_image
from palette.data_files import list_images
from palette.metrics import psnr, ssim
from palette.sampling import load_model
from palette.tasks import make_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="held-out images")
    parser.add_argument("--crops", type=int, default=16)
    parser.add_argument("--samplers", nargs="+", default=["ancestral:200", "dpmpp-2m-sde:20"], metavar="NAME:STEPS")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="also write the table (Markdown) here")
    args = parser.parse_args()

    model = load_model(args.checkpoint, args.device)
    config = model.config
    tasks = config.task.tasks if config.task.name == "multi" else (config.task.name,)
    size = config.model.image_size
    rng = np.random.default_rng(1234)
    files = list_images(args.data)
    targets = torch.stack([random_square_crop(load_image(files[i % len(files)]), size, rng, scale_min=0.4) * 2 - 1
                           for i in range(args.crops)])
    lines = [
        (f"checkpoint `{args.checkpoint}`, {len(targets)} random {size}x{size} crops of {len(files)} held-out images; "
         "mean over crops (samples: one per crop)"), "",
        "| task | images | PSNR (dB) | SSIM | s/image |", "|---|---|---|---|---|",
    ]

    def row(task: str, label: str, images: torch.Tensor, truth: torch.Tensor, seconds: float | None) -> str:
        images = images.clamp(-1, 1).add(1).div(2)
        cells = (f"{psnr(images, truth).mean():.2f}", f"{ssim(images, truth).mean():.3f}",
                 "-" if seconds is None else f"{seconds:.2f}")
        return f"| {task} | {label} | " + " | ".join(cells) + " |"

    device = next(model.parameters()).device
    for name in tasks:
        task = make_task(name)
        examples = [task(y, np.random.default_rng([0, i])) for i, y in enumerate(targets)]
        x, y = torch.stack([e.x for e in examples]), torch.stack([e.y for e in examples])
        truth = (y + 1) / 2
        lines.append(row(name, "degraded input", x, truth, None))
        for spec in args.samplers:
            sampler, steps = spec.split(":")
            started = time.perf_counter()
            with torch.no_grad():
                out = model.sample(x.to(device), steps=int(steps), seeds=list(range(len(x))), sampler=sampler).cpu()
            lines.append(row(name, f"{sampler}, {steps} steps", out, truth, (time.perf_counter() - started) / len(x)))
        print("\n".join(lines[-1 - len(args.samplers):]), flush=True)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
