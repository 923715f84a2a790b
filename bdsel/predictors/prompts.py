"""Class names and prompt templates for zero-shot CLIP classifiers.

A dataset that registers prompts (``register_dataset(name, prompts=(names, templates))``)
uses them: CIFAR-10/100 CLIP's class names and its 18 CIFAR templates, Fashion-MNIST its
own (``bdsel/data/cifar.py``, ``bdsel/data/fashion_mnist.py``). Other datasets (folders,
WebVision-style) use their own class names with CLIP's 7-template ImageNet ensemble
(notebooks/Prompt_Engineering_for_ImageNet), taken from open_clip's ``zero_shot_metadata``
so the two stay identical. A user file of class names and templates overrides both. Templates are ``str.format`` strings with exactly one ``{}``.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

from bdsel.data import dataset_prompts

# open_clip stores its templates as lambdas; calling one on "{}" gives back the format string.
IMAGENET_TEMPLATES: tuple[str, ...] = tuple(t("{}") for t in SIMPLE_IMAGENET_TEMPLATES)
IMAGENET_TEMPLATES_80: tuple[str, ...] = tuple(t("{}") for t in OPENAI_IMAGENET_TEMPLATES)


def _key(name: str) -> str:
    """Comparison key: case, spaces, underscores and punctuation do not matter."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def clean_class_name(name: str) -> str:
    """What a class name reads as inside a prompt: underscores become spaces."""
    return " ".join(name.replace("_", " ").split())


def validate_templates(templates: list[str], where: str) -> None:
    """Raise ValueError unless every template is a string with exactly one ``{}`` field."""
    if not isinstance(templates, (list, tuple)) or not templates:
        raise ValueError(f"{where}: 'templates' must be a non-empty list of strings")
    for i, t in enumerate(templates):
        if not isinstance(t, str):
            raise ValueError(f"{where}: templates[{i}] is {type(t).__name__}, not a string")
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(t) if f is not None]
        except ValueError as exc:  # unbalanced braces
            raise ValueError(
                f"{where}: templates[{i}] {t!r} is not a format string ({exc})"
            ) from exc
        if len(fields) != 1 or fields[0] not in ("", "0"):
            found = ", ".join("{" + f + "}" for f in fields) or "none"
            raise ValueError(
                f"{where}: templates[{i}] {t!r} must contain exactly one '{{}}' field "
                f"(found: {found})"
            )


def load_prompt_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Read a user's prompt file: YAML or JSON with keys ``class_names`` and ``templates``.

    Class names are taken verbatim (one per class, in label order); every template must be a
    format string with exactly one ``{}``. Raises ValueError naming the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml  # YAML is a superset of JSON, so this also reads .json-like files

            data = yaml.safe_load(text)
    except Exception as exc:  # json and yaml raise unrelated error types
        raise ValueError(f"prompt file {path}: cannot parse ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"prompt file {path}: expected a mapping with class_names and templates")
    unknown = set(data) - {"class_names", "templates"}
    if unknown:
        raise ValueError(f"prompt file {path}: unknown keys {sorted(unknown)}")
    for key in ("class_names", "templates"):
        if key not in data:
            raise ValueError(f"prompt file {path}: missing key '{key}'")
    names = data["class_names"]
    if not isinstance(names, list) or not names:
        raise ValueError(f"prompt file {path}: 'class_names' must be a non-empty list of strings")
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            raise ValueError(
                f"prompt file {path}: class_names[{i}] {n!r} is not a non-empty string"
            )
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"prompt file {path}: duplicate class names {dupes}")
    validate_templates(data["templates"], f"prompt file {path}")
    return list(names), list(data["templates"])


def prompts_for(
    dataset_name: str,
    class_names: list[str],
    prompt_file: str | Path | None = None,
) -> tuple[list[str], list[str]]:
    """Class names (as they read in prompts) and templates for a dataset.

    ``class_names`` are the dataset's own names in label order. A dataset that registered
    prompts with ``register_dataset`` uses them (cifar10/cifar100: CLIP's names and 18
    templates; fashion_mnist: its names and its own templates); any other (imagefolder,
    webvision) its own names with the 7 ImageNet templates. Registered name lists are checked against the dataset's so a different label order cannot slip through.
    A ``prompt_file`` overrides all of this (and must have one name per class).
    """
    n = len(class_names)
    if prompt_file is not None:
        names, templates = load_prompt_file(prompt_file)
        if len(names) != n:
            raise ValueError(
                f"prompt file {prompt_file}: {len(names)} class names, dataset "
                f"{dataset_name!r} has {n} classes"
            )
        return names, templates
    builtin = dataset_prompts(dataset_name)
    if builtin is None:
        return [clean_class_name(c) for c in class_names], list(IMAGENET_TEMPLATES)
    names, templates = builtin
    if len(names) != n:
        raise ValueError(f"dataset {dataset_name!r} has {n} classes, CLIP's list has {len(names)}")
    # Loaders without the metadata file fall back to "0".."C-1", which is the standard order.
    if not all(c.isdigit() for c in class_names):
        differ = [(a, b) for a, b in zip(class_names, names, strict=True) if _key(a) != _key(b)]
        if differ:
            raise ValueError(
                f"dataset {dataset_name!r}: class names do not match CLIP's in label order "
                f"(first difference: {differ[0][0]!r} vs {differ[0][1]!r}); pass a prompt file"
            )
    return list(names), list(templates)
