"""The ``palette`` command: a thin layer of flags over the Python functions.

Each command's parser sits beside the function that reads it: :mod:`.train_commands` (presets, train, distill,
bench, export), :mod:`.sample_commands` (sample, panorama, demo, serve) and :mod:`.eval_commands` (eval, eval-table,
weights). Library errors name API arguments and config fields; :func:`main` prints them with the flag that sets them
(:func:`~palette.cli.flags.flag_of`), as one line and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import ArgumentError, PaletteError
from .eval_commands import add_eval_parser, add_eval_table_parser, add_weights_parser
from .flags import flag_of
from .sample_commands import add_demo_parser, add_panorama_parser, add_sample_parser, add_serve_parser
from .train_commands import (add_bench_parser, add_distill_parser, add_export_parser, add_presets_parser,
                             add_train_parser)

__all__ = ["build_parser", "flag_of", "main"]


class _TqdmHandler(logging.StreamHandler):
    """Log lines that do not tear progress bars. tqdm's public tool for this, ``tqdm.contrib.logging.
    logging_redirect_tqdm``, swaps handlers for the length of a ``with`` block; the command installs this one for its
    whole life instead (tqdm's handler class itself is private)."""

    def emit(self, record):
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _setup_logging(verbose: bool) -> None:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s" if verbose else "%(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, (_TqdmHandler, logging.FileHandler))]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("palette").setLevel(logging.DEBUG if verbose else logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="palette", description="Palette: image-to-image diffusion models.")
    parser.add_argument("--verbose", action="store_true", help="more detailed logs")
    sub = parser.add_subparsers(dest="command", required=True)
    add_presets_parser(sub)
    add_train_parser(sub)
    add_distill_parser(sub)
    add_sample_parser(sub)
    add_eval_parser(sub)
    add_eval_table_parser(sub)
    add_weights_parser(sub)
    add_export_parser(sub)
    add_bench_parser(sub)
    add_panorama_parser(sub)
    add_serve_parser(sub)
    add_demo_parser(sub)
    from ..study.commands import add_study_parser

    add_study_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        code = args.func(args)
    except PaletteError as err:
        print(f"palette {args.command}: error: {_message(err, args, parser)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint written is intact", file=sys.stderr)
        return 130
    if code == 0:  # a failure (or an exception) leaves the process group as it is: see below
        _leave_process_group()
    return code


def _message(err: PaletteError, args: argparse.Namespace, parser: argparse.ArgumentParser) -> str:
    """The error as the user reads it: an argument of the library named by the flag that sets it."""
    if not isinstance(err, ArgumentError):
        return str(err)
    name = lambda argument: flag_of(argument, args.command, parser, args)  # noqa: E731
    return err.naming(name(err.argument), name)


def _leave_process_group() -> None:
    """End a launched (torchrun) command that succeeded with ``destroy_process_group``: a process that exits with its
    gloo groups alive (FSDP's device mesh adds one) could abort in their teardown ("terminate called without an active
    exception", seen in about one in ten two-process FSDP test runs), failing a job whose work was done. The
    processes first wait for each other, so none tears its group down while a peer still works: an eval's second
    process, done with its share while the main one still computed the metrics, once aborted so. A process that
    failed leaves at once instead: its peers may be waiting in a collective, and a teardown that flushes the group
    (NCCL's) could wait for them; once it has exited the launcher stops the others."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
