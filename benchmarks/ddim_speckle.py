"""Where a 50-step DDIM sample's noise comes from: the step-count defect, the model, or the schedule.

    python benchmarks/ddim_speckle.py --checkpoint demo-out/run --data demo-out/photos/held_out

On held-out crops degraded for JPEG restoration (quality 10) and colorization, it samples the model with DDIM and
the other samplers at 50 network evaluations, on the paper's inference schedule and on the training schedule, and
prints PSNR against the truth and the high-frequency energy of the samples relative to the truth's (1 is the truth's
texture; well above 1 is speckle). An exact denoiser lands on the target at 50 steps in every sampler
(tests/test_samplers.py), so what remains is the model and the schedule.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from samplers import make_cases, psnr  # benchmarks/samplers.py: the same held-out crops and PSNR

from palette.data_files import list_images
from palette.metrics import high_frequency_energy
from palette.sampling import load_model

RUNS = (("ddim", 50, "inference"), ("ddim", 50, "training"), ("ddim", 1000, "inference"),
        ("ancestral", 50, "inference"), ("dpmpp-2m", 50, "inference"), ("dpmpp-2m-sde", 50, "inference"),
        ("dpmpp-2m-sde", 50, "training"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="held-out images")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--out", help="a JSON file for the rows")
    args = parser.parse_args()
    model = load_model(args.checkpoint, "cpu")
    cases = make_cases(model, list_images(args.data), args.images, seed=0)
    rows = []
    for task in ("jpeg", "colorization"):
        x, _, y = cases[task]
        truth_hf = high_frequency_energy(y)
        rows.append({"task": task, "sampler": "input", "steps": 0, "schedule": "-",
                     "psnr": psnr(x, y, torch.ones_like(y[:, :1])), "hf_ratio": high_frequency_energy(x) / truth_hf})
        for sampler, steps, schedule in RUNS:
            out = model.sample(x, steps=steps, sampler=sampler, schedule=schedule, seeds=list(range(len(x))))
            rows.append({"task": task, "sampler": sampler, "steps": steps, "schedule": schedule,
                         "psnr": psnr(out, y, torch.ones_like(y[:, :1])),
                         "hf_ratio": high_frequency_energy(out) / truth_hf})
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    np.set_printoptions(precision=3)
    main()
