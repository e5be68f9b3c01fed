"""SamplingOptions: one set of defaults, filled from the checkpoint's config and checked once; one batching path."""

import numpy as np
import pytest
import torch

from palette.conditions import Condition
from palette.config import apply_overrides
from palette.errors import ArgumentError
from palette.model import PaletteModel
from palette.sampling import sample_conditions
from palette.sampling_options import SamplingOptions
from palette.tasks import make_task

from conftest import micro_config


def test_unset_values_come_from_the_checkpoints_config():
    config = apply_overrides(micro_config(), ["diffusion.sampler=dpmpp-2m-sde", "diffusion.sample_steps=7",
                                              "diffusion.sample_schedule=training"])
    resolved = SamplingOptions().resolved(config)
    assert (resolved.sampler, resolved.steps, resolved.schedule, resolved.eta) == ("dpmpp-2m-sde", 7, "training", 0)
    assert SamplingOptions(steps=3, sampler="ddim").resolved(config).steps == 3


def test_resolving_twice_changes_nothing():
    config = micro_config()
    once = SamplingOptions(tile=True, num_samples=2).resolved(config)
    assert once.resolved(config) == once
    assert once.overlap == config.model.image_size // 4 and once.tile_overlap == once.overlap


def test_ddim_takes_the_configs_eta_and_the_solvers_take_none():
    config = apply_overrides(micro_config(), ["diffusion.eta=0.5"])
    assert SamplingOptions(sampler="ddim").resolved(config).eta == 0.5
    assert SamplingOptions(sampler="unipc").resolved(config).eta == 0


@pytest.mark.parametrize("settings,argument", [
    ({"num_samples": 0}, "num_samples"),
    ({"batch_size": 2.5}, "batch_size"),
    ({"seed": -1}, "seed"),
    ({"steps": True}, "steps"),
    ({"eta": float("nan")}, "eta"),
    ({"overlap": 4}, "overlap"),  # without tile
    ({"tile": True, "overlap": 16}, "overlap"),  # not below the model's 16 px
    ({"guidance": 1.0}, "guidance"),  # a model trained without condition dropout
    ({"save_process": -1}, "save_process"),
])
def test_each_bad_value_names_its_field(settings, argument):
    with pytest.raises(ArgumentError) as caught:
        SamplingOptions(**settings).resolved(micro_config())
    assert caught.value.argument == argument and str(caught.value).startswith(argument)


def test_an_unknown_setting_is_named():
    with pytest.raises(ArgumentError, match="^stepz is not a sampling setting"):
        SamplingOptions.of(stepz=3)


def test_masked_and_unmasked_conditions_share_a_batch_as_if_sampled_alone():
    """The training sheets batch every task together: an unmasked condition in a batch with a masked one must come out
    as it does alone, and the known pixels of the masked one stay exact."""
    torch.manual_seed(0)
    model = PaletteModel(micro_config()).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.05)
    y = torch.rand(3, 16, 16) * 2 - 1
    conditions = [Condition.of_example(make_task(name)(y, np.random.default_rng(0)), make_task(name).masked)
                  for name in ("colorization", "inpainting")]
    options = SamplingOptions(steps=3, sampler="ddim", batch_invariant=True).resolved(model.config)
    together = sample_conditions(model, conditions, options, keys=["a", "b"])
    alone = [sample_conditions(model, [c], options, keys=[key])[0] for c, key in zip(conditions, "ab")]
    for mixed, single in zip(together, alone):
        assert torch.equal(mixed[0][0], single[0][0])
    inpainted, hole = together[1][0][0], conditions[1].full_mask
    assert torch.equal(inpainted * (1 - hole), y * (1 - hole))
