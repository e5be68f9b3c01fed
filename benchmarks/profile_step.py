"""Where a training step's time goes: the top operators of one step of a preset, from torch.profiler.

    python benchmarks/profile_step.py --preset base --batch-size 16 --mixed-precision bf16 [--contiguous]
"""

from __future__ import annotations

import argparse
import contextlib

import torch

from palette.bench import bench_config
from palette.model import PaletteModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="base")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--mixed-precision", default="bf16", choices=("no", "bf16"))
    parser.add_argument("--contiguous", action="store_true")
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = bench_config(args.preset, [f"train.batch_size={args.batch_size}"])
    fmt = torch.contiguous_format if args.contiguous else torch.channels_last
    model = PaletteModel(config).to(dev, memory_format=fmt)
    b, s, c = args.batch_size, config.model.image_size, config.model.channels
    x = torch.randn(b, c, s, s, device=dev).contiguous(memory_format=fmt)
    y, noise = torch.randn_like(x), torch.randn_like(x)
    mask, gamma = torch.ones(b, 1, s, s, device=dev), torch.rand(b, device=dev)
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if args.mixed_precision == "bf16" \
        else contextlib.nullcontext

    def step():
        with autocast():
            loss = model(x, y, mask, gamma, noise).mean()
        loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(2):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
