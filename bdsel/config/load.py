"""A Config from defaults < YAML file < ``--set key.path=value`` overrides: unknown keys,
wrong types and impossible values raise :class:`ConfigError` naming the key before any work
starts.

An owned section (``select``, ``zeroshot``: ``schema.OWNED``) holds, beside its own keys, the
settings of what its owner key names (the method's, the predictor's). Which ``Settings``
class that is, only the registries know, above this package: :func:`build_config` takes it
as ``settings_of(section, name)``, and ``bdsel.configure.load_config`` passes the
registries'."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from bdsel.config.checks import ConfigError, Range
from bdsel.config.schema import OWNED, Config
from bdsel.config.yaml_io import NON_FINITE, read_yaml_mapping, yaml_error_line, yaml_load

# (section, the owner's name) -> the owner's Settings class, None where it has none; an
# unknown name is a ConfigError naming the key and the valid names.
SettingsOf = Callable[[str, str], "type | None"]


def type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in get_args(tp))
    if get_origin(tp) is list:
        return f"a list of {type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, settings_of: SettingsOf | None = None) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted where floats are."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        # A number of the right type but out of bounds says so, not "expected float or ...".
        raise next((e for e in errors if "finite" in str(e)), None) or ConfigError(
            f"{key}: expected {type_name(tp)}, got {value!r}"
        )
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}")
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return _build(tp, value, key + ".", settings_of)
    ok = {
        type(None): value is None,
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }
    if ok.get(tp, False):
        if tp is float and not math.isfinite(value):  # .inf / .nan make no sense for any key
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value) if tp is float else value
    if tp is float and isinstance(value, str) and NON_FINITE.fullmatch(value.strip()):
        raise ConfigError(f"{key}: expected a finite number, got {value!r} (not finite)")
    raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}")


def _build(
    cls: type, values: dict[str, Any], prefix: str = "", settings_of: SettingsOf | None = None
) -> Any:
    section = prefix.rstrip(".")
    names = [f.name for f in dataclasses.fields(cls) if f.name != "settings"]
    if section in OWNED and len(names) < len(dataclasses.fields(cls)):
        return _build_owned(cls, values, prefix, names, settings_of)
    _refuse_unknown(values, names, prefix)
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(v, hints[k], prefix + k, settings_of) for k, v in values.items()})


def _refuse_unknown(values: dict[str, Any], names: list[str], prefix: str, why: str = "") -> None:
    if unknown := sorted(set(values) - set(names)):
        valid = "; valid keys here: " + ", ".join(prefix + n for n in names) if names else ""
        raise ConfigError(f"unknown key {prefix}{unknown[0]}{valid}{why}")


def _build_owned(
    cls: type, values: dict[str, Any], prefix: str, names: list[str], settings_of: SettingsOf | None
) -> Any:
    """An owned section: its own keys, then the owner's settings, flat beside them. A key that
    names another owner (``select.bayesian: {alpha: 0.3}``) holds settings for when that one
    is the owner: checked against its ``Settings``, and used (under the flat ones) if it is."""
    if settings_of is None:
        raise TypeError(f"building {prefix.rstrip('.')} needs settings_of (its owner's settings)")
    section, key = prefix.rstrip("."), OWNED[prefix.rstrip(".")]
    default = next(f.default for f in dataclasses.fields(cls) if f.name == key)
    owner = _coerce(values.get(key, default), str, prefix + key)
    own_cls = settings_of(section, owner)
    own = [f.name for f in dataclasses.fields(own_cls)] if own_cls is not None else []
    flat = {k: v for k, v in values.items() if k not in names}
    conditional = {
        k: v for k, v in flat.items() if k not in own and _is_owner(settings_of, section, k, v)
    }
    for name, given in conditional.items():
        _build_settings(
            settings_of(section, name), given, f"{prefix}{name}.", f"{section}.{key}={name}"
        )
    own_values = {
        **conditional.get(owner, {}),
        **{k: v for k, v in flat.items() if k not in conditional},
    }
    whose = f" ({prefix}{key}={owner} has {'these' if own else 'no settings'} of its own)"
    _refuse_unknown(
        {**{k: values[k] for k in names if k in values}, **own_values}, names + own, prefix, whose
    )
    hints = typing.get_type_hints(cls)
    kwargs = {
        k: _coerce(values[k], hints[k], prefix + k, settings_of) for k in names if k in values
    }
    if own_cls is not None:
        kwargs["settings"] = _build(own_cls, own_values, prefix)
    return cls(**kwargs)


def _is_owner(settings_of: SettingsOf, section: str, name: str, value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    try:
        settings_of(section, name)
    except ConfigError:
        return False  # not a registered name: an unknown key
    return True


def _build_settings(cls: type | None, values: dict[str, Any], prefix: str, owner: str) -> None:
    """Check the settings ``values`` of ``owner`` (not the config's) as if they were used."""
    if cls is None:
        _refuse_unknown(values, [], prefix, f" ({owner} has no settings of its own)")
        return
    check_ranges(_build(cls, values, prefix), prefix)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict[str, Any]:
    """``"a.b=c"`` -> ``{"a": {"b": yaml(c)}}``."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"--set {key}: cannot parse {raw!r} as YAML ({yaml_error_line(exc)})"
        ) from None
    node: dict[str, Any] = {}
    cur = node
    parts = key.split(".")
    for part in parts[:-1]:
        cur[part] = {}
        cur = cur[part]
    cur[parts[-1]] = value
    return node


def shipped_config_dir() -> Path:
    import bdsel_configs

    return Path(bdsel_configs.__file__).parent


def list_shipped_configs() -> list[str]:
    return sorted(p.stem for p in shipped_config_dir().glob("*.yaml"))


def resolve_config_path(name_or_path: str) -> Path:
    """A path to a YAML file, or the bare name of a shipped config (``configs/NAME.yaml``)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    shipped = shipped_config_dir() / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    raise ConfigError(
        f"no config named {name_or_path!r}; shipped configs: "
        + ", ".join(list_shipped_configs())
        + " (or give a path to a YAML file)"
    )


def merged_values(
    name_or_path: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    values: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A YAML file's (or shipped config's) values < ``values`` < ``--set`` overrides, merged
    as one nested mapping, not yet checked."""
    merged: dict[str, Any] = {}
    if name_or_path is not None:
        path = resolve_config_path(name_or_path)
        loaded = read_yaml_mapping(path, ConfigError)
        if not loaded:
            # Training on the built-in defaults (no noise, 20 epochs, ...) is never what an
            # empty file meant: a truncated copy, a wrong path, an unsaved editor buffer.
            raise ConfigError(
                f"{path}: the config is empty; an empty config would train on the built-in "
                "defaults. Give at least one key (e.g. data.name), or a shipped config "
                f"({', '.join(list_shipped_configs())})"
            )
        merged = _merge(merged, loaded)
    if values:
        merged = _merge(merged, values)
    for text in overrides:
        merged = _merge(merged, parse_override(text))
    return merged


def build_config(merged: dict[str, Any], settings_of: SettingsOf) -> Config:
    """The validated Config of ``merged`` (:func:`merged_values`), each owned section's own
    settings those of the class ``settings_of`` gives."""
    merged = {**{section: {} for section in OWNED}, **merged}  # every owner's settings built
    config = _build(Config, merged, "", settings_of)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Impossible values, named by key: each section's ``RANGES`` (depth first, in field
    order), then the settings that only go together."""
    check_ranges(config, "")
    _check_combinations(config)


def ranges_of(cls: type) -> dict[str, Range]:
    """A settings class's ``RANGES`` and its bases' (a subclass's rule for a field wins)."""
    out: dict[str, Range] = {}
    for klass in reversed(cls.__mro__):
        out |= klass.__dict__.get("RANGES", {})
    return out


def check_ranges(settings: Any, prefix: str = "") -> None:
    """ConfigError naming the first setting of ``settings`` (a section: its own, then its
    subsections', an owned section's own settings under its own prefix) outside its class's
    ``RANGES``, then what its ``check(prefix)`` refuses (settings that only go together)."""
    for name, (ok, expected) in ranges_of(type(settings)).items():
        value = getattr(settings, name)
        if not ok(value):
            raise ConfigError(f"{prefix}{name}: expected {expected}, got {value!r}")
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, prefix if f.name == "settings" else f"{prefix}{f.name}.")
    if callable(check := getattr(settings, "check", None)):
        check(prefix)


def _check_combinations(config: Config) -> None:
    d, s = config.data, config.select
    if (total := d.train_fraction + config.holdout_fraction + d.validation_fraction) > 1 + 1e-9:
        raise ConfigError(
            "data.train_fraction + zeroshot.holdout_fraction + data.validation_fraction = "
            f"{total:g} > 1: the subsets must be disjoint"
        )
    if d.noise.kind == "none" and d.noise.rate > 0:
        raise ConfigError(
            "data.noise.rate > 0 needs data.noise.kind (symmetric, pairflip, uniform)"
        )
    if s.n_selected > s.n_candidates:
        raise ConfigError(
            f"select.n_selected ({s.n_selected}) > select.n_candidates ({s.n_candidates}): "
            "cannot select more points than there are candidates"
        )


def dump_config(config: Config) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
