"""What a training loop and a selection method hand each other: the candidate batch, the
candidate forward's outputs, and the choice. Plain data, so that every room can import them
(this module imports nothing of bdsel's)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Candidates:
    indices: torch.Tensor  # int64 [n_B] global indices, on the device
    inputs: torch.Tensor | None  # [n_B, C, H, W] model-ready inputs (None: not given)
    labels: torch.Tensor  # int64 [n_B] observed (possibly noisy) labels

    def take(self, positions: torch.Tensor) -> Candidates:
        """The candidates at ``positions``, as a smaller batch (rows stay aligned)."""
        inputs = None if self.inputs is None else self.inputs[positions]
        return Candidates(self.indices[positions], inputs, self.labels[positions])


@dataclass
class ForwardOutputs:
    logits: torch.Tensor  # [n, C]
    features: torch.Tensor  # [n, D], the input of the model's last linear layer


@dataclass
class Selection:
    positions: torch.Tensor  # int64 [n_b] positions into the candidate batch (may repeat)
    weights: torch.Tensor | None = None  # [n_b] per-point loss weights; None = plain mean
    scalars: dict[str, torch.Tensor] = field(default_factory=dict)  # 0-d, averaged when logged
