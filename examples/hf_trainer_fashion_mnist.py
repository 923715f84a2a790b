"""Bayesian data selection in the Hugging Face Trainer (docs/library.md).

A transformers ResNet built from its config (random weights: no download) learns the plain
example's Fashion-MNIST with 20% wrong labels. ``SelectionTrainer`` scores each batch's 320
candidates and trains on the 32 the Bayesian score ranks best; the table is a cross-fitted
linear probe on the pixels (seconds, no clean label). The lines marked ``# bdsel`` are all
that selection adds to a Trainer script.

    python examples/hf_trainer_fashion_mnist.py --max-steps 200
    python examples/hf_trainer_fashion_mnist.py --max-steps 400 --resume runs/hf/checkpoint-200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from fashion_mnist_resnet import load, with_label_noise
from torch.utils.data import Dataset
from transformers import ResNetConfig, ResNetForImageClassification, TrainingArguments

import bdsel  # bdsel
from bdsel.integrations.hf import SelectionTrainer  # bdsel


class Images(Dataset):
    """Item i: the image, its observed label, and i itself (the row of bdsel's table)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.x[i], "labels": self.y[i], "index": i}  # bdsel: "index"


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    hits = sum(int((model(pixel_values=xb).logits.argmax(1) == yb).sum())
               for xb, yb in zip(x.split(1000), y.split(1000), strict=True))  # fmt: skip
    return hits / len(y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    p.add_argument("--train-size", type=int, default=30000)
    p.add_argument("--noise", type=float, default=0.2)
    p.add_argument("--max-steps", type=int, default=300)
    p.add_argument("--candidates", type=int, default=320)
    p.add_argument("--selected", type=int, default=32)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--save-steps", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("runs/hf"))
    p.add_argument("--resume", type=Path, help="a checkpoint-N folder of an earlier run")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)

    x, clean = load(args.root, "train")
    x, clean = x[: args.train_size], clean[: args.train_size]
    noisy, _ = with_label_noise(clean, args.noise, args.seed)
    config = ResNetConfig(num_channels=1, embedding_size=32, hidden_sizes=[32, 64],
                          depths=[1, 1], layer_type="basic", num_labels=10)  # fmt: skip
    model = ResNetForImageClassification(config)

    fit = bdsel.crossfit_probe(x.flatten(1), noisy, 10)  # bdsel: out-of-fold, no clean label
    table = bdsel.ZeroShotTable.calibrated(fit.logprobs, noisy)  # bdsel
    settings = {"zs_logprobs": table, "n_features": bdsel.LastLayerHook(model).n_features}  # bdsel
    selector = bdsel.create_selector("bayesian", n_selected=args.selected, **settings)  # bdsel
    training = TrainingArguments(
        output_dir=str(args.out), per_device_train_batch_size=args.candidates,
        gradient_accumulation_steps=args.grad_accum, max_steps=args.max_steps,
        learning_rate=1e-3, weight_decay=0.01, save_steps=args.save_steps, logging_steps=50,
        report_to=[], use_cpu=True, seed=args.seed, dataloader_drop_last=True,
        remove_unused_columns=False,  # bdsel: keep the batches' "index"
    )  # fmt: skip
    data = Images(x, noisy)
    trainer = SelectionTrainer(model, training, train_dataset=data, selector=selector)  # bdsel
    trainer.train(resume_from_checkpoint=str(args.resume) if args.resume else None)
    x_test, y_test = load(args.root, "t10k")
    step = trainer.state.global_step
    print(f"step {step}: test accuracy {accuracy(model, x_test, y_test):.2%}", flush=True)


if __name__ == "__main__":
    main()
