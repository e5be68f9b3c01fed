"""Where the library's names meet the command line's.

The library names what its caller passed: an API argument (``num_samples``) or a config field (``data.path``), in an
:class:`~palette.errors.ArgumentError`. Only here do those names become the flags a user typed (:func:`flag_of`),
from the tables below and the parsers themselves, so a check written once serves the API and the command line alike.
"""

from __future__ import annotations

import argparse

CHECKPOINT_HELP = "run folder, checkpoint folder or .safetensors file (palette:demo: the packaged demo model)"

# config field -> the flag (its argparse dest) that sets it in ``palette train``; the command passes the given ones on
# as key=value overrides (:func:`config_overrides`)
TRAIN_CONFIG_FLAGS = {
    "task.name": "task", "data.path": "data", "model.image_size": "image_size", "train.batch_size": "batch_size",
    "train.steps": "steps", "diffusion.loss": "loss", "diffusion.objective": "objective", "train.device": "device",
    "train.seed": "seed", "data.num_workers": "workers", "train.micro_batch_size": "micro_batch_size",
    "train.mixed_precision": "mixed_precision", "train.gradient_checkpointing": "gradient_checkpointing",
    "train.low_precision_norm": "low_precision_norm", "train.compile": "compile",
    "train.time_limit_minutes": "time_limit", "train.sharding": "sharding", "data.max_pixels": "max_pixels",
}
# the same for the students of ``palette distill``
DISTILL_CONFIG_FLAGS = {
    "data.path": "data", "train.batch_size": "batch_size", "train.device": "device",
    "train.time_limit_minutes": "time_limit", "data.num_workers": "workers", "train.lr": "lr",
}
# every command's config fields that a flag sets (those above, and those a command sets itself from its flags)
CONFIG_FLAGS = {
    "train": {**TRAIN_CONFIG_FLAGS, "task.tasks": "tasks", "task.weights": "tasks"},
    "distill": {**DISTILL_CONFIG_FLAGS, "distill.teacher": "teacher"},
    "bench": {"train.batch_size": "batch_size", "train.device": "device", "train.mixed_precision": "mixed_precision",
              "train.gradient_checkpointing": "gradient_checkpointing", "train.compile": "compile",
              "train.low_precision_norm": "low_precision_norm"},
    "demo": {"train.steps": "steps", "train.device": "device"},  # with --train
}
# API arguments whose flag has another name; the rest are their own (num_samples: --num-samples)
RENAMED = {"images": "input", "image": "input", "out_dir": "out", "run_dir": "out", "use_ema": "no_ema"}
RENAMED_IN = {
    "demo": {"steps": "sample_steps"},  # the demo's --steps are training steps
    "study": {"fakes": "fake", "db_path": "db"},
}


def flag_of(argument: str, command: str, parser: argparse.ArgumentParser | None = None,
            args: argparse.Namespace | None = None) -> str:
    """How ``palette COMMAND`` lets a user set ``argument``, an API argument or a config field, as they would type it:
    ``num_samples`` -> ``--num-samples``, ``images`` -> ``--input``, ``data.path`` -> ``--data`` (``palette train``).

    An argument the command has no flag for is named as it is: a config field is set as ``key=value``. So is a config
    field whose flag the command line ``args`` left unset: the user gave it as ``key=value`` or in a config file."""
    if "." in argument:
        dest = CONFIG_FLAGS.get(command, {}).get(argument)
    else:
        dest = RENAMED_IN.get(command, {}).get(argument) or RENAMED.get(argument, argument)
    if parser is None:
        from . import build_parser

        parser = build_parser()
    action = _action(_command_parser(parser, command), dest) if dest else None
    if action is None:
        return argument
    if "." in argument and args is not None and getattr(args, action.dest, None) == action.default:
        return argument
    if not action.option_strings:  # a positional argument, named as the usage line names it
        return action.metavar or action.dest
    return max(action.option_strings, key=len)


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command)
    return None


def _action(parser: argparse.ArgumentParser | None, dest: str) -> argparse.Action | None:
    """The action of ``parser`` (or of one of its own commands, ``study create``) that stores ``dest``."""
    if parser is None:
        return None
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found = (_action(sub, dest) for sub in action.choices.values())
            if (found := next((a for a in found if a is not None), None)) is not None:
                return found
        elif action.dest == dest and action.dest != "help":
            return action
    return None


def config_overrides(args: argparse.Namespace, fields: dict[str, str]) -> list[str]:
    """``key=value`` for each config field of ``fields`` whose flag was given (a switch: when it is on)."""
    return [f"{key}={value}" for key, dest in fields.items()
            if (value := getattr(args, dest)) is not None and value is not False]


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_sampling_flags(p: argparse.ArgumentParser) -> None:
    """The flags every sampling command shares."""
    from ..imagefile import DEFAULT_MAX_PIXELS
    from ..samplers import SAMPLERS, SCHEDULES
    from ..sampling_options import MAX_SEED

    p.add_argument("--steps", type=int, help="network evaluations per sample (default: diffusion.sample_steps)")
    p.add_argument("--sampler", choices=SAMPLERS,
                   help="ancestral (the paper's), ddim, dpmpp-2m, dpmpp-2m-sde or unipc (default: diffusion.sampler)")
    p.add_argument("--eta", type=float, help="DDIM's noise, 0 (deterministic) to 1")
    p.add_argument("--guidance", type=float, default=0.0, metavar="W",
                   help="classifier-free guidance weight, 0 (default: none) or more; needs a model trained with "
                        "train.cond_drop_prob > 0 (docs/guidance.md)")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="inference: the paper's 1e-4..0.09 schedule; training: the trained noise levels only")
    p.add_argument("--seed", type=int, default=0, help=f"0 to {MAX_SEED} (default 0)")
    p.add_argument("--max-pixels", type=positive, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help=f"refuse image files whose header claims more pixels (default {DEFAULT_MAX_PIXELS:,}; "
                        "docs/limits.md)")
    p.add_argument("--device", default="auto",
                   help="auto (default), cpu, cuda, cuda:1, ...; launched processes each use their own GPU")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of their EMA")
    p.add_argument("--no-progress", action="store_true")


def sampling_options(args: argparse.Namespace):
    """The :class:`~palette.sampling_options.SamplingOptions` of a command's sampling flags (those it has)."""
    from ..sampling_options import SamplingOptions

    given = {name: getattr(args, name) for name in SamplingOptions.names() if hasattr(args, name)}
    return SamplingOptions(**given)
