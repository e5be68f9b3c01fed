"""The README and docs/ say what works: every `palette` command they show uses a subcommand, flags and config keys
that exist, and every Python example they show runs, here on a tiny model."""

import argparse
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from palette.cli import build_parser
from palette.config import apply_overrides, preset

ROOT = Path(__file__).resolve().parents[1]
PAGES = {path.relative_to(ROOT).as_posix(): path.read_text()
         for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}
SHELL = ("", "bash", "sh")


def _blocks(text: str) -> tuple[list[tuple[str, str]], str]:
    """The fenced blocks of a markdown page as (language, body), and the prose around them."""
    blocks, prose, language, body = [], [], None, []
    for line in text.split("\n"):
        if line.startswith("```"):
            if language is None:
                language, body = line[3:].strip(), []
            else:
                blocks.append((language, "\n".join(body)))
                language = None
        elif language is None:
            prose.append(line)
        else:
            body.append(line)
    return blocks, "\n".join(prose)


def _commands(text: str) -> list[tuple[str, str]]:
    """(subcommand, rest of the line) of each `palette ...` in a page's shell blocks and inline code."""
    blocks, prose = _blocks(text.replace("$(which palette)", "palette"))
    snippets = [body.replace("\\\n", " ") for language, body in blocks if language in SHELL]
    snippets += re.findall(r"`(palette [^`]+)`", prose)
    commands = []
    for snippet in snippets:
        for line in snippet.split("\n"):
            line = re.sub(r"^\s*#\s*", "", line).split(" #")[0]  # commented-out alternatives count too
            # a subcommand followed by ":" is an error message quoted in a block, not a command
            for match in re.finditer(r"(?:^|[\s\"'])palette\s+([a-z][a-z-]*)(?![\w:-])(.*?)(?=$|\||;|&&|\")", line):
                commands.append((match.group(1), match.group(2)))
    return commands


def _python_blocks(text: str) -> list[str]:
    return [body for language, body in _blocks(text)[0] if language == "python"]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


COMMANDS = [(page, command, rest) for page, text in PAGES.items() for command, rest in _commands(text)]
PYTHON_PAGES = [page for page, text in PAGES.items() if _python_blocks(text)]


def test_the_readme_shows_the_commands_a_new_user_starts_with():
    shown = {command for page, command, _ in COMMANDS if page == "README.md"}
    assert {"demo", "train", "sample", "eval", "serve"} <= shown


def test_every_subcommand_is_shown_somewhere_in_the_readme_or_docs():
    assert set(_subparsers()) - {command for _, command, _ in COMMANDS} == set()


def test_the_docs_pages_are_read():
    assert {"docs/training.md", "docs/sampling.md", "docs/evaluation.md", "docs/scaling.md"} <= set(PAGES)


@pytest.mark.parametrize(("page", "command", "rest"), COMMANDS,
                         ids=[f"{page}:{c}{r[:40]}" for page, c, r in COMMANDS])
def test_a_documented_command_uses_flags_and_config_keys_that_exist(page, command, rest):
    parsers = _subparsers()
    assert command in parsers, f"{page}: palette {command}: no such subcommand"
    parser = parsers[command]
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if nested and rest.strip():  # a command of a group such as `palette study create` (the group alone: prose)
        sub = rest.split()[0]
        assert sub in nested[0].choices, f"{page}: palette {command} {sub}: no such subcommand"
        parser = nested[0].choices[sub]
    flags = set(parser._option_string_actions)
    for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", rest):
        assert flag in flags, f"{page}: palette {command} has no {flag}"
    for override in re.findall(r"(?<![\w./-])([a-z_]+\.[a-z_]+=[^\s`]+)", rest):
        if command in ("train", "bench"):
            apply_overrides(preset("tiny"), [override])  # raises on an unknown key or a bad value


def test_the_readme_shows_python():
    assert "README.md" in PYTHON_PAGES


@pytest.fixture
def example_dir(tmp_path, monkeypatch, trained_run, photo_dir) -> Path:
    """The files the examples name: a run folder `run/` (a micro model trained on every task) and `photo.png`."""
    (tmp_path / "run").symlink_to(trained_run, target_is_directory=True)
    shutil.copy(photo_dir / "chelsea.png", tmp_path / "photo.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_the_python_examples_of_a_page_run_in_order_on_a_tiny_model(page, example_dir):
    """A page's blocks share one namespace, as a reader running them one after another would."""
    namespace = {"__name__": "__example__"}
    for number, block in enumerate(_python_blocks(PAGES[page]), 1):
        exec(compile(block, f"{page}, python block {number}", "exec"), namespace)
        for saved in re.findall(r"\.save\(\"([^\"]+)\"\)", block):
            with Image.open(example_dir / saved) as image:  # raises when the example wrote no image there
                image.verify()


@pytest.mark.parametrize("page", list(PAGES))
def test_the_relative_links_of_a_page_point_to_files_that_exist(page):
    """Links and pictures such as [training](docs/training.md) or ![sheet](images/eval_sheet.png), #anchors cut off."""
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", PAGES[page])
    missing = [target for target in targets
               if "://" not in target and not ((ROOT / page).parent / target).exists()]
    assert missing == []
