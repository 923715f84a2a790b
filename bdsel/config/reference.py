"""Every config key, read from the schema itself: its type, default, allowed values and the
comment beside its field, and, for an owned section's own settings (``schema.OWNED``), which
method or predictor they belong to (the ``Settings`` classes ``owned`` maps: the registries
know them, ``bdsel.configure.owned_settings``). ``bdsel configs keys`` prints it;
docs/config.md holds it, and a test keeps the two the same."""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
import typing
from dataclasses import dataclass
from typing import Any

from bdsel.config.load import ranges_of, type_name
from bdsel.config.schema import OWNED, Config

# section -> {the name of its owner: the owner's Settings class}
Owned = dict[str, dict[str, type]]


@dataclass(frozen=True)
class KeyInfo:
    key: str  # dotted, as --set takes it
    when: str  # "" for every config, else the owner it needs ("select.method=bayesian")
    type: str
    default: Any
    allowed: str  # the RANGES rule's words, or "" (the type says it all)
    meaning: str  # the field's comment in schema.py


def every_key(owned: Owned | None = None) -> list[KeyInfo]:
    """Every leaf key of the Config, depth first in field order; then each owner's own
    settings (``owned``), section by section, owners by name."""
    keys = list(_keys(Config, "", ""))
    for section, owners in (owned or {}).items():
        for name, cls in sorted(owners.items()):
            keys += _keys(cls, f"{section}.", f"{section}.{OWNED[section]}={name}")
    return keys


def _keys(cls: type, prefix: str, when: str) -> typing.Iterator[KeyInfo]:
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    ranges = _ranges(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if f.name == "settings" and prefix.rstrip(".") in OWNED:
            continue  # the owner's: listed under it
        if dataclasses.is_dataclass(tp):
            yield from _keys(tp, f"{prefix}{f.name}.", when)
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        yield KeyInfo(
            f"{prefix}{f.name}",
            when,
            type_name(tp),
            default,
            ranges.get(f.name, ""),
            comments.get(f.name, ""),
        )


def _ranges(cls: type) -> dict[str, str]:
    return {name: expects for name, (_, expects) in ranges_of(cls).items()}


def _field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class's source (and its bases'): the comment lines right
    above it, or the one on its line."""
    out: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        out |= _comments_of(inspect.getsource(klass))
    return out


def _comments_of(source: str) -> dict[str, str]:
    out: dict[str, str] = {}
    above: list[str] = []
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    line_start, field, depth = True, None, 0
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            if field is not None and not line_start:  # on the field's line
                out[field] = f"{out[field]} {text}".strip() if out.get(field) else text
            else:
                above.append(text)
        elif tok.type in (tokenize.NEWLINE, tokenize.NL):
            line_start, field = True, None if depth == 0 else field
        elif tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        elif tok.type == tokenize.NAME and line_start and depth == 0 and tok.start[1] == 4:
            field, line_start = tok.string, False
            if above:
                out[field] = " ".join(above)
            above = []
        elif tok.type not in (tokenize.INDENT, tokenize.DEDENT):
            line_start = False
    return out


def markdown_table(owned: Owned | None = None) -> str:
    """The reference as docs/config.md holds it."""
    rows = ["| key | when | type | default | allowed | meaning |", "|---|---|---|---|---|---|"]
    for k in every_key(owned):
        when = f"`{k.when}`" if k.when else ""
        cells = [f"`{k.key}`", when, k.type, f"`{k.default!r}`", k.allowed, k.meaning]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"
