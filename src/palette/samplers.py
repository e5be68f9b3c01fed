"""Fast samplers: DPM-Solver++ (2M and SDE) and UniPC from diffusers, driven through noise-level conditioning.

The paper's ancestral sampler and DDIM live in :mod:`palette.diffusion`, on palette's own respaced levels. The
solvers here are diffusers' scheduler objects; palette only maps each scheduler timestep t to the noise level the
network is conditioned on, gamma = alphas_cumprod[t] of the discrete schedule the scheduler was built with, and keeps
the known pixels of inpainting and uncropping exact after every step.

- DPM-Solver++(2M) and its SDE variant: Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
  Diffusion Probabilistic Models".
- UniPC: Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion Models".

DDIM is palette's own because diffusers' DDIMScheduler steps from t to t - T // N while its "trailing" timesteps
have unequal strides whenever N does not divide T: for 44 of N = 2..100 on the inference schedule the last step
then ends short of gamma = 1 (e.g. at 0.9999) and leaves up to 1% of eps-hat in the output. The multistep solvers here
step between the timesteps they list, and land on sigma = 0.

With ``clip_denoised`` (the default) every solver clips its y0 estimate to [-1, 1] as the paper's sampler does
(diffusers' dynamic thresholding with ``sample_max_value = 1``, which is exactly a clip to [-1, 1]).
"""

from __future__ import annotations

import inspect
from typing import Callable, Literal, get_args

import numpy as np
import torch

from .diffusion import Denoiser, NoiseSchedule, noise_level, predict_y0_from

SamplerName = Literal["ancestral", "ddim", "dpmpp-2m", "dpmpp-2m-sde", "unipc"]
ScheduleName = Literal["inference", "training"]
SAMPLERS, SCHEDULES = get_args(SamplerName), get_args(ScheduleName)


SOLVERS = ("dpmpp-2m", "dpmpp-2m-sde", "unipc")  # the samplers that are diffusers schedulers
ETA_SAMPLERS = ("ddim",)  # the samplers that take eta


def resolve_eta(sampler: str, eta: float | None, config_eta: float) -> float:
    """The eta a sampling call uses: its own, else the config's for DDIM (a config's eta is DDIM's, so a checkpoint
    set up for DDIM with noise can still be sampled with the other samplers), else 0."""
    if eta is not None:
        return eta
    return config_eta if sampler in ETA_SAMPLERS else 0.0


def check_sampler(name: str, eta: float = 0.0) -> None:
    """Raise ValueError for an unknown sampler or an ``eta`` the sampler would ignore."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}: choose one of {', '.join(SAMPLERS)}")
    if not (eta == 0 or name in ETA_SAMPLERS):
        raise ValueError(f"eta is DDIM's noise and does nothing for the {name} sampler: leave it at 0 or use ddim")
    if not eta >= 0:
        raise ValueError(f"eta must be 0 or more, got {eta}")


def make_scheduler(name: str, schedule: NoiseSchedule, clip_denoised: bool = True, parameterization: str = "eps"):
    """A diffusers scheduler over the discrete schedule ``schedule`` (its betas passed as ``trained_betas``), for a
    network that predicts eps or v (``parameterization``; diffusers' v is palette's)."""
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    if name not in SOLVERS:
        raise ValueError(f"{name} is palette's own sampler, not a diffusers scheduler")
    c = schedule.config
    # "trailing" spacing starts at the schedule's last level and, like palette's respacing, gives N distinct
    # timesteps for every N up to T (diffusers' "linspace" repeats timesteps when N is close to T).
    common = dict(num_train_timesteps=c.steps, trained_betas=np.linspace(c.beta_start, c.beta_end, c.steps),
                  prediction_type={"eps": "epsilon", "v": "v_prediction"}[parameterization],
                  timestep_spacing="trailing")
    # dynamic thresholding with s = 1 is a clip to [-1, 1]
    clip = dict(thresholding=True, sample_max_value=1.0) if clip_denoised else dict(thresholding=False)
    if name == "dpmpp-2m":
        return DPMSolverMultistepScheduler(**common, **clip, algorithm_type="dpmsolver++", solver_order=2)
    if name == "dpmpp-2m-sde":
        return DPMSolverMultistepScheduler(**common, **clip, algorithm_type="sde-dpmsolver++", solver_order=2)
    return UniPCMultistepScheduler(**common, **clip, solver_order=2)


def set_trailing_timesteps(scheduler, steps: int) -> None:
    """``scheduler.set_timesteps(steps)``, repaired where diffusers lists one timestep too many.

    diffusers builds "trailing" timesteps as ``np.arange(T, 0, -T / N)``, whose floating-point end point lets a
    spurious (N+1)-th timestep -1 through for some N (61, 103, 121, 122, 201, ... on both of palette's schedules).
    That extra step conditions the network on alphas_cumprod[-1], the noisiest level, right before the end. The
    first N timesteps are the right ones: keep them and end the sigmas at 0, as diffusers' own tail of
    ``set_timesteps`` does.
    """
    scheduler.set_timesteps(steps, device="cpu")
    if len(scheduler.timesteps) == steps:
        return
    if scheduler.config.final_sigmas_type != "zero" or len(scheduler.timesteps) != steps + 1:
        raise RuntimeError(f"unexpected {type(scheduler).__name__} timesteps for {steps} steps: "
                           f"{scheduler.timesteps.tolist()}")
    scheduler.timesteps = scheduler.timesteps[:steps]
    scheduler.sigmas = torch.cat([scheduler.sigmas[:steps], scheduler.sigmas.new_zeros(1)])
    scheduler.num_inference_steps = steps


def scheduler_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    scheduler,
    steps: int,
    noise: torch.Tensor,
    known: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    generator: list[torch.Generator] | None = None,
    callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run a diffusers scheduler for ``steps`` network evaluations, the network conditioned on gamma(t).

    ``noise`` is y_T (the schedules here start at sigma = 1, so it is used as it is). Where ``mask`` is 0 the sample
    holds ``known`` after every step, as the network saw in training. ``callback(i, n, y, y0_hat)`` sees each step.
    """
    set_trailing_timesteps(scheduler, steps)
    gammas = scheduler.alphas_cumprod.double()
    keep = None if mask is None else 1 - mask
    y = noise * scheduler.init_noise_sigma
    if keep is not None:
        y = y * mask + known * keep
    timesteps = list(scheduler.timesteps)
    extra = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for i, t in enumerate(timesteps):
        level = noise_level(gammas[int(t)], y)
        model_input = scheduler.scale_model_input(y, t)
        output = denoiser(x, model_input, level).float()
        out = scheduler.step(output, t, y, **extra)
        y = out.prev_sample.to(y.dtype)
        if keep is not None:
            y = y * mask + known * keep
        if callback is not None:
            y0 = getattr(out, "pred_original_sample", None)
            if y0 is None:  # the multistep solvers keep their y0 estimates in model_outputs
                kind = "v" if scheduler.config.prediction_type == "v_prediction" else "eps"
                y0 = predict_y0_from(output.double(), model_input.double(), level.double(), kind).float()
                y0 = y0.clamp(-1, 1) if scheduler.config.thresholding else y0
            callback(i + 1, len(timesteps), y, y0)
    return y
