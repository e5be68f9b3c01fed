"""The config dataclasses are the one place a value's type, default and allowed values live."""

import dataclasses
import typing
from pathlib import Path

import pytest

from palette.cli import build_parser
from palette.config import Config, allowed, apply_overrides, preset
from palette.errors import ArgumentError, PaletteError

SECTIONS = [f.name for f in dataclasses.fields(Config) if dataclasses.is_dataclass(getattr(Config(), f.name))]
LITERAL_FIELDS = [f"{section}.{name}" for section in SECTIONS
                  for name, hint in typing.get_type_hints(type(getattr(Config(), section))).items()
                  if typing.get_origin(hint) is typing.Literal]


def test_the_fields_with_a_fixed_set_of_values_are_found():
    assert {"train.mixed_precision", "train.sharding", "diffusion.sampler", "diffusion.sample_schedule",
            "diffusion.loss", "diffusion.objective", "diffusion.parameterization"} <= set(LITERAL_FIELDS)


@pytest.mark.parametrize("key", LITERAL_FIELDS)
def test_every_allowed_value_passes_through_an_override_and_validation(key):
    for value in allowed(key):  # "no" must stay the text "no", not YAML's false
        config = apply_overrides(preset("tiny"), [f"{key}={value}"])
        section, name = key.split(".")
        assert getattr(getattr(config, section), name) == value
        if key != "diffusion.parameterization":  # v is for distilled students, which need more settings
            config.validate()


def test_a_value_outside_the_set_is_refused_naming_the_key_and_the_choices():
    with pytest.raises(PaletteError, match=r"^diffusion.loss must be one of l2, l1, got 'l3'$"):
        apply_overrides(preset("tiny"), ["diffusion.loss=l3"]).validate()


def test_a_text_field_takes_an_override_as_text():
    config = apply_overrides(preset("tiny"), ["data.path=", "distill.teacher=1e3"])
    assert config.data.path == "" and config.distill.teacher == "1e3"


def test_the_command_line_offers_the_config_s_values():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {a.option_strings[0]: a.choices for a in train._actions if a.option_strings}
    assert flags["--mixed-precision"] == allowed("train.mixed_precision")
    assert flags["--sharding"] == allowed("train.sharding")
    assert flags["--loss"] == allowed("diffusion.loss")
    assert flags["--objective"] == allowed("diffusion.objective")


@pytest.mark.parametrize("key, value, rule", [
    ("model.image_size", 0, "positive"),
    ("train.time_limit_minutes", -1.5, "0 (no limit) or more"),
    ("data.num_workers", -1, "0 (load in the training process) or more"),
    ("train.batch_size", 0, "at least 1"),
    ("train.seed", 2**32, "a whole number from 0 to 2**32 - 1"),  # a run would fail at its first sheet
])
def test_a_number_out_of_range_is_refused_naming_its_config_field(key, value, rule):
    # the library speaks of config fields; only the command line turns them into its flags
    with pytest.raises(ArgumentError) as refused:
        apply_overrides(preset("tiny"), [f"{key}={value}"]).validate()
    assert refused.value.argument == key
    assert str(refused.value) == f"{key} must be {rule}, got {value}"


def test_an_override_of_the_wrong_type_is_refused_naming_its_config_field():
    with pytest.raises(ArgumentError, match=r"^train.steps must be a int, got 'many'$") as refused:
        apply_overrides(preset("tiny"), ["train.steps=many"])
    assert refused.value.argument == "train.steps"


def test_a_config_file_is_replaced_whole_never_rewritten_in_place(tmp_path, monkeypatch):
    import os

    path = tmp_path / "config.yaml"
    preset("tiny").save(path)
    renamed = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(Path(dst)), real_replace(src, dst)))
    changed = apply_overrides(preset("tiny"), ["train.lr=0.001"])
    changed.save(path)
    assert renamed == [path] and Config.load(path).train.lr == 0.001
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # no temporary file left
