"""Images decoded per step, and what decoding costs, on a folder dataset, per method.

On folder data (WebVision-style) a step of a method that chooses without the candidate
forward decodes only the n_b points it trains on; a method that scores the candidates decodes
all n_B. This writes a synthetic JPEG folder, trains each method for one epoch side by side in
one run (and uniform once more with every candidate batch decoded whole, as the loop did
before), and prints images decoded per step, training seconds per step, and the DataLoader's
decoding throughput (images per second, decoding alone), each as measured here.

    python benchmarks/bench_decode.py [--n-train 3200 --size 96 --workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bdsel.configure import load_config
from bdsel.data import load_dataset, make_image_source
from bdsel.data.batching import FolderImages
from bdsel.train import train


def write_folder(root: Path, n_train: int, n_test: int, size: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            c = i % 10
            img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            img[(c * size) // 10 : (c * size) // 10 + size // 10] += 150
            path = root / split / f"class_{c}" / f"{i:06d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(path, quality=90)


def decoding_rate(config, n_images: int) -> float:
    """Images per second the training source decodes (augmented), nothing else running."""
    ds = load_dataset(config.data)
    source = make_image_source(ds, torch.device("cpu"))
    order = torch.arange(n_images)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in source.iter_batches("train", order, 64, generator=g):
        pass
    return n_images / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=3200)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--methods", default="uniform,infobatch,train_loss,full")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "jpegs"
        write_folder(root, args.n_train, 200, args.size)

        def config(method: str):
            return load_config(values={
                "data": {"name": "imagefolder", "root": str(root), "image_size": args.image_size,
                         "num_workers": args.workers, "train_fraction": 1.0},
                "train": {"epochs": 1, "ema_decay": 0.0},
                "select": {"method": method},
            })  # fmt: skip

        rate = decoding_rate(config("uniform"), min(args.n_train, 1280))
        print(f"decoding alone: {rate:.0f} images/s ({args.workers} workers, "
              f"{args.size}px JPEG -> {args.image_size}px crops)")  # fmt: skip
        print(f"{'method':<12} {'decoded/step':>13} {'s/step':>8}")
        import bdsel.train as loop

        runs = [(m, True) for m in args.methods.split(",")] + [("uniform", False)]
        for method, lazy in runs:
            counts = {}
            real = FolderImages.__init__

            def init(self, *a, _real=real, _counts=counts, **k):
                _real(self, *a, **k)
                _counts.setdefault("train", self)  # the first source built is the run's

            FolderImages.__init__ = init
            if not lazy:  # the loop as it was: every candidate batch decoded whole
                loop.FolderImages = type("EveryCandidateDecoded", (), {})
            try:
                summary = train(config(method), Path(tmp) / method, mode="overwrite")
            finally:
                FolderImages.__init__ = real
                loop.FolderImages = FolderImages
            steps = summary["steps"]
            evaluated = 200  # the test split, decoded once by the evaluation
            per_step = (counts["train"].decoded - evaluated) / steps
            name = method if lazy else f"{method} (all n_B decoded, as before)"
            print(f"{name:<12} {per_step:>13.0f} {summary['wall_s'] / steps:>8.3f}")


if __name__ == "__main__":
    main()
