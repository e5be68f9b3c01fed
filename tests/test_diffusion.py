"""The diffusion maths against closed forms."""

import numpy as np
import pytest
import torch

from palette.diffusion import (
    INFERENCE_SCHEDULE, TRAINING_SCHEDULE, NoiseSchedule, ScheduleConfig, ancestral_sample, diffusion_loss,
    predict_y0, q_posterior, q_sample, sample_gamma,
)
from palette.unet import noise_level_embedding


def test_training_schedule_is_linear_1e6_to_001_over_2000_steps():
    s = NoiseSchedule(TRAINING_SCHEDULE)
    betas = 1 - s.gammas[1:] / s.gammas[:-1]
    assert s.steps == 2000 and s.gammas[0] == 1.0
    np.testing.assert_allclose(betas, np.linspace(1e-6, 0.01, 2000), rtol=1e-9, atol=1e-12)


def test_inference_schedule_end_level_is_the_product_of_alphas():
    s = NoiseSchedule(INFERENCE_SCHEDULE)
    expected = np.prod(1 - np.linspace(1e-4, 0.09, 1000))
    assert s.steps == 1000
    assert s.gammas[-1] == pytest.approx(expected, rel=1e-9)


def test_q_sample_has_the_moments_of_q_yt_given_y0():
    torch.manual_seed(0)
    n, gamma = 200_000, 0.3
    y0 = torch.full((n, 1), 0.7)
    y_t = q_sample(y0, torch.full((n,), gamma), torch.randn(n, 1))
    # standard errors: sqrt(var / n) for the mean, about var * sqrt(2 / n) for the variance
    assert y_t.mean().item() == pytest.approx(np.sqrt(gamma) * 0.7, abs=5 * np.sqrt((1 - gamma) / n))
    assert y_t.var().item() == pytest.approx(1 - gamma, abs=5 * (1 - gamma) * np.sqrt(2 / n))


def test_predict_y0_inverts_q_sample():
    torch.manual_seed(0)
    y0, eps = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    gamma = torch.tensor([0.999, 0.5, 0.01, 1e-4])
    torch.testing.assert_close(predict_y0(q_sample(y0, gamma, eps), gamma, eps), y0, atol=2e-4, rtol=0)


def test_q_posterior_matches_gaussian_conditioning():
    # y_{t-1} ~ N(sqrt(gp) y0, 1 - gp); y_t = sqrt(a) y_{t-1} + sqrt(1 - a) e. Condition y_{t-1} on y_t.
    gp, a = 0.8, 0.95
    g = gp * a
    y0, y_t = torch.tensor([[0.3]]), torch.tensor([[-0.4]])
    var_prev, cov, var_t = 1 - gp, np.sqrt(a) * (1 - gp), 1 - g
    mean_expected = np.sqrt(gp) * 0.3 + cov / var_t * (-0.4 - np.sqrt(g) * 0.3)
    var_expected = var_prev - cov**2 / var_t
    mean, var = q_posterior(y0, y_t, torch.tensor([g], dtype=torch.float64), torch.tensor([gp], dtype=torch.float64))
    assert mean.item() == pytest.approx(mean_expected, rel=1e-6)
    assert var.item() == pytest.approx(var_expected, rel=1e-9)


def test_posterior_mean_through_y0_hat_is_the_papers_update():
    # 1/sqrt(a) (y_t - (1 - a) / sqrt(1 - g) eps) when y0_hat is not clipped
    torch.manual_seed(1)
    gp, a = 0.6, 0.97
    g = torch.tensor([gp * a], dtype=torch.float64)
    y_t, eps = torch.randn(1, 5), torch.randn(1, 5)
    mean, _ = q_posterior(predict_y0(y_t, g, eps), y_t, g, torch.tensor([gp], dtype=torch.float64))
    paper = (y_t - (1 - a) / np.sqrt(1 - g.item()) * eps) / np.sqrt(a)
    torch.testing.assert_close(mean, paper, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("generator", [torch.Generator().manual_seed(0), np.random.default_rng(0)],
                         ids=["torch", "numpy"])
def test_sample_gamma_follows_the_piecewise_uniform_distribution(generator):
    schedule = NoiseSchedule(ScheduleConfig(1e-4, 0.2, 20))
    draws = sample_gamma(schedule, 100_000, generator).double().numpy()
    g = schedule.gammas
    values = np.linspace(g[-1], 1, 200)
    # P(gamma <= v) = 1/T sum_t clip((v - g_t) / (g_{t-1} - g_t), 0, 1)
    cdf = np.mean(np.clip((values[:, None] - g[None, 1:]) / (g[None, :-1] - g[None, 1:]), 0, 1), axis=1)
    empirical = np.mean(draws[None, :] <= values[:, None], axis=1)
    assert np.max(np.abs(empirical - cdf)) < 1.63 / np.sqrt(len(draws))  # the KS test's 1% critical value
    assert draws.min() >= g[-1] and draws.max() <= 1


def test_respaced_levels_keep_the_end_points():
    s = NoiseSchedule(INFERENCE_SCHEDULE)
    for steps in (1, 2, 7, 1000):
        levels = s.respaced(steps)
        assert len(levels) == steps + 1 and levels[0] == 1.0 and levels[-1] == s.gammas[-1]
        assert np.all(np.diff(levels) < 0)
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="between 1 and"):
            s.respaced(bad)


def test_scaled_embedding_separates_neighbouring_training_levels():
    g = NoiseSchedule(TRAINING_SCHEDULE).gammas
    a, b = torch.tensor([g[1000]]), torch.tensor([g[1001]])
    unscaled = (noise_level_embedding(a, 128, 1.0) - noise_level_embedding(b, 128, 1.0)).norm()
    scaled = (noise_level_embedding(a, 128, 1000.0) - noise_level_embedding(b, 128, 1000.0)).norm()
    # for small differences the embedding moves linearly in scale * gamma
    assert scaled / unscaled == pytest.approx(1000, rel=0.05)


def test_masked_loss_averages_only_the_masked_pixels():
    eps_hat, eps = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    eps_hat[0, :, :2] = 3.0  # error 4 (L2) / 2 (L1) on the top half of image 0
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :2] = 1
    mask[1] = 1
    assert diffusion_loss(eps_hat, eps, mask, p=2).item() == pytest.approx((4 + 1) / 2)
    assert diffusion_loss(eps_hat, eps, mask, p=1).item() == pytest.approx((2 + 1) / 2)
    assert diffusion_loss(eps_hat, eps, None, p=2).item() == pytest.approx((24 * 4 + 72) / 96)


def _oracle(y0):
    """The exact noise predictor for a known target: eps = (y_t - sqrt(g) y0) / sqrt(1 - g)."""
    def denoiser(x, y_t, gamma):
        g = gamma.double().reshape(-1, 1, 1, 1)
        return ((y_t.double() - g.sqrt() * y0.double()) / (1 - g).sqrt()).float()
    return denoiser


@pytest.mark.parametrize("steps", [1, 2, 10, 1000])
def test_ancestral_sampler_with_an_exact_denoiser_returns_the_target(steps):
    torch.manual_seed(0)
    y0 = torch.rand(2, 3, 4, 4) * 1.8 - 0.9
    # A schedule ending at gamma ~ 4e-5: at the paper's final gamma (~1e-20) float32 cannot carry sqrt(gamma) y0
    # through y_t, so one step could not recover y0 from any noise prediction.
    levels = NoiseSchedule(ScheduleConfig(1e-4, 0.02, 1000)).respaced(steps)
    out = ancestral_sample(_oracle(y0), y0, levels, torch.randn_like(y0), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, y0, atol=1e-4, rtol=0)


def test_ancestral_sampler_keeps_known_pixels_exactly():
    torch.manual_seed(0)
    known = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 2:6] = 1
    seen = []

    def denoiser(x, y_t, gamma):
        seen.append(y_t.clone())
        return torch.randn_like(y_t)

    out = ancestral_sample(denoiser, known, NoiseSchedule(INFERENCE_SCHEDULE).respaced(5), torch.randn_like(known),
                           known=known, mask=mask)
    assert torch.equal(out * (1 - mask), known * (1 - mask))
    for y_t in seen:  # the network sees the clean known pixels, as in training
        assert torch.equal(y_t * (1 - mask), known * (1 - mask))


def test_training_noise_levels_of_the_lowest_bucket_keep_their_noise():
    """gamma in (1 - 1e-6, 1): in float32 many round to exactly 1 and y_t would carry no noise at all."""
    lowest_bucket = NoiseSchedule(ScheduleConfig(1e-6, 1e-6, 1))  # gamma ~ U(1 - 1e-6, 1)
    gamma = sample_gamma(lowest_bucket, 10_000, np.random.default_rng(0))
    y0, eps = torch.zeros(10_000, 1), torch.ones(10_000, 1)
    y_t = q_sample(y0, gamma, eps)[:, 0].double()
    torch.testing.assert_close(y_t, (1 - gamma.double()).sqrt(), rtol=1e-6, atol=0)
    assert y_t.min() > 0


class _RecordingNet(torch.nn.Module):
    """Returns the true noise inside the mask and garbage outside, and records what it was given."""

    def __init__(self, eps, mask):
        super().__init__()
        self.eps, self.mask, self.seen = eps, mask, None

    def forward(self, x, y_t, gamma):
        self.seen = y_t.clone()
        return self.eps * self.mask + 100.0 * (1 - self.mask)


def test_training_loss_puts_the_known_pixels_clean_into_y_t_and_leaves_them_out_of_the_loss():
    from conftest import micro_config
    from palette.model import PaletteModel

    torch.manual_seed(0)
    y = torch.rand(2, 3, 8, 8) * 2 - 1
    eps = torch.randn_like(y)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:6, 1:5] = 1
    model = PaletteModel(micro_config())
    model.net = _RecordingNet(eps, mask)
    gamma = torch.tensor([0.3, 0.7], dtype=torch.float64)
    losses = model.training_losses(y, y, mask, gamma=gamma, noise=eps)
    assert torch.equal(losses, torch.zeros(2))  # the wrong predictions outside the mask cost nothing
    known = (1 - mask).expand_as(y).bool()
    assert torch.equal(model.net.seen[known], y[known])  # clean, not noised
    hole = mask.expand_as(y).bool()
    torch.testing.assert_close(model.net.seen[hole], q_sample(y, gamma, eps)[hole])
