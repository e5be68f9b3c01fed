"""Quality and speed of every sampler at 1000/250/100/50/20/10 network evaluations, on held-out images.

    python benchmarks/samplers.py --checkpoint demo-out/run --data demo-out/photos/held_out --out benchmarks/results

For each task the benchmark degrades fixed random crops of the held-out images, samples them with each sampler and
step count, and prints (and writes as Markdown and JSON):
- seconds per image on this machine and network evaluations (NFE) per image;
- inpainting (centre box) and JPEG restoration (quality 10): PSNR of the generated pixels against the ground truth
  and against the 1000-step ancestral samples of the same seeds;
- colorization: the distance between the chroma (YCbCr Cb, Cr) histograms of the samples and of the ground truth,
  and of the 1000-step ancestral samples (L1 between normalised 32x32-bin histograms; 0 is identical colours).
The degraded inputs' own scores (what a model has to beat) go to OUT/samplers_inputs.json.
A plot of quality against steps goes to OUT/samplers.png. ``--schedules training`` adds the sampling schedule
restricted to the trained noise levels.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from palette.crops import random_square_crop
from palette.data import load_image
from palette.data_files import list_images
from palette.diffusion import INFERENCE_SCHEDULE, NoiseSchedule
from palette.masks import center_mask
from palette.metrics import chroma_distance
from palette.samplers import SAMPLERS
from palette.sampling import load_model
from palette.tasks import Colorization, jpeg_compress

STEPS = (1000, 250, 100, 50, 20, 10)


def psnr(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor) -> float:
    """PSNR in dB over the pixels of ``where``, for images in [-1, 1] (peak-to-peak 2)."""
    mse = ((a - b) ** 2)[where.expand_as(a).bool()].mean().item()
    return float(10 * np.log10(4 / max(mse, 1e-12)))


def make_cases(model, paths, n: int, seed: int):
    size = model.config.model.image_size
    rng = np.random.default_rng(seed)
    y = torch.stack([random_square_crop(load_image(paths[i % len(paths)]), size, rng, 0.4, False) * 2 - 1
                     for i in range(n)])
    cases = {}
    tasks = model.config.task.tasks if model.config.task.name == "multi" else (model.config.task.name,)
    if "inpainting" in tasks:
        mask = torch.from_numpy(center_mask(size, size).astype(np.float32))[None, None].expand(n, 1, size, size)
        noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
        cases["inpainting"] = (y * (1 - mask) + noise * mask, mask.contiguous(), y)
    if "colorization" in tasks:
        x = torch.stack([Colorization().condition(img, rng)[0] for img in y])
        cases["colorization"] = (x, None, y)
    if "jpeg" in tasks:
        cases["jpeg"] = (torch.stack([jpeg_compress(img, 10) for img in y]), None, y)
    return cases


def score(task: str, out: torch.Tensor, reference: torch.Tensor | None, y: torch.Tensor, mask) -> dict:
    if task == "colorization":
        result = {"chroma_to_truth": chroma_distance(out, y)}
        if reference is not None:
            result["chroma_to_1000"] = chroma_distance(out, reference)
        return result
    where = mask if mask is not None else torch.ones_like(out[:, :1])
    result = {"psnr_to_truth": psnr(out, y, where)}
    if reference is not None:
        result["psnr_to_1000"] = psnr(out, reference, where)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="held-out images")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS))
    parser.add_argument("--steps", nargs="+", type=int, default=list(STEPS))
    parser.add_argument("--schedules", nargs="+", default=["inference"], choices=["inference", "training"])
    parser.add_argument("--training-steps", nargs="+", type=int, default=[100, 50, 20, 10],
                        help="step counts measured on the training schedule")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu (the timings in the README), cuda, auto")
    parser.add_argument("--inputs-only", action="store_true",
                        help="only score the degraded inputs themselves (colorization, JPEG): what a model must beat")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    model = load_model(args.checkpoint, args.device)
    device = next(model.parameters()).device
    cases = make_cases(model, list_images(args.data), args.images, args.seed)
    seeds = list(range(args.images))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"checkpoint {args.checkpoint}: {model.config.task.name}, {model.config.model.image_size}px, "
          f"{args.images} held-out crops, on {device} (torch {torch.get_num_threads()} threads)")
    train_min = NoiseSchedule(model.config.diffusion.train_schedule).gammas[-1]
    paper = NoiseSchedule(INFERENCE_SCHEDULE)
    below = int((paper.gammas[1:] < train_min).sum())
    print(f"the paper's 1000-step inference schedule has {below} steps ({below / 10:.1f}%) below the smallest "
          f"trained noise level gamma = {train_min:.3g}")

    inputs = [{"task": task, "sampler": "input (no model)", "steps": 0, "schedule": "-", "nfe": 0, "s_per_image": 0.0,
               **score(task, x, None, y, mask)} for task, (x, mask, y) in cases.items() if mask is None]
    for row in inputs:
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    (out_dir / "samplers_inputs.json").write_text(json.dumps(inputs, indent=1))
    if args.inputs_only:
        return
    for sampler in args.samplers:  # first calls pay for imports and allocations: keep them out of the timings
        model.sample(next(iter(cases.values()))[0][:1].to(device), steps=2, sampler=sampler)
    rows = []
    for task, (x, mask, y) in cases.items():
        xd, md = x.to(device), mask.to(device) if mask is not None else None
        known = y.to(device) if mask is not None else None

        def run(sampler, steps, schedule):
            start = time.perf_counter()
            out = model.sample(xd, md, known, steps=steps, seeds=seeds, sampler=sampler, schedule=schedule).cpu()
            return out, (time.perf_counter() - start) / len(seeds)

        reference, ref_time = run("ancestral", 1000, "inference")
        grid = [(s, n, "inference") for s in args.samplers for n in args.steps]
        if "training" in args.schedules:
            grid += [(s, n, "training") for s in args.samplers for n in args.training_steps]
        for sampler, steps, schedule in grid:
            if (sampler, steps, schedule) == ("ancestral", 1000, "inference"):
                out, seconds = reference, ref_time
            else:
                out, seconds = run(sampler, steps, schedule)
            row = {"task": task, "sampler": sampler, "steps": steps, "schedule": schedule, "nfe": steps,
                   "s_per_image": seconds, **score(task, out, reference, y, mask)}
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)

    (out_dir / "samplers.json").write_text(json.dumps(rows, indent=1))
    write_markdown(rows, out_dir / "samplers.md")
    plot(rows, out_dir / "samplers.png")
    print((out_dir / "samplers.md").read_text())


def write_markdown(rows, path: Path) -> None:
    lines = []
    for task in dict.fromkeys(r["task"] for r in rows):
        metrics = list(dict.fromkeys(k for r in rows if r["task"] == task for k in r if k.endswith(("_truth", "_1000"))))
        lines += [f"### {task}", "", "| sampler | schedule | NFE | s/image | " + " | ".join(metrics) + " |",
                  "|---|---|---|---|" + "---|" * len(metrics)]
        for r in rows:
            if r["task"] == task:
                values = " | ".join(f"{r[m]:.3f}" for m in metrics)
                lines.append(f"| {r['sampler']} | {r['schedule']} | {r['nfe']} | {r['s_per_image']:.3f} | {values} |")
        lines.append("")
    path.write_text("\n".join(lines))


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        key = "chroma_to_truth" if task == "colorization" else "psnr_to_truth"
        for (sampler, schedule) in dict.fromkeys((r["sampler"], r["schedule"]) for r in rows if r["task"] == task):
            pts = sorted((r["steps"], r[key]) for r in rows
                         if r["task"] == task and r["sampler"] == sampler and r["schedule"] == schedule)
            ax.plot(*zip(*pts), marker="o", linestyle="-" if schedule == "inference" else "--",
                    label=f"{sampler} ({schedule})")
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per image")
        ax.set_ylabel("chroma histogram distance to truth (lower is better)" if task == "colorization"
                      else "PSNR of generated pixels to truth, dB (higher is better)")
        ax.set_title(task)
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
