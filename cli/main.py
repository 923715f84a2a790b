"""The ``bdsel`` command: thin wrappers that parse arguments and call the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.syntax import Syntax

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


@app.callback()
def _main() -> None:
    # Under torchrun every rank runs the command; only rank 0 talks.
    console.quiet = os.environ.get("RANK", "0") != "0"


def fail(message: str, code: int = 2) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}")
    return typer.Exit(code)


def _user_errors() -> tuple[type[BaseException], ...]:
    from bdsel.config import ConfigError
    from bdsel.data import DataError
    from bdsel.rundir import RunDirError

    return (ConfigError, DataError, RunDirError, FileNotFoundError, ValueError)


@app.command()
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: Annotated[
        Path | None, typer.Option("--run-dir", help="Default: runs/<name>-<method>-s<seed>.")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue a stopped run.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing run.")
    ] = False,
) -> None:
    """Train with online batch selection and write a run directory."""
    from bdsel.config import dump_config, load_config
    from bdsel.registries import check_names
    from bdsel.rundir import CONFIG, acc_key, loss_key, metric_prefix
    from bdsel.train import train as train_run

    if resume and overwrite:
        raise fail("--resume and --overwrite exclude each other")
    try:
        if resume and run_dir is not None and config is None and not set_:
            config = str(run_dir / CONFIG)  # resume with the run's own saved config
        if config is None:
            raise fail("--config is required (a YAML file or a shipped config name)")
        cfg = load_config(config, set_ or [])
        check_names(cfg)
        if run_dir is None:
            run_dir = Path("runs") / f"{cfg.name or 'run'}-{cfg.select.method}-s{cfg.seed}"
        console.rule(f"bdsel train → {run_dir}")
        console.print(Syntax(dump_config(cfg), "yaml", background_color="default"))
        mode = "resume" if resume else "overwrite" if overwrite else "new"
        # test_acc, or val_acc for eval.split=validation; "test" or "val" in what is printed
        acc, loss = acc_key(cfg.eval.split), loss_key(cfg.eval.split)
        shown = metric_prefix(cfg.eval.split)

        def show(record: dict) -> None:
            noisy = record["selected_noisy_frac"]
            noise = f"  noisy among selected {noisy:.1%}" if noisy is not None else ""
            progress.console.print(
                f"epoch {record['epoch']:>4}  {shown} acc {record[acc]:.2%}  "
                f"{shown} loss {record[loss]:.3f}  train loss {record['train_loss']:.3f}"
                f"{noise}  {record['wall_s']:.0f}s"
            )

        from bdsel.distributed import shutdown
        from bdsel.engine import step_progress

        with step_progress(console) as progress:
            summary = train_run(cfg, run_dir, mode=mode, on_epoch=show, progress=progress)
        shutdown()  # under torchrun: leave the process group train() joined
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted[/]: the last checkpoint in {run_dir} is intact; "
            f"continue with: bdsel train --run-dir {run_dir} --resume"
        )
        raise typer.Exit(130) from None
    except _user_errors() as exc:
        raise fail(str(exc)) from None
    reached = ", ".join(
        f"{float(t):.1%}: {'epoch ' + str(e) if e else 'not reached'}"
        for t, e in summary["epochs_to_target"].items()
    )
    console.print(
        f"[bold green]done[/]: final {shown} acc {summary['final_' + acc]:.2%}, "
        f"best {summary['best_' + acc]:.2%}, {summary['wall_s']:.0f}s training "
        f"({summary['selection_s']:.0f}s selecting); targets {reached}; run in {run_dir}"
    )


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
    from bdsel.config import load_config
    from bdsel.distributed import shutdown
    from bdsel.registries import check_names
    from bdsel.zeroshot.cache import CacheError
    from bdsel.zeroshot.run import cache_zeroshot as run_cache
    from bdsel.zeroshot.run import default_cache_path

    if config is None:
        raise fail("--config is required (a YAML file or a shipped config name)")
    try:
        cfg = load_config(config, set_ or [])
        check_names(cfg)
        path = out or default_cache_path(cfg)
        console.rule(f"bdsel cache-zeroshot → {path}")
        summary = run_cache(cfg, path, overwrite=overwrite, console=console)
        shutdown()  # under torchrun: leave the process group cache_zeroshot() joined
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: run the same command again to resume")
        raise typer.Exit(130) from None
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
        ("time", f"{summary.seconds:.1f}s"),
    ):
        table.add_row(key, value)
    console.print(table)


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
        console.print(f"[yellow]warning:[/] {warning}")
    # A table read in a log or a pipe keeps its columns rather than the 80 of a non-terminal.
    out = Console() if sys.stdout.isatty() else Console(width=200)
    out.print(render_table(result))
    for name, path in result.files.items():
        console.print(f"wrote {name}: {path}")


configs_app = typer.Typer(help="List and show the shipped configs.", no_args_is_help=True)
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
    from bdsel.config import ConfigError, dump_config, load_config
    from bdsel.registries import check_names

    try:
        cfg = load_config(name, set_ or [])
        check_names(cfg)
        typer.echo(dump_config(cfg), nl=False)
    except ConfigError as exc:
        raise fail(str(exc)) from None


def main() -> None:
    app()


if __name__ == "__main__":
    main()
