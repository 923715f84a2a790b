"""Selection methods by name: ``register_selector``, ``create_selector``, ``list_selectors``."""

from __future__ import annotations

from collections.abc import Callable

from bdsel.selection.base import Selector, SelectorContext

_REGISTRY: dict[str, type[Selector]] = {}


def register_selector(name: str) -> Callable[[type[Selector]], type[Selector]]:
    def deco(cls: type[Selector]) -> type[Selector]:
        if name in _REGISTRY:
            raise ValueError(f"selector {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_selectors() -> list[str]:
    return sorted(_REGISTRY)


def selector_class(name: str) -> type[Selector]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown selection method {name!r}; valid: {', '.join(list_selectors())}")
    return _REGISTRY[name]


def create_selector(name: str, context: SelectorContext) -> Selector:
    return selector_class(name)(context)
