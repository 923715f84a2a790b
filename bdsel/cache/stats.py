"""What a filled cache's rows say, stored in its attributes when it is made: each split's
accuracy and mean clean-label log-prob, and the calibration step (the temperature fitted to
labels the predictor never trained on, and with label noise, the noise fit)."""

from __future__ import annotations

import json

import h5py
import torch

from bdsel.cache.format import READ_ROWS, read_rows


def split_stats(f: h5py.File, split: str, labels: torch.Tensor) -> tuple[float, float]:
    """(accuracy vs the clean labels, mean log-prob of the clean label), read in chunks."""
    ds, labels = f[split]["logprobs"], labels.detach().cpu().long()
    n = len(labels)
    if n == 0:
        return float("nan"), float("nan")
    correct, total_lp = 0, 0.0
    for start in range(0, n, READ_ROWS):
        lp = torch.from_numpy(ds[start : start + READ_ROWS])
        y = labels[start : start + len(lp)]
        correct += int((lp.argmax(dim=1) == y).sum())
        total_lp += float(lp.gather(1, y[:, None]).double().sum())
    return correct / n, total_lp / n


def calibrate(
    f: h5py.File, calibration: tuple[torch.Tensor, torch.Tensor], label_noise: bool
) -> None:
    """Fit the temperature to the calibration rows' labels and store it in ``f``'s attrs;
    with ``label_noise`` (labels that may be wrong) also the fit under label noise, symmetric
    or through a transition matrix, whichever BIC prefers (``fit_label_noise``)."""
    from bdsel.calibration import fit_label_noise, fit_temperature

    rows, labels = (t.cpu().long() for t in calibration)
    logprobs = read_rows(f["train"]["logprobs"], rows)
    f.attrs["temperature"] = fit_temperature(logprobs, labels)
    if label_noise:
        fit = fit_label_noise(logprobs, labels)
        f.attrs["temperature_denoised"], f.attrs["label_noise_rate"] = (
            fit.temperature,
            fit.noise_rate,
        )
        f.attrs["noise_model"] = fit.model
        f.attrs["noise_fit"] = json.dumps({"transition": fit.transition, "bic": fit.bic})
