"""bdsel.registry.Registry, and every entry of the registries built on it (every model's:
tests/test_models.py)."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from bdsel.data import DataError
from bdsel.data.registry import DATASETS
from bdsel.predictors.registry import PREDICTORS, Predictor
from bdsel.registry import Registry
from bdsel.selection import Selector
from bdsel.selection.registry import SELECTORS, selector_settings


def test_register_get_names_and_the_errors():
    seen = []
    things: Registry[int] = Registry("thing", on_register=lambda n, o, m: seen.append((n, o, m)))
    things.register("b", colour="red")(2)
    things.register("a")(1)
    assert things.names() == ["a", "b"] and things.get("b") == 2 and "a" in things
    assert things.entry("b").meta == {"colour": "red"} and seen[0] == ("b", 2, {"colour": "red"})
    with pytest.raises(ValueError, match="thing 'a' is already registered"):
        things.register("a")(3)
    assert things.get("a") == 1  # the first registration stands
    with pytest.raises(ValueError, match=r"unknown thing 'c'; valid: a, b"):
        things.get("c")
    data: Registry[int] = Registry("dataset", error=DataError)
    with pytest.raises(DataError, match="unknown dataset 'x'; valid: "):
        data.get("x")


@pytest.mark.parametrize("name", SELECTORS.names())
def test_every_selector_knows_its_name_and_takes_keyword_settings(name: str):
    cls = SELECTORS.get(name)
    assert issubclass(cls, Selector) and cls.name == name
    settings = selector_settings(name)
    assert "n_selected" in settings  # every method picks n_b points
    params = inspect.signature(cls.__init__).parameters
    assert all(p.kind is not p.VAR_POSITIONAL for p in params.values())


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_has_a_loader_of_one_config(name: str):
    entry = DATASETS.get(name)
    assert entry.name == name and len(inspect.signature(entry.load).parameters) == 1
    if entry.prompts is not None:
        class_names, templates = entry.prompts
        assert class_names and all("{}" in t for t in templates)


@pytest.mark.parametrize("name", PREDICTORS.names())
def test_every_predictor_keeps_the_predictor_protocol(name: str):
    entry = PREDICTORS.get(name)
    assert entry.cls.name == name and dataclasses.is_dataclass(entry.cls.Settings)
    for method in ("from_config", "settings", "logprobs", "spec"):
        assert callable(getattr(entry.cls, method)), method
    assert issubclass(entry.cls, Predictor)


def test_each_predictor_says_what_its_made_cache_records():
    """The rows `bdsel cache-zeroshot` prints of a cache's predictor spec come from the
    predictor's own class (none for one without a fit to speak of)."""
    from bdsel.predictors.registry import summary_rows

    holdout = {"kind": "holdout", "calibration_accuracy": 0.9, "epochs_trained": 7}
    assert summary_rows(holdout) == [
        ("calibration accuracy (clean labels)", "90.00%"),
        ("epochs (kept, by early stopping)", "7"),
    ]
    crossfit = {"kind": "crossfit", "fold_accuracy": [0.8, 0.75], "fold_epochs": [18, 17],
                "refit_noise": 0.2, "refit_channel": "symmetric", "concentration": 0.25}  # fmt: skip
    rows = summary_rows(crossfit)
    assert rows[:2] == [
        ("held-out fold accuracy (observed labels)", "80.00%, 75.00%"),
        ("epochs per fold (kept)", "18, 17"),
    ]
    assert rows[2] == (
        "refit round's noise channel (symmetric, the anchor points' rate)",
        "20.0% noise, mean off-diagonal concentration 0.25",
    )
    skipped = summary_rows(dict(crossfit, refit_skipped=True))
    assert skipped[-1] == (
        "refit round", "skipped: the estimated noise channel leaves a class unidentifiable"
    )  # fmt: skip
    probe = {"kind": "probe", "refit_noise": 0.4, "refit_channel": "anchor"}
    assert summary_rows(probe) == [("refit round's noise channel (anchor points)", "40.0% noise")]
    assert summary_rows({"kind": "clip"}) == summary_rows({"kind": "custom"}) == []
    assert summary_rows({}) == []
