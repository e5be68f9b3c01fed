"""Classifier-free guidance sweep: fidelity to the source against diversity, for w in {0, 0.5, 1, 2, 4}.

    python benchmarks/guidance.py --out benchmarks/results              # trains the demo model with dropout first
    python benchmarks/guidance.py --checkpoint runs/guidance-demo/run --data runs/guidance-demo/photos/held_out

Without ``--checkpoint`` it trains the ``palette demo`` model (tiny preset, JPEG restoration and colorization, held-out
photos chelsea and grace_hopper) with ``train.cond_drop_prob=0.1`` into ``--train-dir``. Then, for fixed random crops
of the held-out photos, it draws ``--samples`` samples per crop at each guidance weight (same seeds at every weight) and
writes OUT/guidance.md, OUT/guidance.json and OUT/guidance.png:
- JPEG (quality 10): PSNR of the samples to the ground truth and to the compressed input;
- colorization: the distance between the chroma (YCbCr Cb, Cr) histograms of the samples and of the ground truth
  (L1 of normalised 32x32-bin histograms; 0 is identical colours), and the PSNR of the samples' luma to the gray input;
- diversity: mean LPIPS between the samples of one input when the AlexNet weights are installed (``palette weights``),
  else the pixel standard deviation across the samples of one input (in [0, 1] units), averaged over pixels and inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from itertools import combinations
from pathlib import Path

import numpy as np
import torch

from palette.crops import random_square_crop
from palette.data import load_image
from palette.data_files import list_images
from palette.metrics import chroma_distance
from palette.sampling import load_model
from palette.tasks import Colorization, jpeg_compress

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2)."""
    return float(10 * np.log10(4 / max(((a - b) ** 2).mean().item(), 1e-12)))


def luma(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB images in [-1, 1], as (N, 1, H, W) in [-1, 1]."""
    return (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])[:, None]


def make_cases(model, paths, n: int, seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    size = model.config.model.image_size
    rng = np.random.default_rng(seed)
    y = torch.stack([random_square_crop(load_image(paths[i % len(paths)]), size, rng, 0.4, False) * 2 - 1
                     for i in range(n)])
    return {"jpeg": (torch.stack([jpeg_compress(img, 10) for img in y]), y),
            "colorization": (torch.stack([Colorization().condition(img, rng)[0] for img in y]), y)}


class Diversity:
    """Mean LPIPS between the samples of one input if AlexNet's weights are here, else their pixel std."""

    def __init__(self):
        from palette import weights

        self.backbones = None
        if weights.find("alexnet") is not None:
            from palette.metrics import Backbones

            self.backbones = Backbones()
        self.name = "LPIPS between samples" if self.backbones else "pixel std across samples"

    def __call__(self, samples: torch.Tensor) -> float:
        """``samples`` (inputs, K, C, H, W) in [-1, 1]."""
        if self.backbones is None:
            return float(((samples + 1) / 2).std(dim=1).mean())
        pairs = list(combinations(range(samples.shape[1]), 2))
        a = torch.cat([samples[:, i] for i, _ in pairs])
        b = torch.cat([samples[:, j] for _, j in pairs])
        return float(self.backbones.lpips((a + 1) / 2, (b + 1) / 2).mean())


def score(task: str, x: torch.Tensor, y: torch.Tensor, samples: torch.Tensor, diversity: Diversity) -> dict:
    """``samples`` (inputs, K, C, H, W) of the inputs ``x`` with truths ``y``."""
    flat = samples.flatten(0, 1)
    k = samples.shape[1]
    x_k, y_k = x.repeat_interleave(k, 0), y.repeat_interleave(k, 0)
    if task == "jpeg":
        result = {"psnr_to_truth": psnr(flat, y_k), "psnr_to_input": psnr(flat, x_k)}
    else:
        result = {"chroma_to_truth": chroma_distance(flat, y_k), "luma_psnr_to_input": psnr(luma(flat), x_k[:, :1])}
    return {**result, "diversity": diversity(samples)}


def train_demo(train_dir: Path, steps: int) -> tuple[Path, Path]:
    from palette.demo import run_demo

    run_demo(train_dir, steps=steps, sample_steps=1, num_samples=1, tasks=("jpeg", "colorization"), device="cpu",
             overrides=["train.cond_drop_prob=0.1"], progress=False)
    return train_dir / "run", train_dir / "photos" / "held_out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a model trained with train.cond_drop_prob > 0 (default: train one)")
    parser.add_argument("--data", help="held-out images (default: the trained demo's)")
    parser.add_argument("--train-dir", default="runs/guidance-demo", help="where to train without --checkpoint")
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--weights", nargs="+", type=float, default=list(WEIGHTS))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--sampler", default="dpmpp-2m-sde")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    torch.set_num_threads(max(1, torch.get_num_threads()))
    checkpoint, data = args.checkpoint, args.data
    if checkpoint is None:
        checkpoint, held_out = train_demo(Path(args.train_dir), args.train_steps)
        data = data or held_out
    if data is None:
        parser.error("--data: the held-out images (with --checkpoint)")
    model = load_model(checkpoint, "cpu")
    cases = make_cases(model, list_images(data), args.images, args.seed)
    diversity = Diversity()
    rows = []
    for task, (x, y) in cases.items():
        batch = x.repeat_interleave(args.samples, 0)
        seeds = [1000 * i + k for i in range(args.images) for k in range(args.samples)]
        for w in args.weights:
            start = time.perf_counter()
            out = model.sample(batch, steps=args.steps, sampler=args.sampler, seeds=seeds, guidance=w)
            seconds = time.perf_counter() - start
            samples = out.reshape(args.images, args.samples, *out.shape[1:])
            rows.append({"task": task, "guidance": w, **score(task, x, y, samples, diversity),
                         "seconds": round(seconds, 2)})
            print(json.dumps(rows[-1]), flush=True)
    inputs = {"jpeg": {"psnr_to_truth": psnr(*cases["jpeg"])},
              "colorization": {"chroma_to_truth": chroma_distance(*cases["colorization"])}}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    train_config = model.config.train
    meta = {"checkpoint": str(checkpoint), "cond_drop_prob": train_config.cond_drop_prob,
            "train_steps": train_step(checkpoint), "tasks": list(model.config.task.tasks), "images": args.images, "samples": args.samples,
            "sampler": args.sampler, "steps": args.steps, "diversity": diversity.name, "inputs": inputs,
            "command": " ".join(["python", *sys.argv])}
    (out_dir / "guidance.json").write_text(json.dumps({**meta, "rows": rows}, indent=2) + "\n")
    write_markdown(out_dir / "guidance.md", meta, rows)
    plot(out_dir / "guidance.png", rows, diversity.name)


def train_step(checkpoint) -> int | str:
    """The step of the weights used, from the checkpoint folder's name (step-000000750), if it says."""
    from palette.checkpoint import resolve_weights

    name = resolve_weights(checkpoint, True).parent.name
    return int(name.split("-")[1]) if name.startswith("step-") else "?"


def write_markdown(path: Path, meta: dict, rows: list[dict]) -> None:
    lines = [
        "# Classifier-free guidance sweep", "",
        f"`{meta['command']}`", "",
        f"Model: `{meta['checkpoint']}` (tasks {', '.join(meta['tasks'])}), "
        f"train.cond_drop_prob={meta['cond_drop_prob']}, {meta['train_steps']} training steps. {meta['images']} held-out crops x {meta['samples']} samples, "
        f"{meta['sampler']} {meta['steps']} steps, the same seeds at every weight. Diversity: {meta['diversity']}.", "",
        "| w | JPEG PSNR to truth (dB) | JPEG PSNR to input (dB) | JPEG diversity | colour distance to truth | "
        "luma PSNR to gray input (dB) | colorization diversity |",
        "|---|---|---|---|---|---|---|",
    ]
    by = {(r["task"], r["guidance"]): r for r in rows}
    for w in sorted({r["guidance"] for r in rows}):
        j, c = by[("jpeg", w)], by[("colorization", w)]
        lines.append(f"| {w:g} | {j['psnr_to_truth']:.2f} | {j['psnr_to_input']:.2f} | {j['diversity']:.4f} | "
                     f"{c['chroma_to_truth']:.3f} | {c['luma_psnr_to_input']:.2f} | {c['diversity']:.4f} |")
    inputs = meta["inputs"]
    lines += ["", f"The inputs themselves: JPEG PSNR to truth {inputs['jpeg']['psnr_to_truth']:.2f} dB; the gray "
              f"input's colour distance to truth {inputs['colorization']['chroma_to_truth']:.3f}.", ""]
    path.write_text("\n".join(lines))


def plot(path: Path, rows: list[dict], diversity_name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, task, key, label in ((axes[0], "jpeg", "psnr_to_truth", "PSNR to truth (dB)"),
                                 (axes[1], "colorization", "chroma_to_truth", "colour distance to truth")):
        points = [r for r in rows if r["task"] == task]
        ax.plot([r["diversity"] for r in points], [r[key] for r in points], "o-")
        for r in points:
            ax.annotate(f"w={r['guidance']:g}", (r["diversity"], r[key]), fontsize=8)
        ax.set_xlabel(diversity_name)
        ax.set_ylabel(label)
        ax.set_title(task)
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
