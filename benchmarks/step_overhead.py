"""palette's training step against a plain PyTorch loop over the same network, in one process, and where the
difference goes.

    python benchmarks/step_overhead.py [--rounds 5] [--clock process] [--palette-and-plain] [--out FILE.md] [k=v ...]

The network is the public reimplementation's (``palette bench --preset public``: 64 x (1,2,4,8), 64x64, batch 8)
unless ``key=value`` overrides change it. Timed, as steps of one batch on the CPU:

- palette: :meth:`palette.train.Trainer.train_step`, the step ``palette train`` runs (as ``palette bench`` times it),
  on a batch shaped like the training data's, drawn once (its data loader's cost is not in the step);
- plain: what the public reimplementation's loop does: gamma and the noise drawn for the batch with torch,
  y_t = sqrt(gamma) y + sqrt(1 - gamma) eps (known pixels kept), eps_hat = net(x, y_t, gamma), MSE under the mask,
  backward, Adam; NCHW tensors, no EMA, no clipping;
- plain plus one of palette's additions at a time: the EMA update (as ``Strategy.update_ema``), gradient-norm
  clipping (``clip_grad_norm_``, as accelerate calls it), each example's gamma and noise drawn from its own numpy
  generator (as ``TrainingData`` draws them; in ``palette train`` that happens in the data loader's worker),
  channels_last weights and activations (palette's CPU default).

The variants run round-robin, one step of each per round, so that a change of load on the machine reaches them all;
a figure is the median over the rounds after a warm-up round. The three additions that do not change the network's
arithmetic (EMA, clipping, per-example draws) are also timed alone, each the median of ``--repeats`` runs: a few
percent of a step is below what whole steps resolve on a busy machine. FLOPs: ``palette.bench.forward_flops`` x 3 per
image.
With ``--clock process`` a step's time is the CPU time of this process rather than the wall-clock time: on a core
shared with other jobs, it leaves out the time the others hold the core (with one thread it is the wall-clock time of
an idle core; with several it is their sum).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from palette.bench import bench_config, bench_trainer, forward_flops, matmul_peak, synthetic_batch
from palette.training_data import sample_rng
from palette.diffusion import NoiseSchedule, sample_gamma
from palette.unet import UNet


VARIANTS = ["palette", "plain", "plain + EMA", "plain + clipping", "plain + per-example noise",
            "plain + channels_last"]


class PlainLoop:
    """The public reimplementation's training step over a UNet of ``config``, with palette's additions switched on
    one by one."""

    def __init__(self, config, batch: dict, ema: bool = False, clip: bool = False, per_example_noise: bool = False,
                 channels_last: bool = False):
        torch.manual_seed(config.train.seed)
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.net = UNet(config.model).to(memory_format=self.layout).train()
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.train.lr)
        self.ema = [p.detach().clone() for p in self.net.parameters()] if ema else None
        self.decay, self.max_norm = config.train.ema_decay, config.train.grad_clip
        self.clip, self.per_example_noise = clip, per_example_noise
        self.x, self.y, self.mask = (batch[k].contiguous(memory_format=self.layout) for k in ("x", "y", "mask"))
        self.schedule = NoiseSchedule(config.diffusion.train_schedule)
        self.examples = 0

    def _draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.y.shape[0]
        if not self.per_example_noise:
            return sample_gamma(self.schedule, b).float(), torch.randn_like(self.y)
        gammas, noises = [], []
        for n in range(self.examples, self.examples + b):  # as TrainingData draws example n's
            rng = sample_rng(0, n)
            gammas.append(sample_gamma(self.schedule, 1, rng)[0])
            noises.append(torch.from_numpy(rng.standard_normal(tuple(self.y.shape[1:]), dtype=np.float32)))
        self.examples += b
        return torch.stack(gammas).float(), torch.stack(noises).contiguous(memory_format=self.layout)

    def step(self) -> None:
        gamma, noise = self._draw()
        g = gamma.view(-1, 1, 1, 1)
        y_t = (g.sqrt() * self.y + (1 - g).sqrt() * noise) * self.mask + self.y * (1 - self.mask)
        loss = F.mse_loss(self.net(self.x, y_t, gamma) * self.mask, noise * self.mask)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.max_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, list(self.net.parameters()), 1 - self.decay)


def median_step_seconds(steps: dict, rounds: int, clock, log) -> dict[str, float]:
    """Each variant's median step time on ``clock`` over ``rounds`` round-robin rounds, after a warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(rounds + 1):
        for name, step in steps.items():
            start = clock()
            step()
            if round_:
                times[name].append(clock() - start)
        log(f"round {round_}/{rounds}" + ("" if round_ else " (warm-up)") + ": "
            + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items() if t and round_))
    return {name: statistics.median(values) for name, values in times.items()}


def median_seconds(fn, repeats: int, clock) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def additions_alone(variants: dict[str, PlainLoop], repeats: int, clock) -> dict[str, float]:
    """The time each of palette's additions takes by itself, on the plain loops' networks."""
    ema, clipped = variants["plain + EMA"], variants["plain + clipping"]
    params = list(ema.net.parameters())
    for p in clipped.net.parameters():
        p.grad = torch.randn_like(p)

    @torch.no_grad()
    def update_ema():
        torch._foreach_lerp_(ema.ema, params, 1 - ema.decay)

    def clip():
        torch.nn.utils.clip_grad_norm_(clipped.net.parameters(), clipped.max_norm)

    draws = {name: median_seconds(variants[name]._draw, repeats, clock)
             for name in ("plain", "plain + per-example noise")}
    return {"EMA": median_seconds(update_ema, repeats, clock), "clipping": median_seconds(clip, repeats, clock),
            "per-example noise": draws["plain + per-example noise"] - draws["plain"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20, help="runs of each addition timed alone")
    parser.add_argument("--palette-and-plain", action="store_true",
                        help="time these two only (no attribution): for a network too slow for six variants")
    parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                        help="time a step by the wall clock or by this process's CPU time")
    parser.add_argument("--out", help="also write the figures to this Markdown file")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    config = bench_config("public", args.overrides)
    trainer = bench_trainer(config, device="cpu")  # train.channels_last=auto: channels_last, as palette trains here
    batch = synthetic_batch(trainer.config, trainer.task, trainer.config.train.batch_size)
    b = trainer.config.train.batch_size
    x, y = batch["x"].contiguous(memory_format=trainer.memory_format), batch["y"]
    flops = forward_flops(trainer.model, x, y.contiguous(memory_format=trainer.memory_format), batch["gamma"].float())
    options = {"plain": {}, "plain + EMA": {"ema": True}, "plain + clipping": {"clip": True},
               "plain + per-example noise": {"per_example_noise": True},
               "plain + channels_last": {"channels_last": True}}
    variants = {name: trainer if name == "palette" else PlainLoop(config, batch, **options[name])
                for name in (VARIANTS[:2] if args.palette_and_plain else VARIANTS)}
    steps = {name: (lambda: trainer.train_step([batch])) if name == "palette" else variant.step
             for name, variant in variants.items()}
    clock = time.process_time if args.clock == "process" else time.perf_counter
    seconds = median_step_seconds(steps, args.rounds, clock, lambda line: print(line, file=sys.stderr, flush=True))
    alone = additions_alone({name: PlainLoop(config, batch, **options[name]) for name in options}, args.repeats,
                            clock) if not args.palette_and_plain else None
    peak = matmul_peak(trainer.device)
    text = report(config, b, flops, peak, seconds, alone, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def report(config, b: int, flops: float, peak: float, seconds: dict[str, float], alone: dict[str, float] | None,
           args) -> str:
    m = config.model
    plain = seconds["plain"]
    command = "python benchmarks/step_overhead.py " + " ".join(sys.argv[1:])
    lines = [
        f"# palette's training step against a plain PyTorch loop ({m.base_channels} x "
        f"({','.join(map(str, m.channel_mult))}), {m.image_size}x{m.image_size}, batch {b})", "",
        f"`{command}` with torch {torch.__version__}, {torch.get_num_threads()} thread(s); forward "
        f"{flops / 1e9:.2f} GFLOP per image (x 3 per training image); matmul peak {peak:.1f} GFLOP/s "
        f"(2048^2 fp32, measured in the same run); median of {args.rounds} round-robin rounds after a warm-up, "
        + ("by the wall clock." if args.clock == "wall" else "in this process's CPU time (the core was shared)."), "",
        "| step | s/step | images/s | GFLOP/s | vs plain |",
        "|---|---|---|---|---|",
    ]
    for name, s in seconds.items():
        lines.append(f"| {name} | {s:.3f} | {b / s:.3f} | {3 * flops * b / s / 1e9:.1f} | "
                     + ("" if name == "plain" else f"{100 * (s / plain - 1):+.1f}% time") + " |")
    lines += ["", f"palette / plain, images/s: {plain / seconds['palette']:.3f}", ""]
    if alone is None:
        return "\n".join(lines)
    lines += [f"Each addition alone (median of {args.repeats} runs; per-example noise: its draws minus the plain "
              "loop's batched torch draws):", "", "| addition | ms | % of the plain step |", "|---|---|---|"]
    lines += [f"| {name} | {1000 * s:.1f} | {100 * s / plain:.1f}% |" for name, s in alone.items()]
    layout = seconds["plain + channels_last"] - plain
    rest = seconds["palette"] - plain - alone["EMA"] - alone["clipping"] - layout
    lines += [
        "", f"palette - plain: {1000 * (seconds['palette'] - plain):+.0f} ms a step = EMA {1000 * alone['EMA']:+.0f}"
        f" + clipping {1000 * alone['clipping']:+.0f} (alone) + channels_last {1000 * layout:+.0f} (whole steps)"
        f" + the rest {1000 * rest:+.0f} (palette's loss in float64, input copies, learning rate and seeding, and the"
        " steps' noise). The per-example draws are not in palette's step: its data loader makes them.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
