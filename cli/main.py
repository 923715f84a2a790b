"""The ``bdsel`` command: thin wrappers that parse arguments and call the library."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

app = typer.Typer(
    help="Bayesian data selection for accelerated training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="A YAML file, or the name of a shipped config."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a key: --set select.method=bayesian (repeatable)."),
]


class _ConsoleHandler(logging.Handler):
    """The library's warnings (a damaged metrics line, a complete run) as one console line."""

    def emit(self, record: logging.LogRecord) -> None:
        say("warning", "yellow", record.getMessage())


class Terminated(KeyboardInterrupt):
    """SIGTERM (kill), handled like Ctrl-C: the atomic writes clean up, exit 143."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated


@app.callback()
def _main() -> None:
    # Under torchrun every rank runs the command; only rank 0 talks.
    console.quiet = os.environ.get("RANK", "0") != "0"
    logger = logging.getLogger("bdsel")
    if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
        logger.addHandler(_ConsoleHandler())
        logger.propagate = False
    if threading.current_thread() is threading.main_thread():  # signals reach only that one
        signal.signal(signal.SIGTERM, _on_sigterm)


def say(label: str, style: str, text: str) -> None:
    """``label: text`` on one line however long (a log or a pipe must not wrap it at 80
    columns). ``text`` is printed as it is, never read as rich markup: a path or a value
    the user typed keeps its square brackets."""
    console.print(Text.assemble((label, style), ": ", text), soft_wrap=True, highlight=False)


def fail(message: str, code: int = 2) -> typer.Exit:
    say("error", "bold red", message)
    return typer.Exit(code)


def _interrupted(exc: KeyboardInterrupt, what: str) -> typer.Exit:
    code = 143 if isinstance(exc, Terminated) else 130
    say("terminated" if code == 143 else "interrupted", "yellow", what)
    return typer.Exit(code)


def _user_errors() -> tuple[type[BaseException], ...]:
    from bdsel.config import ConfigError
    from bdsel.data import DataError
    from bdsel.rundir import RunDirError
    from bdsel.train import TrainingDiverged

    return (ConfigError, DataError, RunDirError, TrainingDiverged, FileNotFoundError, ValueError)


END_OF_DOCUMENT = "\n...\n"  # what yaml.safe_dump puts after a lone scalar


def config_changes(cfg) -> list[str]:
    """``key=value`` (as --set takes it) for every key whose value differs from the defaults."""
    import yaml

    from bdsel.configure import defaults_like

    def walk(a: dict, b: dict, prefix: str = "") -> list[str]:
        out = []
        for k, v in a.items():
            if isinstance(v, dict):
                out += walk(v, b.get(k, {}), f"{prefix}{k}.")
            elif v != b.get(k):
                text = yaml.safe_dump(v, default_flow_style=True, width=1000)
                out.append(f"{prefix}{k}={text.removesuffix(END_OF_DOCUMENT).strip()}")
        return out

    return walk(cfg.to_dict(), defaults_like(cfg))


def epoch_line(record: dict, epochs: int) -> str:
    """One epoch's numbers within 80 columns (a log or a pipe must not wrap them)."""
    p = "test" if "test_acc" in record else "val"

    def num(key: str, fmt: str) -> str:
        value = record.get(key)
        return "-" if value is None else format(value, fmt)

    noisy = record.get("selected_noisy_frac")
    return (
        f"epoch {record['epoch']:>{len(str(epochs))}}  {p} acc {num(p + '_acc', '.2%')}"
        f" loss {num(p + '_loss', '.3f')}  train loss {num('train_loss', '.3f')}"
        + (f"  noisy {noisy:.1%}" if noisy is not None else "")
        + f"  {record['wall_s']:.0f}s"
    )


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Default: runs/<config>-<method>-s<seed>.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a stopped run.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing run.")
    ] = False,
) -> None:
    """Train with online batch selection and write a run directory."""
    from bdsel.rundir import CHECKPOINT
    from bdsel.train import train as train_run

    if resume and overwrite:
        raise fail("--resume and --overwrite exclude each other")
    try:
        cfg, run_dir = _train_config(config, set_, run_dir, resume)
        if resume and _said_finished(run_dir, cfg):
            return
        console.rule(Text(f"bdsel train → {run_dir}"))
        changes = config_changes(cfg)
        console.print(
            "config (changes from the defaults; all of it in config.yaml): "
            + ("  ".join(changes) or "none"),
            highlight=False,
            markup=False,
        )
        mode = "resume" if resume else "overwrite" if overwrite else "new"

        def show(record: dict) -> None:
            progress.console.print(epoch_line(record, cfg.train.epochs), highlight=False)

        from bdsel.distributed import shutdown
        from bdsel.runtime import step_progress

        with step_progress(console) as progress:
            summary = train_run(cfg, run_dir, mode=mode, on_epoch=show, progress=progress)
        shutdown()  # under torchrun: leave the process group train() joined
    except KeyboardInterrupt as exc:
        if run_dir is not None and (run_dir / CHECKPOINT).is_file():
            what = (
                f"the last checkpoint in {run_dir} is intact; "
                f"continue with: bdsel train --run-dir {run_dir} --resume"
            )
        else:
            what = "stopped before the first checkpoint: nothing to resume; start again with --overwrite"
        raise _interrupted(exc, what) from None
    except _user_errors() as exc:
        raise fail(str(exc)) from None
    _print_done(summary, run_dir)


def _said_finished(run_dir: Path, cfg: Any) -> bool:
    """--resume of a finished run: say so (and any damage to its records), touch nothing."""
    from bdsel.rundir.writer import RunDir

    if (finished := RunDir(run_dir).finished_summary(cfg)) is None:
        return False
    say(
        "complete",
        "bold green",
        f"{run_dir} finished all {cfg.train.epochs} epochs (final acc {_final_acc(finished)}); "
        "nothing to resume, the run is left as it is",
    )
    if (damage := RunDir(run_dir).finished_damage(cfg)) is not None:
        say("warning", "yellow", damage)
    return True


def _train_config(
    config: str | None, set_: list[str] | None, run_dir: Path | None, resume: bool
) -> tuple[Any, Path]:
    """The run's config (with --resume and no --config: the run's own saved one) and its
    directory (default runs/<config>-<method>-s<seed>, <config> the file's stem or the shipped
    config's name)."""
    from bdsel.configure import load_config
    from bdsel.names import check_names
    from bdsel.rundir import CONFIG
    from bdsel.rundir.writer import resume_problem

    if resume and run_dir is not None and (problem := resume_problem(run_dir)):
        raise fail(problem)
    if resume and run_dir is not None and config is None and not set_:
        config = str(run_dir / CONFIG)  # resume with the run's own saved config
    if config is None:
        raise fail("--config is required (a YAML file or a shipped config name)")
    cfg = load_config(config, set_ or [])
    check_names(cfg)
    if run_dir is None:
        run_dir = Path("runs") / f"{Path(config).stem}-{cfg.select.method}-s{cfg.seed}"
    return cfg, run_dir


def _print_done(summary: dict, run_dir: Path) -> None:
    reached = ", ".join(
        f"{float(t):.1%}: {'epoch ' + str(e) if e else 'not reached'}"
        for t, e in summary["epochs_to_target"].items()
    )
    prefix = "test" if "final_test_acc" in summary else "val"
    say(
        "done",
        "bold green",
        f"final {prefix} acc {_final_acc(summary)}, best {summary[f'best_{prefix}_acc']:.2%}, "
        f"{summary['wall_s']:.0f}s training ({summary['selection_s']:.0f}s selecting); "
        f"targets {reached}; run in {run_dir}",
    )


def _final_acc(summary: dict) -> str:
    acc = summary.get("final_test_acc", summary.get("final_val_acc"))
    return f"{acc:.2%}" if isinstance(acc, float) else "-"


@app.command("cache-zeroshot")
def cache_zeroshot(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="The HDF5 file; default: zeroshot.cache.")
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a cache made for something else.")
    ] = False,
) -> None:
    """Run the zero-shot predictor once over the dataset and cache its log-probs (HDF5)."""
    from bdsel.cache.format import CacheError
    from bdsel.configure import load_config
    from bdsel.distributed import shutdown
    from bdsel.names import check_names
    from bdsel.predict import cache_zeroshot as run_cache
    from bdsel.predict import default_cache_path
    from bdsel.predictors.registry import summary_rows

    if config is None:
        raise fail("--config is required (a YAML file or a shipped config name)")
    try:
        cfg = load_config(config, set_ or [])
        check_names(cfg)
        path = out or default_cache_path(cfg)
        console.rule(Text(f"bdsel cache-zeroshot → {path}"))
        started = time.perf_counter()
        summary = run_cache(cfg, path, overwrite=overwrite, console=console)
        seconds = time.perf_counter() - started  # the predictor's fit included
        shutdown()  # under torchrun: leave the process group cache_zeroshot() joined
    except KeyboardInterrupt as exc:
        raise _interrupted(exc, "run the same command again to resume") from None
    except (CacheError, *_user_errors()) as exc:
        raise fail(str(exc)) from None
    from rich.table import Table

    table = Table(title=f"zero-shot cache ({cfg.zeroshot.predictor})", show_header=False)
    for key, value in (
        ("file", str(summary.path)),
        ("rows", f"{summary.n_train} train + {summary.n_test} test"),
        ("classes", str(summary.n_classes)),
        ("train accuracy (clean labels)", f"{summary.train_accuracy:.2%}"),
        ("test accuracy", f"{summary.test_accuracy:.2%}"),
        ("mean log-prob of the clean label", f"{summary.mean_clean_logprob:.3f}"),
        *summary_rows(summary.predictor or {}),
        (
            "fitted temperature",
            "-" if summary.temperature is None else f"{summary.temperature:.3f}",
        ),
        *denoised_rows(summary),
        ("time (fitting the predictor included)", f"{seconds:.1f}s"),
        ("the cache's cost (fitting included, every session)", seconds_text(summary)),
    ):
        table.add_row(Text(key), Text(value))  # a path is not markup
    console.print(table)


def seconds_text(summary) -> str:
    """The cache's recorded cost, or why there is none."""
    if summary.predictor_seconds is None:
        return "not recorded (made before bdsel recorded it)"
    return f"{summary.predictor_seconds:.1f}s"


def denoised_rows(summary) -> list[tuple[str, str]]:
    """The fit under label noise (a predictor calibrated on observed labels), as table rows."""
    if summary.label_noise_rate is None:
        return []
    return [
        ("temperature fitted with label noise (auto)", f"{summary.temperature_denoised:.3f}"),
        (
            f"estimated label noise ({summary.noise_model or 'symmetric'})",
            f"{summary.label_noise_rate:.1%}",
        ),  # fmt: skip
    ]


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories, or folders of runs.")],
    targets: Annotated[
        str | None,
        typer.Option("--targets", help="Test-accuracy targets, e.g. 0.8,0.875 (default: config)."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where plots and tables go.")] = None,
) -> None:
    """The paper's table, accuracy curves and noise-in-selection plots from run directories."""
    from bdsel.report import ReportError, make_report, render_table

    try:
        target_list = [float(t) for t in targets.split(",")] if targets else None
    except ValueError:
        raise fail(f"--targets {targets!r}: expected numbers separated by commas") from None
    try:
        result = make_report(list(run_dirs), targets=target_list, out_dir=out)
    except ReportError as exc:
        raise fail(str(exc)) from None
    for warning in result.warnings:
        say("warning", "yellow", warning)
    # A table read in a log or a pipe keeps its columns rather than the 80 of a non-terminal.
    out = Console() if sys.stdout.isatty() else Console(width=200)
    out.print(render_table(result))
    for name, path in result.files.items():
        console.print(Text(f"wrote {name}: {path}"), soft_wrap=True)


configs_app = typer.Typer(
    help="List and show the shipped configs, and every key.", no_args_is_help=True
)
app.add_typer(configs_app, name="configs")


@configs_app.command("list")
def configs_list() -> None:
    """Names of the shipped configs (usable as --config NAME)."""
    from bdsel.config import list_shipped_configs

    for name in list_shipped_configs():
        typer.echo(name)


@configs_app.command("show")
def configs_show(
    name: Annotated[str, typer.Argument(help="A shipped config name or a YAML path.")],
    set_: SetOpt = None,
) -> None:
    """Print a config resolved with its defaults and overrides."""
    from bdsel.config import ConfigError, dump_config
    from bdsel.configure import load_config
    from bdsel.names import check_names

    try:
        cfg = load_config(name, set_ or [])
        check_names(cfg)
        typer.echo(dump_config(cfg), nl=False)
    except ConfigError as exc:
        raise fail(str(exc)) from None


@configs_app.command("keys")
def configs_keys(
    grep: Annotated[
        str,
        typer.Argument(help="Only the keys (or their method or predictor) that contain this text."),
    ] = "",
) -> None:
    """Every config key: its type, default, allowed values and meaning, and the method or
    predictor whose own it is (a Markdown table, as docs/config.md holds it)."""
    from bdsel.config.reference import markdown_table
    from bdsel.configure import owned_settings

    header, rule, *rows = markdown_table(owned_settings()).splitlines()
    for line in [header, rule, *(r for r in rows if grep in "|".join(r.split("|")[1:3]))]:
        typer.echo(line)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
