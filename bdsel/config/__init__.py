"""Typed run configuration: defaults < YAML file < ``--set key.path=value`` overrides.

- ``schema``: the settings dataclasses, each setting's type and default on its field and its
  allowed range in its class's ``RANGES``;
- ``load``: a Config from a file, a dict and overrides, validated before any work starts
  (``bdsel.configure.load_config`` gives it the registries' owned settings: ``select.*`` of
  the method, ``zeroshot.*`` of the predictor);
- ``yaml_io``: YAML as every config is read; ``checks``: the error and the range helpers.

This package imports nothing else from bdsel, so every other module can import it.
"""

from bdsel.config.checks import ConfigError
from bdsel.config.load import (
    build_config,
    check_ranges,
    dump_config,
    list_shipped_configs,
    merged_values,
    parse_override,
    resolve_config_path,
    shipped_config_dir,
    validate,
)
from bdsel.config.schema import (
    CleanConfig,
    Config,
    DataConfig,
    EvalConfig,
    ImbalanceConfig,
    ModelConfig,
    NoiseConfig,
    ReportConfig,
    SelectConfig,
    TrainConfig,
    ZeroshotConfig,
)
from bdsel.config.yaml_io import YamlLoader, read_yaml_mapping, yaml_error_line, yaml_load

__all__ = [
    "CleanConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ImbalanceConfig",
    "ModelConfig",
    "NoiseConfig",
    "ReportConfig",
    "SelectConfig",
    "TrainConfig",
    "YamlLoader",
    "ZeroshotConfig",
    "build_config",
    "check_ranges",
    "dump_config",
    "list_shipped_configs",
    "merged_values",
    "parse_override",
    "read_yaml_mapping",
    "resolve_config_path",
    "shipped_config_dir",
    "validate",
    "yaml_error_line",
    "yaml_load",
]
