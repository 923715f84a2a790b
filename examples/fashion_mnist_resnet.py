"""Bayesian data selection in a plain PyTorch loop (docs/library.md).

A torchvision ResNet-18 (random init, a 1-channel stem) learns Fashion-MNIST whose training
labels are 20% wrong. Every step draws 320 candidates and trains on the 32 that bdsel's
Bayesian score ranks best. The zero-shot term comes from small models cross-fitted on the
noisy labels (each predicts the half it never saw), bdsel's crossfit recipe in one call: no
clean label is used anywhere.
The lines marked ``# bdsel`` are all that selection adds to an ordinary loop.

    python examples/fashion_mnist_resnet.py                   # ~6 min on 2 CPU cores
    torchrun --standalone --nproc_per_node=2 examples/fashion_mnist_resnet.py
"""

from __future__ import annotations

import argparse
import gzip
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import bdsel  # bdsel


def read_idx(path: Path) -> np.ndarray:
    """An MNIST-format idx file (gzipped or not) as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load(root: Path, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images float [N, 1, 28, 28] (normalised) and labels int64 [N]."""
    find = lambda stem: next(root.glob(f"{prefix}-{stem}-idx*-ubyte*"))  # noqa: E731
    x = torch.from_numpy(read_idx(find("images")).copy()).float().div(255).unsqueeze(1)
    return (x - 0.286) / 0.353, torch.from_numpy(read_idx(find("labels")).astype(np.int64))


def with_label_noise(
    clean: torch.Tensor, rate: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric label noise: (the noisy labels, which of them were flipped)."""
    rng = np.random.default_rng(seed)
    flip = torch.from_numpy(rng.random(len(clean)) < rate)
    shift = torch.from_numpy(rng.integers(1, 10, len(clean)))
    return torch.where(flip, (clean + shift) % 10, clean), flip


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 10),
    )  # fmt: skip


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    correct = sum(
        int((model(xb).argmax(1) == yb).sum())
        for xb, yb in zip(x.split(1000), y.split(1000), strict=True)
    )
    model.train()
    return correct / len(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--train-size", type=int, default=30000)
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--crossfit-epochs", type=int, default=2)
    p.add_argument("--candidates", type=int, default=320)
    p.add_argument("--selected", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:  # torchrun: one process per rank, gloo on CPU
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    torch.manual_seed(args.seed)

    # -- data: the first train_size training images, with symmetric label noise
    x, clean = load(args.root, "train")
    x, clean = x[: args.train_size], clean[: args.train_size]
    x_test, y_test = load(args.root, "t10k")
    noisy, flip = with_label_noise(clean, args.noise, args.seed)  # the labels we train on

    # -- the zero-shot stand-in, by global index: small models cross-fitted on the noisy labels
    #    (row i from one that never trained on it) through the noise channel they estimate,
    #    with the temperature fitted to the noisy labels
    e = args.crossfit_epochs
    fit = bdsel.crossfit_models(small_cnn, TensorDataset(x), noisy, 10, epochs=e, channel_epochs=e)  # bdsel  # fmt: skip
    table = bdsel.ZeroShotTable.calibrated(fit.logprobs, noisy)  # bdsel

    # -- model, optimizer, a step-based schedule (steps per epoch are fixed)
    model = torchvision.models.resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    hook = bdsel.LastLayerHook(model)  # bdsel: captures the input of model.fc
    train_model = nn.parallel.DistributedDataParallel(model) if distributed else model
    settings = {"zs_logprobs": table, "n_features": hook.n_features}  # bdsel: the score's inputs
    selector = bdsel.create_selector("bayesian", n_selected=args.selected, **settings)  # bdsel
    data = bdsel.IndexedDataset(TensorDataset(x, noisy))  # bdsel: items are (index, x, y)
    sampler = DistributedSampler(data, seed=args.seed, drop_last=True) if distributed else None
    loader = DataLoader(
        data, batch_size=args.candidates, shuffle=sampler is None, sampler=sampler, drop_last=True
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=2e-3, total_steps=args.epochs * len(loader)
    )

    picked, picked_noisy = 0, 0
    for epoch in range(args.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        selector.set_epoch(epoch)  # bdsel
        for indices, images, labels in loader:
            with bdsel.scoring(model):  # bdsel: no grad, BN batch stats, native bf16
                model(images)
            pos = selector.select(indices, labels, *hook.take()).positions  # bdsel
            loss = F.cross_entropy(train_model(images[pos]), labels[pos])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            selector.observe(indices[pos], labels[pos], *hook.take())  # bdsel
            picked += len(pos)
            picked_noisy += int(flip[indices[pos]].sum())
        if rank == 0:
            acc = accuracy(model, x_test, y_test)
            share = picked_noisy / picked
            print(f"epoch {epoch + 1}: test accuracy {acc:.2%}, mislabeled among the selected "
                  f"{share:.1%} (of the data: {float(flip.float().mean()):.1%})", flush=True)  # fmt: skip
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
