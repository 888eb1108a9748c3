from pathlib import Path

import pytest

from pipelines.config import Config, ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["tiny.yaml", "test.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(CONFIGS / name)
    assert isinstance(cfg, Config) and len(cfg.zoo.models) >= 4


def test_overrides_set_nested_values():
    cfg = load_config(CONFIGS / "tiny.yaml", ["pool.replicas=2", "zoo.models.0.lr=0.5", "serve.host=0.0.0.0"])
    assert cfg.pool.replicas == 2 and cfg.zoo.models[0].lr == 0.5 and cfg.serve.host == "0.0.0.0"


@pytest.mark.parametrize("override, field", [
    ("pool.replicas=zero", "pool.replicas"),
    ("pool.replicas=0", "pool.replicas"),
    ("zoo.models.3.price.ref=null", "zoo.models.3.price"),
    ("tasks.facts.zipff=1", "tasks.facts.zipff"),
    ("wandb.mode=loud", "wandb.mode"),
])
def test_invalid_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny.yaml", [override])
    message = str(err.value)
    assert message.startswith(field + ":") and "\n" not in message


def test_heads_must_divide_hidden():
    with pytest.raises(ConfigError, match=r"^zoo.models.0: .*divisible"):
        load_config(CONFIGS / "tiny.yaml", ["zoo.models.0.heads=5"])


def test_missing_file_and_bad_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(CONFIGS / "tiny.yaml", ["pool.replicas"])


def test_cli_exits_with_one_line(capsys):
    import argparse

    from pipelines.config import add_config_args, config_from_args

    parser = argparse.ArgumentParser()
    add_config_args(parser)
    with pytest.raises(SystemExit) as err:
        config_from_args(parser.parse_args(["--config", str(CONFIGS / "tiny.yaml"), "--set", "pool.max_batch=-1"]))
    assert str(err.value).startswith("config error: pool.max_batch:")
