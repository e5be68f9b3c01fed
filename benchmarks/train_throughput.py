"""Training and sampling throughput of the presets on this machine.

    python benchmarks/train_throughput.py --presets tiny small --steps 20

Prints, per preset: training images/s (forward, backward and Adam step on random data at the preset's batch size),
one sampling step's images/s, the network's forward GFLOP per image (torch.utils.flop_counter) and the achieved
GFLOP/s of training (3x the forward FLOPs per image). Data loading is not included.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from palette.config import apply_overrides, preset
from palette.model import PaletteModel


def measure(name: str, steps: int, batch: int | None, channels_last: bool) -> dict:
    config = preset(name)
    if batch:
        config = apply_overrides(config, [f"train.batch_size={batch}"])
    b, s = config.train.batch_size, config.model.image_size
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = PaletteModel(config).to(memory_format=fmt)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(b, 3, s, s).contiguous(memory_format=fmt)
    y, mask = torch.randn_like(x), torch.ones(b, 1, s, s)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.net(x, y, torch.rand(b))
    flops = counter.get_total_flops() / b

    def train_step():
        loss = model.training_loss(x, y, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def sample_step():
        with torch.no_grad():
            model.net(x, y, torch.rand(b))

    result = {"preset": name, "batch": b, "gflop_fwd": flops / 1e9}
    for key, fn in (("train", train_step), ("sample", sample_step)):
        for _ in range(2):
            fn()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        per_step = (time.perf_counter() - start) / steps
        result[f"{key}_img_s"] = b / per_step
        result[f"{key}_gflop_s"] = (3 if key == "train" else 1) * flops * b / per_step / 1e9
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--contiguous", action="store_true", help="NCHW memory layout instead of channels_last")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'preset':8} {'batch':>5} {'GFLOP/img':>9} {'train img/s':>11} {'train GFLOP/s':>13} {'sample img/s':>12}")
    for name in args.presets:
        r = measure(name, args.steps, args.batch_size, not args.contiguous)
        print(f"{r['preset']:8} {r['batch']:>5} {r['gflop_fwd']:>9.2f} {r['train_img_s']:>11.1f} "
              f"{r['train_gflop_s']:>13.1f} {r['sample_img_s']:>12.1f}")


if __name__ == "__main__":
    main()
