"""Training: Adam with linear warm-up, gradient clipping, an EMA of the weights, atomic checkpoints, exact resume.

One code path for a CPU, one GPU, many GPUs and many nodes: launched plainly, with ``torchrun`` or with
``accelerate launch``, each process trains on its slice of every global batch, in micro-batches with gradient
accumulation when the slice does not fit, optionally in bf16/fp16 autocast, with gradient checkpointing or
``torch.compile``. How the processes share the network (DDP or FSDP: wrapping, gradient synchronisation, clipping,
the EMA, checkpoints) is the :mod:`palette.strategy` object's business. Logs and sheets are written by the main
process only.

Every random draw of example n (crop, flip, mask, JPEG quality, noise level gamma, noise eps) comes from a generator
seeded by (seed, n), and step s trains on examples s*B .. s*B + B - 1 (B the global batch): the data position and
the random state of a run are its step counter, whatever the number of processes. A resumed run repeats an
uninterrupted one exactly, also on another number of processes (up to floating-point summation order).
"""

from __future__ import annotations

import logging
import math
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import run_folder
from .config import Config
from .data_files import list_images, list_pairs
from .data_scan import probe_items, scan_images, summarize_scan
from .devices import configure_cuda
from .diffusion import NoiseSchedule
from .distill import build_student, student_levels
from .distributed import decided_by_main, gather_interleaved
from .errors import ArgumentError, PaletteError
from .loader_workers import loader_batches
from .model import PaletteModel
from .strategy import check_sharding, make_accelerator, make_strategy
from .run_config import check_resumable, with_data_properties
from .sampling_options import SamplingOptions
from .sheets import sample_rows, training_rows, write_training_sheets
from .stop_signals import StopRequest
from .tasks import PAIRED, make_task
from .training_data import StepSampler, TrainingData, training_loader
from .training_schedule import batch_layout, ema_decay, learning_rate, step_seed

log = logging.getLogger(__name__)
_clock = time.monotonic  # the time limit's clock (tests replace it)

class Trainer:
    """Trains ``config`` into ``run_dir``. The main process holds the run folder's lock (:class:`run_folder.RunLock`)
    from construction until :meth:`fit` ends: a second ``palette train`` on the folder is refused meanwhile.

    With ``run_dir`` None the trainer has neither data nor a run folder: the model, strategy and :meth:`train_step`
    that ``palette train`` builds, for batches made elsewhere (``palette bench`` times its step on random ones)."""

    def __init__(self, config: Config, run_dir: Path | None, resume: bool = False, progress: bool = True):
        config.validate()
        self.config, self.run_dir = config, None if run_dir is None else Path(run_dir)
        self.accelerator = make_accelerator(config)
        self.main = self.accelerator.is_main_process
        self.lock = run_folder.RunLock(self.run_dir) if self.main and self.run_dir is not None else None
        if self.lock is not None:
            weakref.finalize(self, self.lock.release)  # a trainer dropped without fit() lets go of the folder
        try:
            self._prepare(resume, progress)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Let go of the run folder (the main process's lock on it)."""
        if self.lock is not None:
            self.lock.release()

    @classmethod
    def without_data(cls, config: Config) -> "Trainer":
        """A trainer of ``config`` with neither data nor a run folder (``run_dir`` None), without a progress bar."""
        return cls(config, None, progress=False)

    def _prepare(self, resume: bool, progress: bool) -> None:
        """The named steps of a run's set-up; without a run folder, there is no data to scan, nothing to restore and
        no config to save. The network is wrapped before a checkpoint is restored into it, so each FSDP process reads
        only its own shards."""
        self._set_up_processes(progress)
        existing = self._check_run_folder(resume)
        self._finish_config(self._scan_data() if self.run_dir is not None else None)
        self._build()
        self.strategy.wrap(self.model)
        if existing is not None:
            self._restore(existing)
        if self.run_dir is not None:
            self._save_config()

    def _set_up_processes(self, progress: bool) -> None:
        """This process's place in the run, its device, and how the processes share the batch and the network."""
        cfg = self.config.train
        self.progress = progress and self.main
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device
        if self.device.type == "cuda":
            configure_cuda(cfg.cudnn_benchmark, cfg.tf32)
        self.micro_batch, self.accumulation = batch_layout(cfg.batch_size, self.world, cfg.micro_batch_size)
        check_sharding(self.config)
        self.task = make_task(self.config.task.name, self.config.task.tasks, self.config.task.weights)
        try:
            self.task.check_channels(self.config.model.channels)
        except ValueError as err:
            raise ArgumentError("task.name", f"{self.config.task.name}: {err}") from None

    def _check_run_folder(self, resume: bool) -> Path | None:
        """The checkpoint to resume (None for a new run); a run is continued only when asked to."""
        if self.run_dir is None:
            if resume:
                raise ArgumentError("resume", ": a trainer without a run folder (run_dir) has nothing to resume")
            return None
        # one choice for all: a process on another node can list a shared folder late (NFS caches listings)
        existing = self._decided_by_main(lambda: run_folder.latest_checkpoint(self.run_dir))
        if existing is not None and not resume:
            raise ArgumentError("resume", f"is off, but {self.run_dir} already holds a run (last checkpoint "
                                f"{existing.name}): turn it on to continue the run, or give {{run_dir}} another "
                                "folder", also=("run_dir",))
        if resume and existing is None:
            raise ArgumentError("resume", f": {self.run_dir} holds no checkpoint to resume from")
        return existing

    def _scan_data(self):
        """The report on the training files: which are readable, their channels and bit depths."""
        data = self.config.data.path
        return self._scan(lambda: list_pairs(data) if self.config.task.name == PAIRED else list_images(data))

    def _finish_config(self, report) -> None:
        """Keep the readable files, and finish the config with what the data decides (no ``report``: no data)."""
        if report is None:
            self.paths, self.bad_files = [], 0
            return
        self.paths = report.readable
        self.bad_files = len(report.unreadable)
        self.config = with_data_properties(self.config, report.channels, report.bits)

    def _build(self) -> None:
        """The dataset and the model, with the same initial weights on every process (a distillation student
        starts as its teacher)."""
        config, cfg = self.config, self.config.train
        regression = config.diffusion.objective == "regression"
        self.dataset = TrainingData(
            self.paths, self.task, config.model.image_size, config.model.channels, cfg.seed,
            config.data.crop_scale_min, config.data.flip, config.model.condition_channels,
            noise_schedule=None if regression else NoiseSchedule(config.diffusion.train_schedule),
            max_pixels=config.data.max_pixels, cond_drop_prob=cfg.cond_drop_prob,
            level_grid=student_levels(config) if config.distill.steps else None,
        )
        torch.manual_seed(cfg.seed)
        self.model = build_student(config) if config.distill.steps else PaletteModel(config)
        self.model.net.gradient_checkpointing = cfg.gradient_checkpointing
        self.model.net.low_precision_norm = cfg.low_precision_norm
        self.strategy = make_strategy(config, self.accelerator)
        self.memory_format = self.strategy.memory_format  # of the weights, and of the inputs that follow them
        self.model.to(self.device, memory_format=self.memory_format)
        self.step = 0
        self.stopped = False  # by a time limit or a stop signal, before train.steps
        self.task_losses: dict[str, list[float]] = {}  # per-example losses of each task since the last log

    def _save_config(self) -> None:
        if self.main:
            try:
                self.config.save(self.run_dir / "config.yaml")
            except OSError as err:
                raise ArgumentError("run_dir", f"{self.run_dir}: cannot write config.yaml ({err.strerror or err})") \
                    from None

    def _scan(self, list_items):
        """List the data files (``list_items()``) on the main process and check their headers, each process a slice
        of them (a million files on a shared filesystem take long enough for one process alone to outlast a
        collective's timeout); every process gets the main process's listing and all the outcomes, and reaches the
        same report or the same error."""
        cfg = self.config
        if self.world == 1:
            return scan_images(list_items(), cfg.model.image_size, cfg.data.max_bad_fraction, self.progress,
                               cfg.data.max_pixels)
        items = self._decided_by_main(list_items)  # one listing for all
        mine = probe_items(items[self.rank::self.world], self.progress and self.main, cfg.data.max_pixels)
        outcomes = gather_interleaved(mine, len(items))
        return summarize_scan(items, outcomes, cfg.model.image_size, cfg.data.max_bad_fraction, warn=self.main)

    def _decided_by_main(self, decide):
        """``decide()`` taken once, by the main process, for all: processes on several nodes can see a shared folder
        differently for a while."""
        return decide() if self.world == 1 else decided_by_main(decide, self.main)

    def _restore(self, checkpoint: Path) -> None:
        """Continue from ``checkpoint``: its weights, EMA, optimizer state and step."""
        check_resumable(run_folder.checkpoint_config(checkpoint), self.config, self.run_dir)
        training = self.strategy.restore(checkpoint)
        self.step = int(training["step"])
        previous = training.get("processes")
        log.info("resumed %s at step %d%s", self.run_dir, self.step,
                 f" (written by {previous} process(es), now {self.world})" if previous not in (None, self.world)
                 else "")

    @property
    def ema(self) -> torch.nn.Module:
        """The EMA of the network's weights (under FSDP, each process's shards of it)."""
        return self.strategy.ema

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.strategy.optimizer

    def ema_state_dict(self, everywhere: bool = False) -> dict[str, torch.Tensor]:
        """The EMA weights, whole (under FSDP a collective: every process calls it; the main process gets them, and
        the others an empty dict unless ``everywhere``)."""
        return self.strategy.ema_state_dict(everywhere)

    def save(self) -> Path | None:
        """Write a checkpoint (the strategy says who writes what); every process waits until it is complete. Returns
        it on the main process."""
        training = {"step": self.step, "examples_seen": self.step * self.config.train.batch_size,
                    "seed": self.config.train.seed, "bad_files": self.bad_files, "processes": self.world,
                    "sharding": self.strategy.name}
        path = self.strategy.save(self.run_dir, self.step, training, keep=self.config.train.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return path

    def _to_device(self, micro: dict[str, Any]) -> dict[str, torch.Tensor]:
        images = {k: micro[k].to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
                  for k in ("x", "y", "mask", "noise") if k in micro}
        if "gamma" in micro:
            gamma = micro["gamma"].float() if self.device.type == "mps" else micro["gamma"]  # MPS has no float64
            images["gamma"] = gamma.to(self.device, non_blocking=True)
        return images

    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimisation step over this process's micro-batches; stops the run on a non-finite loss."""
        lr = learning_rate(self.config, self.step)
        self.strategy.set_learning_rate(lr)
        torch.manual_seed(step_seed(self.config.train.seed, self.step) + self.rank)  # dropout
        self.strategy.model.train()
        total = torch.zeros((), device=self.device)
        for i, micro in enumerate(micro_batches):
            with self.strategy.accumulating(last=i == len(micro_batches) - 1):
                losses = self.strategy.forward(**self._to_device(micro))  # each example's loss
                loss = losses.mean() / len(micro_batches)
                self.strategy.backward(loss)
            total += loss.detach().float()
            if self.main and self.config.task.name == "multi":
                for name, value in zip(micro.get("task", ()), losses.detach().float().cpu().tolist()):
                    self.task_losses.setdefault(name, []).append(value)
        loss = self.accelerator.reduce(total, reduction="mean") if self.world > 1 else total
        loss_value = loss.item()
        self._check_finite(loss_value)
        grad_norm = self.strategy.clip_gradients()
        self.strategy.optimizer_step()
        self.step += 1
        self.strategy.update_ema(ema_decay(self.config, self.step))
        return {"loss": loss_value, "lr": lr, "grad_norm": grad_norm}

    def _check_finite(self, loss: float) -> None:
        if not math.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            last = run_folder.latest_checkpoint(self.run_dir) if self.run_dir is not None else None
            raise PaletteError(
                f"the loss became {loss} at step {self.step}: training stopped. The last good checkpoint is "
                f"{last if last else '(none written yet)'}; try a lower train.lr or a larger train.warmup_steps"
            )

    def log_task_losses(self, writer) -> None:
        """A multi-task run's mean loss of each task's examples since the last log, as ``train/loss/<task>`` (the
        main process's share of the examples when there are several processes)."""
        if self.config.task.name == "multi":
            for name, values in sorted(self.task_losses.items()):
                writer.add_scalar(f"train/loss/{name}", sum(values) / len(values), self.step)
        self.task_losses = {}

    def fit(self) -> Path | None:
        """Train to ``train.steps`` (or until a time limit or a stop signal); returns the last checkpoint. The run
        folder is let go of when it returns or fails."""
        try:
            return self._fit()
        finally:
            self.release()

    def _fit(self) -> Path | None:
        cfg = self.config.train
        remaining = cfg.steps - self.step
        if remaining <= 0:
            log.info("%s is already at step %d of %d", self.run_dir, self.step, cfg.steps)
            return run_folder.latest_checkpoint(self.run_dir)
        if self.main:
            log.info(
                "training %s on %d process(es) (%s, %s precision, %s): %d images, global batch %d = %d process(es) x "
                "%d micro-batch(es) of %d, %d steps from step %d, %.2fM parameters",
                self.config.task.name, self.world, self.device, cfg.mixed_precision,
                self.strategy.describe(), len(self.paths), cfg.batch_size,
                self.world, self.accumulation, self.micro_batch, remaining, self.step,
                sum(p.numel() for p in self.model.net.parameters()) / 1e6,
            )
        order = StepSampler(self.step, remaining, cfg.batch_size, self.rank, self.world)
        with loader_batches(training_loader(self.dataset, order, self.micro_batch,
                                            self.config.data.num_workers)) as batches:
            return self._train_steps(batches, remaining)

    def _train_steps(self, loader, remaining: int) -> Path | None:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        cfg = self.config.train
        writer = SummaryWriter(str(self.run_dir / "logs")) if self.main else None
        bar = tqdm(total=cfg.steps, initial=self.step, desc=f"train {self.config.task.name}", unit="step",
                   disable=not self.progress, dynamic_ncols=True)
        last = None
        tick, ticked = time.perf_counter(), 0
        deadline = _clock() + 60 * cfg.time_limit_minutes if cfg.time_limit_minutes > 0 else None
        stop = StopRequest()
        try:
            for _ in range(remaining):
                stats = self.train_step([next(loader) for _ in range(self.accumulation)])
                ticked += 1
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4f}", refresh=False)
                if writer is not None and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
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
                if (deadline is not None or stop.installed) and self._should_stop(deadline, stop.signal):
                    self.stopped = True
                    if self.step % cfg.checkpoint_every:  # not written just above
                        last = self.save()
                    if self.main:
                        why = (f"stopped by {stop.signal}" if stop.signal
                               else f"time limit of {cfg.time_limit_minutes:g} minutes reached"
                               if deadline is not None and _clock() > deadline
                               else "stopped because another process received a stop signal")
                        log.info("%s at step %d of %d: checkpoint written; resume to continue", why, self.step,
                                 cfg.steps)
                    break
        finally:
            stop.uninstall()
            bar.close()
            if writer is not None:
                writer.close()
        return last

    def _should_stop(self, deadline: float | None, signalled: str | None) -> bool:
        """Whether any process is past ``deadline`` or was sent a stop signal; every process gets the same answer."""
        local = bool(signalled) or (deadline is not None and _clock() > deadline)
        if self.world == 1:
            return local
        stop = self.accelerator.reduce(torch.tensor(float(local), device=self.device), reduction="sum")
        return bool(stop.item() > 0)  # one process stopping stops all

    def write_sheets(self, writer=None) -> list[Path]:
        """Sample sheets of the EMA model on fixed examples, one per task: input | samples | ground truth.

        Every process calls this: each samples every N-th row of the sheets (a sheet is the same however its rows
        are shared out, up to rounding), the main process gathers the rows, writes the sheets and returns their paths
        (the others return [])."""
        cfg = self.config.train
        ema_model = PaletteModel(self.config).to(self.device)
        ema_model.net.load_state_dict(self.ema_state_dict(everywhere=True))
        ema_model.eval()
        rows = training_rows(self.paths, self.config)
        options = SamplingOptions(num_samples=cfg.sheet_samples, seed=cfg.seed, batch_size=self.micro_batch)
        samples = sample_rows(ema_model, rows[self.rank::self.world], options, self.progress)
        del ema_model
        if self.world > 1:
            samples = gather_interleaved(samples, len(rows), main_only=True)
            if not self.main:
                return []
        sheet_dir = self.run_dir / "samples"
        sheet_dir.mkdir(parents=True, exist_ok=True)
        written = write_training_sheets(rows, samples, sheet_dir, f"step{self.step:07d}")
        if writer is not None:
            from PIL import Image

            for path in written:
                writer.add_image(f"samples/{path.stem.split('_')[-1]}", np.asarray(Image.open(path)), self.step,
                                 dataformats="HWC")
        return written


def train(config: Config, run_dir: Path, resume: bool = False, progress: bool = True) -> Path:
    """Train ``config`` into ``run_dir`` (continuing its last checkpoint with ``resume``); returns the last
    checkpoint."""
    return Trainer(config, run_dir, resume=resume, progress=progress).fit()
