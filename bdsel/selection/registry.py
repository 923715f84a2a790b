"""Selection methods by name: ``register_selector``, ``create_selector``, ``list_selectors``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from bdsel.registry import Registry
from bdsel.selection.base import Selector


def _name_class(name: str, cls: type[Selector], meta: dict[str, Any]) -> None:
    cls.name = name


SELECTORS: Registry[type[Selector]] = Registry("selection method", on_register=_name_class)


def register_selector(name: str) -> Callable[[type[Selector]], type[Selector]]:
    return SELECTORS.register(name)


def list_selectors() -> list[str]:
    return SELECTORS.names()


def selector_class(name: str) -> type[Selector]:
    return SELECTORS.get(name)


def selector_settings(name: str) -> dict[str, Any]:
    """The keyword settings method ``name`` takes, with their defaults (``inspect.Parameter.
    empty`` for the required ones)."""
    params = inspect.signature(selector_class(name).__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self" and p.kind != p.VAR_KEYWORD}


def create_selector(name: str, **settings: Any) -> Selector:
    """The selection method ``name`` with its settings as keyword arguments, e.g.
    ``create_selector("bayesian", n_selected=32, zs_logprobs=table, n_features=512)``. An
    unknown or missing setting is a ValueError that lists the method's settings."""
    accepted = selector_settings(name)
    unknown = sorted(set(settings) - set(accepted))
    missing = [k for k, d in accepted.items() if d is inspect.Parameter.empty and k not in settings]
    if unknown or missing:
        what = f"unknown setting {unknown[0]!r}" if unknown else f"missing setting {missing[0]!r}"
        shown = ", ".join(
            k if d is inspect.Parameter.empty else f"{k}={d!r}" for k, d in accepted.items()
        )
        raise ValueError(f"selector {name!r}: {what}; its settings: {shown}")
    return selector_class(name)(**settings)
