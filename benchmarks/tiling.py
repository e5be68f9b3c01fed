"""Seam visibility of tiled sampling: tiles blended at every denoising step against tiles sampled independently.

    python benchmarks/tiling.py --checkpoint RUN --data photos/held_out --task colorization --out benchmarks/results

Each image (a crop of ``--scale`` x the model's size from the data) is sampled three ways with the same sampler, steps
and tile layout (tiles of the model's size overlapping by ``--overlap`` px):
- joint: palette's tiled sampling, the tiles' noise estimates blended at every step (``--tile``);
- independent, blended: each tile sampled on its own, the results blended once at the end with the same weights;
- independent, cut: each tile sampled on its own, the results joined at the middle of each overlap (naive stitching).
Two gradient-energy ratios measure seams, along both axes: the mean squared difference of neighbouring pixels
across the seam lines (the middle of each overlap, where a stitch cuts) over the same mean everywhere else, and the
same inside the overlap bands (where tiles are blended) over outside them. 1: the place looks like any other; above
1: an edge shows there; below 1: a smoother band (two independent samples averaged). The ground truth's ratios say
what to expect of real content; seconds per image are wall time on this machine (after one warm-up call). Results go
to OUT/tiling.md and OUT/tiling.json.
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from palette.crops import random_square_crop
from palette.data import load_image
from palette.data_files import list_images
from palette.conditions import make_condition
from palette.sampling import load_model
from palette.tiling import tile_starts, tile_weights, window


def seam_lines(length: int, tile: int, overlap: int) -> list[int]:
    """Neighbour pairs (c - 1, c), named by c - 1, where a stitch cuts: the middle of each overlap."""
    starts = tile_starts(length, tile, overlap)
    return [(b + a + tile) // 2 - 1 for a, b in pairwise(starts)]


def overlap_bands(length: int, tile: int, overlap: int) -> list[int]:
    """Neighbour pairs (c, c + 1) inside the overlaps, where tiles are blended."""
    starts = tile_starts(length, tile, overlap)
    return sorted({c for a, b in pairwise(starts) for c in range(b, a + tile - 1)})


def gradient_energy_ratio(image: torch.Tensor, tile: int, overlap: int, where) -> float:
    """Mean squared neighbour difference at the pairs ``where(length, tile, overlap)`` over the mean at all other
    pairs, along both axes together."""
    inside, outside = [], []
    for axis in (1, 2):
        energy = image.diff(dim=axis).square().mean(dim=0).mean(dim=2 - axis)  # one value per neighbour pair
        on = torch.zeros(len(energy), dtype=torch.bool)
        on[where(image.shape[axis], tile, overlap)] = True
        inside.append(energy[on])
        outside.append(energy[~on])
    return float(torch.cat(inside).mean() / torch.cat(outside).mean())


def independent_tiles(model, condition, steps, sampler, seed):
    """Each tile sampled alone; returns (blended at the end with the tiling weights, cut at the middle of overlaps)."""
    x, tile, overlap = condition.x, model.config.model.image_size, condition.tile_overlap
    _, h, w = x.shape
    masked = condition.masked
    known = condition.original if masked else None
    blended = torch.zeros((model.config.model.channels, h, w))
    cut = torch.zeros_like(blended)
    best = torch.zeros(h, w, dtype=torch.float64)
    base = window(tile, overlap)
    for j, (top, left, weight) in enumerate(tile_weights(h, w, tile, overlap)):
        region = (slice(None), slice(top, top + tile), slice(left, left + tile))
        m = condition.mask[region][None] if masked else None
        k = known[region][None] if masked else None
        out = model.sample(x[region][None], m, k, steps=steps, sampler=sampler, seeds=[seed + j])[0]
        blended[region] += out * weight
        take = base > best[top : top + tile, left : left + tile]  # the nearest tile centre owns a pixel
        cut[region] = torch.where(take, out, cut[region])
        best[top : top + tile, left : left + tile] = torch.maximum(best[top : top + tile, left : left + tile], base)
    return blended, cut


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, help="folder of (held-out) images")
    parser.add_argument("--task", default="colorization")
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--scale", type=float, default=2.5, help="image side over the model's size")
    parser.add_argument("--overlap", type=int, help="default: a quarter of the model's size")
    parser.add_argument("--sampler", default="ddim")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    model = load_model(args.checkpoint, args.device)
    tile = model.config.model.image_size
    overlap = tile // 4 if args.overlap is None else args.overlap
    side = round(tile * args.scale)
    rng = np.random.default_rng(0)
    paths = list_images(args.data)
    names = ("joint (blended every step)", "independent, blended at the end", "independent, cut", "ground truth")
    rows = {name: {"seam lines": [], "overlap bands": []} for name in names}
    seconds = {"joint (blended every step)": 0.0, "independent, blended at the end": 0.0}
    for i in range(args.images):
        image = random_square_crop(load_image(paths[i % len(paths)]), side, rng, scale_min=0.6, flip=False)
        mask = "center" if args.task == "inpainting" else None
        condition = make_condition(model.config.model.image_size, args.task, image, np.random.default_rng([0, i]),
                                   mask, tile_overlap=overlap)
        if i == 0:  # warm-up: the first network call pays for allocations
            model.sample(condition.x[None, :, :tile, :tile], steps=1, sampler=args.sampler)
        started = time.perf_counter()
        joint = model.sample(condition.x[None], condition.mask[None] if condition.masked else None,
                             condition.original[None] if condition.masked else None, steps=args.steps,
                             sampler=args.sampler, seeds=[i], tile_overlap=overlap)[0]
        seconds["joint (blended every step)"] += time.perf_counter() - started
        started = time.perf_counter()
        blended, cut = independent_tiles(model, condition, args.steps, args.sampler, seed=1000 * i)
        seconds["independent, blended at the end"] += time.perf_counter() - started
        for name, result in (("joint (blended every step)", joint), ("independent, blended at the end", blended),
                             ("independent, cut", cut), ("ground truth", condition.original)):
            rows[name]["seam lines"].append(gradient_energy_ratio(result, tile, overlap, seam_lines))
            rows[name]["overlap bands"].append(gradient_energy_ratio(result, tile, overlap, overlap_bands))
    seconds["independent, cut"] = seconds["independent, blended at the end"]  # the same samples, joined otherwise
    summary = {name: {**{f"{k} (mean)": float(np.mean(v)) for k, v in r.items()}, "per image": r,
                      "seconds_per_image": seconds[name] / args.images if name in seconds else None}
               for name, r in rows.items()}
    meta = {"checkpoint": args.checkpoint, "task": args.task, "images": args.images, "image_side": side, "tile": tile,
            "overlap": overlap, "sampler": args.sampler, "steps": args.steps,
            "tiles_per_image": len(tile_starts(side, tile, overlap)) ** 2}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tiling.json").write_text(json.dumps({"settings": meta, "results": summary}, indent=2))
    title = (f"Gradient energy at seams, {args.task}, {args.images} images of {side}x{side} px in {meta['tiles_per_image']} "
             f"tiles of {tile} px overlapping by {overlap} px, {args.sampler} {args.steps} steps "
             "(ratio to elsewhere: 1 = no seam).")
    lines = [title, "", "| method | seam lines | overlap bands | seam lines per image | s/image |",
             "|---|---|---|---|---|"]
    for name, r in summary.items():
        per = ", ".join(f"{v:.2f}" for v in r["per image"]["seam lines"])
        secs = "" if r["seconds_per_image"] is None else f"{r['seconds_per_image']:.2f}"
        lines.append(f"| {name} | {r['seam lines (mean)']:.2f} | {r['overlap bands (mean)']:.2f} | {per} | {secs} |")
    (out / "tiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
