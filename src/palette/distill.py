"""Progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models").

A student, initialised from its teacher, learns to take in one DDIM step the two DDIM steps its teacher takes
between the same noise levels. Each round halves the steps: a teacher sampled in 2N steps gives a student sampled in
N, which teaches the next round. Notation as in :mod:`palette.diffusion`, with alpha = sqrt(gamma) and
sigma = sqrt(1 - gamma). For a student level gamma_t (its i-th of N) the teacher's levels are gamma_t > gamma_t' >
gamma_t'' (its 2i-th, 2i-1-th and 2i-2-th of 2N; gamma_t'' is the student's next level), and from
y_t = alpha_t y_0 + sigma_t eps, with DDIM(y, x, a -> b) = alpha_b x + sigma_b / sigma_a (y - alpha_a x):

    y_t'  = DDIM(y_t,  x_teacher(y_t),  gamma_t  -> gamma_t')
    y_t'' = DDIM(y_t', x_teacher(y_t'), gamma_t' -> gamma_t'')
    x~    = (y_t'' - sigma_t'' / sigma_t y_t) / (alpha_t'' - sigma_t'' / sigma_t alpha_t),

the y_0 estimate whose single DDIM step from y_t lands on y_t''. The student predicts v (y_0 = alpha y_t - sigma v,
well defined where alpha is near 0, as the first of few steps needs) and minimises the paper's "truncated SNR"
loss max(gamma / (1 - gamma), 1) || x~ - x_student(y_t) ||^2 over the pixels it generates. Known pixels
(inpainting, uncropping) are clean in every y the teacher and the student see, as in training and sampling.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from . import checkpoint as ckpt, run_folder
from .config import Config, apply_overrides
from .diffusion import NoiseSchedule, _expand, per_image_loss, predict_y0_from, q_sample
from .errors import ArgumentError, PaletteError
from .model import PaletteModel

log = logging.getLogger(__name__)

METHODS = ("progressive",)


def student_levels(config: Config) -> np.ndarray:
    """The levels gamma_0 = 1 > ... > gamma_N of a student's N sampling steps."""
    return NoiseSchedule(config.sampling_schedule()).respaced(config.distill.steps)


def ddim_step(y0: torch.Tensor, y: torch.Tensor, gamma_a: torch.Tensor, gamma_b: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM from level ``gamma_a`` to ``gamma_b`` (per image, (B,)) with the y_0 estimate ``y0``:
    alpha_b y0 + sigma_b / sigma_a (y - alpha_a y0)."""
    ratio = ((1 - gamma_b) / (1 - gamma_a)).sqrt()
    return _expand(gamma_b.sqrt(), y) * y0 + _expand(ratio, y) * (y - _expand(gamma_a.sqrt(), y) * y0)


def one_step_target(y_t: torch.Tensor, y_next: torch.Tensor, gamma_t: torch.Tensor,
                    gamma_next: torch.Tensor) -> torch.Tensor:
    """x~: the y_0 estimate with which one DDIM step from y_t (at ``gamma_t``) lands on ``y_next`` (at
    ``gamma_next``)."""
    ratio = ((1 - gamma_next) / (1 - gamma_t)).sqrt()
    return (y_next - _expand(ratio, y_t) * y_t) / _expand(gamma_next.sqrt() - ratio * gamma_t.sqrt(), y_t)


def snr_weight(gamma: torch.Tensor) -> torch.Tensor:
    """Salimans & Ho's truncated SNR weighting max(gamma / (1 - gamma), 1) of an x-space loss."""
    return (gamma / (1 - gamma)).clamp_min(1)


class Student(PaletteModel):
    """A student network (``config.distill.steps`` > 0) and its frozen teacher; :meth:`training_losses` is the
    distillation loss, so :class:`~palette.train.Trainer` trains it as it trains any model. Only ``net`` is the
    student's: the optimiser, the EMA and the checkpoints see nothing of the teacher."""

    def __init__(self, config: Config, teacher: PaletteModel):
        super().__init__(config)
        self.teacher = teacher.requires_grad_(False).eval()
        schedule = NoiseSchedule(config.sampling_schedule())
        # float64 on the CPU, not buffers: the levels are looked up there (Apple's MPS has no float64)
        self.levels = torch.from_numpy(schedule.respaced(config.distill.steps))
        self.teacher_levels = torch.from_numpy(schedule.respaced(2 * config.distill.steps))

    def train(self, mode: bool = True) -> "Student":
        super().train(mode)
        self.teacher.eval()  # the teacher's dropout stays off
        return self

    def training_losses(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor,
                        generator: torch.Generator | None = None, gamma: torch.Tensor | None = None,
                        noise: torch.Tensor | None = None) -> torch.Tensor:
        """Each image's distillation loss (B,). ``gamma`` must be levels of the student's grid (the training data
        draws them so); drawn here from ``generator`` when not given, with the noise."""
        if gamma is None:
            gamma = self.levels[torch.randint(1, len(self.levels), (y.shape[0],), generator=generator)]
        if noise is None:
            noise = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
        i = self._student_index(gamma)
        exact = torch.float32 if y.device.type == "mps" else torch.float64
        gamma = self.levels[i].to(y.device, exact)
        y_t = (q_sample(y, gamma, noise) * mask + y * (1 - mask)).float()
        target = self.teacher_target(x, y, y_t, mask, i)
        x_hat = predict_y0_from(self.net(x, y_t, gamma).float(), y_t, gamma, "v")
        return per_image_loss(x_hat, target, mask) * snr_weight(gamma).float()

    def _student_index(self, gamma: torch.Tensor) -> torch.Tensor:
        """The index i (1..N) of each level in the student's grid (a level that is not on it is an error)."""
        gamma = gamma.detach().cpu().double()
        distance = (gamma[:, None] - self.levels[None, 1:]).abs()
        nearest = distance.argmin(1)
        if not torch.all(distance.gather(1, nearest[:, None])[:, 0] <= 1e-6 * gamma.clamp_min(1e-30)):
            raise ValueError("a distillation loss needs noise levels on the student's grid (training data with "
                             "level_grid)")
        return nearest + 1

    @torch.no_grad()
    def teacher_target(self, x: torch.Tensor, y: torch.Tensor, y_t: torch.Tensor, mask: torch.Tensor,
                       i: torch.Tensor) -> torch.Tensor:
        """x~ of the teacher's two DDIM steps from student level i (per image, on the CPU) to level i - 1, in float32.

        The steps and x~ are computed in float64 (float32 on MPS): near gamma = 0 the difference y_t'' - y_t that x~
        is made of cancels most of float32's digits."""
        exact = torch.float32 if y.device.type == "mps" else torch.float64
        gamma_t, gamma_mid, gamma_next = (self.teacher_levels[j].to(y.device, exact) for j in (2 * i, 2 * i - 1,
                                                                                              2 * i - 2))
        known, keep = y.to(exact), (1 - mask).to(exact)
        start = y_t.to(exact)
        y_mid = ddim_step(self._teacher_y0(x, y_t, gamma_t).to(exact), start, gamma_t, gamma_mid)
        y_mid = y_mid * mask + known * keep
        y_next = ddim_step(self._teacher_y0(x, y_mid.float(), gamma_mid).to(exact), y_mid, gamma_mid, gamma_next)
        y_next = y_next * mask + known * keep
        return one_step_target(start, y_next, gamma_t, gamma_next).float()

    def _teacher_y0(self, x: torch.Tensor, y: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        """The teacher's y_0 estimate at (y, gamma), clipped to [-1, 1] as its sampler would clip it."""
        teacher = self.teacher
        y0 = predict_y0_from(teacher.net(x, y, gamma).float(), y, gamma, teacher.parameterization)
        return y0.clamp(-1, 1) if teacher.config.diffusion.clip_denoised else y0


def load_teacher(path: str | Path) -> PaletteModel:
    """The teacher of a distillation round: the model in ``path`` (a weights file, checkpoint or run folder)."""
    weights = ckpt.resolve_weights(path, argument="distill.teacher")
    tensors, metadata = ckpt.read_weights(weights)
    teacher = PaletteModel(ckpt.config_of(metadata, weights))
    teacher.net.load_state_dict(tensors)
    return teacher.eval()


def build_student(config: Config) -> Student:
    """The student of ``config`` with its teacher (``config.distill.teacher``), initialised with the teacher's
    weights (Salimans & Ho): at its first step it is the teacher, read as a v network."""
    teacher = load_teacher(config.distill.teacher)
    student = Student(config, teacher)
    try:
        student.net.load_state_dict(teacher.net.state_dict())
    except RuntimeError:
        raise ArgumentError("distill.teacher", f"{config.distill.teacher}: its network does not match the "
                            "student's, which follows the data (a paired teacher's data.path must have the channels "
                            "of its own data)") from None
    return student


def student_config(teacher: Config, teacher_path: Path, steps: int, steps_per_round: int,
                   overrides: list[str] = ()) -> Config:
    """The config of a round's student: the teacher's network, task and data, sampled with DDIM in ``steps``
    steps, predicting v, trained for ``steps_per_round`` optimisation steps as Salimans & Ho's rounds are (no
    warm-up, no EMA, no dropout: a round ends at the weights it trained), without condition dropout."""
    if teacher.diffusion.objective != "diffusion":
        raise ArgumentError("teacher", f"{teacher_path}: a regression model samples in one step already; "
                            "distillation needs a diffusion model")
    diffusion = dataclasses.replace(teacher.diffusion, sampler="ddim", eta=0.0, sample_steps=steps,
                                    parameterization="v")
    train = dataclasses.replace(teacher.train, steps=steps_per_round, cond_drop_prob=0.0, warmup_steps=0,
                                ema_decay=0.0, ema_warmup=False)
    distill = dataclasses.replace(teacher.distill, teacher=str(Path(teacher_path).resolve()), steps=steps)
    model = dataclasses.replace(teacher.model, dropout=0.0)
    config = dataclasses.replace(teacher, model=model, diffusion=diffusion, train=train, distill=distill)
    config = apply_overrides(config, list(overrides))
    network = dataclasses.replace(config.model, dropout=teacher.model.dropout)
    if network != teacher.model:
        raise PaletteError("a student has its teacher's network: leave model.* alone (model.dropout excepted)")
    return config


def round_steps(from_steps: int, to_steps: int) -> list[int]:
    """The student step counts of the rounds from a ``from_steps`` teacher down to ``to_steps``: 64 -> 1 is
    32, 16, 8, 4, 2, 1."""
    if to_steps < 1 or from_steps <= to_steps:
        raise ArgumentError("from_steps", f"{from_steps} must be more than to_steps ({to_steps}), which must be at "
                            "least 1")
    counts, n = [], from_steps
    while n > to_steps:
        if n % 2:
            raise ArgumentError("from_steps", f"{from_steps} must be to_steps ({to_steps}) times a power of two")
        n //= 2
        counts.append(n)
    if n != to_steps:
        raise ArgumentError("from_steps", f"{from_steps} must be to_steps ({to_steps}) times a power of two")
    return counts


def round_folder(out: Path, steps: int) -> Path:
    return Path(out) / ckpt.ROUND_FOLDER.format(steps=steps)


def distill(teacher: str | Path, out: str | Path, from_steps: int = 128, to_steps: int = 1,
            steps_per_round: int = 2000, overrides: list[str] = (), resume: bool = False,
            progress: bool = True, method: str = "progressive") -> list[Path]:
    """Progressive distillation of the model in ``teacher`` into ``out``: one round (a training run in
    ``out/steps-NNNN``) per halving from ``from_steps`` to ``to_steps``, each round's student the next one's teacher.
    ``resume`` continues the unfinished round and skips the finished ones. A time limit
    (``train.time_limit_minutes``) holds for the whole command. Returns the round folders done so far (fewer than
    all when a round was stopped by the time limit or a signal: resume it later)."""
    if method not in METHODS:
        raise ArgumentError("method", f"{method!r} is unknown: choose one of {', '.join(METHODS)}")
    out = Path(out)
    counts = round_steps(from_steps, to_steps)
    if not resume and any(run_folder.latest_checkpoint(round_folder(out, n)) for n in counts):
        raise ArgumentError("resume", f"is off, but {out} already holds a distillation: turn it on to continue it, or "
                            "choose another folder")
    previous: Path = ckpt.resolve_weights(teacher, argument="teacher")
    base = ckpt.config_of(ckpt.read_weights(previous)[1], previous)
    _check_rounds(base, teacher, from_steps, counts, overrides)
    done, deadline = [], None
    for n in counts:
        folder = round_folder(out, n)
        existing = run_folder.latest_checkpoint(folder)
        config = (student_config(base, previous, n, steps_per_round, overrides) if existing is None
                  else _resumed_config(folder, overrides, steps_per_round))
        if existing is None or _step_of(existing) < config.train.steps:
            config, deadline = _with_time_left(config, deadline)
            if not _train_round(config, folder, resume=existing is not None, progress=progress):
                break  # stopped by the time limit or a signal: resume later
            existing = run_folder.latest_checkpoint(folder)  # on every process (fit returns the path on the main one)
        done.append(folder)
        previous, base = ckpt.resolve_weights(existing), config
    return done


def _check_rounds(teacher: Config, path, from_steps: int, counts: list[int], overrides) -> None:
    """Refuse, before any training, a teacher that is a student of another step count and rounds beyond the
    schedule."""
    if teacher.distill.steps and teacher.distill.steps != from_steps:
        raise ArgumentError("from_steps", f"{from_steps}: the teacher {path} is a student that samples in "
                            f"{teacher.distill.steps} steps: pass {teacher.distill.steps}")
    schedule = student_config(teacher, Path(path), counts[0], 1, overrides).sampling_schedule()
    try:
        NoiseSchedule(schedule).check_halving(counts[0])
    except ValueError as err:
        raise ArgumentError("from_steps", f"{from_steps}: {err}") from None


def _resumed_config(folder: Path, overrides, steps_per_round: int) -> Config:
    """A round already started keeps its own config (and teacher); a ``steps_per_round`` that differs is logged."""
    config = apply_overrides(Config.load(folder / "config.yaml"), list(overrides))
    if config.train.steps != steps_per_round:
        log.info("%s keeps the %d steps it was started with (not steps_per_round %d)", folder, config.train.steps,
                 steps_per_round)
    return config


def _with_time_left(config: Config, deadline: float | None) -> tuple[Config, float | None]:
    """The round's config with the time left of the command's ``train.time_limit_minutes``, and the deadline."""
    from . import train

    limit = config.train.time_limit_minutes
    if limit <= 0:
        return config, deadline
    deadline = deadline if deadline is not None else train._clock() + 60 * limit
    left = max((deadline - train._clock()) / 60, 1e-9)
    return dataclasses.replace(config, train=dataclasses.replace(config.train, time_limit_minutes=left)), deadline


def _train_round(config: Config, folder: Path, resume: bool, progress: bool) -> bool:
    """Train one round; whether it finished (not stopped by a time limit or a signal). The trainer, its teacher
    and its optimiser are gone when it returns, before the next round builds its own."""
    from .train import Trainer

    log.info("distillation round: %d -> %d steps in %s", 2 * config.distill.steps, config.distill.steps, folder)
    trainer = Trainer(config, folder, resume=resume, progress=progress)
    trainer.fit()
    return trainer.step >= config.train.steps and not trainer.stopped


def _step_of(checkpoint: Path) -> int:
    return int(run_folder.read_training_state(checkpoint)[1]["step"])
