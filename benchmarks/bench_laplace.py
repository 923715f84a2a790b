"""Time the posterior + score path of one selection step (not a test).

For each (D, C, B): update (with the Cholesky factorisation it triggers),
sample_logits(S=256), bayesian_score on those samples, and the streamed path the
training loop uses for large C (iter_logit_samples chunks into StreamingScore).
Prints the median ms per call over --reps runs after one warm-up run.

    .venv/bin/python benchmarks/bench_laplace.py [--device cuda] [--reps 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from bdsel.laplace import LastLayerLaplace
from bdsel.selection.bayesian_score import StreamingScore, bayesian_score

SHAPES = [(512, 10, 320), (512, 1000, 320)]  # (D, C, B)


def timed(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median wall time of fn() in ms, synchronising the device around each call."""
    fn()  # warm-up: allocator, kernels, thread pools
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench(D: int, C: int, B: int, S: int, device: torch.device, reps: int) -> dict[str, float]:
    gen = torch.Generator(device=device).manual_seed(0)
    features = torch.randn(B, D, device=device, generator=gen)
    logits = torch.randn(B, C, device=device, generator=gen)
    probs = torch.softmax(logits, -1)
    labels = torch.randint(0, C, (B,), device=device, generator=gen)
    zs_logprobs = torch.log_softmax(torch.randn(B, C, device=device, generator=gen), -1)
    post = LastLayerLaplace(D, C, device=device)
    post.update(features, probs, labels)

    def update() -> None:
        post.update(features, probs, labels)
        post.cholesky_factors()  # lazy: the first use after an update factorises

    samples = post.sample_logits(logits, features, S, generator=gen)

    def streamed() -> torch.Tensor:
        acc = StreamingScore(labels)
        for chunk in post.iter_logit_samples(logits, features, S, generator=gen):
            acc.update(chunk)
        return acc.score(zs_logprobs, 0.3)

    out = {
        "update+cholesky": timed(update, device, reps),
        "sample_logits": timed(lambda: post.sample_logits(logits, features, S, gen), device, reps),
        "score": timed(lambda: bayesian_score(samples, zs_logprobs, labels, 0.3), device, reps),
        "streamed sample+score": timed(streamed, device, reps),
    }
    out["total (update+sample+score)"] = (
        out["update+cholesky"] + out["sample_logits"] + out["score"]
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"torch {torch.__version__}, device {device} ({name or platform.machine()}), "
        f"{torch.get_num_threads()} CPU threads, float32, S={args.samples}, "
        f"median of {args.reps} after 1 warm-up"
    )
    for D, C, B in SHAPES:
        res = bench(D, C, B, args.samples, device, args.reps)
        print(f"D={D} C={C} B={B} (S·B·C = {args.samples * B * C:,} elements)")
        for k, v in res.items():
            print(f"  {k:<28s} {v:10.2f} ms")


if __name__ == "__main__":
    main()
