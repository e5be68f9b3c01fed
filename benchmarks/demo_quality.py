"""Does the demo's model do the job? Issue 21's targets, on held-out crops the demo never trains on.

    python benchmarks/demo_quality.py --checkpoint palette:demo --data DEMO_OUT/photos/held_out \
        --out benchmarks/results/demo_quality.md

For 8 fixed random crops of the held-out photos (the crops of benchmarks/samplers.py, seed 0), K samples each:
- JPEG restoration (quality 10): PSNR of the samples against the truth, next to the compressed input's. Also the PSNR
  of the mean of the K samples: a sample drawn from p(y | x) has twice the squared error of the posterior mean
  E[y | x] (both the sample and the truth are draws from the same posterior), so it scores 3 dB below the best
  possible estimate; the mean of K samples has (1 + 1/K) times that mean's error.
- Colorization: the distance between the chroma histograms of the samples and of the truth, next to the gray input's.
- Inpainting (the centre box) and uncropping (the right half): PSNR and SSIM of the generated pixels, next to two
  non-learned fills of the same hole (scikit-image's biharmonic inpainting, and the known pixels' mean colour
  diffused in from the hole's border), and the high-frequency energy of the hole relative to the truth's (1: the
  truth's texture; well above 1: speckle; below 1: smoother than the truth).
For the PSNR tasks it also scores the mean of the K samples, and the model's own E[y | x] solved from the two
(:func:`posterior_mean_psnr`).
LPIPS needs ImageNet-trained AlexNet weights (no download here): pass --weights DIR, a folder holding torchvision's
alexnet-owt-7be5be79.pth (as for `palette eval`), to add LPIPS of the generated images to the truth.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from samplers import make_cases, psnr  # benchmarks/samplers.py: the same crops and PSNR

from palette.data_files import list_images
from palette.masks import uncrop_mask
from palette.metrics import Backbones, chroma_distance, high_frequency_energy, ssim
from palette.sampling import load_model


def uncropping_case(y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The right half of each crop generated; the hole filled with N(0, 1) as the task does."""
    n, _, h, w = y.shape
    mask = torch.from_numpy(uncrop_mask(h, w, "right").astype(np.float32))[None, None].expand(n, 1, h, w).contiguous()
    noise = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    return y * (1 - mask) + noise * mask, mask, y


def diffused_mean_fill(y: torch.Tensor, mask: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """The hole set to the known pixels' mean colour, then smoothed from its border: repeated 3x3 box blurs of the
    image, each written back into the hole only (a blurred mean fill that meets the known pixels without a seam)."""
    known = 1 - mask
    mean = (y * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True)
    out = y * known + mean * mask
    for _ in range(iterations):
        blurred = F.avg_pool2d(F.pad(out, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        out = y * known + blurred * mask
    return out


def biharmonic_fill(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """scikit-image's biharmonic inpainting of each image (a smooth fill that continues the known gradients)."""
    from skimage.restoration import inpaint_biharmonic

    filled = [inpaint_biharmonic(img.permute(1, 2, 0).numpy(), m[0].numpy().astype(bool), channel_axis=-1)
              for img, m in zip(y, mask)]
    return torch.from_numpy(np.stack(filled)).permute(0, 3, 1, 2).float()


def hole_scores(images: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """PSNR and SSIM of the generated region, and its high-frequency energy relative to the truth's there."""
    where = mask.expand_as(images).bool()
    images = images.clamp(-1, 1)
    hf = high_frequency_energy(images * mask) / high_frequency_energy(y * mask)
    # SSIM of the whole image: the known pixels are equal in both, so the differences are the hole's
    return {"psnr": psnr(images, y, where[:, :1]), "ssim": float(ssim((images + 1) / 2, (y + 1) / 2).mean()),
            "hf_ratio": hf}


def whole_scores(task: str, images: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    if task == "colorization":
        return {"chroma": chroma_distance(images, y)}
    return {"psnr": psnr(images.clamp(-1, 1), y, torch.ones_like(y[:, :1])),
            "hf_ratio": high_frequency_energy(images) / high_frequency_energy(y)}


def draw(model, x, mask, known, samples: int, sampler: str, steps: int, schedule: str) -> tuple[torch.Tensor, float]:
    """(K, N, C, H, W) samples with seeds k * 1000 + i, and the seconds per image."""
    start = time.perf_counter()
    out = [model.sample(x, mask, known, steps=steps, sampler=sampler, schedule=schedule,
                        seeds=[k * 1000 + i for i in range(len(x))]).cpu() for k in range(samples)]
    return torch.stack(out), (time.perf_counter() - start) / (samples * len(x))


def score(task: str, images: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, lpips) -> dict[str, float]:
    scores = hole_scores(images, y, mask) if mask is not None else whole_scores(task, images, y)
    if lpips is not None:
        scores["lpips"] = float(lpips((images.clamp(-1, 1) + 1) / 2, (y + 1) / 2).mean())
    return scores


def score_samples(task: str, samples: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None,
                  lpips) -> dict[str, float]:
    """The mean over the K samples of each score, and the PSNR of the samples' mean."""
    scored = [score(task, s, y, mask, lpips) for s in samples]
    row = {key: float(np.mean([s[key] for s in scored])) for key in scored[0]}
    if "psnr" in row:
        row["psnr_of_mean"] = score(task, samples.mean(0), y, mask, None)["psnr"]
        row["psnr_of_posterior_mean"] = posterior_mean_psnr([s["psnr"] for s in scored], row["psnr_of_mean"])
    return row


def posterior_mean_psnr(sample_psnrs: list[float], psnr_of_mean: float) -> float:
    """The PSNR of the model's own E[y | x], from its samples' errors: with m that mean's squared error and V the
    samples' variance about it, one sample has m + V and the mean of K has m + V / K; solved for m."""
    k = len(sample_psnrs)
    if k < 2:
        return float("nan")
    mse_one = float(np.mean([4 * 10 ** (-p / 10) for p in sample_psnrs]))  # [-1, 1] images: peak-to-peak 2
    mse_mean = 4 * 10 ** (-psnr_of_mean / 10)
    variance = (mse_one - mse_mean) * k / (k - 1)
    return float(10 * np.log10(4 / max(mse_one - variance, 1e-12)))


def baselines(task: str, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, lpips) -> list[dict]:
    if mask is None:
        return [{"task": task, "method": "input", **score(task, x, y, None, lpips)}]
    known = y * (1 - mask)
    return [{"task": task, "method": "biharmonic fill", **score(task, biharmonic_fill(known, mask), y, mask, lpips)},
            {"task": task, "method": "diffused mean fill",
             **score(task, diffused_mean_fill(known, mask), y, mask, lpips)}]


def write_markdown(path: Path, header: str, rows: list[dict]) -> None:
    every = ("psnr", "psnr_of_mean", "psnr_of_posterior_mean", "ssim", "lpips", "chroma", "hf_ratio",
             "seconds_per_image")
    columns = [c for c in every if any(c in r for r in rows)]
    lines = [header, "", "| task | method | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if c in r else "-" for c in columns]
        lines.append(f"| {r['task']} | {r['method']} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="held-out images")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--samplers", nargs="+", default=["dpmpp-2m-sde:20:inference"], metavar="NAME:STEPS:SCHEDULE")
    parser.add_argument("--raw-weights", action="store_true", help="the trained weights, not their EMA")
    parser.add_argument("--weights", help="a folder holding ImageNet AlexNet weights, for LPIPS")
    parser.add_argument("--out", help="write the table here (Markdown) and the rows next to it (.json)")
    args = parser.parse_args()

    model = load_model(args.checkpoint, "cpu", use_ema=not args.raw_weights)
    cases = make_cases(model, list_images(args.data), args.images, seed=0)
    tasks = model.config.task.tasks if model.config.task.name == "multi" else (model.config.task.name,)
    if "uncropping" in tasks:  # every case degrades the same crops: take the truth of any
        truth = next(iter(cases.values()))[2]
        cases["uncropping"] = uncropping_case(truth, seed=0)
    lpips = Backbones(args.weights).lpips if args.weights else None
    rows = []
    for task, (x, mask, y) in cases.items():
        rows += baselines(task, x, y, mask, lpips)
        for spec in args.samplers:
            sampler, steps, schedule = spec.split(":")
            samples, seconds = draw(model, x, mask, None if mask is None else y, args.samples, sampler, int(steps),
                                    schedule)
            rows.append({"task": task, "method": f"{sampler} {steps} ({schedule})", "seconds_per_image": seconds,
                         **score_samples(task, samples, y, mask, lpips)})
        for r in rows[-(1 if mask is None else 2) - len(args.samplers):]:
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}), flush=True)
    if args.out:
        header = (f"checkpoint `{args.checkpoint}`{' (raw weights)' if args.raw_weights else ''}, "
                  f"{args.images} held-out {model.config.model.image_size}px crops x {args.samples} samples")
        write_markdown(Path(args.out), header, rows)
        Path(args.out).with_suffix(".json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
