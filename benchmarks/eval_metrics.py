"""Time per 1,000 images of each evaluation metric on this machine, and the cost of FID's matrix square root.

    python benchmarks/eval_metrics.py [--weights-dir DIR] [--images 32] [--size 256] [--out benchmarks/results]

Without ``--weights-dir`` the backbones get random kaiming weights (timing does not depend on the weights). Prints a
Markdown table and writes ``eval_metrics.{md,json}``. The FID part times our exact forms (cross-Gram SVD when there
are fewer samples than feature dimensions, symmetric eigendecompositions otherwise) against scipy's ``sqrtm`` of the
product and the non-symmetric ``eigvals`` form that torch-fidelity and torchmetrics use, at 2048 dimensions.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from palette import metrics as image_metrics


def random_weights(folder: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import write_random_weights

    return write_random_weights(folder)


def timed(fn, *args, repeat: int = 1):
    fn(*args)  # warm-up: builds the network, first-call allocations
    start = time.perf_counter()
    for _ in range(repeat):
        fn(*args)
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights-dir")
    parser.add_argument("--images", type=int, default=32, help="images per timed batch")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--samples", type=int, default=4, help="K samples per input for the diversity metrics")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    weights_dir = Path(args.weights_dir) if args.weights_dir else random_weights(Path(tempfile.mkdtemp()))
    bb = image_metrics.Backbones(weights_dir)
    n, k = args.images, args.samples
    images = torch.rand(n, 3, args.size, args.size)
    other = (images + 0.1 * torch.randn_like(images)).clamp(0, 1)
    pairs = k * (k - 1) // 2
    group = images[:k]
    rows = {  # metric: (seconds for the batch, images in the batch)
        "Inception-v3 (FID, KID, IS), once per image": (timed(bb.inception, images), n),
        "ResNet-50 (CA)": (timed(bb.classify, images), n),
        "GoogLeNet (PD), output and original": (2 * timed(bb.googlenet_features, images), n),
        f"LPIPS diversity, K={k} ({pairs} pairs per image)": (timed(image_metrics.pairwise_mean, group, bb.lpips), 1),
        f"MS-SSIM diversity, K={k}": (timed(image_metrics.pairwise_mean, group, image_metrics.ms_ssim), 1),
        "PSNR": (timed(image_metrics.psnr, images, other), n),
        "SSIM": (timed(image_metrics.ssim, images, other), n),
    }
    per_1000 = {name: 1000 * s / count for name, (s, count) in rows.items()}

    from scipy.linalg import sqrtm

    rng = np.random.default_rng(0)
    fid_rows = {}
    for count in (1000, 5000):
        a = image_metrics.FeatureStats.of(rng.standard_normal((count, 2048)).astype(np.float32))
        b = image_metrics.FeatureStats.of(rng.standard_normal((count, 2048)).astype(np.float32) + 0.1)
        ours = timed(image_metrics.frechet_distance, a, b)
        fid_rows[f"{count} vs {count}, ours ({'cross-Gram' if count < 2048 else 'eigh'})"] = ours
        fid_rows[f"{count} vs {count}, numpy eigvals(S1 S2) (torch-fidelity)"] = timed(
            lambda: np.sqrt(np.linalg.eigvals(a.sigma @ b.sigma).astype(complex)).real.sum())
        if count == 1000:
            fid_rows[f"{count} vs {count}, scipy sqrtm(S1 S2)"] = timed(lambda: np.trace(sqrtm(a.sigma @ b.sigma).real))

    lines = [f"Metric cost on this machine ({torch.get_num_threads()} threads, {args.size}x{args.size} images, "
             f"batch {n})", "", "| metric | seconds per 1,000 images |", "|---|---|"]
    lines += [f"| {name} | {s:.1f} |" for name, s in per_1000.items()]
    lines += ["", "| FID from 2048-d features | seconds |", "|---|---|"]
    lines += [f"| {name} | {s:.2f} |" for name, s in fid_rows.items()]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval_metrics.md").write_text(text)
    (out / "eval_metrics.json").write_text(json.dumps({"per_1000_images_s": per_1000, "fid_s": fid_rows,
                                                        "threads": torch.get_num_threads(), "size": args.size,
                                                        "standard_weights": bool(args.weights_dir)}, indent=2))


if __name__ == "__main__":
    main()
