"""The README is the front door: every `palette` command it shows uses a subcommand, flags and config keys that exist."""

import argparse
import re
from pathlib import Path

import pytest

from palette.cli import build_parser
from palette.config import apply_overrides, preset

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands() -> list[tuple[str, str]]:
    """(subcommand, rest of the line) of each `palette ...` in the README's shell blocks and inline code."""
    snippets, prose, block = [], [], None
    for line in README.replace("$(which palette)", "palette").split("\n"):
        if line.startswith("```"):
            if block is None:
                block = [] if line[3:] in ("", "bash", "sh") else False  # False: a block of another language
            else:
                if block is not False:
                    snippets.append("\n".join(block).replace("\\\n", " "))
                block = None
        elif block is None:
            prose.append(line)
        elif block is not False:
            block.append(line)
    snippets += re.findall(r"`(palette [^`]+)`", "\n".join(prose))
    commands = []
    for snippet in snippets:
        for line in snippet.split("\n"):
            line = re.sub(r"^\s*#\s*", "", line).split(" #")[0]  # commented-out alternatives count too
            for match in re.finditer(r"(?:^|[\s\"'])palette\s+([a-z][a-z-]*)(.*?)(?=$|\||;|&&|\")", line):
                commands.append((match.group(1), match.group(2)))
    return commands


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


COMMANDS = _commands()


def test_the_readme_shows_commands_of_every_kind():
    assert len(COMMANDS) > 40
    assert {"train", "sample", "eval", "bench", "serve", "demo", "panorama"} <= {c for c, _ in COMMANDS}


@pytest.mark.parametrize(("command", "rest"), COMMANDS, ids=[f"{c}{r[:40]}" for c, r in COMMANDS])
def test_a_readme_command_uses_flags_and_config_keys_that_exist(command, rest):
    parsers = _subparsers()
    assert command in parsers, f"palette {command}: no such subcommand"
    parser = parsers[command]
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if nested:  # a command group such as `palette study create`
        sub = rest.split()[0] if rest.split() else ""
        assert sub in nested[0].choices, f"palette {command} {sub}: no such subcommand"
        parser = nested[0].choices[sub]
    flags = set(parser._option_string_actions)
    for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest):
        assert flag in flags, f"palette {command} has no {flag}"
    for override in re.findall(r"(?<![\w./-])([a-z_]+\.[a-z_]+=[^\s`]+)", rest):
        if command in ("train", "bench"):
            apply_overrides(preset("tiny"), [override])  # raises on an unknown key or a bad value
