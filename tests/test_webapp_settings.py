"""The web app's sampling settings: the page starts at the checkpoint's own, within the server's budget, and judges what
a visitor sends with the library's sampling checks (no browser: the page's settings read only the model's config)."""

from types import SimpleNamespace

import pytest

from palette.errors import ArgumentError, PaletteError
from palette.sampling_options import SamplingOptions
from palette.webapp import Limits, Models, check_request, sampling_defaults
from palette.webapp.models import PAGE_SAMPLES
from palette.webapp.run import PageRequest, page_options

from conftest import micro_config

SIZE = 16  # micro_config's image size


def _model(*overrides: str) -> SimpleNamespace:
    """A stand-in for a loaded model, with the config a checkpoint of these overrides would carry."""
    config = micro_config(*overrides)
    assert config.model.image_size == SIZE
    return SimpleNamespace(config=config)


STUDENT = ("distill.steps=2", "diffusion.sample_steps=2", "diffusion.sampler=ddim")


@pytest.mark.parametrize("sampler, steps", [("dpmpp-2m-sde", 20), ("ddim", 7), ("ancestral", 1000)])
def test_the_page_starts_at_the_checkpoints_own_sampler_and_steps(sampler, steps):
    model = _model(f"diffusion.sampler={sampler}", f"diffusion.sample_steps={steps}")
    assert sampling_defaults(model) == (steps, sampler)


def test_steps_above_the_budget_start_at_the_most_it_allows_for_the_first_request():
    model = _model("diffusion.sampler=ancestral", "diffusion.sample_steps=1000")
    # the page's first request is PAGE_SAMPLES samples, untiled: PAGE_SAMPLES evaluations of SIZE^2 pixels a step
    limits = Limits(request_budget=PAGE_SAMPLES * SIZE * SIZE * 300 + 5)
    assert sampling_defaults(model, limits) == (300, "ancestral")
    def first_request(steps):
        return SamplingOptions(num_samples=PAGE_SAMPLES, steps=steps).resolved(model.config)

    check_request(model, (SIZE, SIZE), "jpeg", first_request(300), 0, "right", limits)
    with pytest.raises(PaletteError, match="Reduce the samples or the steps"):  # the budget still refuses more
        check_request(model, (SIZE, SIZE), "jpeg", first_request(301), 0, "right", limits)


def test_a_distilled_student_starts_at_its_own_steps_whatever_the_budget():
    tight = Limits(request_budget=PAGE_SAMPLES * SIZE * SIZE * 1)  # one step
    assert sampling_defaults(_model(*STUDENT), tight) == (2, "ddim")


def test_the_page_settings_are_the_librarys_sampling_options():
    model = _model("diffusion.sampler=dpmpp-2m", "diffusion.sample_steps=9")
    # a browser sends whole numbers as 2.0; an unset sampler is the checkpoint's
    options = page_options(model, PageRequest("photo.png", "jpeg", num_samples=2.0, steps=5.0, seed=3.0))
    assert options == SamplingOptions.of(num_samples=2, steps=5, seed=3).resolved(model.config)


@pytest.mark.parametrize("model_overrides, settings, argument, problem", [
    ((), {"sampler": "euler"}, "sampler", "must be one of"),
    ((), {"guidance": 2.0}, "guidance", "trained without condition dropout"),
    ((), {"seed": -1}, "seed", "must be a whole number from 0"),
    (STUDENT, {"steps": 20}, "steps", "distilled to sample in 2 DDIM step"),
])
def test_a_setting_the_model_cannot_take_is_refused_naming_it(model_overrides, settings, argument, problem):
    page = PageRequest("photo.png", "jpeg", **{"num_samples": 1, "steps": 2, "sampler": "ddim", **settings})
    with pytest.raises(ArgumentError, match=problem) as caught:
        page_options(_model(*model_overrides), page)
    assert caught.value.argument == argument and str(caught.value).startswith(argument)


def test_a_setting_beyond_the_pages_sliders_is_refused_in_the_pages_words():
    with pytest.raises(PaletteError, match="guidance must be a number from 0 to 10, got 10.5"):
        page_options(_model("train.cond_drop_prob=0.1"), PageRequest("photo.png", "jpeg", steps=2, guidance=10.5))
    with pytest.raises(PaletteError, match="samples must be a whole number from 1 to 8, got 9"):
        page_options(_model(), PageRequest("photo.png", "jpeg", num_samples=9, steps=2))


def test_server_arguments_are_named_as_the_function_takes_them(tmp_path):
    with pytest.raises(ArgumentError, match="exclude each other") as both:
        Models("any.safetensors", tmp_path, "cpu")
    with pytest.raises(ArgumentError, match="no such folder") as missing:
        Models(None, tmp_path / "missing", "cpu")
    assert both.value.argument == missing.value.argument == "allow_load"
