"""How close does ``build_cache`` come to the bare image encoder's throughput?

Three numbers on the same device, model, precision and batch size, warm-up excluded:

    encode_image   model.encode_image on already-preprocessed pixels (the ceiling)
    logprobs       ClipPredictor.logprobs: + on-device preprocessing, cosine, log-softmax
    build_cache    + HDF5 writes, flushes, progress bookkeeping and final statistics

Images are synthetic uint8 [N, 3, s, s] (s = --source-size, CIFAR-like by default), so the
resize to the model's input size is part of the measured pipeline, as it is for real data.
Weights default to random init ("--pretrained ''"): no download, and speed does not depend on
the weights. The three are measured in turn, --repeats times, and the best of each is kept, so
load from other processes (shared CPUs) hits them alike instead of biasing the ratio.

    python benchmarks/bench_zeroshot.py --model ViT-B-32 --device cpu --n-images 256 --batch-size 64
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from bdsel.cache.writer import build_cache  # noqa: E402
from bdsel.data.cifar import CIFAR10_CLASSNAMES, CIFAR_TEMPLATES  # noqa: E402
from bdsel.data.sources import Dataset, ImageSet  # noqa: E402
from bdsel.predictors.clip import ClipPredictor, ClipZeroShot  # noqa: E402


def synthetic(n: int, size: int, n_classes: int, seed: int) -> Dataset:
    g = torch.Generator().manual_seed(seed)

    def split(k: int) -> ImageSet:
        images = torch.randint(0, 256, (k, 3, size, size), generator=g, dtype=torch.uint8)
        return ImageSet(labels=torch.randint(0, n_classes, (k,), generator=g), images=images)

    return Dataset(name="synthetic", train=split(n), test=split(0), class_names=list(CIFAR10_CLASSNAMES),
                   in_channels=3, image_size=size, mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_encode(pred: ClipPredictor, x: torch.Tensor, n_images: int, batch_size: int) -> float:
    """Images/s of the bare encoder on preprocessed pixels ``x`` already on the device."""
    sync(pred.device)
    t0, done = time.perf_counter(), 0
    while done < n_images:
        k = min(batch_size, n_images - done)
        pred.encode_images_raw(x[:k])
        done += k
    sync(pred.device)
    return n_images / (time.perf_counter() - t0)


def time_logprobs(pred: ClipPredictor, ds: Dataset, batch_size: int) -> float:
    rows = torch.arange(len(ds.train.labels))
    sync(pred.device)
    t0 = time.perf_counter()
    for chunk in rows.split(batch_size):
        pred.image_logprobs(ds.train, chunk)  # returns on the CPU: synchronises every batch
    return len(rows) / (time.perf_counter() - t0)


def time_build(pred: ClipPredictor, ds: Dataset, batch_size: int, workdir: Path, tag: str) -> float:
    t0 = time.perf_counter()
    build_cache(workdir / f"{tag}.h5", ds, ClipZeroShot(pred, ds), batch_size=batch_size)
    sync(pred.device)
    return len(ds.train.labels) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--pretrained", default="", help="tag or checkpoint file; '' = random init")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--n-images", type=int, default=4096)
    ap.add_argument("--source-size", type=int, default=32, help="side of the synthetic images")
    ap.add_argument("--warmup-batches", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    pred = ClipPredictor(args.model, args.pretrained, CIFAR10_CLASSNAMES, CIFAR_TEMPLATES,
                         precision=args.precision, device=args.device,
                         batch_size=args.batch_size)  # fmt: skip
    data = synthetic(args.n_images, args.source_size, len(CIFAR10_CLASSNAMES), seed=0)
    warm = synthetic(args.batch_size * args.warmup_batches, args.source_size, 10, seed=1)
    pixels = pred.preprocess_tensor(data.train.images[: args.batch_size])
    encode = logprobs = build = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        time_build(pred, warm, args.batch_size, Path(tmp), "warmup")  # allocator, kernels, h5py
        for _ in range(args.warmup_batches):
            pred.encode_images_raw(pixels)
        for i in range(args.repeats):
            encode = max(encode, time_encode(pred, pixels, args.n_images, args.batch_size))
            logprobs = max(logprobs, time_logprobs(pred, data, args.batch_size))
            build = max(build, time_build(pred, data, args.batch_size, Path(tmp), f"run{i}"))

    dev = torch.cuda.get_device_name(pred.device) if pred.device.type == "cuda" else platform.processor() or platform.machine()  # fmt: skip
    print(f"{args.model} pretrained={args.pretrained or 'random-init'} {args.precision} "
          f"batch {args.batch_size}, {args.n_images} images {args.source_size}px -> "
          f"{pred.image_size[0]}px on {pred.device} ({dev}, {torch.get_num_threads()} threads), "
          f"torch {torch.__version__}, best of {args.repeats}")  # fmt: skip
    print(f"  encode_image  {encode:9.1f} img/s")
    print(f"  logprobs      {logprobs:9.1f} img/s  ({logprobs / encode:.3f} x encode_image)")
    print(f"  build_cache   {build:9.1f} img/s  ({build / encode:.3f} x encode_image)")


if __name__ == "__main__":
    main()
