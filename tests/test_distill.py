"""Progressive distillation: the target's closed form, a round on an exact teacher, and distilled checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from palette.config import Config, apply_overrides, preset
from palette.diffusion import NoiseSchedule, ddim_sample, predict_y0_from, v_target
from palette.distill import Student, ddim_step, one_step_target, round_steps, student_config
from palette.errors import ArgumentError, PaletteError
from palette.model import PaletteModel

MEAN, STD = 0.2, 0.3  # every pixel of the toy data is N(MEAN, STD^2), independently


def gaussian_oracle(x, y_t, gamma):
    """The exact eps-prediction for data N(MEAN, STD^2): E[y0 | y_t] = MEAN + a s^2 / (a^2 s^2 + s_t^2) (y_t - a MEAN),
    returned as the eps that predicts it."""
    a = gamma.double().sqrt().view(-1, 1, 1, 1)
    sigma = (1 - gamma.double()).sqrt().view(-1, 1, 1, 1)
    y0 = MEAN + a * STD**2 / (a**2 * STD**2 + sigma**2) * (y_t.double() - a * MEAN)
    return ((y_t.double() - a * y0) / sigma).float()


class OracleNet(nn.Module):
    def forward(self, x, y_t, gamma):
        return gaussian_oracle(x, y_t, gamma)


class LinearPerLevel(nn.Module):
    """v = p_i y_t + q_i at student level i: the family that holds the exact one-step map for Gaussian data."""

    def __init__(self, levels: torch.Tensor):
        super().__init__()
        self.register_buffer("grid", levels)
        self.p = nn.Parameter(torch.zeros(len(levels)))
        self.q = nn.Parameter(torch.zeros(len(levels)))

    def forward(self, x, y_t, gamma):
        i = (gamma[:, None] - self.grid[None]).abs().argmin(1)
        return self.p[i].view(-1, 1, 1, 1) * y_t + self.q[i].view(-1, 1, 1, 1)


def toy_config(steps: int) -> Config:
    config = apply_overrides(preset("tiny"), ["model.channels=1", "model.image_size=8",
                                              "diffusion.clip_denoised=false"])
    teacher = apply_overrides(config, [])
    return student_config(teacher, "teacher.safetensors", steps, 1)


def test_one_ddim_step_with_the_target_lands_where_two_teacher_steps_do():
    g = torch.tensor([0.3, 0.01, 0.9], dtype=torch.float64)
    g_next = torch.tensor([0.5, 0.7, 1.0], dtype=torch.float64)
    y_t, y_next = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    x_tilde = one_step_target(y_t, y_next, g, g_next)
    torch.testing.assert_close(ddim_step(x_tilde, y_t, g, g_next), y_next)


def test_v_gives_back_y0_where_eps_cannot():
    y0, eps = torch.rand(2, 1, 3, 3, dtype=torch.float64) * 2 - 1, torch.randn(2, 1, 3, 3, dtype=torch.float64)
    gamma = torch.tensor([1e-20, 0.5], dtype=torch.float64)
    y_t = gamma.sqrt().view(-1, 1, 1, 1) * y0 + (1 - gamma).sqrt().view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(predict_y0_from(v_target(y0, gamma, eps), y_t, gamma, "v"), y0)


def test_a_round_on_an_exact_teacher_samples_its_two_step_output_in_one_step():
    """Students of 2 and then 1 step, trained through Student.training_losses on the exact teacher of Gaussian data,
    reproduce the teacher's 4-step DDIM sample from the same noise."""
    torch.manual_seed(0)
    teacher_steps, noise = 4, torch.randn(64, 1, 8, 8)
    x = torch.zeros(64, 1, 8, 8)
    schedule = NoiseSchedule(Config().diffusion.inference_schedule)
    expected = ddim_sample(gaussian_oracle, x, schedule.respaced(teacher_steps), noise, clip_denoised=False)
    teacher = PaletteModel(toy_config(teacher_steps))
    teacher.net, teacher.config.diffusion.parameterization = OracleNet(), "eps"
    for steps in (2, 1):
        student = Student(toy_config(steps), teacher)
        student.net = LinearPerLevel(student.levels)
        optimizer = torch.optim.Adam(student.net.parameters(), lr=0.05)
        generator = torch.Generator().manual_seed(steps)
        for _ in range(400):
            y = MEAN + STD * torch.randn(64, 1, 8, 8, generator=generator)
            loss = student.training_losses(x, y, torch.ones(64, 1, 8, 8), generator).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        teacher = PaletteModel(student.config)
        teacher.net = student.net.requires_grad_(False)
    out = ddim_sample(teacher.net, x, schedule.respaced(1), noise, clip_denoised=False, parameterization="v")
    assert (out - expected).abs().max() < 2e-3
    assert (out - noise).abs().mean() > 0.1  # not a sampler that returned its input


def test_the_loss_counts_the_generated_pixels_only():
    """A student wrong only at the known pixels has the loss of the right one; wrong in the hole, it does not."""
    teacher = PaletteModel(toy_config(2))
    teacher.net, teacher.config.diffusion.parameterization = OracleNet(), "eps"
    student = Student(toy_config(1), teacher)
    linear = LinearPerLevel(student.levels)
    y, x = MEAN + STD * torch.randn(4, 1, 8, 8), torch.zeros(4, 1, 8, 8)
    mask = torch.zeros(4, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1

    class Offset(nn.Module):
        def __init__(self, offset):
            super().__init__()
            self.offset = offset

        def forward(self, x, y_t, gamma):
            return linear(x, y_t, gamma) + self.offset

    def loss_with(offset):
        student.net = Offset(offset)
        return student.training_losses(x, y, mask, torch.Generator().manual_seed(0))

    base = loss_with(0)
    torch.testing.assert_close(loss_with(7 * (1 - mask)), base)
    assert torch.all(loss_with(7 * mask) > base + 1)


def test_the_loss_weighs_an_x_error_by_the_truncated_snr():
    """A student whose y0 estimate is off by e everywhere has loss max(gamma / (1 - gamma), 1) e^2 at its level."""
    teacher = PaletteModel(toy_config(32))
    teacher.net, teacher.config.diffusion.parameterization = OracleNet(), "eps"
    student = Student(apply_overrides(toy_config(16), ["diffusion.sample_schedule=training"]), teacher)
    y, x, mask = MEAN + STD * torch.randn(2, 1, 8, 8), torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    noise = torch.randn(2, 1, 8, 8)
    gamma = student.levels[[1, 12]]  # SNR 24 and 0.02 on the training schedule
    assert gamma[0] / (1 - gamma[0]) > 10 and gamma[1] / (1 - gamma[1]) < 0.1
    a, s = gamma.sqrt().view(-1, 1, 1, 1), (1 - gamma).sqrt().view(-1, 1, 1, 1)
    y_t = (a * y + s * noise).float()
    target = student.teacher_target(x, y, y_t, mask, torch.tensor([1, 12]))
    error = 0.1

    class OffBy(nn.Module):  # the v whose y0 estimate a y_t - s v is the target plus the error
        def forward(self, x, y_t, g):
            return ((a * y_t.double() - (target.double() + error)) / s).float()

    student.net = OffBy()
    expected = torch.clamp(gamma / (1 - gamma), min=1) * error**2
    torch.testing.assert_close(student.training_losses(x, y, mask, gamma=gamma, noise=noise),
                               expected.float(), rtol=1e-3, atol=1e-6)


def test_the_teacher_s_y0_estimates_are_clipped_as_its_sampler_clips_them():
    def teacher_predicting(value):
        teacher = PaletteModel(apply_overrides(preset("tiny"), ["model.channels=1", "model.image_size=8"]))

        class Constant(nn.Module):  # the eps whose y0 estimate is ``value`` everywhere
            def forward(self, x, y_t, g):
                a, s = g.double().sqrt().view(-1, 1, 1, 1), (1 - g.double()).sqrt().view(-1, 1, 1, 1)
                return ((y_t.double() - a * value) / s).float()

        teacher.net = Constant()  # on the training schedule, where eps still gives y0 to float32's precision
        return Student(apply_overrides(toy_config(2), ["diffusion.sample_schedule=training"]), teacher)

    y, mask = torch.zeros(3, 1, 8, 8), torch.ones(3, 1, 8, 8)
    y_t, i = torch.randn(3, 1, 8, 8), torch.tensor([1, 2, 2])
    clipped = teacher_predicting(3.0).teacher_target(y, y, y_t, mask, i)
    torch.testing.assert_close(clipped, teacher_predicting(1.0).teacher_target(y, y, y_t, mask, i))
    assert not torch.allclose(clipped, teacher_predicting(0.5).teacher_target(y, y, y_t, mask, i))


def test_a_student_keeps_its_teacher_s_network_and_trains_as_salimans_and_ho():
    teacher = preset("tiny")
    config = student_config(teacher, "t.safetensors", 4, 100)
    assert (config.train.warmup_steps, config.train.ema_decay, config.model.dropout) == (0, 0.0, 0.0)
    with pytest.raises(PaletteError, match="leave model"):
        student_config(teacher, "t.safetensors", 4, 100, ["model.base_channels=16"])


def test_bad_teachers_are_refused_naming_the_argument(student_dir, tmp_path):
    from palette.distill import distill

    with pytest.raises(PaletteError, match="^teacher .*nothing-here: no such file"):
        distill(tmp_path / "nothing-here", tmp_path / "out", 4, 1, 1)
    with pytest.raises(PaletteError, match="^from_steps 4: the teacher .* samples in 1 steps: pass 1$"):
        distill(student_dir, tmp_path / "out", 4, 1, 1)  # a 1-step student is not a 4-step teacher
    with pytest.raises(PaletteError, match="^method 'consistency' is unknown"):
        distill(student_dir, tmp_path / "out", 2, 1, 1, method="consistency")


def test_rounds_halve_the_steps_down_to_the_last_student():
    assert round_steps(64, 1) == [32, 16, 8, 4, 2, 1]
    assert round_steps(24, 3) == [12, 6, 3]
    with pytest.raises(PaletteError, match="times a power of two"):
        round_steps(48, 5)
    with pytest.raises(PaletteError, match="^from_steps 4 must be more than to_steps"):
        round_steps(4, 4)


def test_a_student_config_samples_with_ddim_in_its_steps_only():
    config = toy_config(4)
    config.validate()
    assert (config.diffusion.sampler, config.diffusion.sample_steps, config.diffusion.parameterization) == \
        ("ddim", 4, "v")
    for change in ("diffusion.sampler=ancestral", "diffusion.sample_steps=8", "diffusion.parameterization=eps"):
        with pytest.raises(PaletteError, match="^distill.steps 4 is a student"):
            apply_overrides(config, [change]).validate()
    model = PaletteModel(config).eval()
    with pytest.raises(ValueError, match="sample it with steps 4, sampler ddim"):
        model.sample(torch.zeros(1, 1, 8, 8), steps=2)
    with pytest.raises(ArgumentError, match="^sampler dpmpp-2m: this checkpoint is a student") as caught:
        model.sample(torch.zeros(1, 1, 8, 8), sampler="dpmpp-2m", steps=4)  # the steps are right: the sampler is named
    assert caught.value.argument == "sampler"
    assert model.sample(torch.zeros(1, 1, 8, 8)).shape == (1, 1, 8, 8)


def test_a_regression_model_is_not_distilled():
    with pytest.raises(PaletteError, match="regression"):
        student_config(apply_overrides(preset("tiny"), ["diffusion.objective=regression"]), "t.safetensors", 2, 1)


def test_a_v_model_trains_on_the_v_target():
    """With parameterization v, the loss of a network that outputs the true v is zero."""
    config = apply_overrides(preset("tiny"), ["model.image_size=8", "diffusion.parameterization=v"])
    model = PaletteModel(config)
    y, eps = torch.rand(2, 3, 8, 8) * 2 - 1, torch.randn(2, 3, 8, 8)
    gamma = torch.tensor([0.3, 0.9], dtype=torch.float64)

    class TrueV(nn.Module):
        def forward(self, x, y_t, g):
            return v_target(y, gamma, eps).float()

    model.net = TrueV()
    losses = model.training_losses(torch.zeros_like(y), y, torch.ones(2, 1, 8, 8), gamma=gamma, noise=eps)
    assert losses.max() < 1e-10
    model.config.diffusion.parameterization = "eps"  # the same output, now scored against eps
    torch.testing.assert_close(
        model.training_losses(torch.zeros_like(y), y, torch.ones(2, 1, 8, 8), gamma=gamma, noise=eps),
        (v_target(y, gamma, eps).float() - eps).square().flatten(1).mean(1))


@pytest.mark.slow
def test_palette_distill_trains_students_that_sample_through_the_cli(trained_run, photo_dir, tmp_path, capsys):
    from palette.checkpoint import config_of, read_weights, resolve_weights
    from palette.run_folder import latest_checkpoint
    from palette.cli import main
    from palette.config import Config

    out = tmp_path / "students"
    args = ["distill", "--teacher", str(trained_run), "--out", str(out), "--from-steps", "4", "--to-steps", "1",
            "--steps-per-round", "2", "--batch-size", "2", "--no-progress", "train.sample_every=2"]
    assert main(args) == 0
    assert [p.name for p in sorted(out.glob("steps-*"))] == ["steps-0001", "steps-0002"]
    assert list((out / "steps-0001" / "samples").glob("step0000002_*.png"))  # sheets, sampled in the student's step
    two, one = Config.load(out / "steps-0002" / "config.yaml"), Config.load(out / "steps-0001" / "config.yaml")
    assert (two.distill.steps, one.distill.steps) == (2, 1)
    assert two.distill.teacher == str(resolve_weights(trained_run).resolve())  # the first round learns from --teacher
    assert one.distill.teacher == str(resolve_weights(out / "steps-0002").resolve())  # the next from that student
    weights = resolve_weights(out)  # the distillation folder resolves to its fewest-step student
    assert weights.parent == latest_checkpoint(out / "steps-0001")
    assert config_of(read_weights(weights)[1], weights).distill.steps == 1  # the weights file records what it is

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    assert main([*args, "--resume"]) == 0  # finished rounds are not trained again
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == before
    assert main(args) == 2  # without --resume an existing distillation is not overwritten
    assert "--resume" in capsys.readouterr().err

    photo = sorted(photo_dir.glob("*.png"))[0]
    sample = ["sample", "--checkpoint", str(out), "--task", "inpainting", "--mask", "center", "--input", str(photo),
              "--no-progress"]
    assert main([*sample, "--out", str(tmp_path / "s1")]) == 0
    assert main([*sample, "--out", str(tmp_path / "s4"), "--steps", "4"]) == 2
    assert "distilled to sample in 1 DDIM step" in capsys.readouterr().err
    assert main([*sample, "--checkpoint", str(out / "steps-0002"), "--out", str(tmp_path / "s2"),
                 "--steps", "2"]) == 0


def test_a_round_stopped_by_its_time_limit_resumes_where_it_stopped(trained_run, tmp_path, monkeypatch):
    import itertools

    import palette.train
    from palette.checkpoint import resolve_weights
    from palette.distill import distill

    minutes = itertools.count(step=10.0)  # each look at the clock is 10 minutes later: the limit passes at once
    monkeypatch.setattr(palette.train, "_clock", lambda: 60 * next(minutes))
    options = dict(from_steps=4, to_steps=1, steps_per_round=3, progress=False,
                   overrides=["train.batch_size=2", "train.sample_every=0", "train.time_limit_minutes=5"])
    assert distill(trained_run, tmp_path, **options) == []  # the first round stopped: no student is done
    assert _trained_steps(tmp_path / "steps-0002") == 1 and not (tmp_path / "steps-0001").exists()
    with pytest.raises(PaletteError, match="no finished distillation round"):
        resolve_weights(tmp_path)  # an unfinished round is not a student to sample
    monkeypatch.undo()
    assert distill(trained_run, tmp_path, resume=True, **options) == [tmp_path / "steps-0002", tmp_path / "steps-0001"]
    assert _trained_steps(tmp_path / "steps-0002") == 3 and _trained_steps(tmp_path / "steps-0001") == 3


def _trained_steps(run) -> int:
    from palette.run_folder import latest_checkpoint, read_training_state

    return read_training_state(latest_checkpoint(run))[1]["step"]


@pytest.fixture(scope="module")
def student_dir(trained_run, tmp_path_factory):
    """A 1-step student of the micro multi-task run (one round of one optimisation step)."""
    from palette.distill import distill

    folder = tmp_path_factory.mktemp("student")
    distill(trained_run, folder, from_steps=2, to_steps=1, steps_per_round=1,
            overrides=["train.batch_size=2", "train.sample_every=0"], progress=False)
    return folder


def test_a_student_keeps_the_known_pixels_exactly(student_dir):
    from palette.sampling import load_model

    model = load_model(student_dir, "cpu")
    size = model.config.model.image_size
    known = torch.rand(2, 3, size, size) * 2 - 1
    mask = torch.zeros(2, 1, size, size)
    mask[..., : size // 2, :] = 1
    out = model.sample(known * (1 - mask), mask, known)
    assert torch.equal(out * (1 - mask), known * (1 - mask))
    assert not torch.equal(out * mask, known * mask)


def test_a_student_samples_through_the_python_api_panorama_tiles_and_the_web_app(student_dir):
    from PIL import Image

    from palette import Palette
    from palette.webapp import Limits, PageRequest, describe, run_request, sampling_defaults

    model = Palette.load(student_dir, device="cpu")
    size = model.config.model.image_size
    photo = Image.fromarray((np.random.default_rng(0).random((size, size + 8, 3)) * 255).astype(np.uint8))
    calls = []
    filled = model.inpaint(photo, "center", progress=lambda done, total: calls.append((done, total)))
    assert filled[0].size == photo.size and calls[-1] == (1, 1)  # one network evaluation per image
    assert model.panorama(photo, 1, steps=1).size == (photo.width + 2 * size // 2, photo.height)
    assert model(photo, "jpeg", tile=True)[0].size == photo.size
    with pytest.raises(PaletteError, match="distilled to sample in 1 DDIM step"):
        model.restore_jpeg(photo, steps=20)

    assert sampling_defaults(model) == (1, "ddim") and "distilled to 1 DDIM step" in describe(model)
    path = student_dir / "photo.png"
    photo.save(path)
    out = run_request(model, PageRequest(str(path), "jpeg", steps=1, sampler="ddim"), Limits())
    assert out[0].size == photo.size


@pytest.mark.integration
def test_two_processes_distil_the_same_student_as_one(trained_run, tmp_path):
    """A round launched on 2 processes (torchrun, gloo) trains the student of one process: the examples, their noise
    levels and noise are the examples' own, whatever the number of processes."""
    from palette.cli import main
    from test_distributed import _assert_same_weights, _torchrun

    args = ["distill", "--teacher", str(trained_run), "--from-steps", "2", "--to-steps", "1", "--steps-per-round",
            "2", "--batch-size", "4", "--no-progress", "train.lr=1e-4", "train.sample_every=0",
            "train.checkpoint_every=1"]
    _torchrun(2, *args, "--out", str(tmp_path / "two"))
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    assert "on 2 process(es)" in (tmp_path / "two" / "distill.log").read_text()
    _assert_same_weights(tmp_path / "two" / "steps-0001", tmp_path / "one" / "steps-0001")


@pytest.mark.parametrize("sampler", ["ancestral", "ddim", "dpmpp-2m", "dpmpp-2m-sde", "unipc"])
def test_every_sampler_samples_a_v_network_as_its_eps_twin(sampler):
    """The same exact denoiser, asked for v or for eps, gives the same sample with every sampler (on the training
    schedule, whose first level alpha = 0.0067 leaves eps's y0 enough float32 digits to compare)."""

    class Oracle(nn.Module):
        def __init__(self, kind):
            super().__init__()
            self.kind = kind

        def forward(self, x, y_t, gamma):
            eps = gaussian_oracle(x, y_t, gamma).double()
            if self.kind == "eps":
                return eps.float()
            a, s = gamma.double().sqrt().view(-1, 1, 1, 1), (1 - gamma.double()).sqrt().view(-1, 1, 1, 1)
            y0 = (y_t.double() - s * eps) / a
            return (a * eps - s * y0).float()

    samples = {}
    for kind in ("eps", "v"):
        model = PaletteModel(apply_overrides(preset("tiny"), ["model.channels=1", "model.image_size=8",
                                                              "diffusion.clip_denoised=false",
                                                              f"diffusion.parameterization={kind}"]))
        model.net = Oracle(kind)
        samples[kind] = model.sample(torch.zeros(3, 1, 8, 8), steps=10, sampler=sampler, schedule="training")
    assert (samples["v"] - samples["eps"]).abs().max() < 1e-4
    assert samples["v"].std() > 0.1
