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

from bdsel.configure import load_config
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


def test_the_readme_starts_with_the_commands_and_stays_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    first_train = next(i for i, line in enumerate(lines) if line.startswith("bdsel train "))
    assert first_train < 60
    assert any(line.startswith("make demo") for line in lines[:first_train])
    assert any(line.startswith("make test") for line in lines[:first_train])


def test_the_readmes_library_snippet_runs(monkeypatch):
    """The README's loop as it is, on a tiny model whose last layer takes 512 features and a
    loader of 320 candidates a step; the ``...`` becomes a backward pass. The table comes from
    the path the snippet names."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import bdsel

    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    step = "nn.functional.cross_entropy(model(images[pos]), labels[pos]).backward()"
    code = block.replace("    ...  # the ordinary step on images[pos], labels[pos]", f"    {step}")
    assert code != block
    n, classes = 640, 10
    torch.manual_seed(0)
    x, y = torch.randn(n, 8), torch.randint(0, classes, (n,))
    model = nn.Sequential(nn.Linear(8, 512), nn.ReLU(), nn.Linear(512, classes))
    table = bdsel.ZeroShotTable(torch.log_softmax(torch.randn(n, classes), dim=1))
    opened = []
    monkeypatch.setattr(
        bdsel.ZeroShotTable, "from_cache", lambda path: opened.append(path) or table
    )
    loader = DataLoader(bdsel.IndexedDataset(TensorDataset(x, y)), batch_size=320)
    space = {"bdsel": bdsel, "model": model, "loader": loader, "nn": nn}
    exec(compile(code, "README.md", "exec"), space)  # noqa: S102
    assert opened == ["cache/mine.h5"]
    assert len(space["pos"]) == 32
    assert model[2].weight.grad is not None and model[2].weight.grad.abs().sum() > 0
