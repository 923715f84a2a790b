"""experiments/predictor_noise.py: the AUROC and quantiles it reports."""

import importlib.util
import itertools
import sys
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location(
    "predictor_noise", Path(__file__).parents[1] / "experiments" / "predictor_noise.py"
)
noise = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = noise
_spec.loader.exec_module(noise)


def test_auroc_counts_every_pair_with_ties_as_half():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 6, (40,), generator=g).double()  # many ties
    positive = torch.rand(40, generator=g, dtype=torch.float64) < 0.3
    pos, neg = scores[positive].tolist(), scores[~positive].tolist()
    pairs = [(a < b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg)]
    assert abs(noise.auroc_lower(scores, positive) - sum(pairs) / len(pairs)) < 1e-12
    separated = torch.tensor([-9.0, -8.0, -1.0, -0.5])
    labels = torch.tensor([True, True, False, False])
    assert noise.auroc_lower(separated, labels) == 1.0
    assert noise.auroc_lower(-separated, labels) == 0.0


def test_summary_splits_clean_and_noisy_points():
    lp = torch.tensor([-0.1, -0.2, -0.3, -5.0, -6.0], dtype=torch.float64)
    noisy = torch.tensor([False, False, False, True, True])
    out = noise.summarize(lp, noisy)
    assert abs(out["clean"][1] - (-0.2)) < 1e-12  # the median of the clean ones
    assert abs(out["noisy"][1] - (-5.5)) < 1e-12
    assert out["auroc"] == 1.0
