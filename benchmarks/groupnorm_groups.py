"""How the number of GroupNorm groups of the `tiny` network affects JPEG restoration (why tiny and small use 4).

    python benchmarks/groupnorm_groups.py train g32 1500 model.groups=32   # about 8 minutes each on 2 CPU cores
    python benchmarks/groupnorm_groups.py train g4 1500 model.groups=4
    python benchmarks/groupnorm_groups.py eval g32 g4                        # sampler comparison, a minute per run

``train NAME STEPS [overrides]`` trains `tiny` on JPEG restoration (quality 5-30) from the demo's eight photos into
ROOT/NAME, then prints, on 16 crops of the two held-out photos ("held") and 16 of the training photos ("train"),
JPEG quality 10: the input's PSNR and mean colour error (per-image, per-channel spatial mean, in [-1, 1] units), the
same for 50-step DDIM samples, and the mean colour error of the network's y0 estimate at four noise levels.
``eval NAMES`` samples the held-out crops of each run with several samplers and prints PSNR and mean colour error.
Results: benchmarks/results/groupnorm_groups.md.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from palette.config import apply_overrides, preset
from palette.crops import random_square_crop
from palette.data import load_image
from palette.demo import write_photos
from palette.diffusion import predict_y0, q_sample
from palette.model import PaletteModel
from palette.sampling import load_model
from palette.tasks import jpeg_compress
from palette.train import Trainer

ROOT = Path("/tmp/gnexp")
SAMPLERS = (("ddim", 50, "inference"), ("ddim", 50, "training"), ("ancestral", 250, "inference"),
            ("ancestral", 250, "training"), ("dpmpp-2m", 20, "training"), ("dpmpp-2m-sde", 20, "training"),
            ("ancestral", 20, "training"))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * np.log10(4 / ((a - b) ** 2).mean().item()))


def colour_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.mean((2, 3)) - b.mean((2, 3))).abs().mean())


def crops(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(1)
    y = torch.stack([random_square_crop(load_image(paths[i % len(paths)]), 32, rng, 0.4, False) * 2 - 1
                     for i in range(16)])
    return torch.stack([jpeg_compress(img, 10) for img in y]), y


def train(name: str, steps: int, overrides: list[str]) -> None:
    train_files, held = write_photos(ROOT / "photos")
    out = ROOT / name
    shutil.rmtree(out, ignore_errors=True)
    config = apply_overrides(preset("tiny"), [
        f"data.path={ROOT / 'photos' / 'train'}", "task.name=jpeg", "data.crop_scale_min=0.25", "train.sample_every=0",
        f"train.checkpoint_every={steps}", f"train.steps={steps}", "train.log_every=500", *overrides])
    started = time.time()
    trainer = Trainer(config, out, progress=False)
    trainer.fit()
    print(name, "trained", round(time.time() - started), "s")
    model = PaletteModel(config)
    model.net.load_state_dict(trainer.ema.state_dict())
    model.eval()
    results = {}
    for split, paths in (("held", held), ("train", train_files)):
        x, y = crops(paths)
        with torch.no_grad():
            y0_error = {}
            for g in (0.5, 0.1, 0.01, 1e-3):
                eps = torch.randn(y.shape, generator=torch.Generator().manual_seed(0))
                gamma = torch.full((16,), g)
                y_t = q_sample(y, gamma, eps)
                y0 = predict_y0(y_t, gamma, model.net(x, y_t, gamma))
                y0_error[g] = round(colour_error(y0.clamp(-1, 1), y), 4)
            sample = model.sample(x, steps=50, sampler="ddim")
        results[split] = dict(input_psnr=round(psnr(x, y), 2), sample_psnr=round(psnr(sample, y), 2),
                              input_dc=round(colour_error(x, y), 4), sample_dc=round(colour_error(sample, y), 4),
                              y0_dc=y0_error)
    print(name, json.dumps(results))
    (out / "result.json").write_text(json.dumps(results))


def evaluate(names: list[str]) -> None:
    held = sorted((ROOT / "photos" / "held_out").glob("*.png"))
    for name in names:
        model = load_model(ROOT / name, device="cpu")
        x, y = crops(held)
        for sampler, steps, schedule in SAMPLERS:
            sample = model.sample(x, steps=steps, sampler=sampler, schedule=schedule)
            print(name, sampler, steps, schedule, "psnr", round(psnr(sample, y), 2), "dc",
                  round(colour_error(sample, y), 4), flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("train", "eval"):
        sys.exit(__doc__)
    if sys.argv[1] == "train":
        train(sys.argv[2], int(sys.argv[3]), sys.argv[4:])
    else:
        evaluate(sys.argv[2:])
