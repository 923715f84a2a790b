"""Bayesian data selection in a Lightning training step (docs/library.md).

The plain example's small CNN, data and 20% label noise, trained by a Lightning ``Trainer``:
each step scores the batch's 320 candidates and trains on the 32 the Bayesian score ranks
best. The table is a cross-fitted linear probe on the pixels (seconds; no clean label).
The lines marked ``# bdsel`` are all that selection adds to a LightningModule.

    python examples/lightning_fashion_mnist.py --max-steps 200
    python examples/lightning_fashion_mnist.py --devices 2   # DDP, 2 CPU processes (gloo)
    python examples/lightning_fashion_mnist.py --max-epochs 2 --resume runs/lit/last.ckpt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import lightning as L
import torch
from fashion_mnist_resnet import accuracy, load, small_cnn, with_label_noise
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import bdsel  # bdsel
from bdsel.integrations.lightning import SelectionMixin  # bdsel


class Classifier(SelectionMixin, L.LightningModule):  # bdsel: the mixin first
    def __init__(self, model, data, selector, candidates: int, seed: int) -> None:
        super().__init__()
        self.model, self.data, self.candidates, self.seed = model, data, candidates, seed
        self.use_selector(selector, model)  # bdsel

    def training_step(self, batch, batch_idx):
        return self.selected_loss(batch)  # bdsel: (indices, images, labels) -> chosen points' loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=1e-3, weight_decay=0.01)

    def train_dataloader(self) -> DataLoader:
        # an order fixed by (seed, epoch) on every rank: a resumed run sees the same batches
        sampler = DistributedSampler(self.data, num_replicas=self.trainer.world_size,
                                     rank=self.trainer.global_rank, seed=self.seed, drop_last=True)  # fmt: skip
        return DataLoader(self.data, batch_size=self.candidates, sampler=sampler, drop_last=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--train-size", type=int, default=30000)
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--max-epochs", type=int, default=3)
    p.add_argument("--candidates", type=int, default=320)
    p.add_argument("--selected", type=int, default=32)
    p.add_argument("--devices", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/lightning"))
    p.add_argument("--resume", type=Path, help="a checkpoint of an earlier run to continue")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    L.seed_everything(args.seed, verbose=False)

    x, clean = load(args.root, "train")
    x, clean = x[: args.train_size], clean[: args.train_size]
    noisy, _ = with_label_noise(clean, args.noise, args.seed)

    fit = bdsel.crossfit_probe(x.flatten(1), noisy, 10)  # bdsel: out-of-fold, no clean label
    table = bdsel.ZeroShotTable.calibrated(fit.logprobs, noisy)  # bdsel
    model = small_cnn()
    settings = {"zs_logprobs": table, "n_features": model[-1].in_features}  # bdsel
    selector = bdsel.create_selector("bayesian", n_selected=args.selected, **settings)  # bdsel
    data = bdsel.IndexedDataset(TensorDataset(x, noisy))  # bdsel: items are (index, x, y)
    module = Classifier(model, data, selector, args.candidates, args.seed)
    trainer = L.Trainer(
        max_steps=args.max_steps, max_epochs=args.max_epochs, accelerator="cpu",
        devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
        use_distributed_sampler=False, default_root_dir=args.out, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[L.pytorch.callbacks.ModelCheckpoint(dirpath=args.out, save_last=True)],
    )  # fmt: skip
    trainer.fit(module, ckpt_path=args.resume)
    if trainer.is_global_zero:
        x_test, y_test = load(args.root, "t10k")
        print(f"step {trainer.global_step}: test accuracy {accuracy(module.model, x_test, y_test):.2%}",
              flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
