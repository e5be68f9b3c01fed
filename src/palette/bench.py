"""``palette bench``: how close training and sampling come to this device's measured matmul peak.

For a preset (or the configuration the most used public reimplementation ships, ``--preset public``) on the current
device: the measured matmul peak (fp32, and bf16 on GPUs), the network's forward FLOPs per image (counted with
``torch.utils.flop_counter``), training images/s of ``palette train``'s own step (:meth:`Trainer.train_step`, built by
:meth:`Trainer.without_data`: the strategy's forward and backward, gradient clipping, Adam, EMA) on random batches
shaped like the training data's (so data loading is not included), sampling images/s (one network evaluation per
image and step), the FLOP/s each achieves (training counts 3x the forward FLOPs) as a fraction of the peak, and the
peak memory (GPU: allocated by torch; CPU: the process's peak resident set).
"""

from __future__ import annotations

import dataclasses
import resource
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from .config import Config, apply_overrides, preset
from .training_data import sample_rng
from .diffusion import NoiseSchedule, sample_gamma
from .model import PaletteModel
from .tasks import PAIRED, Task

# Janspiry/Palette-Image-to-Image-Diffusion-Models' shipped network: 64 channels x (1, 2, 4, 8), 2 residual blocks,
# attention at 16x16 with 32 channels per head, 64x64 images, batch 8
PUBLIC = ["model.image_size=64", "model.base_channels=64", "model.channel_mult=1,2,4,8", "model.num_res_blocks=2",
          "model.attention_resolutions=16", "model.head_channels=32", "model.dropout=0", "train.batch_size=8"]


@dataclass
class BenchResult:
    preset: str
    device: str
    threads: int
    batch: int
    precision: str
    layout: str  # channels_last or NCHW activations
    compiled: bool  # torch.compile asked for and seen compiling (dynamo compiled at least one frame)
    low_precision_norm: bool  # GroupNorm in the autocast dtype rather than float32
    cudnn_benchmark: bool | None  # cuDNN's algorithm search (train.cudnn_benchmark); None off CUDA
    parameters_m: float
    gflop_forward_per_image: float
    peak_gflops: float
    train_images_per_s: float
    train_gflops: float
    train_fraction_of_peak: float
    sample_images_per_s: float
    sample_gflops: float
    sample_fraction_of_peak: float
    peak_memory_gb: float


def bench_config(name: str, overrides: list[str] | None = None) -> Config:
    config = apply_overrides(preset("small"), PUBLIC) if name == "public" else preset(name)
    config = apply_overrides(config, list(overrides or []))
    config.preset = name
    return config


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, device: torch.device, seconds: float, min_runs: int = 3) -> float:
    """Runs per second of ``fn`` after two warm-up runs, for about ``seconds`` (at least ``min_runs``)."""
    for _ in range(2):
        fn()
    _sync(device)
    runs, start = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - start < seconds:
        fn()
        runs += 1
        if device.type == "cuda" and runs % 4 == 0:
            _sync(device)
    _sync(device)
    return runs / (time.perf_counter() - start)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 2.0) -> float:
    """Measured GFLOP/s of a large square matmul (2 n^3 FLOPs): 8192 on GPUs, 2048 on CPUs."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 * _rate(lambda: torch.mm(a, b), device, seconds) / 1e9


def forward_flops(model: PaletteModel, x: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor) -> float:
    # ``forward`` runs the network eagerly even when it is compiled: a frame first run under FlopCounterMode is left
    # uncompiled by dynamo
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.net.forward(x[:1], y[:1], gamma[:1])
    return counter.get_total_flops()


def synthetic_batch(config: Config, task: Task, size: int, seed: int = 0) -> dict[str, Any]:
    """``size`` examples collated as the training data's loader yields them, from random images in [-1, 1]: the task's
    x, y, mask and name, and (unless the objective is regression) each example's float64 noise level gamma and noise,
    drawn from the example's own generator."""
    s, channels = config.model.image_size, config.model.channels
    schedule = NoiseSchedule(config.diffusion.train_schedule)
    examples = []
    for n in range(size):
        rng = sample_rng(seed, n)
        images = [torch.from_numpy(rng.uniform(-1, 1, (channels, s, s)).astype(np.float32))]
        if task.name == PAIRED:  # the item is a source and its target
            images.insert(0, torch.from_numpy(rng.uniform(-1, 1, (config.model.condition_channels, s, s))
                                              .astype(np.float32)))
        sample = task.example(images, rng)
        example = {"x": sample.x, "y": sample.y, "mask": sample.mask, "task": sample.info.get("task", "")}
        if config.diffusion.objective != "regression":
            example["gamma"] = sample_gamma(schedule, 1, rng)[0]
            example["noise"] = torch.from_numpy(rng.standard_normal((channels, s, s), dtype=np.float32))
        examples.append(example)
    return torch.utils.data.default_collate(examples)


def bench_trainer(config: Config, device: str = "auto", precision: str = "no", gradient_checkpointing: bool = False,
                  compile: bool = False, channels_last: bool | None = None, low_precision_norm: bool = False):
    """The :class:`~palette.train.Trainer` ``palette train`` would build for ``config`` with these settings (its
    ``train.*`` fields; ``channels_last`` None keeps the config's ``train.channels_last``), without data or a run
    folder."""
    from .train import Trainer  # training is imported only by the command that times it

    layout = config.train.channels_last if channels_last is None else str(channels_last).lower()
    train = dataclasses.replace(config.train, device=device, mixed_precision=precision, compile=compile,
                                gradient_checkpointing=gradient_checkpointing, channels_last=layout,
                                low_precision_norm=low_precision_norm)
    return Trainer.without_data(dataclasses.replace(config, train=train))


def _compiled_frames() -> int:
    from torch._dynamo.utils import counters

    return int(counters["frames"]["ok"])


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kilobytes on Linux


def run_bench(config: Config, device: str = "auto", precision: str = "no", seconds: float = 10.0,
              gradient_checkpointing: bool = False, compile: bool = False,
              channels_last: bool | None = None, low_precision_norm: bool = False) -> BenchResult:
    trainer = bench_trainer(config, device, precision, gradient_checkpointing, compile, channels_last,
                            low_precision_norm)
    dev, model = trainer.device, trainer.model
    # each step's micro-batches, as palette train splits the batch (train.micro_batch_size)
    micro_batches = [synthetic_batch(trainer.config, trainer.task, trainer.micro_batch, seed=i)
                     for i in range(trainer.accumulation)]
    batch, micro = trainer.config.train.batch_size, trainer.micro_batch
    # sampling runs (and the FLOPs are counted) on one micro-batch: what a process holds at once
    inputs = synthetic_batch(trainer.config, trainer.task, micro)
    x, y = (inputs[k].to(dev).contiguous(memory_format=trainer.memory_format) for k in ("x", "y"))
    gamma = torch.rand(micro, device=dev)  # the float32 noise levels of a sampler
    flops = forward_flops(model, x, y, gamma)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    def sample_step():
        with torch.no_grad(), trainer.accelerator.autocast():
            model.net(x, y, gamma)

    compiled_before = _compiled_frames()
    train_rate = _rate(lambda: trainer.train_step(micro_batches), dev, seconds) * batch
    compiled = compile and _compiled_frames() > compiled_before
    if compile and not compiled:
        warnings.warn("compile: torch.compile compiled nothing (is TORCHDYNAMO_DISABLE or TORCH_COMPILE_DISABLE "
                      "set?); the figures are eager ones", stacklevel=2)
    model.eval()
    sample_rate = _rate(sample_step, dev, seconds / 2) * micro
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    peak = matmul_peak(dev, dtype if dtype and dev.type == "cuda" else torch.float32)
    train_gflops = 3 * flops * train_rate / 1e9
    sample_gflops = flops * sample_rate / 1e9
    return BenchResult(
        preset=config.preset, device=str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        threads=torch.get_num_threads(), batch=batch, precision=precision,
        layout="channels_last" if trainer.memory_format == torch.channels_last else "NCHW", compiled=compiled,
        low_precision_norm=low_precision_norm,
        cudnn_benchmark=config.train.cudnn_benchmark if dev.type == "cuda" else None,
        parameters_m=sum(p.numel() for p in model.parameters()) / 1e6, gflop_forward_per_image=flops / 1e9,
        peak_gflops=peak, train_images_per_s=train_rate, train_gflops=train_gflops,
        train_fraction_of_peak=train_gflops / peak, sample_images_per_s=sample_rate, sample_gflops=sample_gflops,
        sample_fraction_of_peak=sample_gflops / peak, peak_memory_gb=_peak_memory_gb(dev),
    )


def report(r: BenchResult) -> str:
    peak_kind = "bf16" if r.precision == "bf16" and not r.device.startswith("cpu") else "fp32"
    lines = [
        f"{r.preset}: {r.parameters_m:.1f}M parameters, batch {r.batch}, {r.precision} precision, {r.layout}"
        + (", compiled" if r.compiled else "") + (f", {r.precision} GroupNorm" if r.low_precision_norm else "")
        + (", cuDNN search off" if r.cudnn_benchmark is False else "")
        + f", on {r.device}"
        + (f" ({r.threads} threads)" if r.device.startswith("cpu") else ""),
        f"  forward          {r.gflop_forward_per_image:8.2f} GFLOP per image",
        f"  matmul peak      {r.peak_gflops:8.1f} GFLOP/s ({peak_kind}, measured)",
        f"  training         {r.train_images_per_s:8.2f} images/s  {r.train_gflops:8.1f} GFLOP/s  "
        f"{100 * r.train_fraction_of_peak:5.1f}% of peak",
        f"  sampling         {r.sample_images_per_s:8.2f} images/s  {r.sample_gflops:8.1f} GFLOP/s  "
        f"{100 * r.sample_fraction_of_peak:5.1f}% of peak",
        f"  peak memory      {r.peak_memory_gb:8.2f} GB",
    ]
    return "\n".join(lines)


def as_dict(r: BenchResult) -> dict:
    return asdict(r)
