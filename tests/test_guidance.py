"""Classifier-free guidance: condition dropout at training, eps = (1 + w) f(x) - w f(0) at sampling, and its refusal on
models trained without dropout."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from palette import Palette, PaletteError
from palette.cli import main
from palette.data_files import list_images
from palette.training_data import TrainingData
from palette.diffusion import TRAINING_SCHEDULE, NoiseSchedule, guided
from palette.evaluate import check_manifest
from palette.model import PaletteModel
from palette.samplers import SAMPLERS
from palette.tasks import make_task
from palette.sampling_options import SamplingOptions
from palette.webapp import Limits, PageRequest, check_request, run_request

from conftest import micro_config

W = 2.0


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = PaletteModel(micro_config("train.cond_drop_prob=0.1"))
    for p in m.parameters():  # leave the zero initialisation so that outputs depend on every input
        torch.nn.init.normal_(p, std=0.05)
    return m.eval()


class ExplicitGuidance(nn.Module):
    """(1 + w) net(x) - w net(0) by two separate calls: the formula, written out."""

    def __init__(self, net, weight):
        super().__init__()
        self.inner, self.weight = net, weight

    def forward(self, x, y_t, gamma):
        cond, null = self.inner(x, y_t, gamma).float(), self.inner(torch.zeros_like(x), y_t, gamma).float()
        return (1 + self.weight) * cond - self.weight * null


def _explicitly_guided(model, weight):
    other = PaletteModel(model.config)
    other.net = ExplicitGuidance(model.net, weight)
    return other.eval()


def _inputs(n=2, size=16):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("name", SAMPLERS)
def test_guidance_zero_is_the_unguided_sampler_bit_for_bit(model, name):
    x = _inputs()
    for options in ({}, {"batch_invariant": True}):
        plain = model.sample(x, steps=5, sampler=name, seeds=[1, 2], **options)
        assert torch.equal(model.sample(x, steps=5, sampler=name, seeds=[1, 2], guidance=0.0, **options), plain)
    big = _inputs(1, 24)
    tiled = model.sample(big, steps=3, sampler=name, tile_overlap=4)
    assert torch.equal(model.sample(big, steps=3, sampler=name, tile_overlap=4, guidance=0), tiled)


def test_the_guided_estimate_is_the_weighted_difference_from_one_call_of_twice_the_batch():
    calls = []

    def recording(x, y_t, gamma):
        calls.append((x.clone(), y_t.clone(), gamma.clone()))
        return torch.sin(3 * x) + y_t * gamma.float().reshape(-1, 1, 1, 1)

    x, y_t, gamma = _inputs(3), torch.randn(3, 3, 16, 16), torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    eps = guided(recording, W)(x, y_t, gamma)
    assert len(calls) == 1
    seen_x, seen_y, seen_gamma = calls[0]
    assert torch.equal(seen_x, torch.cat([x, torch.zeros_like(x)]))
    assert torch.equal(seen_y, torch.cat([y_t, y_t])) and torch.equal(seen_gamma, torch.cat([gamma, gamma]))
    both = recording(seen_x, seen_y, seen_gamma)
    torch.testing.assert_close(eps, (1 + W) * both[:3] - W * both[3:])
    assert guided(recording, 0.0) is recording  # w = 0: the denoiser itself, no null evaluation


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_sampler_steps_with_the_guided_estimate(model, name):
    x = _inputs()
    eta = 1.0 if name == "ddim" else 0.0
    guided_sample = model.sample(x, steps=5, sampler=name, seeds=[1, 2], eta=eta, guidance=W)
    explicit = _explicitly_guided(model, W).sample(x, steps=5, sampler=name, seeds=[1, 2], eta=eta)
    torch.testing.assert_close(guided_sample, explicit, atol=1e-4, rtol=0)  # one call of 2B vs two of B: rounding
    assert not torch.allclose(guided_sample, model.sample(x, steps=5, sampler=name, seeds=[1, 2], eta=eta), atol=1e-3)


def test_guidance_composes_with_tiling_and_with_batch_invariance(model):
    big = _inputs(1, 24)
    tiled = model.sample(big, steps=3, sampler="dpmpp-2m", tile_overlap=4, guidance=W)
    explicit = _explicitly_guided(model, W).sample(big, steps=3, sampler="dpmpp-2m", tile_overlap=4)
    torch.testing.assert_close(tiled, explicit, atol=1e-4, rtol=0)
    x = _inputs(3)
    batch = model.sample(x, steps=4, sampler="ancestral", seeds=[5, 6, 7], batch_invariant=True, guidance=W)
    for i, seed in enumerate((5, 6, 7)):
        alone = model.sample(x[i : i + 1], steps=4, sampler="ancestral", seeds=[seed], batch_invariant=True,
                             guidance=W)
        assert torch.equal(batch[i : i + 1], alone)


def _data(photo_dir, p, task="inpainting"):
    return TrainingData(list_images(photo_dir), make_task(task), 16, 3, seed=7,
                        noise_schedule=NoiseSchedule(TRAINING_SCHEDULE), cond_drop_prob=p)


def test_condition_dropout_drops_the_configured_fraction_and_zeroes_only_x(photo_dir):
    p, n = 0.3, 300
    dropping, plain = _data(photo_dir, p), _data(photo_dir, 0.0)
    dropped = 0
    for i in range(n):
        a, b = dropping[i], plain[i]
        assert torch.any(b["x"] != 0)
        if torch.equal(a["x"], torch.zeros_like(b["x"])):
            dropped += 1
        else:
            assert torch.equal(a["x"], b["x"])
        # the drop is the example's last draw: its crop, mask, target, noise level and noise are as without dropout
        for key in ("y", "mask", "gamma", "noise"):
            assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(dropped - n * p) < 4 * sigma, (dropped, n * p)
    again = _data(photo_dir, p)
    assert all(torch.equal(again[i]["x"], dropping[i]["x"]) for i in range(0, n, 37))  # the example's own draw


@pytest.mark.parametrize("value", ["1.0", "-0.1", "nan"])
def test_the_dropout_probability_must_lie_in_0_1(value):
    with pytest.raises(PaletteError, match="train.cond_drop_prob"):
        micro_config(f"train.cond_drop_prob={value}").validate()


def test_the_regression_baseline_refuses_condition_dropout():
    with pytest.raises(PaletteError, match="cond_drop_prob"):
        micro_config("train.cond_drop_prob=0.1", "diffusion.objective=regression").validate()


def test_guidance_on_a_checkpoint_without_dropout_is_refused(capsys, tmp_path, trained_run, photo_dir):
    photo = photo_dir / "coffee.png"
    code = main([str(a) for a in ["sample", "--checkpoint", trained_run, "--task", "jpeg", "--input", photo,
                                  "--guidance", 1, "--out", tmp_path / "o", "--no-progress"]])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--guidance" in lines[0] and "train.cond_drop_prob=0" in lines[0], err
    model = Palette.load(trained_run, device="cpu")
    with pytest.raises(PaletteError, match=r"^guidance: this checkpoint was trained without condition dropout"):
        model(photo, "jpeg", guidance=1.0, steps=2)
    with pytest.raises(PaletteError, match="guidance"):
        model.panorama(photo, 1, guidance=1.0, steps=2)
    with pytest.raises(ValueError, match="cond_drop_prob"):
        model.model.sample(torch.zeros(1, 3, 16, 16), steps=2, guidance=0.5)


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), "2", True])
def test_a_guidance_weight_must_be_a_number_of_0_or_more(model, value):
    with pytest.raises(ValueError, match="guidance must be a number"):
        model.sample(_inputs(1), steps=2, guidance=value)


@pytest.fixture(scope="module")
def dropout_run(tmp_path_factory, photo_dir):
    """A micro multi-task run trained with condition dropout."""
    from palette.train import train

    run = tmp_path_factory.mktemp("dropout_run")
    config = micro_config(f"data.path={photo_dir}", "task.name=multi", "task.tasks=jpeg,colorization,uncropping",
                          "train.steps=2", "train.cond_drop_prob=0.5")
    train(config, run, progress=False)
    return run


def test_guidance_passes_through_the_cli_and_the_api(capsys, tmp_path, dropout_run, photo_dir):
    photo = photo_dir / "coffee.png"
    outs = {}
    for w in (0, 3):
        argv = ["sample", "--checkpoint", dropout_run, "--task", "jpeg", "--input", photo, "--steps", 3,
                "--guidance", w, "--out", tmp_path / f"w{w}", "--no-progress"]
        assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
        outs[w] = np.asarray(__import__("PIL.Image").Image.open(tmp_path / f"w{w}" / "coffee_0.png"))
    model = Palette.load(dropout_run, device="cpu")
    api = {w: np.asarray(model(photo, "jpeg", steps=3, guidance=w, seed=0)[0]) for w in (0, 3)}
    assert not np.array_equal(outs[0], outs[3]) and not np.array_equal(api[0], api[3])
    unguided = model(photo, "jpeg", steps=3, seed=0)[0]
    assert np.array_equal(np.asarray(unguided), api[0])
    pano = model.panorama(photo, 1, steps=2, guidance=2.0)
    assert pano.size == (48 + 2 * 40 // 2, 40)  # the 48x40 photo, extended once on each side by half its height


def test_the_web_app_passes_guidance_and_counts_its_doubled_work(dropout_run, photo_dir):
    model = Palette.load(dropout_run, device="cpu")
    photo = str(photo_dir / "coffee.png")
    def request(guidance):
        return run_request(model, PageRequest(photo, "jpeg", steps=2, sampler="ddim", guidance=guidance), Limits())

    plain, same, guided_out = (request(w)[0] for w in (0, 0.0, 4))
    assert np.array_equal(np.asarray(plain), np.asarray(same))
    assert not np.array_equal(np.asarray(plain), np.asarray(guided_out))
    with pytest.raises(PaletteError, match="guidance must be a number from 0 to 10"):
        request(11)
    budget = Limits(request_budget=16 * 16 * 10)  # 10 evaluations of 16x16
    plain_options = SamplingOptions(steps=10).resolved(model.config)
    check_request(model, (48, 40), "jpeg", plain_options, 0, "right", budget)
    with pytest.raises(PaletteError, match="20 network evaluations.*guidance doubles"):
        check_request(model, (48, 40), "jpeg", dataclasses.replace(plain_options, guidance=1.0), 0, "right", budget)


def test_the_eval_manifest_keeps_samples_of_another_guidance_apart(tmp_path):
    made_by = {"sampler": "ddim", "steps": 4, "guidance": 0.0}
    assert check_manifest(tmp_path, made_by) is None
    assert "guidance" in check_manifest(tmp_path, {**made_by, "guidance": 1.0})
    older = tmp_path / "older"
    (older / "samples").mkdir(parents=True)
    (older / "samples" / "manifest.json").write_text(json.dumps({"sampler": "ddim", "steps": 4}))
    assert check_manifest(older, made_by) is None  # written before guidance existed: unguided
    assert "guidance" in check_manifest(older, {**made_by, "guidance": 0.5})
