"""bdsel inside Lightning and the Hugging Face Trainer (issue 47): a run stopped at a
framework checkpoint and resumed picks the points the uninterrupted run picks; the examples
run a few steps on the Fashion-MNIST files, Lightning's under DDP with 2 CPU processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from transformers import ResNetConfig, ResNetForImageClassification, TrainingArguments

import bdsel
from bdsel.integrations.hf import SELECTOR_FILE, SelectionTrainer
from bdsel.integrations.lightning import SelectionMixin

ROOT = Path(__file__).resolve().parents[1]
N, C = 256, 4


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 1, 8, 8, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    table = torch.log_softmax(2 * torch.randn(N, C, generator=g), dim=1)
    return x, y, table


def _spy(selector: bdsel.Selector, picks: list[list[int]]) -> None:
    real = selector.select

    def select(indices, labels, *args, **kwargs):
        selection = real(indices, labels, *args, **kwargs)
        picks.append(indices[selection.positions].tolist())
        return selection

    selector.select = select


# ----------------------------------------------------------------------------- Lightning


class _Lit(SelectionMixin, L.LightningModule):
    def __init__(self, seed: int, picks: list) -> None:
        super().__init__()
        x, y, table = _data()
        torch.manual_seed(seed)
        self.model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, C))
        selector = bdsel.create_selector("bayesian", n_selected=8, zs_logprobs=table,
                                         n_features=16)  # fmt: skip
        _spy(selector, picks)
        self.use_selector(selector, self.model)
        self.data = bdsel.IndexedDataset(TensorDataset(x, y))

    def training_step(self, batch, batch_idx):
        return self.selected_loss(batch)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.model.parameters(), lr=1e-2)

    def train_dataloader(self) -> DataLoader:
        sampler = DistributedSampler(self.data, num_replicas=self.trainer.world_size,
                                     rank=self.trainer.global_rank, seed=0, drop_last=True)  # fmt: skip
        return DataLoader(self.data, batch_size=32, sampler=sampler, drop_last=True)


def _trainer(root: Path, epochs: int, **kw) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     use_distributed_sampler=False, default_root_dir=root, **kw)  # fmt: skip


def test_lightning_resumed_from_its_checkpoint_picks_as_the_uninterrupted_run(tmp_path: Path):
    whole: list[list[int]] = []
    _trainer(tmp_path, 3, enable_checkpointing=False).fit(_Lit(seed=1, picks=whole))
    assert len(whole) == 3 * (N // 32)

    first: list[list[int]] = []
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    _trainer(tmp_path, 1, callbacks=[ckpt]).fit(_Lit(seed=1, picks=first))
    assert first == whole[: N // 32]
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["bdsel_selector"]["posterior"]["n_updates"] == N // 32

    resumed: list[list[int]] = []
    module = _Lit(seed=7, picks=resumed)  # other weights: the checkpoint's must replace them
    _trainer(tmp_path / "resumed", 3).fit(module, ckpt_path=tmp_path / "last.ckpt")
    assert resumed == whole[N // 32 :]
    assert module.selector.epoch == 2  # set_epoch ran at every epoch's start

    with pytest.raises(RuntimeError, match="use_selector"):
        plain = type("Plain", (SelectionMixin, L.LightningModule), {})()
        plain.selected_loss((torch.arange(4), torch.randn(4, 64), torch.zeros(4)))


# ----------------------------------------------------------------------------- Hugging Face


class _Images(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.x[i], "labels": self.y[i], "index": i}


def _hf_trainer(out: Path, seed: int, picks: list, grad_accum: int = 1, **kw) -> SelectionTrainer:
    x, y, table = _data()
    torch.manual_seed(seed)
    config = ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                          layer_type="basic", num_labels=C)  # fmt: skip
    model = ResNetForImageClassification(config)
    selector = bdsel.create_selector("bayesian", n_selected=8, zs_logprobs=table, n_features=16)
    _spy(selector, picks)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=32, gradient_accumulation_steps=grad_accum,
        max_steps=6, save_steps=3, learning_rate=1e-2, report_to=[], use_cpu=True, seed=0,
        dataloader_drop_last=True, remove_unused_columns=False, logging_steps=100, **kw,
    )  # fmt: skip
    return SelectionTrainer(model=model, args=args, train_dataset=_Images(x, y), selector=selector)


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_hf_trainer_resumed_from_its_checkpoint_picks_as_the_uninterrupted_run(
    tmp_path: Path, grad_accum: int
):
    whole: list[list[int]] = []
    _hf_trainer(tmp_path / "a", seed=1, picks=whole, grad_accum=grad_accum).train()
    assert len(whole) == 6 * grad_accum  # each micro-batch is one candidate batch
    checkpoint = tmp_path / "a" / "checkpoint-3"
    assert (checkpoint / SELECTOR_FILE).is_file()

    resumed: list[list[int]] = []
    trainer = _hf_trainer(tmp_path / "b", seed=7, picks=resumed, grad_accum=grad_accum)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert resumed == whole[3 * grad_accum :]

    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        x, y, table = _data()
        model = ResNetForImageClassification(ResNetConfig(num_channels=1, num_labels=C))
        selector = bdsel.create_selector("uniform", n_selected=8)
        args = TrainingArguments(output_dir=str(tmp_path / "c"), report_to=[], use_cpu=True)
        SelectionTrainer(model=model, args=args, train_dataset=_Images(x, y), selector=selector)


# ----------------------------------------------------------------------------- the examples


def _run_example(name: str, fashion_dir: Path, *extra: str, timeout: int = 300) -> str:
    args = ["--root", str(fashion_dir), "--train-size", "1200", "--candidates", "64",
            "--selected", "16", "--noise", "0.3", *extra]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                          capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=fashion_dir)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_the_lightning_example_runs_alone_and_under_ddp(fashion_dir: Path, tmp_path: Path):
    out = _run_example("lightning_fashion_mnist.py", fashion_dir, "--max-steps", "20",
                       "--out", str(tmp_path / "one"))  # fmt: skip
    assert re.search(r"step 20: test accuracy [\d.]+%", out), out
    out = _run_example("lightning_fashion_mnist.py", fashion_dir, "--max-steps", "4",
                       "--devices", "2", "--out", str(tmp_path / "two"))  # fmt: skip
    assert re.search(r"step 4: test accuracy [\d.]+%", out), out


def test_the_hf_example_runs_and_resumes(fashion_dir: Path, tmp_path: Path):
    out = _run_example("hf_trainer_fashion_mnist.py", fashion_dir, "--max-steps", "10",
                       "--save-steps", "10", "--out", str(tmp_path))  # fmt: skip
    assert re.search(r"step 10: test accuracy [\d.]+%", out), out
    out = _run_example("hf_trainer_fashion_mnist.py", fashion_dir, "--max-steps", "20",
                       "--resume", str(tmp_path / "checkpoint-10"), "--out", str(tmp_path))  # fmt: skip
    assert re.search(r"step 20: test accuracy [\d.]+%", out), out
