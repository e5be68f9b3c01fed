"""Distilled students against their teacher: quality, sample diversity and time per image, on held-out crops.

    palette distill --teacher demo-out/run --out runs/distilled --from-steps 32 --steps-per-round 300
    python benchmarks/distillation.py --teacher demo-out/run --students runs/distilled \\
        --data demo-out/photos/held_out --out benchmarks/results

For inpainting (centre box), colorization and JPEG restoration (quality 10) of fixed random crops of the held-out
photos, each model draws ``--samples`` samples per crop (the same seeds for every model) and the benchmark prints and
writes OUT/distillation.md, OUT/distillation.json and OUT/distillation.png:
- quality as in benchmarks/samplers.py: PSNR to the truth of the generated pixels (inpainting, JPEG), and the chroma
  histogram distance to the truth (colorization, lower is better);
- diversity: 1 - MS-SSIM between the samples of one input (every pair; 0 means identical samples), and the pixel
  standard deviation across them; a student that collapsed to one answer per input shows up as ~0 in both;
- speckle: high-frequency energy of the generated pixels over the truth's (1 is the truth's texture);
- seconds per image on this machine, and network evaluations (NFE).
Rows: the teacher with the paper's 1000-step ancestral sampler (one sample per crop: the reference quality), with
20 DPM-Solver++(2M) SDE steps and with DDIM at the distillation's first teacher step count; every student found in
``--students`` (its steps-NNNN rounds). The 4-step student's target is within 5% of the 20-step teacher on every
quality figure, with at least 70% of its diversity.
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

from palette.run_folder import latest_checkpoint
from palette.data_files import list_images
from palette.metrics import chroma_distance, high_frequency_energy, ms_ssim
from palette.sampling import load_model

sys.path.insert(0, str(Path(__file__).parent))
from samplers import make_cases, psnr  # noqa: E402

TASKS = ("inpainting", "colorization", "jpeg")


def diversity(samples: torch.Tensor) -> dict[str, float]:
    """``samples`` (inputs, K, C, H, W) in [-1, 1]: 1 - MS-SSIM over every pair of one input's samples, and the
    pixel standard deviation across them (in [0, 1] units)."""
    unit = (samples + 1) / 2
    pairs = list(combinations(range(samples.shape[1]), 2))
    if not pairs:
        return {"div_ms_ssim": float("nan"), "div_std": float("nan")}
    a = torch.cat([unit[:, i] for i, _ in pairs])
    b = torch.cat([unit[:, j] for _, j in pairs])
    return {"div_ms_ssim": float(1 - ms_ssim(a, b).mean()), "div_std": float(unit.std(dim=1).mean())}


def quality(task: str, samples: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> dict[str, float]:
    flat = samples.flatten(0, 1)
    k = samples.shape[1]
    y_k = y.repeat_interleave(k, 0)
    where = torch.ones_like(flat[:, :1]) if mask is None else mask.repeat_interleave(k, 0)
    speckle = high_frequency_energy(flat * where) / high_frequency_energy(y_k * where)
    if task == "colorization":
        return {"chroma_to_truth": chroma_distance(flat, y_k), "hf_ratio": speckle}
    return {"psnr_to_truth": psnr(flat, y_k, where), "hf_ratio": speckle}


def draw(model, x, mask, known, samples: int, **sampling) -> tuple[torch.Tensor, float]:
    """(inputs, K, C, H, W) samples, seeds k * 1000 + i, and the seconds per image."""
    start = time.perf_counter()
    out = []
    for k in range(samples):
        seeds = [k * 1000 + i for i in range(x.shape[0])]
        out.append(model.sample(x, mask, known, seeds=seeds, **sampling).cpu())
    return torch.stack(out, 1), (time.perf_counter() - start) / (samples * x.shape[0])


def students_of(folder: Path) -> list[tuple[int, Path]]:
    found = [(int(p.name.split("-")[1]), p) for p in folder.glob("steps-[0-9][0-9][0-9][0-9]")
             if latest_checkpoint(p) is not None]
    return sorted(found, reverse=True)


def write_markdown(path: Path, meta: dict, rows: list[dict]) -> None:
    lines = [f"# Distillation: {meta['title']}", "", *meta["notes"], ""]
    for task in TASKS:
        task_rows = [r for r in rows if r["task"] == task]
        main = "chroma_to_truth" if task == "colorization" else "psnr_to_truth"
        lines += [f"## {task}", "",
                  f"| model | NFE | {main} | vs 20-step teacher | 1 - MS-SSIM | pixel std | diversity vs teacher "
                  "| HF ratio | s / image |", "|---|---|---|---|---|---|---|---|---|"]
        for r in task_rows:
            lines.append(f"| {r['model']} | {r['nfe']} | {r[main]:.4g} | {r.get('quality_vs_teacher', '-')} | "
                         f"{r['div_ms_ssim']:.4f} | {r['div_std']:.4f} | {r.get('diversity_vs_teacher', '-')} | "
                         f"{r['hf_ratio']:.3f} | {r['s_per_image']:.4f} |")
        lines.append("")
    path.write_text("\n".join(lines))


def compare(rows: list[dict]) -> None:
    """Each row's quality and diversity relative to the 20-step teacher of its task (in %; quality as "worse by")."""
    for task in TASKS:
        teacher = next((r for r in rows if r["task"] == task and r["model"].startswith("teacher, dpmpp-2m-sde")), None)
        if teacher is None:
            continue
        for r in rows:
            if r["task"] != task:
                continue
            if task == "colorization":  # a distance: more is worse
                worse = (r["chroma_to_truth"] - teacher["chroma_to_truth"]) / teacher["chroma_to_truth"]
            else:  # PSNR: less is worse, measured on the MSE (dB differences are not percentages)
                worse = 10 ** ((teacher["psnr_to_truth"] - r["psnr_to_truth"]) / 10) - 1
            r["quality_vs_teacher"] = f"{100 * worse:+.1f}% error"
            if not np.isnan(r["div_ms_ssim"]):
                r["diversity_vs_teacher"] = f"{100 * r['div_ms_ssim'] / teacher['div_ms_ssim']:.0f}%"


def plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(4.2 * len(TASKS), 3.4))
    for ax, task in zip(axes, TASKS):
        main = "chroma_to_truth" if task == "colorization" else "psnr_to_truth"
        students = sorted((r["nfe"], r[main]) for r in rows if r["task"] == task and r["model"].startswith("student"))
        if students:
            ax.plot(*zip(*students), "o-", label="students (DDIM)")
        for r in rows:
            if r["task"] == task and r["model"].startswith("teacher"):
                ax.plot(r["nfe"], r[main], "s", label=r["model"])
        ax.set_xscale("log")
        ax.set_xlabel("network evaluations per sample")
        ax.set_ylabel(f"{main} ({'lower' if task == 'colorization' else 'higher'} is better)")
        ax.set_title(task)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--students", required=True, help="a `palette distill` folder")
    parser.add_argument("--data", required=True, help="held-out images")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4, help="samples per input (diversity)")
    parser.add_argument("--ancestral-steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    teacher = load_model(args.teacher, args.device)
    students = [(n, load_model(p, args.device)) for n, p in students_of(Path(args.students))]
    first = max((n for n, _ in students), default=0) * 2
    cases = make_cases(teacher, list_images(args.data), args.images, args.seed)
    device = next(teacher.parameters()).device
    models = [(f"teacher, ancestral {args.ancestral_steps}", teacher, dict(steps=args.ancestral_steps,
                                                                           sampler="ancestral"), 1),
              ("teacher, dpmpp-2m-sde 20", teacher, dict(steps=20, sampler="dpmpp-2m-sde", schedule="inference"),
               args.samples)]
    if first:  # on the students' schedule
        schedule = students[0][1].config.diffusion.sample_schedule
        models.append((f"teacher, ddim {first} on the {schedule} schedule (distillation start)", teacher,
                       dict(steps=first, sampler="ddim", eta=0.0, schedule=schedule), args.samples))
    models += [(f"student, {n} step{'s' if n > 1 else ''} ({model.config.diffusion.sample_schedule} schedule)", model,
                {}, args.samples) for n, model in students]
    rows = []
    for task in TASKS:
        if task not in cases:
            continue
        x, mask, y = cases[task]
        xd, md = x.to(device), None if mask is None else mask.to(device)
        known = None if mask is None else y.to(device)
        for name, model, sampling, k in models:
            model.sample(xd[:1], None if md is None else md[:1], None if known is None else known[:1],
                         **sampling)  # warm-up: first calls pay for allocations
            samples, seconds = draw(model, xd, md, known, k, **sampling)
            nfe = sampling.get("steps", model.config.diffusion.sample_steps)
            row = {"task": task, "model": name, "nfe": nfe, "s_per_image": seconds,
                   **quality(task, samples, y, mask), **diversity(samples)}
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    compare(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"title": f"teacher {args.teacher}, students {args.students}",
            "notes": [f"{args.images} held-out crops of {args.data}, {args.samples} samples per crop "
                      f"(the ancestral reference: 1), on {device} with {torch.get_num_threads()} threads.",
                      "Command: `python benchmarks/distillation.py " + " ".join(sys.argv[1:]) + "`"]}
    (out / "distillation.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    write_markdown(out / "distillation.md", meta, rows)
    plot(out / "distillation.png", rows)
    print(f"wrote {out / 'distillation.md'}")


if __name__ == "__main__":
    main()
