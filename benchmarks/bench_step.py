"""Time one training step per selection method, side by side in one run.

Each step is the training loop's own ``bdsel.step.Stepper.step``; its phases are timed through
the objects it calls: candidate forward (if the method needs it) / selection (scoring,
sampling) / training step (forward, backward, optimizer: the rest of the step) / observe (the
posterior update for bayesian). Ratios against uniform's step are printed, so the figures
compare on the same machine, model and batch sizes. Warm-up steps are excluded; CUDA is
synchronised around each phase (only here: the training loop itself never syncs).

    python benchmarks/bench_step.py --model small_cnn --classes 10 --size 28 --channels 1
    python benchmarks/bench_step.py --model resnet18_cifar --classes 1000 --methods uniform,bayesian
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

from bdsel.assemble import rescore_size
from bdsel.configure import load_config
from bdsel.data import derive_run_data, from_tensors, make_image_source
from bdsel.evaluation import make_ema
from bdsel.forward import autocast_for, candidate_precision
from bdsel.models import create_model
from bdsel.optim import build_optimizer
from bdsel.runtime import SectionTimer, resolve_device
from bdsel.selection import (
    Candidates,
    ForwardOutputs,
    Selector,
    SelectorContext,
    selector_class,
    selector_from_config,
)
from bdsel.step import EpochStats, Run, Stepper, candidate_forward

PHASES = ("candidate_forward", "select", "train_step", "observe")


class PhaseTimer:
    """``with timer("name"):`` adds the block's seconds to ``totals[name]`` while ``record``
    is set (CUDA synchronised)."""

    def __init__(self, device: torch.device, totals: dict[str, float]) -> None:
        self.device, self.totals, self.record = device, totals, False

    @contextlib.contextmanager
    def __call__(self, name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if self.record:
            self.totals[name] += time.perf_counter() - t0


class TimedForward(nn.Module):
    """The candidate forward's model, timed as the "candidate_forward" phase (a module, so
    train_step's batch-norm handling reaches the wrapped model's layers)."""

    def __init__(self, model: nn.Module, phase: PhaseTimer) -> None:
        super().__init__()
        self.model, self.phase = model, phase

    def forward(self, x: torch.Tensor):
        with self.phase("candidate_forward"):
            return self.model(x)


def _time_selector(selector: Selector, phase: PhaseTimer, on_select: Callable | None) -> None:
    """Time the selector's ``select`` and ``observe`` as phases of the step that calls them;
    ``on_select(inputs, labels, outputs)`` runs untimed first, before the step changes the
    model."""
    select, observe = selector.select, selector.observe

    def timed_select(indices, labels, logits=None, features=None, **kw):
        if on_select is not None and logits is not None and phase.record:
            with phase("excluded"):  # taken out of the step's time again
                on_select(kw["inputs"], labels, ForwardOutputs(logits, features))
        with phase("select"):
            return select(indices, labels, logits, features, **kw)

    def timed_observe(*args):
        with phase("observe"):
            observe(*args)

    selector.select, selector.observe = timed_select, timed_observe


def _record_agreement(agreement: list[float], forward, args, inputs, labels, outputs) -> None:
    agreement.append(_top_agreement(forward, inputs, labels, outputs, args))


def bench(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    torch.manual_seed(0)
    n, c = args.n_train, args.classes
    x = torch.randint(0, 256, (n, args.channels, args.size, args.size), dtype=torch.uint8)
    y = torch.randint(0, c, (n,))
    ds = from_tensors(
        "bench", x, y, x[:10], y[:10], [str(i) for i in range(c)], crop_padding=4, flip=True
    )
    source = make_image_source(ds, device, channels_last=not args.nchw)
    autocast = autocast_for(device)
    # what auto means on this device, for the printout
    args.candidate_precision = candidate_precision(device, args.candidate_precision)
    score_autocast = autocast_for(device, args.candidate_precision)
    zs = torch.log_softmax(torch.randn(n, c, device=device) * 3, dim=1)
    results, profiles = {}, {}
    # The first model built pays one-off costs (kernel selection, allocator growth); a
    # discarded round of the first method keeps them out of every method's figures.
    methods = args.methods.split(",")
    for method in [methods[0], *methods]:
        cfg = load_config(
            values={
                "model": {"name": args.model},
                "select": {
                    "method": method,
                    "n_candidates": args.n_candidates,
                    "n_selected": args.n_selected,
                    # the bayesian method's own, for when it runs
                    "bayesian": {"n_samples": args.n_samples},
                    # a method that keeps no scores scores every candidate
                    "rescore": args.rescore if selector_class(method).keeps_scores() else 1.0,
                },
                "data": {"train_fraction": 1.0},
            }
        )
        data = derive_run_data(ds, cfg.data, 0)
        model = create_model(args.model, n_classes=c, in_channels=args.channels).to(device)
        if args.nchw:
            model = model.to(memory_format=torch.contiguous_format)
        forward = torch.compile(model) if args.compile else model
        opt = build_optimizer(model, cfg.train)
        ctx = SelectorContext(
            config=cfg,
            n_classes=c,
            n_features=model.n_features,
            device=device,
            lookups={"zs_logprobs": zs, "il_logprobs": zs},
            extras={"data": data, "source": source, "model": model},
        )
        selector = selector_from_config(method, ctx)
        if args.independent_noise and method == "bayesian":
            selector.shared_noise = False
        selector.check_finite = False  # as bdsel train builds it
        if cfg.select.rescore < 1.0:
            selector.set_epoch(1)  # its second selecting epoch: the shortlist is on
        totals = dict.fromkeys((*PHASES, "step", "excluded"), 0.0)
        phase = PhaseTimer(device, totals)
        agreement: list[float] = []
        on_select = None
        if args.candidate_precision != "fp32":
            on_select = functools.partial(_record_agreement, agreement, forward, args)
        _time_selector(selector, phase, on_select)
        run = Run(
            config=cfg,
            device=device,
            data=data,
            source=source,
            model=model,
            selector=selector,
            optimizer=opt,
            scheduler=torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0),
            steps_per_epoch=args.warmup + args.steps,
            n_rescored=rescore_size(cfg, selector),
            observed=data.observed.to(device),
            noisy=data.noisy.to(device),
            ema=make_ema(model, cfg.train.ema_decay),  # the step updates it, as in training
        )
        score_forward = TimedForward(forward, phase)
        stats, section = EpochStats.zeros(device), SectionTimer(device)
        stepper = Stepper(run, score_forward, forward, score_autocast, autocast, section, stats)
        g = torch.Generator(device=device).manual_seed(0)

        t_warmup = time.perf_counter()
        for step in range(args.warmup + args.steps):
            if step == args.warmup:  # what the first steps cost: compilation, with --compile
                warmup_s = time.perf_counter() - t_warmup
            phase.record = step >= args.warmup
            idx = torch.randint(0, n, (args.n_candidates,), device=device, generator=g)
            cand = Candidates(idx, source.rows("train", idx, g), run.observed[idx])
            with phase("step"):
                stepper.step(cand, g)
        # What is left of the step once the timed calls inside it are taken out.
        totals["train_step"] = totals["step"] - totals["excluded"] - sum(totals[p] for p in PHASES)
        ms = {k: 1000 * totals[k] / args.steps for k in PHASES}
        ms["step"] = sum(ms.values())
        ms["warmup_s"] = warmup_s
        if agreement:
            ms["top_agreement"] = sum(agreement) / len(agreement)
        results[method] = ms  # the discarded first round is overwritten here
        if args.profile:
            del selector.select, selector.observe  # the untimed, unwrapped methods again

            step = functools.partial(
                _plain_step, run, n, args.n_candidates, g, (autocast, score_autocast), forward
            )
            profiles[method] = profile_steps(step, args.steps, device)
    return {"ms": results, "profile": profiles}


def _plain_step(run: Run, n: int, n_candidates: int, g, autocasts, forward) -> None:
    """One Stepper.step on random candidates, labelled ``bdsel/step``, with nothing timed."""
    idx = torch.randint(0, n, (n_candidates,), device=run.device, generator=g)
    cand = Candidates(idx, run.source.rows("train", idx, g), run.observed[idx])
    stats, section = EpochStats.zeros(run.device), SectionTimer(run.device)
    with record_function("bdsel/step"):
        Stepper(run, forward, forward, autocasts[1], autocasts[0], section, stats).step(cand, g)


def profile_steps(step: Callable[[], None], n_steps: int, device: torch.device) -> dict:
    """torch.profiler over ``n_steps`` calls of ``step``: per ``bdsel/<phase>`` label of
    train_step, the mean ms per step (inclusive), and the ops with the most self time."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(n_steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    events = prof.key_averages()
    phases = {
        e.key.removeprefix("bdsel/"): e.cpu_time_total / 1000 / n_steps
        for e in events
        if e.key.startswith("bdsel/")
    }
    ops = sorted(
        (e for e in events if not e.key.startswith("bdsel/")),
        key=lambda e: e.self_cpu_time_total,
        reverse=True,
    )
    top = {e.key: e.self_cpu_time_total / 1000 / n_steps for e in ops[:12]}
    return {"phases_ms": phases, "top_ops_self_ms": top}


def print_profile(method: str, prof: dict) -> None:
    phases = dict(prof["phases_ms"])
    total = phases.pop("step")
    print(
        f"\n## {method}: one step under torch.profiler, {total:.1f} ms (profiler overhead included)"
    )
    print(f"{'phase':<24}{'ms/step':>10}{'share':>9}")
    for name, ms in sorted(phases.items(), key=lambda kv: -kv[1]):
        print(f"{name:<24}{ms:>10.2f}{ms / total:>9.1%}")
    rest = total - sum(phases.values())
    print(f"{'(outside the phases)':<24}{rest:>10.2f}{rest / total:>9.1%}")
    print(f"{'op (self time)':<40}{'ms/step':>10}")
    for name, ms in prof["top_ops_self_ms"].items():
        print(f"{name[:40]:<40}{ms:>10.2f}")


def _top_agreement(forward, inputs, labels, outputs, args) -> float:
    """Untimed: the share of the top-n_b candidates by loss that the fp32 forward also ranks
    top-n_b (1.0: the lower precision changes nothing the loss-based methods select)."""
    full = candidate_forward(forward, inputs, autocast_for(inputs.device, "fp32"))
    tops = [
        set(F.cross_entropy(o.logits, labels, reduction="none").topk(args.n_selected)[1].tolist())
        for o in (full, outputs)
    ]
    return len(tops[0] & tops[1]) / args.n_selected


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="resnet18_cifar")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-candidates", type=int, default=320)
    p.add_argument("--n-selected", type=int, default=32)
    p.add_argument("--n-samples", type=int, default=256)
    p.add_argument("--methods", default="uniform,train_loss,rho_loss,bayesian")
    p.add_argument("--device", default="auto")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--profile",
        action="store_true",
        help="then profile --steps more steps per method (torch.profiler, phases of the step)",
    )
    p.add_argument(
        "--rescore",
        type=float,
        default=1.0,
        help="select.rescore where the method keeps scores (others score every candidate)",
    )
    p.add_argument(
        "--independent-noise",
        action="store_true",
        help="bayesian: independent noise per candidate (S·B·C² work) instead of shared",
    )
    p.add_argument(
        "--candidate-precision",
        default="auto",
        choices=["bf16", "fp32", "auto"],
        help="autocast of the candidate forward (select.candidate_precision)",
    )
    p.add_argument("--nchw", action="store_true", help="weights in NCHW (the pre-NHWC layout)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()
    from bdsel.selection import list_selectors

    args.methods = ",".join(m for m in args.methods.split(",") if m in list_selectors())
    out = bench(args)
    results = out["ms"]
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"# {args.model}, C={args.classes}, n_B={args.n_candidates}, n_b={args.n_selected}, "
        f"S={args.n_samples}{' (independent noise)' if args.independent_noise else ''}, "
        f"rescore {args.rescore:g}; "
        f"candidate forward {args.candidate_precision}, {'NCHW' if args.nchw else 'NHWC'} "
        f"weights; {device.type} ({name}), {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; mean over {args.steps} steps after {args.warmup} warm-up"
    )
    base = results.get("uniform", {}).get("step")
    header = (
        f"{'method':<18}"
        + "".join(f"{p:>18}" for p in (*PHASES, "step"))
        + f"{'vs uniform':>12}{'steps/s':>10}{'samples/s':>11}{'warm-up':>10}"
    )
    print(header)
    for method, ms in results.items():
        ratio = f"{ms['step'] / base:.2f}x" if base else "-"
        row = f"{method:<18}" + "".join(f"{ms[p]:>16.1f}ms" for p in (*PHASES, "step"))
        sps = 1000 / ms["step"]
        warm = f"{ms['warmup_s']:.1f}s"
        print(row + f"{ratio:>12}{sps:>10.2f}{sps * args.n_selected:>11.0f}{warm:>10}")
        if "top_agreement" in ms:
            print(
                f"{'':<18}top-{args.n_selected} by loss, {args.candidate_precision} vs fp32 "
                f"candidate forward: {ms['top_agreement']:.1%} the same"
            )
        if method == "bayesian":
            posterior = ms["select"] + ms["observe"]
            print(
                f"{'':<18}posterior work (sampling + score + update): {posterior:.1f}ms = {posterior / ms['step']:.1%} of the step"
            )
    for method, prof in out["profile"].items():
        print_profile(method, prof)
    if args.json:
        record = {"args": vars(args) | {"json": str(args.json)}, **out}
        args.json.write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
