"""A network and its diffusion: the training loss and the sampler of one Palette model.

``PaletteModel`` joins a :class:`~palette.unet.UNet` with the schedules of a :class:`~palette.config.Config`. It knows
(x, y, mask) tensors, not tasks or files: tasks build x, the trainer calls :meth:`training_loss`, and the sampling
interfaces call :meth:`sample`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from .config import Config
from .diffusion import (NoiseSchedule, ancestral_sample, ddim_sample, guided, per_image_loss, q_sample, sample_gamma,
                        v_target)
from .samplers import make_scheduler, scheduler_sample
from .sampling_options import SamplingOptions
from .tiling import TiledDenoiser
from .unet import UNet


def per_image_generators(seeds: Sequence[int], device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per image, so an image's sample does not depend on the batch it was drawn in."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]


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
        *,
        options: SamplingOptions | None = None,
        **settings: Any,
    ) -> torch.Tensor:
        """Samples y ~ p(y | x) in [-1, 1] as ``options`` say (:class:`~palette.sampling_options.SamplingOptions`,
        or its fields as keywords: ``steps``, ``sampler``, ``eta``, ``schedule``, ``guidance``, ``batch_invariant``,
        ``tile`` and ``overlap``; ``tile_overlap=N`` is ``tile=True, overlap=N``); unset ones are the config's.

        ``sampler`` is ``ancestral`` (the paper's; its 1000-step schedule respaced to ``steps``), ``ddim`` (on the
        same levels, with DDIM's noise ``eta``), ``dpmpp-2m``, ``dpmpp-2m-sde`` or ``unipc``; every sampler clips its
        y0 estimates when ``diffusion.clip_denoised``. ``mask`` (B, 1, H, W) is 1 where the model generates;
        elsewhere the result is ``known`` exactly. ``seeds`` gives each image its own generator (default: 0, 1, ...):
        the same seed gives the same image whatever else is in the batch, up to floating-point rounding (convolution
        kernels depend on the batch size); ``batch_invariant`` runs the network one image at a time, which makes it
        bit-identical. ``tile`` samples images larger than the network as overlapping tiles of its size, blended at
        every step (:mod:`palette.tiling`). ``guidance`` w > 0 is classifier-free guidance,
        eps = (1 + w) f(x, y_t, gamma) - w f(0, y_t, gamma) (:func:`~palette.diffusion.guided`), for a model trained
        with ``train.cond_drop_prob`` > 0; w = 0 is the unguided sampler exactly.
        """
        if steps is not None:
            settings["steps"] = steps
        options = SamplingOptions.of(options, **settings).resolved(self.config)
        seeds = list(range(x.shape[0])) if seeds is None else list(seeds)
        if len(seeds) != x.shape[0]:
            raise ValueError(f"{len(seeds)} seeds for a batch of {x.shape[0]}")
        if mask is not None and known is None:
            raise ValueError("a mask needs the known image")
        if self.regression:
            return self._regress(x, mask, known)
        generators = per_image_generators(seeds)
        shape = (self.config.model.channels, *x.shape[2:])
        noise = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(x.device)
        common = dict(known=known, mask=mask, generator=generators, callback=callback)
        return self._run_sampler(self._denoiser(options, x.shape[0], mask), x, noise, options, common)

    def _regress(self, x: torch.Tensor, mask: torch.Tensor | None, known: torch.Tensor | None) -> torch.Tensor:
        """The regression baseline's one estimate f(x, 0, 1), with the known pixels kept."""
        shape = (x.shape[0], self.config.model.channels, *x.shape[2:])
        y = self.net(x, torch.zeros(shape, device=x.device), torch.ones(shape[0], device=x.device)).float()
        y = y.clamp(-1, 1)
        return y if mask is None else y * mask + known * (1 - mask)

    def _denoiser(self, options: SamplingOptions, batch: int, mask: torch.Tensor | None):
        # guidance inside tiling: each tile's two estimates come from one call, and one image at a time stays so
        denoiser = guided(self._one_at_a_time if options.batch_invariant else self.net, options.guidance)
        if options.tile_overlap is not None:
            denoiser = TiledDenoiser(denoiser, self.config.model.image_size, options.tile_overlap, max(16, batch), mask)
        return denoiser

    def _run_sampler(self, denoiser, x: torch.Tensor, noise: torch.Tensor, options: SamplingOptions,
                     common: dict) -> torch.Tensor:
        d = self.config.diffusion
        levels = self.inference_schedule if options.schedule == "inference" else self.train_schedule
        own = dict(clip_denoised=d.clip_denoised, parameterization=d.parameterization)
        if options.sampler == "ancestral":
            return ancestral_sample(denoiser, x, levels.respaced(options.steps), noise, **own, **common)
        if options.sampler == "ddim":
            return ddim_sample(denoiser, x, levels.respaced(options.steps), noise, eta=options.eta, **own, **common)
        scheduler = make_scheduler(options.sampler, levels, d.clip_denoised, d.parameterization)
        return scheduler_sample(denoiser, x, scheduler, options.steps, noise, **common)

    def _one_at_a_time(self, x: torch.Tensor, y_t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net(x[i : i + 1], y_t[i : i + 1], gamma[i : i + 1]) for i in range(x.shape[0])])
