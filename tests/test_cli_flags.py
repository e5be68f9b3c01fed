"""The library names API arguments and config fields; the command line, and only it, names the flags that set them."""

import argparse

import pytest

from palette import config as palette_config
from palette.cli import build_parser, flag_of, main
from palette.cli.flags import CONFIG_FLAGS, RENAMED, RENAMED_IN
from palette.errors import ArgumentError

PARSER = build_parser()


def _commands(parser) -> dict:
    return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})


def _options(parser) -> set[str]:
    """The flags of a command and of its own commands (palette study create, ...)."""
    return {option for action in parser._actions for option in action.option_strings}.union(
        *(_options(sub) for sub in _commands(parser).values()))


@pytest.mark.parametrize("argument,command", [
    ("steps", "sample"), ("num_samples", "sample"), ("batch_size", "sample"), ("mask", "sample"), ("seed", "sample"),
    ("overlap", "sample"), ("tile", "sample"), ("guidance", "sample"), ("eta", "sample"), ("sampler", "sample"),
    ("schedule", "sample"), ("save_process", "sample"), ("extend", "panorama"), ("mask_category", "eval"),
    ("weights_dir", "eval"), ("reference_stats", "eval"), ("fid5k_lists", "eval"), ("num_samples", "demo"),
])
def test_an_api_argument_is_named_by_its_flag(argument, command):
    assert flag_of(argument, command, PARSER) == "--" + argument.replace("_", "-")


@pytest.mark.parametrize("argument,command,flag", [
    ("images", "sample", "--input"), ("image", "panorama", "--input"), ("out_dir", "eval", "--out"),
    ("run_dir", "train", "--out"), ("use_ema", "sample", "--no-ema"),
    ("steps", "demo", "--sample-steps"),  # the demo's --steps trains
    ("fakes", "study", "--fake"), ("db_path", "study", "--db"),  # the flags of palette study create, serve, report
])
def test_an_api_argument_whose_flag_has_another_name(argument, command, flag):
    assert flag_of(argument, command, PARSER) == flag


@pytest.mark.parametrize("field,command,flag", [
    ("model.image_size", "train", "--image-size"), ("data.path", "train", "--data"),
    ("train.time_limit_minutes", "train", "--time-limit"), ("data.num_workers", "train", "--workers"),
    ("train.mixed_precision", "train", "--mixed-precision"), ("task.weights", "train", "--tasks"),
    ("train.lr", "distill", "--lr"), ("distill.teacher", "distill", "--teacher"),
    ("train.mixed_precision", "bench", "--mixed-precision"),
    ("train.steps", "demo", "--steps"),
])
def test_a_config_field_is_named_by_the_flag_of_the_command(field, command, flag):
    assert flag_of(field, command, PARSER) == flag


@pytest.mark.parametrize("argument,command", [
    ("train.lr", "train"),  # set as train.lr=... on that command line
    ("model.image_size", "sample"),  # the checkpoint's, not the command's
    ("batch_size", "panorama"), ("stems", "sample"),
])
def test_an_argument_no_flag_sets_is_named_as_it_is(argument, command):
    assert flag_of(argument, command, PARSER) == argument


def test_a_positional_argument_is_named_as_the_usage_line_names_it():
    assert flag_of("checkpoint", "export", PARSER) == "checkpoint"


@pytest.mark.parametrize("command", sorted({*CONFIG_FLAGS, *RENAMED_IN}))
def test_every_flag_the_tables_name_is_a_flag_of_its_command(command):
    names = [*CONFIG_FLAGS.get(command, {}), *RENAMED_IN.get(command, {})]
    assert {flag_of(name, command, PARSER) for name in names} <= _options(_commands(PARSER)[command])


@pytest.mark.parametrize("argument", sorted(RENAMED))
def test_every_renamed_argument_is_a_flag_of_some_command(argument):
    assert any(flag_of(argument, command, PARSER) != argument for command in _commands(PARSER))


def test_flag_of_builds_the_parser_when_not_given_one():
    assert flag_of("num_samples", "eval") == "--num-samples"


def _error_line(capsys, argv) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line
    return err


def test_a_library_argument_error_reaches_the_user_as_its_flag(capsys, tmp_path):
    nowhere = tmp_path / "nowhere"
    err = _error_line(capsys, ["eval", "--checkpoint", tmp_path, "--task", "inpainting", "--data", nowhere,
                               "--out", tmp_path / "out"])
    assert err == f"palette eval: error: --data {nowhere}: no such file or folder\n"


def test_a_config_field_error_reaches_the_user_as_the_flag_that_set_it(capsys, tmp_path, photo_dir, monkeypatch):
    def refuse(config):
        raise ArgumentError("data.num_workers", f"must be 0 or more, got {config.data.num_workers}")

    monkeypatch.setattr(palette_config.Config, "validate", refuse)
    err = _error_line(capsys, ["train", "--task", "jpeg", "--data", photo_dir, "--out", tmp_path / "run",
                               "--workers", -1])
    assert err == "palette train: error: --workers must be 0 or more, got -1\n"


def test_a_config_field_given_as_key_value_is_named_as_the_user_wrote_it(capsys, tmp_path, photo_dir):
    err = _error_line(capsys, ["train", "--task", "jpeg", "--data", photo_dir, "--out", tmp_path / "run",
                               "data.num_workers=-1"])
    assert err.startswith("palette train: error: data.num_workers must be") and "--workers" not in err


def test_other_inputs_a_message_mentions_are_named_by_their_flags_too(capsys, tmp_path):
    err = _error_line(capsys, ["sample", "--checkpoint", "palette:demo", "--task", "jpeg", "--input", tmp_path,
                               "--overlap", 4, "--out", tmp_path / "out"])
    assert err == "palette sample: error: --overlap is the overlap of tiles: it needs --tile\n"


def test_the_flags_of_palette_train_become_its_config(tmp_path, photo_dir):
    from palette.cli.train_commands import _train_config

    args = PARSER.parse_args(["train", "--task", "jpeg", "--data", str(photo_dir), "--out", str(tmp_path),
                              "--workers", "0", "--compile", "--time-limit", "1.5", "train.lr=3e-4"])
    config = _train_config(args)
    # 0 workers is a value given, not a flag left out (the small preset loads with 1)
    assert (config.task.name, config.data.path, config.data.num_workers) == ("jpeg", str(photo_dir), 0)
    assert config.train.compile and config.train.time_limit_minutes == 1.5 and config.train.lr == 3e-4
