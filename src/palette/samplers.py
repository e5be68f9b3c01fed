"""Fast samplers: diffusers' DDIM, DPM-Solver++ (2M and SDE) and UniPC, driven through noise-level conditioning.

The paper's ancestral sampler lives in :mod:`palette.diffusion`. The solvers here are diffusers' scheduler objects;
palette only maps each scheduler timestep t to the noise level the network is conditioned on,
gamma = alphas_cumprod[t] of the discrete schedule the scheduler was built with, and keeps the known pixels of
inpainting and uncropping exact after every step.

- DDIM: Song, Meng & Ermon 2021, "Denoising Diffusion Implicit Models" (``eta`` = 0 deterministic, 1 ancestral-like).
- DPM-Solver++(2M) and its SDE variant: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
  Diffusion Probabilistic Models".
- UniPC: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models".

Every solver clips its y0 estimate to [-1, 1] as the paper's sampler does (DDIM's ``clip_sample``; for the others,
diffusers' dynamic thresholding with ``sample_max_value = 1``, which is exactly a clip to [-1, 1]).
"""

from __future__ import annotations

import inspect
from typing import Callable

import numpy as np
import torch

from .diffusion import Denoiser, NoiseSchedule

SAMPLERS = ("ancestral", "ddim", "dpmpp-2m", "dpmpp-2m-sde", "unipc")
SCHEDULES = ("inference", "training")


def check_sampler(name: str) -> None:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")


def make_scheduler(name: str, schedule: NoiseSchedule):
    """A diffusers scheduler over the discrete schedule ``schedule`` (its betas passed as ``trained_betas``)."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    check_sampler(name)
    c = schedule.config
    # "trailing" spacing starts at the schedule's last level and, like palette's respacing, gives N distinct
    # timesteps for every N up to T (diffusers' "linspace" repeats timesteps when N is close to T).
    common = dict(num_train_timesteps=c.steps, trained_betas=np.linspace(c.beta_start, c.beta_end, c.steps),
                  prediction_type="epsilon", timestep_spacing="trailing")
    clip = dict(thresholding=True, sample_max_value=1.0)  # dynamic thresholding with s = 1: a clip to [-1, 1]
    if name == "ddim":
        return DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=True)
    if name == "dpmpp-2m":
        return DPMSolverMultistepScheduler(**common, **clip, algorithm_type="dpmsolver++", solver_order=2)
    if name == "dpmpp-2m-sde":
        return DPMSolverMultistepScheduler(**common, **clip, algorithm_type="sde-dpmsolver++", solver_order=2)
    if name == "unipc":
        return UniPCMultistepScheduler(**common, **clip, solver_order=2)
    raise ValueError(f"{name} is palette's own sampler, not a diffusers scheduler")


def scheduler_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    scheduler,
    steps: int,
    noise: torch.Tensor,
    known: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    generator: list[torch.Generator] | None = None,
    eta: float = 0.0,
    callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run a diffusers scheduler for ``steps`` network evaluations, the network conditioned on gamma(t).

    ``noise`` is y_T (the schedules here start at sigma = 1, so it is used as it is). Where ``mask`` is 0 the sample
    holds ``known`` after every step, as the network saw in training. ``callback(i, n, y, y0_hat)`` sees each step.
    """
    scheduler.set_timesteps(steps, device="cpu")
    gammas = scheduler.alphas_cumprod.double()
    keep = None if mask is None else 1 - mask
    y = noise * scheduler.init_noise_sigma
    if keep is not None:
        y = y * mask + known * keep
    timesteps = list(scheduler.timesteps)
    accepts = inspect.signature(scheduler.step).parameters
    # DDIM: the noise direction is recomputed from the clipped y0 (diffusers' default keeps the network's eps, so
    # its ODE differs from the other solvers' wherever the clip acts; the paper's sampler uses the clipped y0 too)
    extra = {k: v for k, v in (("generator", generator), ("eta", eta), ("use_clipped_model_output", True))
             if k in accepts}
    for i, t in enumerate(timesteps):
        level = torch.full((y.shape[0],), float(gammas[int(t)]), device=y.device)
        model_input = scheduler.scale_model_input(y, t)
        eps = denoiser(x, model_input, level).float()
        out = scheduler.step(eps, t, y, **extra)
        y = out.prev_sample.to(y.dtype)
        if keep is not None:
            y = y * mask + known * keep
        if callback is not None:
            y0 = getattr(out, "pred_original_sample", None)
            if y0 is None:  # the multistep solvers keep their y0 estimates in model_outputs
                g = level.double().reshape(-1, 1, 1, 1)
                y0 = ((model_input.double() - (1 - g).sqrt() * eps.double()) / g.sqrt()).clamp(-1, 1).float()
            callback(i + 1, len(timesteps), y, y0)
    return y
