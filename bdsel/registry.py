"""One name registry for every kind of plug-in: selection methods, models, datasets and
zero-shot predictors (timm's ``_registry.py`` is the model: register, get, list).

    MODELS = Registry("model")

    @MODELS.register("small_cnn")
    def small_cnn(*, n_classes, in_channels=3, weights=None): ...

    MODELS.get("small_cnn")      # the registered object
    MODELS.entry("small_cnn")    # with the keyword metadata given to register
    MODELS.names()               # sorted names

An unknown name is ``error`` (ValueError unless given) naming the valid ones; registering a
name twice is a ValueError. Imports nothing of bdsel's, so every room can hold one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Names -> objects of one kind. ``on_register(name, obj, meta)`` checks or annotates a
    new entry (it may raise); ``error`` is the exception an unknown name raises."""

    def __init__(
        self,
        kind: str,
        *,
        error: type[Exception] = ValueError,
        on_register: Callable[[str, T, dict[str, Any]], None] | None = None,
    ) -> None:
        self.kind = kind
        self.error = error
        self._on_register = on_register
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: register the decorated object under ``name`` with ``meta``."""

        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            if self._on_register is not None:
                self._on_register(name, obj, meta)
            self._entries[name] = Entry(name, obj, dict(meta))
            return obj

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; valid: {', '.join(self.names())}")
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).obj
