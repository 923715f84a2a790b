"""The shell blocks of the README and docs/ name commands that exist (issue 30): make
targets in the Makefile, bdsel subcommands and options the CLI parses, configs and --set
overrides that load, scripts that are there. Nothing is run."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from bdsel_cli.main import app

from bdsel.config import load_config
from bdsel.names import check_names

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_lines(page: Path) -> list[str]:
    """Each command of the page's ```bash blocks: continuations joined, comments dropped."""
    out = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", page.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


COMMANDS = [(page.name, line) for page in PAGES for line in shell_lines(page)]


def test_the_pages_have_commands_to_check():
    assert len(COMMANDS) >= 8 and any(c.startswith("make demo") for _, c in COMMANDS)


@pytest.mark.parametrize(("page", "line"), COMMANDS)
def test_each_command_exists(page: str, line: str):
    words = shlex.split(line)
    if words[0] == "make":
        targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
        assert set(words[1:]) <= targets, f"{page}: {line}"
        return
    if words[0].endswith("python") or words[0] == "python3":
        assert (ROOT / words[1]).is_file(), f"{page}: {line}"
        return
    if words[0] == "torchrun":
        words = words[words.index("bdsel_cli.main") :]
    assert words[0] in ("bdsel", "bdsel_cli.main"), f"{page}: unknown command in {line}"
    _parse(words[1:], page, line)


def _parse(args: list[str], page: str, line: str) -> None:
    """The CLI's own parser on the arguments (click), then the config they name, as train
    would load it."""
    group = typer.main.get_command(app)
    ctx = group.make_context("bdsel", list(args), resilient_parsing=False)
    command = group.get_command(ctx, args[0])
    assert command is not None, f"{page}: no bdsel {args[0]} ({line})"
    sub = command.make_context(args[0], list(args[1:]))
    params = sub.params
    if params.get("config"):
        cfg = load_config(params["config"], params.get("set_") or [])
        check_names(cfg)
