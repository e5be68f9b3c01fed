"""A network and its diffusion: the training loss and the sampler of one Palette model.

``PaletteModel`` joins a :class:`~palette.unet.UNet` with the schedules of a :class:`~palette.config.Config`. It knows
(x, y, mask) tensors, not tasks or files: tasks build x, the trainer calls :meth:`training_loss`, and the sampling
interfaces call :meth:`sample`.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from .config import Config
from .diffusion import (NoiseSchedule, ancestral_sample, ddim_sample, guided, per_image_loss, q_sample, sample_gamma,
                        v_target)
from .samplers import SCHEDULES, check_sampler, make_scheduler, resolve_eta, scheduler_sample
from .tiling import TiledDenoiser
from .unet import UNet


def per_image_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per image, so an image's sample does not depend on the batch it was drawn in."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


def check_guidance(config: Config, guidance: float, name: str = "guidance") -> None:
    """Raise ValueError (naming ``name``) unless ``guidance`` is a weight w >= 0 this model can use: any w > 0 needs
    a model trained with condition dropout, whose f(0, y_t, gamma) is an unconditional estimate."""
    if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not (
            math.isfinite(guidance) and guidance >= 0):
        raise ValueError(f"{name} must be a number of 0 or more, got {guidance!r}")
    if guidance and config.train.cond_drop_prob == 0:
        raise ValueError(f"{name}: this checkpoint was trained without condition dropout (train.cond_drop_prob=0): "
                         "guidance needs a model trained with it")


def check_student(config: Config, steps: int, sampler: str, eta: float, schedule: str, flag: str = "") -> None:
    """Raise ValueError (arguments named with the prefix ``flag``) unless a distilled student
    (``distill.steps`` > 0) is asked for what it was trained for: DDIM with eta 0, in its own steps and schedule.
    Other models pass."""
    n = config.distill.steps
    if not n:
        return
    if (steps, sampler, eta, schedule) != (n, "ddim", 0, config.diffusion.sample_schedule):
        raise ValueError(
            f"this checkpoint is a student distilled to sample in {n} DDIM step(s) on the "
            f"{config.diffusion.sample_schedule} schedule: sample it with {flag}steps {n} and the ddim sampler "
            f"(eta 0; got {flag}steps {steps}, {flag}sampler {sampler}, eta {eta:g}, {flag}schedule {schedule}); "
            "the distillation folder holds the students for other step counts")


class PaletteModel(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.net = UNet(config.model)
        self.train_schedule = NoiseSchedule(config.diffusion.train_schedule)
        self.inference_schedule = NoiseSchedule(config.diffusion.inference_schedule)

    @property
    def regression(self) -> bool:
        return self.config.diffusion.objective == "regression"

    @property
    def parameterization(self) -> str:
        return self.config.diffusion.parameterization

    def training_loss(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
        gamma: torch.Tensor | None = None, noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The paper's objective E || f(x, sqrt(gamma) y + sqrt(1 - gamma) eps, gamma) - eps ||_p^p over the mask.

        ``gamma`` (B,) and ``noise`` (eps, like y) are drawn here from ``generator`` unless given (the trainer's
        data gives every example its own). The pixels outside the mask are known: y_t holds them clean, as at
        sampling time, and they are not learnt. The regression baseline instead learns f(x, 0, 1) = y with L2
        under the mask.
        """
        return self.training_losses(x, y, mask, generator, gamma, noise).mean()

    def training_losses(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
        gamma: torch.Tensor | None = None, noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of :meth:`training_loss` for each image of the batch, shape (B,)."""
        b = y.shape[0]
        if self.regression:
            y_hat = self.net(x, torch.zeros_like(y), torch.ones(b, device=y.device))
            return per_image_loss(y_hat.float(), y.float(), mask, p=2)
        if gamma is None:
            gamma = sample_gamma(self.train_schedule, b, generator)
            gamma = gamma.to(y.device, torch.float32 if y.device.type == "mps" else torch.float64)  # MPS: no float64
        eps = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device) if noise is None else noise
        y_t = q_sample(y, gamma, eps)
        y_t = y_t * mask + y * (1 - mask)
        prediction = self.net(x, y_t, gamma)
        target = eps if self.config.diffusion.parameterization == "eps" else v_target(y, gamma, eps)
        return per_image_loss(prediction.float(), target.float(), mask,
                              p=1 if self.config.diffusion.loss == "l1" else 2)

    def forward(self, x, y, mask, gamma=None, noise=None) -> torch.Tensor:
        """Each image's training loss (B,): what DistributedDataParallel wraps, so that gradients are synchronised."""
        return self.training_losses(x, y, mask, gamma=gamma, noise=noise)

    @torch.no_grad()
    def sample(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
        steps: int | None = None,
        seeds: Sequence[int] | None = None,
        callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
        sampler: str | None = None,
        eta: float | None = None,
        schedule: str | None = None,
        batch_invariant: bool = False,
        tile_overlap: int | None = None,
        guidance: float = 0.0,
    ) -> torch.Tensor:
        """Samples y ~ p(y | x) in [-1, 1] with ``steps`` network evaluations.

        ``sampler`` is ``ancestral`` (the paper's; its 1000-step schedule respaced to ``steps``), ``ddim`` (on the
        same levels; ``eta`` is its noise and must be 0 for the others), ``dpmpp-2m``, ``dpmpp-2m-sde`` or
        ``unipc``; every sampler clips its y0 estimates when ``diffusion.clip_denoised``. ``schedule`` is
        ``inference`` (the paper's 1e-4..0.09) or ``training`` (the trained gamma range). Unset arguments take the
        config's ``diffusion`` values (its ``eta`` for DDIM only).
        ``mask`` (B, 1, H, W) is 1 where the model generates; elsewhere the result is ``known`` exactly.
        ``seeds`` gives each image its own generator (default: 0, 1, ...); the same seed gives the same image,
        whatever else is in the batch, up to floating-point rounding: convolution kernels depend on the batch size.
        ``batch_invariant=True`` runs the network one image at a time (slower), which makes an image's sample
        bit-identical whether it is sampled alone or in any batch.
        ``tile_overlap`` (pixels) samples images larger than the network as overlapping tiles of its size, blended at
        every step (:mod:`palette.tiling`); an image of the network's size is then sampled as without tiling.
        ``guidance`` w > 0 samples with classifier-free guidance, eps = (1 + w) f(x, y_t, gamma) - w f(0, y_t, gamma)
        (:func:`~palette.diffusion.guided`), for a model trained with ``train.cond_drop_prob`` > 0; w = 0 is the
        unguided sampler exactly.
        """
        d = self.config.diffusion
        sampler = sampler or d.sampler
        eta = resolve_eta(sampler, eta, d.eta)
        schedule = schedule or d.sample_schedule
        steps = d.sample_steps if steps is None else steps
        check_sampler(sampler, eta)
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}: choose one of {', '.join(SCHEDULES)}")
        levels = self.inference_schedule if schedule == "inference" else self.train_schedule
        if not 1 <= steps <= levels.steps:
            raise ValueError(f"steps must be between 1 and the {schedule} schedule's {levels.steps}, got {steps}")
        seeds = list(range(x.shape[0])) if seeds is None else list(seeds)
        if len(seeds) != x.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for a batch of {x.shape[0]}")
        if mask is not None and known is None:
            raise ValueError("a mask needs the known image")
        check_guidance(self.config, guidance)
        check_student(self.config, steps, sampler, eta, schedule)
        shape = (x.shape[0], self.config.model.channels, *x.shape[2:])
        if self.regression:
            y = self.net(x, torch.zeros(shape, device=x.device), torch.ones(shape[0], device=x.device)).float()
            y = y.clamp(-1, 1)
            return y if mask is None else y * mask + known * (1 - mask)
        generators = per_image_generators(seeds)
        noise = torch.stack([torch.randn(shape[1:], generator=g) for g in generators]).to(x.device)
        # guidance inside tiling: each tile's two estimates come from one call, and one image at a time stays so
        denoiser = guided(self._one_at_a_time if batch_invariant else self.net, guidance)
        if tile_overlap is not None:
            denoiser = TiledDenoiser(denoiser, self.config.model.image_size, tile_overlap, max(16, x.shape[0]), mask)
        common = dict(known=known, mask=mask, generator=generators, callback=callback)
        own = dict(clip_denoised=d.clip_denoised, parameterization=d.parameterization)
        if sampler == "ancestral":
            return ancestral_sample(denoiser, x, levels.respaced(steps), noise, **own, **common)
        if sampler == "ddim":
            return ddim_sample(denoiser, x, levels.respaced(steps), noise, eta=eta, **own, **common)
        scheduler = make_scheduler(sampler, levels, d.clip_denoised, d.parameterization)
        return scheduler_sample(denoiser, x, scheduler, steps, noise, **common)

    def _one_at_a_time(self, x: torch.Tensor, y_t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x[i : i + 1], y_t[i : i + 1], gamma[i : i + 1]) for i in range(x.shape[0])])
