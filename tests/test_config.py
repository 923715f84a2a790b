import ast
from pathlib import Path

import pytest
import yaml
from bdsel_cli.main import app
from conftest import assert_one_line_error
from typer.testing import CliRunner

from bdsel.config import ConfigError, dump_config, list_shipped_configs, parse_override
from bdsel.configure import load_config
from bdsel.names import check_names

PAPER_CONFIGS = {
    "cifar10",
    "cifar10_noisy",
    "cifar100",
    "cifar100_noisy",
    "cifar10_lt",
    "cifar100_lt",
    "webvision",
    "fashion_mnist",
}


def test_every_shipped_config_loads_and_round_trips(tmp_path: Path):
    assert set(list_shipped_configs()) >= PAPER_CONFIGS
    for name in list_shipped_configs():
        cfg = load_config(name)
        check_names(cfg)  # every method, model, dataset and predictor it names is registered
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_config(cfg))
        assert load_config(str(path)).to_dict() == cfg.to_dict()


def test_overrides_take_precedence_and_parse_as_yaml():
    cfg = load_config("fashion_mnist", ["train.epochs=7", "data.noise.rate=0.4", "seed=5"])
    assert cfg.train.epochs == 7
    assert cfg.data.noise.rate == 0.4
    assert cfg.seed == 5
    assert parse_override("report.targets=[0.5, 0.7]") == {"report": {"targets": [0.5, 0.7]}}


def test_int_accepted_for_float_but_not_str_for_int():
    assert load_config("fashion_mnist", ["train.lr=1"]).train.lr == 1.0
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got 'many'"):
        load_config("fashion_mnist", ["train.epochs=many"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.epoch=3", r"unknown key train\.epoch; valid keys here: .*train\.epochs"),
        ("select.n_selected=400", r"n_selected \(400\) > select\.n_candidates \(320\)"),
        (
            "data.validation_fraction=0.6",
            r"train_fraction \+ zeroshot\.holdout_fraction \+ data\.validation_fraction = 1\.1 > 1",
        ),
        ("data.noise.kind=gaussian", r"data\.noise\.kind: expected one of"),
        ("data.noise.rate=1.5", r"data\.noise\.rate: expected a fraction in \[0, 1\]"),
        ("train.epochs=0", r"train\.epochs: expected a positive int"),
        (
            "zeroshot.crossfit.channel_folds=3",
            r"channel_folds \(3\) > zeroshot\.crossfit\.folds \(2\)",
        ),
        ("zeroshot.crossfit.refit=trusted", r"unknown key zeroshot\.crossfit\.refit;"),
        ("report.targets=[80]", r"report\.targets: expected accuracies in \(0, 1\]"),
        ("train.epochs", r"expected key\.path=value"),
    ],
)
def test_bad_values_name_the_key(override: str, pattern: str):
    with pytest.raises(ConfigError, match=pattern):
        load_config("fashion_mnist", override.split(","))


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("select.method=magic", r"select\.method: unknown method 'magic'; valid: .*uniform"),
        ("model.name=resnet99", r"model\.name: unknown model 'resnet99'; valid: .*small_cnn"),
        ("select.method=svp,select.model=x", r"select\.model: unknown model 'x'"),
        ("zeroshot.predictor=crossfit,zeroshot.model=x", r"zeroshot\.model: unknown model 'x'"),
        ("data.name=mnist", r"data\.name: unknown dataset 'mnist'; valid: .*fashion_mnist"),
        ("zeroshot.predictor=oracle", r"zeroshot\.predictor: unknown predictor 'oracle'.*holdout"),
    ],
)
def test_unregistered_names_name_the_key(override: str, pattern: str):
    with pytest.raises(ConfigError, match=pattern):  # the owners' names at load, then the rest
        check_names(load_config("fashion_mnist", override.split(",")))


def test_config_imports_nothing_from_bdsel_but_itself():
    imported = []
    for path in sorted((Path(__file__).parents[1] / "bdsel" / "config").glob("*.py")):
        tree = ast.parse(path.read_text())
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert "yaml" in imported  # the walk sees the imports
    outside = [m for m in imported if m == "bdsel" or m.startswith("bdsel.")]
    assert "bdsel.config.schema" in outside  # ... and the package's own
    assert [m for m in outside if not m.startswith("bdsel.config.")] == []


def test_every_range_names_a_field_of_its_class():
    """A RANGES entry with a misspelt name would check nothing (getattr would fail at load)."""
    import dataclasses

    import bdsel.config.schema as schema
    from bdsel.configure import owned_settings

    classes = [c for c in vars(schema).values() if dataclasses.is_dataclass(c)]
    classes += [cls for owners in owned_settings().values() for cls in owners.values()]
    assert len(classes) >= 17
    for cls in classes:
        fields = {f.name for f in dataclasses.fields(cls)}
        assert set(cls.__dict__.get("RANGES", {})) <= fields, cls.__name__


def test_unknown_config_name_lists_shipped(tmp_path: Path):
    with pytest.raises(ConfigError, match="shipped configs: .*fashion_mnist"):
        load_config("no_such_config")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(str(bad))


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.lr=.inf", r"train\.lr: expected a finite number, got inf"),
        ("train.weight_decay=.inf", r"train\.weight_decay: expected a finite number"),
        ("select.bayesian.alpha=.nan", r"select\.bayesian\.alpha: expected a finite number"),
        ("zeroshot.temperature=-.inf", r"zeroshot\.temperature: expected a finite number"),
        ("report.targets=[.nan]", r"report\.targets\[0\]: expected a finite number"),
        ("train.step.step_gamma=-5", r"train\.step\.step_gamma: expected a positive factor"),
        ("train.schedule=step,train.step_gamma=0", r"^train\.step_gamma: expected a positive"),
        ("zeroshot.holdout.lr=0", r"zeroshot\.holdout\.lr: expected a positive float"),
        ("select.svp.lr=-1", r"select\.svp\.lr: expected a positive float"),
        ("zeroshot.epochs=0", r"^zeroshot\.epochs: expected a positive int"),  # the probe's
        ("device=tpu", r"^device: expected auto, cpu, cuda, cuda:N or mps, got 'tpu'"),
        ("seed=-1", r"^seed: expected an int >= 0"),
        ("data.split_seed=-2", r"data\.split_seed: expected null or an int >= 0"),
    ],
)
def test_impossible_numbers_and_devices_name_the_key(override: str, pattern: str):
    with pytest.raises(ConfigError, match=pattern):
        load_config("fashion_mnist", override.split(","))


def test_cuda_device_without_cuda_is_a_config_error(monkeypatch: pytest.MonkeyPatch):
    import torch

    from bdsel.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"^device='cuda' but CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match=r"^device='cuda:1' but CUDA"):
        resolve_device("cuda:1")
    assert resolve_device("auto").type == "cpu"


def test_compile_auto_is_cuda_only_and_explicit_values_win():
    import torch

    from bdsel.assemble import compile_enabled

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert load_config(values={}).train.compile == "auto"
    assert not compile_enabled("auto", cpu) and compile_enabled("auto", cuda)
    assert compile_enabled(True, cpu) and not compile_enabled(False, cuda)
    with pytest.raises(ConfigError, match="train.compile"):
        load_config(values={"train": {"compile": "yes"}})


runner = CliRunner()


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-4", 1e-4), ("1E-4", 1e-4), ("5e3", 5000.0), (".5", 0.5), ("-1e-3", -1e-3),
     ("+2.5e+2", 250.0), ("1.0e-4", 1e-4), ("3", 3), ("1_000", 1000)],
)  # fmt: skip
def test_numbers_parse_as_users_type_them(text: str, value: float):
    parsed = parse_override(f"a.b={text}")["a"]["b"]
    assert parsed == value and type(parsed) is type(value)


def test_scientific_floats_in_set_and_in_yaml_files(tmp_path: Path):
    assert load_config(overrides=["train.lr=1e-4"]).train.lr == 0.0001
    assert load_config(overrides=["train.lr=5E-3"]).train.lr == 0.005
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 1e-4\n  weight_decay: 5e-2\n")
    cfg = load_config(str(path))
    assert cfg.train.lr == 0.0001 and cfg.train.weight_decay == 0.05
    assert parse_override("a=1e-4x")["a"] == "1e-4x" and parse_override("a=e5")["a"] == "e5"
    with pytest.raises(ConfigError, match="train.epochs: expected int, got 1000.0"):
        load_config(overrides=["train.epochs=1e3"])  # a float is not an int, as before


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", ".nan", "-.inf"])
def test_nan_and_inf_are_floats_that_must_be_finite(text: str):
    with pytest.raises(ConfigError, match=r"train.lr: expected a finite number"):
        load_config(overrides=[f"train.lr={text}"])


def test_empty_or_non_mapping_config_files_are_errors(tmp_path: Path):
    for name, text in (("empty.yaml", ""), ("comments.yaml", "# nothing yet\n")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError, match="the config is empty.*built-in defaults"):
            load_config(str(path))
    path = tmp_path / "scalar.yaml"
    path.write_text("fashion_mnist\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(str(path))


def test_a_yaml_syntax_error_is_one_line_naming_where(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [1, 2\nseed: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert "\n" not in message and "not valid YAML (line 3, column" in message
    result = runner.invoke(app, ["train", "-c", str(path), "--run-dir", str(tmp_path / "r")])
    assert_one_line_error(result, "not valid YAML")
    assert len([x for x in result.output.splitlines() if x.strip()]) == 1


def _restated_defaults(node: dict, defaults: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            out += _restated_defaults(value, defaults[key], f"{prefix}{key}.")
        elif key in defaults and defaults[key] == value:
            out.append(f"{prefix}{key}")
    return out


@pytest.mark.parametrize("name", list_shipped_configs())
def test_a_shipped_config_states_only_what_differs_from_the_defaults(name: str):
    import dataclasses

    from bdsel.config import shipped_config_dir
    from bdsel.configure import defaults_like, owned_settings

    loaded = yaml.safe_load((shipped_config_dir() / f"{name}.yaml").read_text())
    defaults = defaults_like(load_config(name))  # its method's and predictor's own at theirs
    for section, owners in owned_settings().items():  # select.bayesian: {...}, ...
        defaults[section].update({n: dataclasses.asdict(cls()) for n, cls in owners.items()})
    assert _restated_defaults(loaded, defaults) == []
    assert loaded  # and states something


def test_every_key_is_in_docs_config_md_as_the_schema_has_it():
    """docs/config.md's reference of every key is the schema's own: a key added, removed, or
    with a new default or range shows here."""
    from bdsel.config.reference import every_key, markdown_table
    from bdsel.configure import owned_settings

    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    keys = [(k.key, k.when) for k in every_key(owned_settings())]
    assert len(keys) == len(set(keys)) > 50  # every owner's too
    assert markdown_table(owned_settings()) in doc
    assert all(f"| `{k}` |" in doc for k, _ in keys)
    alpha = next(k for k in every_key(owned_settings()) if k.key == "select.alpha")
    assert (alpha.default, alpha.allowed) == (0.2, "a weight in [0, 1] or adaptive")
    assert alpha.when == "select.method=bayesian"


def test_the_offline_default_reads_a_predictor_that_needs_no_clean_label():
    from bdsel.predictors import predictor_entry

    cfg = load_config("fashion_mnist")
    assert cfg.zeroshot.predictor == "probe"
    assert predictor_entry("probe").cls.calibration_labels == "observed"  # the noisy ones


def test_a_method_and_a_predictor_own_their_settings_flat_in_their_section():
    cfg = load_config("fashion_mnist", ["select.method=bayesian", "select.alpha=0.4",
                                        "zeroshot.predictor=crossfit", "zeroshot.epochs=3"])  # fmt: skip
    assert type(cfg.select.settings).__name__ == "BayesianSettings"
    assert (cfg.get("select.alpha"), cfg.select.settings.n_samples) == (0.4, 256)
    assert (cfg.get("zeroshot.epochs"), cfg.get("zeroshot.rounds")) == (3, 2)
    saved = cfg.to_dict()  # config.yaml: flat, the owners' own only
    assert saved["select"]["alpha"] == 0.4 and "settings" not in saved["select"]
    assert saved["zeroshot"]["epochs"] == 3 and "features" not in saved["zeroshot"]
    # another owner's setting is refused, naming whose it is and where it may go
    with pytest.raises(ConfigError) as info:
        load_config("fashion_mnist", ["select.alpha=0.4"])
    assert "unknown key select.alpha" in str(info.value)
    assert "own setting of select.method=bayesian" in str(info.value)
    assert "select.bayesian.alpha" in str(info.value)


def test_settings_under_an_owners_name_apply_only_when_it_is_the_owner():
    given = ["select.bayesian.alpha=0.3", "zeroshot.crossfit.epochs=4"]
    unused = load_config("fashion_mnist", given)  # uniform, probe: checked, not used
    assert unused.select.settings is None and unused.zeroshot.settings.epochs == 5
    used = load_config("fashion_mnist", [*given, "select.method=bayesian",
                                         "zeroshot.predictor=crossfit"])  # fmt: skip
    assert (used.get("select.alpha"), used.get("zeroshot.epochs")) == (0.3, 4)
    flat_wins = load_config("fashion_mnist", [*given, "select.method=bayesian", "select.alpha=0.5"])
    assert flat_wins.get("select.alpha") == 0.5
    with pytest.raises(
        ConfigError, match=r"select\.bayesian\.alpha: expected a weight in \[0, 1\]"
    ):
        load_config("fashion_mnist", ["select.bayesian.alpha=3"])  # refused though unused
    with pytest.raises(
        ConfigError, match=r"unknown key select\.uniform\.alpha \(select\.method=uniform has no"
    ):
        load_config("fashion_mnist", ["select.uniform.alpha=3"])


def test_the_offline_main_job_has_no_more_settable_keys_than_today():
    """A ratchet on what a user of the offline default can set: the Config's own keys, the
    probe's and bayesian's (issue 49 aims at 40; new keys should replace, not add)."""
    from bdsel.config.reference import every_key
    from bdsel.configure import owned_settings

    keys = every_key(owned_settings())
    main_job = {"", "zeroshot.predictor=probe", "select.method=bayesian"}
    assert 0 < len([k for k in keys if k.when in main_job]) <= 40
    assert all(k.meaning for k in keys if k.when in main_job)  # each one documented
