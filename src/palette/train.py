"""Training: Adam with linear warm-up, gradient clipping, an EMA of the weights, atomic checkpoints, exact resume.

All randomness of step s is drawn from generators seeded by (seed, s) and of example n by (seed, n), so the data
position and the random state of a run are its step counter: a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import checkpoint as ckpt
from .config import Config
from .data import TrainingData, list_images, list_pairs, scan_images, training_loader
from .errors import PaletteError
from .model import PaletteModel
from .sheets import training_sheet
from .tasks import PAIRED, make_task

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for an absent GPU is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PaletteError(f"--device {name}: no CUDA GPU is available here; use --device cpu (or auto)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PaletteError(f"--device {name}: MPS is not available here; use --device cpu (or auto)")
    return device


def step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step, 7]).generate_state(1, dtype=np.uint64)[0] >> 1)


def learning_rate(config: Config, step: int) -> float:
    """Linear warm-up from 0 to ``lr`` over ``warmup_steps``, then constant (the paper)."""
    warmup = config.train.warmup_steps
    return config.train.lr * min(1.0, (step + 1) / warmup) if warmup > 0 else config.train.lr


def ema_decay(config: Config, step: int) -> float:
    decay = config.train.ema_decay
    return min(decay, (1 + step) / (10 + step)) if config.train.ema_warmup else decay


_FIXED_KEYS = ("task", "model", "diffusion.objective")


def check_resumable(saved: Config, wanted: Config, run_dir: Path) -> None:
    """A resumed run must keep the network, the task and the objective of the checkpoint."""
    s, w = saved.to_dict(), wanted.to_dict()
    for key in _FIXED_KEYS:
        a, b = s, w
        for part in key.split("."):
            a, b = a[part], b[part]
        if a != b:
            if key == "model" and s["model"]["image_size"] != w["model"]["image_size"]:
                raise PaletteError(
                    f"{run_dir} was trained at image size {s['model']['image_size']}, not "
                    f"{w['model']['image_size']}: drop --image-size to resume, or start a new --out folder"
                )
            raise PaletteError(
                f"{run_dir} holds a run with a different {key} ({a} vs {b}): resume without changing it, "
                "or start a new --out folder"
            )


def with_data_properties(config: Config, channels: tuple[int, ...], bits: tuple[int, ...]) -> Config:
    """The config with what the data decides: the bit depth of the targets and, for paired data, the channels of
    the source and the target (3 if any file of that side is in colour, else 1)."""
    model = config.model
    if config.task.name == PAIRED:
        model = dataclasses.replace(model, source_channels=channels[0], channels=channels[1])
        log.info("paired data: %d-channel sources, %d-channel targets, %d-bit targets", channels[0], channels[1],
                 bits[-1])
    data = dataclasses.replace(config.data, target_bits=bits[-1])
    return dataclasses.replace(config, model=model, data=data)


class Trainer:
    def __init__(self, config: Config, run_dir: Path, resume: bool = False, progress: bool = True):
        config.validate()
        self.config, self.run_dir, self.progress = config, Path(run_dir), progress
        self.device = resolve_device(config.train.device)
        self.task = make_task(config.task.name, config.task.tasks, config.task.weights)
        try:
            self.task.check_channels(config.model.channels)
        except ValueError as err:
            raise PaletteError(f"--task {config.task.name}: {err}") from None

        existing = ckpt.latest_checkpoint(self.run_dir)
        if existing is not None and not resume:
            raise PaletteError(
                f"--out {self.run_dir} already holds a run (last checkpoint {existing.name}): pass --resume to "
                "continue it, or choose another --out folder"
            )
        if resume and existing is None:
            raise PaletteError(f"--resume: {self.run_dir} holds no checkpoint to resume from")

        paired = config.task.name == PAIRED
        items = list_pairs(config.data.path) if paired else list_images(config.data.path)
        report = scan_images(items, config.model.image_size, config.data.max_bad_fraction, progress)
        self.paths = report.readable
        self.bad_files = len(report.unreadable)
        self.config = config = with_data_properties(config, report.channels, report.bits)
        self.dataset = TrainingData(
            self.paths, self.task, config.model.image_size, config.model.channels, config.train.seed,
            config.data.crop_scale_min, config.data.flip, config.model.condition_channels,
        )

        torch.manual_seed(config.train.seed)
        self.model = PaletteModel(config).to(self.device)
        self.memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.ema = copy.deepcopy(self.model.net).requires_grad_(False)
        self.optimizer = torch.optim.Adam(
            self.model.parameters(), lr=config.train.lr, betas=tuple(config.train.adam_betas),
            weight_decay=config.train.weight_decay,
        )
        self.step = 0
        self.task_losses: dict[str, list[float]] = {}  # per-example losses of each task since the last log
        if resume:
            self._restore(existing)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        config.save(self.run_dir / "config.yaml")

    def _restore(self, checkpoint: Path) -> None:
        saved = ckpt.config_of(ckpt.read_weights(checkpoint / "model.safetensors")[1], checkpoint)
        check_resumable(saved, self.config, self.run_dir)
        self.model.net.load_state_dict(ckpt.read_weights(checkpoint / "model.safetensors")[0])
        self.ema.load_state_dict(ckpt.read_weights(checkpoint / "ema.safetensors")[0])
        optimizer, training = ckpt.read_training_state(checkpoint)
        self.optimizer.load_state_dict(optimizer)
        self.step = int(training["step"])
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def save(self) -> Path:
        training = {"step": self.step, "examples_seen": self.step * self.config.train.batch_size,
                    "seed": self.config.train.seed, "bad_files": self.bad_files}
        return ckpt.write_checkpoint(
            self.run_dir, self.step, self.model.net.state_dict(), self.ema.state_dict(),
            self.optimizer.state_dict(), self.config, training, keep=self.config.train.keep_checkpoints,
        )

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = ema_decay(self.config, self.step)
        ema_params = list(self.ema.parameters())
        torch._foreach_lerp_(ema_params, list(self.model.net.parameters()), 1 - decay)

    def train_step(self, batch: dict[str, Any]) -> dict[str, float]:
        """One optimisation step on ``batch``; stops the run on a non-finite loss."""
        cfg = self.config.train
        lr = learning_rate(self.config, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        seed = step_seed(cfg.seed, self.step)
        torch.manual_seed(seed)  # dropout
        generator = torch.Generator().manual_seed(seed)
        x, y, mask = (
            batch[k].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
            for k in ("x", "y", "mask")
        )
        self.model.train()
        losses = self.model.training_losses(x, y, mask, generator)
        loss = losses.mean()
        if not torch.isfinite(loss):
            last = ckpt.latest_checkpoint(self.run_dir)
            raise PaletteError(
                f"the loss became {loss.item()} at step {self.step}: training stopped. The last good checkpoint is "
                f"{last if last else '(none written yet)'}; try a lower train.lr or a larger train.warmup_steps"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
        self.optimizer.step()
        self.step += 1
        self._update_ema()
        for name, value in zip(batch.get("task", ()), losses.detach().float().cpu().tolist()):
            self.task_losses.setdefault(name, []).append(value)
        return {"loss": loss.item(), "lr": lr, "grad_norm": float(grad_norm)}

    def log_task_losses(self, writer) -> None:
        """A multi-task run's mean loss of each task's examples since the last log, as ``train/loss/<task>``."""
        if self.config.task.name == "multi":
            for name, values in sorted(self.task_losses.items()):
                writer.add_scalar(f"train/loss/{name}", sum(values) / len(values), self.step)
        self.task_losses = {}

    def fit(self) -> Path:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        cfg = self.config.train
        remaining = cfg.steps - self.step
        if remaining <= 0:
            log.info("%s is already at step %d of %d", self.run_dir, self.step, cfg.steps)
            return ckpt.latest_checkpoint(self.run_dir)
        log.info(
            "training %s on %s: %d images, batch %d, %d steps from step %d, %.2fM parameters",
            self.config.task.name, self.device, len(self.paths), cfg.batch_size, remaining, self.step,
            sum(p.numel() for p in self.model.parameters()) / 1e6,
        )
        loader = training_loader(
            self.dataset, self.step * cfg.batch_size, remaining * cfg.batch_size, cfg.batch_size,
            self.config.data.num_workers,
        )
        writer = SummaryWriter(str(self.run_dir / "logs"))
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {self.config.task.name}", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        last = None
        tick, ticked = time.perf_counter(), 0
        try:
            for batch in loader:
                stats = self.train_step(batch)
                ticked += 1
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", refresh=False)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    now = time.perf_counter()
                    stats["images_per_sec"] = ticked * cfg.batch_size / (now - tick)
                    tick, ticked = now, 0
                    for key, value in stats.items():
                        writer.add_scalar(f"train/{key}", value, self.step)
                    self.log_task_losses(writer)
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    last = self.save()
                if cfg.sample_every and (self.step % cfg.sample_every == 0 or self.step == cfg.steps):
                    self.write_sheets(writer)
        finally:
            bar.close()
            writer.close()
        return last

    def write_sheets(self, writer=None) -> list[Path]:
        """Sample sheets of the EMA model on fixed examples, one per task: input | samples | ground truth."""
        sheet_dir = self.run_dir / "samples"
        sheet_dir.mkdir(parents=True, exist_ok=True)
        sampler = PaletteModel(self.config).to(self.device)
        sampler.net.load_state_dict(self.ema.state_dict())
        sampler.eval()
        written = training_sheet(
            sampler, self.paths, self.config, sheet_dir, f"step{self.step:07d}", self.device, progress=self.progress,
        )
        if writer is not None:
            from PIL import Image

            for path in written:
                writer.add_image(f"samples/{path.stem.split('_')[-1]}", np.asarray(Image.open(path)), self.step,
                                 dataformats="HWC")
        return written


def train(config: Config, run_dir: Path, resume: bool = False, progress: bool = True) -> Path:
    """Train ``config`` into ``run_dir`` (continuing its last checkpoint with ``resume``); returns the last checkpoint."""
    return Trainer(config, run_dir, resume=resume, progress=progress).fit()
