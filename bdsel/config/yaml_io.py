"""YAML as bdsel reads every config: YAML 1.2's floats, one-line syntax errors, a file that
must hold a mapping."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml


class YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-4``, ``1E-4``, ``5e3`` and ``-1e-3``
    are numbers, as everyone types them (YAML 1.1, PyYAML's default, reads them as strings
    unless they carry a dot: ``1.0e-4``)."""


_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)?\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
    re.X,
)
# Keep every resolver but 1.1's float, then add the 1.2 one (matched before int, as in PyYAML).
YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:float"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse YAML text as bdsel reads every config: :class:`YamlLoader`."""
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 (a SafeLoader subclass)


def yaml_error_line(exc: yaml.YAMLError) -> str:
    """A YAML syntax error in one line: where, and what (PyYAML's own text takes four)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}{problem}"


NON_FINITE = re.compile(r"[-+]?\.?(nan|inf|infinity)", re.I)


def read_yaml_mapping(path: Path, error: type[Exception]) -> dict[str, Any]:
    """A YAML file that must hold a mapping (an empty file: ``{}``); ``error`` in one line
    naming the file otherwise."""
    try:
        loaded = yaml_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML ({yaml_error_line(exc)})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise error(
            f"{path}: expected a mapping at the top level (key: value lines), got {loaded!r:.60}"
        )
    return loaded
