"""The diffusion maths of Palette (Saharia et al. 2022, with SR3's noise-level conditioning).

Notation follows the paper: alpha_t = 1 - beta_t, gamma_t = prod_{s <= t} alpha_s, y_0 the clean target,
x the source image, f(x, y_t, gamma) the network's estimate of the noise. Schedules are computed once in
float64 and indexed 1..T through arrays of length T + 1 whose entry 0 is the noiseless level gamma_0 = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, get_args

import numpy as np
import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""f(x, y_t, gamma) -> the network's prediction (the noise eps, or v for a "v" model), all a sampler knows of it."""

Parameterization = Literal["eps", "v"]
PARAMETERIZATIONS = get_args(Parameterization)
"""What the network predicts: eps, the paper's noise; or v = sqrt(gamma) eps - sqrt(1 - gamma) y_0 (Salimans & Ho
2022), which stays informative where gamma is near 0 and is what a distilled student predicts
(:mod:`palette.distill`)."""


@dataclass(frozen=True)
class ScheduleConfig:
    """A linear beta schedule: beta_t = linspace(beta_start, beta_end, steps)[t - 1]."""

    beta_start: float
    beta_end: float
    steps: int


TRAINING_SCHEDULE = ScheduleConfig(1e-6, 0.01, 2000)
INFERENCE_SCHEDULE = ScheduleConfig(1e-4, 0.09, 1000)


class NoiseSchedule:
    """gamma_t for t = 0..T (gamma_0 = 1) of a linear beta schedule, in float64."""

    def __init__(self, config: ScheduleConfig):
        if config.steps < 1:
            raise ValueError(f"a schedule needs at least one step, got {config.steps}")
        if not 0 < config.beta_start <= config.beta_end < 1:
            raise ValueError(f"betas must satisfy 0 < beta_start <= beta_end < 1, got {config}")
        self.config = config
        betas = np.linspace(config.beta_start, config.beta_end, config.steps, dtype=np.float64)
        self.gammas = np.concatenate([[1.0], np.cumprod(1.0 - betas)])

    @property
    def steps(self) -> int:
        return self.config.steps

    def respaced(self, steps: int) -> np.ndarray:
        """``steps + 1`` levels gamma_{tau_0 = 0} > ... > gamma_{tau_N = T}, evenly spaced in t.

        As in Nichol & Dhariwal's respacing: the sampler keeps the schedule's end points and takes
        alpha_i = gamma_{tau_i} / gamma_{tau_{i-1}} for each step it keeps, so any N from 1 to T is valid.
        """
        if not 1 <= steps <= self.steps:
            raise ValueError(f"steps must be between 1 and the schedule's {self.steps}, got {steps}")
        taus = np.round(np.linspace(0, self.steps, steps + 1)).astype(np.int64)
        return self.gammas[taus]

    def check_halving(self, steps: int) -> None:
        """Raise ValueError unless ``steps`` halve 2 x ``steps`` within the schedule: every other of the 2N respaced
        levels is one of the N (progressive distillation's teacher and student; the levels round t to whole steps,
        and agree for every N on palette's schedules: the check keeps it so)."""
        if not 1 <= 2 * steps <= self.steps:
            raise ValueError(f"a student of {steps} step(s) needs a teacher of {2 * steps}, more than the "
                             f"schedule's {self.steps}")
        if not np.array_equal(self.respaced(2 * steps)[::2], self.respaced(steps)):
            raise ValueError(f"the levels of {steps} steps are not every other level of {2 * steps} on the "
                             f"{self.steps}-step schedule")


def sample_gamma(schedule: NoiseSchedule, batch: int,
                 generator: torch.Generator | np.random.Generator | None = None) -> torch.Tensor:
    """SR3's piecewise-uniform noise levels: t ~ U{1..T}, then gamma ~ U(gamma_t, gamma_{t-1}).

    The result has a continuous density, so the network sees every noise level of the schedule's range and can be
    sampled later with any schedule and number of steps. ``generator`` may be a torch or a numpy generator (the
    training data draws each example's noise level with its own numpy generator). The levels are float64: the
    lowest-noise bucket (1 - 1e-6, 1) would round to exactly 1 in float32, leaving no noise in y_t.
    """
    gammas = torch.from_numpy(schedule.gammas)
    if isinstance(generator, np.random.Generator):
        t = torch.from_numpy(generator.integers(1, schedule.steps + 1, size=batch))
        u = torch.from_numpy(generator.random(batch))
    else:
        t = torch.randint(1, schedule.steps + 1, (batch,), generator=generator)
        u = torch.rand(batch, generator=generator, dtype=torch.float64)
    hi, lo = gammas[t - 1], gammas[t]
    return lo + u * (hi - lo)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def q_sample(y0: torch.Tensor, gamma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A draw from q(y_t | y_0) = N(sqrt(gamma) y_0, (1 - gamma) I): sqrt(gamma) y_0 + sqrt(1 - gamma) eps.

    Both coefficients are computed in float64 before they meet y_0's dtype: near gamma = 1, 1 - gamma in float32
    loses most of its digits (sqrt(1 - gamma) at gamma = 1 - 1e-6 is off by several percent)."""
    gamma = gamma.float() if gamma.device.type == "mps" else gamma.double()  # Apple's MPS has no float64
    return _expand(gamma.sqrt(), y0) * y0 + _expand((1 - gamma).sqrt(), y0) * noise


def predict_y0(y_t: torch.Tensor, gamma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The inversion of q_sample: y0_hat = (y_t - sqrt(1 - gamma) eps) / sqrt(gamma)."""
    return (y_t - _expand((1 - gamma).sqrt(), y_t) * eps) / _expand(gamma.sqrt(), y_t)


def v_target(y0: torch.Tensor, gamma: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """v = sqrt(gamma) eps - sqrt(1 - gamma) y_0, the training target of a "v" network."""
    gamma = gamma.float() if gamma.device.type == "mps" else gamma.double()
    return _expand(gamma.sqrt(), y0) * eps - _expand((1 - gamma).sqrt(), y0) * y0


def predict_y0_from(output: torch.Tensor, y_t: torch.Tensor, gamma: torch.Tensor,
                    parameterization: str = "eps") -> torch.Tensor:
    """The y0 estimate of a network's ``output`` at y_t: from eps as :func:`predict_y0`; from v as
    sqrt(gamma) y_t - sqrt(1 - gamma) v, which needs no division by sqrt(gamma) (y0 from eps at gamma = 1e-20 is
    noise divided by 1e-10)."""
    if parameterization == "eps":
        return predict_y0(y_t, gamma, output)
    if parameterization == "v":
        return _expand(gamma.sqrt(), y_t) * y_t - _expand((1 - gamma).sqrt(), y_t) * output
    raise ValueError(f"unknown parameterization {parameterization!r}: choose one of {', '.join(PARAMETERIZATIONS)}")


def q_posterior(y0: torch.Tensor, y_t: torch.Tensor, gamma_t: torch.Tensor, gamma_prev: torch.Tensor):
    """Mean and variance of q(y_{t-1} | y_t, y_0) for the step alpha_t = gamma_t / gamma_{t-1}.

    mean = sqrt(gamma_{t-1}) beta_t / (1 - gamma_t) y_0 + sqrt(alpha_t) (1 - gamma_{t-1}) / (1 - gamma_t) y_t,
    variance = (1 - gamma_{t-1}) / (1 - gamma_t) beta_t.
    """
    alpha = gamma_t / gamma_prev
    beta = 1 - alpha
    mean = (
        _expand(gamma_prev.sqrt() * beta / (1 - gamma_t), y_t) * y0
        + _expand(alpha.sqrt() * (1 - gamma_prev) / (1 - gamma_t), y_t) * y_t
    )
    variance = (1 - gamma_prev) / (1 - gamma_t) * beta
    return mean, variance


def per_image_loss(
    eps_hat: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor | None = None, p: int = 2
) -> torch.Tensor:
    """|| f(x, y_t, gamma) - eps ||_p^p of each image, averaged over its pixels in ``mask`` (all pixels when None).

    For inpainting and uncropping the mask covers the generated region only: the known pixels are not learnt.
    ``mask`` is (B, 1, H, W) with 1 where the loss counts. Returns one value per image, shape (B,).
    """
    err = (eps_hat - eps).abs() if p == 1 else (eps_hat - eps).square()
    if mask is None:
        return err.flatten(1).mean(1)
    mask = mask.expand_as(err).to(err.dtype)
    return (err * mask).flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1)


def diffusion_loss(
    eps_hat: torch.Tensor, eps: torch.Tensor, mask: torch.Tensor | None = None, p: int = 2
) -> torch.Tensor:
    """E || f(x, y_t, gamma) - eps ||_p^p: the mean over images of :func:`per_image_loss`, so a small hole weighs
    as much as a large one."""
    return per_image_loss(eps_hat, eps, mask, p).mean()


def guided(denoiser: Denoiser, weight: float) -> Denoiser:
    """Classifier-free guidance (Ho & Salimans 2022) of a denoiser trained with condition dropout:

        eps = (1 + w) f(x, y_t, gamma) - w f(0, y_t, gamma),

    the zero source being the "no source" input the model saw when training dropped x. Both estimates come from one
    call on a batch of 2B. The same combination guides a v model: y0 and eps are affine in v at a given y_t. With
    w = 0 this returns ``denoiser`` itself: the sampler is exactly the unguided one.
    """
    if weight == 0:
        return denoiser

    def guided_denoiser(x: torch.Tensor, y_t: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        eps = denoiser(torch.cat([x, torch.zeros_like(x)]), torch.cat([y_t, y_t]), torch.cat([gamma, gamma])).float()
        return (1 + weight) * eps[:b] - weight * eps[b:]

    return guided_denoiser


StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]
"""callback(i, n, y, y0_hat) after step i of n: the current sample and the y0 estimate it was made from."""


def ancestral_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    gammas: np.ndarray,
    noise: torch.Tensor,
    known: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    clip_denoised: bool = True,
    callback: StepCallback | None = None,
    parameterization: str = "eps",
) -> torch.Tensor:
    """The paper's sampler: y_T ~ N(0, I), then for t = T..1

        y_{t-1} = 1/sqrt(alpha_t) (y_t - (1 - alpha_t)/sqrt(1 - gamma_t) f(x, y_t, gamma_t)) + sqrt(1 - alpha_t) eps_t

    written through the y0 estimate y0_hat (identical to the equation above when nothing is clipped):
    y_{t-1} = posterior mean(y0_hat, y_t) + sqrt(1 - alpha_t) eps_t, with no noise added at the last step (DDPM).
    ``clip_denoised`` clips y0_hat to [-1, 1] first: an implementation choice (guided-diffusion's), not Algorithm 2.

    ``gammas`` are the levels gamma_0 = 1 > gamma_1 > ... > gamma_N (e.g. :meth:`NoiseSchedule.respaced`);
    ``noise`` is y_T. Where ``mask`` is 0 the sample keeps ``known`` exactly: the network sees the clean known
    pixels in y_t (as in training) and the result is composited. ``callback(i, n, y_t, y0_hat)`` sees each step.
    ``parameterization`` says what ``denoiser`` predicts (:data:`PARAMETERIZATIONS`).
    """

    def step(y, y0_hat, gamma_t, gamma_prev, last):
        mean, _ = q_posterior(y0_hat, y, _levels(gamma_t, y), _levels(gamma_prev, y))
        if last:
            return mean
        return mean + (1 - float(gamma_t / gamma_prev)) ** 0.5 * _randn_like(y, generator)

    return _reverse_process(denoiser, x, gammas, noise, known, mask, clip_denoised, callback, step, parameterization)


def ddim_sample(
    denoiser: Denoiser,
    x: torch.Tensor,
    gammas: np.ndarray,
    noise: torch.Tensor,
    known: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    eta: float = 0.0,
    clip_denoised: bool = True,
    callback: StepCallback | None = None,
    parameterization: str = "eps",
) -> torch.Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) on the same levels as :func:`ancestral_sample`:

        y_{t-1} = sqrt(gamma_{t-1}) y0_hat + sqrt(1 - gamma_{t-1} - sigma_t^2) eps_hat + sigma_t z,
        sigma_t = eta sqrt((1 - gamma_{t-1}) / (1 - gamma_t)) sqrt(1 - gamma_t / gamma_{t-1}).

    ``eta`` = 0 is deterministic; ``eta`` = 1 adds DDPM's posterior variance (1 - gamma_{t-1}) / (1 - gamma_t) beta_t,
    which is less than the paper's ancestral variance beta_t = 1 - alpha_t. With ``clip_denoised`` y0_hat is clipped
    to [-1, 1] and eps_hat recomputed from it, so the update stays on the line through y_t and the clipped y0_hat.
    Every step lands on the level it names, whatever the number of steps, and the last one on gamma_0 = 1: the
    result is y0_hat of the last evaluation. ``parameterization`` says what ``denoiser`` predicts.
    """

    def step(y, y0_hat, gamma_t, gamma_prev, last):
        eps_hat = (y - gamma_t.sqrt().item() * y0_hat) / (1 - gamma_t).sqrt().item()
        sigma = eta * float(((1 - gamma_prev) / (1 - gamma_t) * (1 - gamma_t / gamma_prev)).sqrt())
        direction = float((1 - gamma_prev - sigma**2).clamp_min(0).sqrt())
        y = float(gamma_prev.sqrt()) * y0_hat + direction * eps_hat
        return y + sigma * _randn_like(y, generator) if sigma > 0 and not last else y

    return _reverse_process(denoiser, x, gammas, noise, known, mask, clip_denoised, callback, step, parameterization)


def _reverse_process(denoiser, x, gammas, noise, known, mask, clip_denoised, callback, step,
                     parameterization="eps") -> torch.Tensor:
    """The loop both samplers share: evaluate the network at gamma_i, estimate y0, let ``step`` move y from gamma_i
    to gamma_{i-1}, and hold the known pixels (where ``mask`` is 0) after every step."""
    g = torch.from_numpy(np.asarray(gammas, dtype=np.float64))
    n = len(g) - 1
    keep = None if mask is None else (1 - mask)
    y = noise if keep is None else noise * mask + known * keep
    for i in range(n, 0, -1):
        output = denoiser(x, y, noise_level(g[i], y)).float()
        y0_hat = predict_y0_from(output, y.float(), _levels(g[i], y), parameterization)
        if clip_denoised:
            y0_hat = y0_hat.clamp(-1, 1)
        y = step(y.float(), y0_hat, g[i], g[i - 1], i == 1)
        if keep is not None:
            y = y * mask + known * keep
        if callback is not None:
            callback(n - i + 1, n, y, y0_hat)
    return y


def noise_level(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The (B,) noise level a denoiser is conditioned on, in float64 (the network embeds it in float32 itself, but
    an exact denoiser needs the level the sampler steps with: near gamma = 1, float32 keeps only a few digits of
    1 - gamma). Apple's MPS has no float64, and gets float32."""
    dtype = torch.float32 if like.device.type == "mps" else torch.float64
    return torch.full((like.shape[0],), float(value), dtype=dtype, device=like.device)


def _levels(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), float(value), dtype=torch.float64, device=like.device)


def _randn_like(y: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """Standard normal noise drawn on each generator's device; with one generator per image, an image's noise does
    not depend on the batch it is in."""
    if isinstance(generator, (list, tuple)):
        return torch.stack([torch.randn(y.shape[1:], generator=g, device=g.device) for g in generator]).to(y)
    if generator is None:
        return torch.randn_like(y)
    return torch.randn(y.shape, generator=generator, device=generator.device).to(y)
