"""Fast samplers: each against diffusers' own step, known pixels, step counts, seeds, bad arguments."""

import numpy as np
import pytest
import torch

from palette.config import apply_overrides
from palette.diffusion import INFERENCE_SCHEDULE, TRAINING_SCHEDULE, NoiseSchedule, ancestral_sample, ddim_sample
from palette.errors import PaletteError
from palette.model import PaletteModel
from palette.samplers import SAMPLERS, SOLVERS, make_scheduler, scheduler_sample

from conftest import micro_config


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = PaletteModel(micro_config())
    for p in m.parameters():  # leave the zero initialisation so that outputs depend on every input
        torch.nn.init.normal_(p, std=0.05)
    return m.eval()


def _inputs(n=2):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, 16, 16, generator=g) * 2 - 1, torch.randn(n, 3, 16, 16, generator=g)


@pytest.mark.parametrize("steps", [10, pytest.param(1000, marks=pytest.mark.slow)])
def test_ancestral_equals_diffusers_ddpm_with_the_papers_variance(model, steps):
    """The paper's sampler is DDPM with variance beta_t ("fixed_large") and y0 clipped, on the inference schedule."""
    from diffusers import DDPMScheduler

    x, noise = _inputs()
    schedule = NoiseSchedule(INFERENCE_SCHEDULE)
    ours = []
    ancestral_sample(model.net, x, schedule.respaced(steps), noise,
                     generator=[torch.Generator().manual_seed(s) for s in (0, 1)],
                     callback=lambda i, n, y, y0: ours.append(y.clone()))
    ddpm = DDPMScheduler(num_train_timesteps=1000, trained_betas=np.linspace(1e-4, 0.09, 1000),
                         variance_type="fixed_large", clip_sample=True, timestep_spacing="trailing")
    ddpm.set_timesteps(steps)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]  # diffusers draws per image from a list too
    y, theirs = noise, []
    with torch.no_grad():
        for t in ddpm.timesteps:
            gamma = torch.full((2,), float(ddpm.alphas_cumprod[t].double()))
            out = ddpm.step(model.net(x, y, gamma), t, y, generator=gens)
            y = out.prev_sample
            theirs.append(y)
    assert len(ours) == len(theirs) == steps
    for a, b in zip(ours[:-1], theirs[:-1]):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=0)
    # The last step lands on gamma_0 = 1, where the posterior mean is the clipped y0 estimate. diffusers adds noise
    # there unless that step's timestep is 0 (only with all 1000 steps); palette never does, as in DDPM.
    torch.testing.assert_close(ours[-1], out.pred_original_sample if steps < 1000 else theirs[-1], atol=2e-4, rtol=0)


def _diffusers_loop(net, x, noise, reference, steps, **step_kwargs):
    """A plain loop over a diffusers scheduler's own ``step``, the network conditioned on alphas_cumprod[t]."""
    reference.set_timesteps(steps)
    y = noise.clone()
    with torch.no_grad():
        for t in reference.timesteps:
            gamma = torch.full((x.shape[0],), float(reference.alphas_cumprod[t].double()))
            y = reference.step(net(x, y, gamma), t, y, **step_kwargs).prev_sample
    return y


def _generators():
    return [torch.Generator().manual_seed(s) for s in (0, 1)]


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("steps", [1, 2, 20])
def test_each_solver_equals_a_plain_loop_over_diffusers_step(model, name, steps):
    x, noise = _inputs()
    schedule = NoiseSchedule(INFERENCE_SCHEDULE)
    ours = scheduler_sample(model.net, x, make_scheduler(name, schedule), steps, noise, generator=_generators())
    kwargs = {"generator": _generators()} if name == "dpmpp-2m-sde" else {}
    theirs = _diffusers_loop(model.net, x, noise, make_scheduler(name, schedule), steps, **kwargs)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)


# not (1.0, 2): there diffusers' float32 sqrt(1 - g_prev - sigma^2) cancels to noise (~2e-4 instead of 3e-8)
@pytest.mark.parametrize("eta,steps", [(0.0, 1), (0.0, 2), (0.0, 20), (1.0, 1), (1.0, 20)])
def test_ddim_equals_diffusers_ddim_where_its_stride_is_right(model, eta, steps):
    """Where N divides T, diffusers' DDIM (eps from the clipped y0, alpha_0 = 1) steps between palette's levels."""
    from diffusers import DDIMScheduler

    x, noise = _inputs()
    ours = ddim_sample(model.net, x, NoiseSchedule(INFERENCE_SCHEDULE).respaced(steps), noise, eta=eta,
                       generator=_generators())
    reference = DDIMScheduler(num_train_timesteps=1000, trained_betas=np.linspace(1e-4, 0.09, 1000),
                              clip_sample=True, set_alpha_to_one=True, timestep_spacing="trailing")
    theirs = _diffusers_loop(model.net, x, noise, reference, steps, eta=eta, use_clipped_model_output=True,
                             generator=_generators())
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=0)


class _Oracle(torch.nn.Module):
    """The exact noise predictor of a known target y0: eps = (y_t - sqrt(g) y0) / sqrt(1 - g), in float64."""

    def __init__(self, y0):
        super().__init__()
        self.y0, self.levels = y0, []

    def forward(self, x, y_t, gamma):
        self.levels.append(float(gamma[0]))
        g = gamma.double().reshape(-1, 1, 1, 1)
        return ((y_t.double() - g.sqrt() * self.y0.double()) / (1 - g).sqrt()).float()


def _oracle_model(y0, *overrides):
    model = PaletteModel(micro_config(*overrides))
    model.net = _Oracle(y0)
    return model


@pytest.mark.slow  # each sampler at 100 step counts: up to 14 s each on a 2-core CPU
@pytest.mark.parametrize("schedule", ["inference", "training"])
@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_with_an_exact_denoiser_returns_the_target_at_every_step_count(name, schedule):
    """The last step must land on gamma_0 = 1 for any N (diffusers' DDIM stopped short for 45 of N = 1..100).

    The tolerance is 1e-6 plus float32's floor: y_t carries y0 as sqrt(gamma) y0 next to O(1) noise, so the last
    evaluation (at gamma_last) cannot see y0 closer than a float32 rounding of y_t divided by sqrt(gamma_last).
    """
    y0 = torch.rand(1, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 1.8 - 0.9
    model = _oracle_model(y0)
    for steps in range(1, 101):
        model.net.levels.clear()
        out = model.sample(y0, steps=steps, sampler=name, schedule=schedule, seeds=[steps])
        tolerance = 1e-6 + 1e-6 / model.net.levels[-1] ** 0.5
        error = (out - y0).abs().max().item()
        assert error <= tolerance, f"{name}, {schedule} schedule, {steps} steps: error {error:.2e}"
        assert len(model.net.levels) == steps


@pytest.mark.parametrize("name", SAMPLERS)
def test_clip_denoised_false_reaches_targets_outside_the_unit_range_in_every_sampler(name):
    y0 = torch.full((1, 3, 4, 4), 3.0)
    clipped = _oracle_model(y0).sample(y0, steps=10, sampler=name, schedule="training")
    assert clipped.abs().max() <= 1 + 1e-6
    free = _oracle_model(y0, "diffusion.clip_denoised=false").sample(y0, steps=10, sampler=name, schedule="training")
    torch.testing.assert_close(free, y0, atol=1e-4, rtol=0)


def test_ddim_eta_1_adds_ddpm_posterior_variance_in_one_step():
    """One DDIM step from gamma_t to gamma_s < 1 with eta = 1 has variance (1 - g_s) / (1 - g_t) (1 - g_t / g_s)."""
    levels = np.array([1.0, 0.5, 0.2])
    y0 = torch.zeros(1, 1, 128, 128)
    seen = []
    ddim_sample(_Oracle(y0), y0, levels, torch.zeros_like(y0), eta=1.0, clip_denoised=False,
                generator=torch.Generator().manual_seed(0), callback=lambda i, n, y, _: seen.append(y.clone()))
    # y_T = 0 and y0 = 0: the deterministic part is 0, what remains after the first step is sigma z
    expected = (1 - 0.5) / (1 - 0.2) * (1 - 0.2 / 0.5)
    assert seen[0].var().item() == pytest.approx(expected, rel=0.03)
    assert expected < 1 - 0.2 / 0.5  # below the paper's ancestral variance beta = 1 - alpha


@pytest.mark.parametrize("name", [s for s in SAMPLERS if s != "ddim"])
def test_eta_is_refused_by_the_samplers_that_would_ignore_it(model, name):
    x, _ = _inputs(1)
    with pytest.raises(ValueError, match="eta"):
        model.sample(x, steps=2, sampler=name, eta=0.5)


def test_the_configs_eta_is_ddims_and_leaves_the_other_samplers_alone():
    config = apply_overrides(micro_config(), ["diffusion.sampler=ddim", "diffusion.eta=0.5"])
    config.validate()
    model = PaletteModel(config).eval()
    x, _ = _inputs(1)
    assert torch.isfinite(model.sample(x, steps=2, sampler="dpmpp-2m")).all()  # eta 0 for it, not the config's
    noisy, plain = (model.sample(x, steps=3, sampler="ddim", eta=eta) for eta in (None, 0.0))
    assert not torch.equal(noisy, plain)  # DDIM takes the config's eta
    with pytest.raises(PaletteError, match="eta"):
        apply_overrides(micro_config(), ["diffusion.eta=-1"]).validate()


@pytest.mark.parametrize("name", SAMPLERS)
def test_known_pixels_stay_exact(model, name):
    x, noise = _inputs()
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:12, 2:10] = 1
    out = model.sample(x, mask, x, steps=5, sampler=name, seeds=[0, 1])
    assert torch.equal(out * (1 - mask), x * (1 - mask))


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 2, pytest.param(1000, marks=pytest.mark.slow)])
def test_any_step_count_from_1_to_1000_samples(model, name, steps):
    x, _ = _inputs(1)
    out = model.sample(x, steps=steps, sampler=name)
    assert out.shape == x.shape and torch.isfinite(out).all() and out.abs().max() <= 1 + 1e-6


@pytest.mark.parametrize("name", SAMPLERS)
def test_same_seed_same_sample_and_batch_matches_alone(model, name):
    x, _ = _inputs(3)
    eta = 1.0 if name == "ddim" else 0.0
    a = model.sample(x, steps=6, sampler=name, seeds=[5, 6, 7], eta=eta)
    b = model.sample(x, steps=6, sampler=name, seeds=[5, 6, 7], eta=eta)
    alone = model.sample(x[1:2], steps=6, sampler=name, seeds=[6], eta=eta)
    assert torch.equal(a, b)
    # per-image generators: the batch changes nothing but the floating-point order of the convolutions
    torch.testing.assert_close(a[1:2], alone, atol=1e-4, rtol=0)
    c = model.sample(x, steps=6, sampler=name, seeds=[8, 9, 10], eta=eta)
    assert not torch.equal(a, c)  # another seed, another y_T


@pytest.mark.parametrize("name", SAMPLERS)
def test_batch_invariant_sampling_is_bit_identical_alone_and_in_a_batch(model, name):
    x, _ = _inputs(3)
    eta = 1.0 if name == "ddim" else 0.0
    batch = model.sample(x, steps=6, sampler=name, seeds=[5, 6, 7], eta=eta, batch_invariant=True)
    for i, seed in enumerate((5, 6, 7)):
        alone = model.sample(x[i : i + 1], steps=6, sampler=name, seeds=[seed], eta=eta, batch_invariant=True)
        assert torch.equal(batch[i : i + 1], alone)


def test_training_schedule_sampling_walks_only_trained_levels(model):
    seen = []

    def spy(x, y, gamma):
        seen.append(float(gamma[0]))
        return model.net(x, y, gamma)

    x, noise = _inputs(1)
    train = NoiseSchedule(TRAINING_SCHEDULE)
    scheduler_sample(spy, x, make_scheduler("dpmpp-2m", train), 20, noise)
    assert min(seen) >= train.gammas[-1] * (1 - 1e-6)


def test_more_than_half_of_the_papers_inference_steps_lie_below_the_trained_levels():
    inference, train = NoiseSchedule(INFERENCE_SCHEDULE), NoiseSchedule(TRAINING_SCHEDULE)
    below = np.mean(inference.gammas[1:] < train.gammas[-1])
    assert below > 0.5


@pytest.mark.parametrize("kwargs,match", [
    ({"sampler": "euler"}, "sampler must be one of"),
    ({"steps": 0}, "between 1 and"),
    ({"steps": 1001}, "between 1 and"),
    ({"schedule": "cosine"}, "schedule must be one of"),
])
def test_bad_sampling_arguments_are_clear_errors(model, kwargs, match):
    x, _ = _inputs(1)
    with pytest.raises(ValueError, match=match):
        model.sample(x, **{"steps": 3, **kwargs})


@pytest.mark.slow  # three solvers at 400 steps: 30 s
def test_deterministic_solvers_agree_with_many_steps(model):
    """DDIM (eta 0), DPM-Solver++(2M) and UniPC integrate the same probability-flow ODE of the clipped-y0 model."""
    x, noise = _inputs()
    schedule = NoiseSchedule(TRAINING_SCHEDULE)
    outs = {name: scheduler_sample(model.net, x, make_scheduler(name, schedule), 400, noise)
            for name in ("dpmpp-2m", "unipc")}
    outs["ddim"] = ddim_sample(model.net, x, schedule.respaced(400), noise)
    assert (outs["ddim"] - outs["dpmpp-2m"]).abs().mean() < 0.02
    assert (outs["unipc"] - outs["dpmpp-2m"]).abs().mean() < 0.02
