from pathlib import Path

import pytest

from core.config import Config, ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["tiny.yaml", "tiny-long.yaml", "test.yaml", "smollm-csqa.yaml"])
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
    ("train.sampler=sglang", "train.sampler"),
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

    from core.config import add_config_args, config_from_args

    parser = argparse.ArgumentParser()
    add_config_args(parser)
    with pytest.raises(SystemExit) as err:
        config_from_args(parser.parse_args(["--config", str(CONFIGS / "tiny.yaml"), "--set", "pool.max_batch=-1"]))
    assert err.value.code == 2
    out = capsys.readouterr().err
    assert out.startswith("config error: pool.max_batch:") and out.count("\n") == 1


def test_base_config_is_merged_under_the_file(tmp_path):
    (tmp_path / "child.yaml").write_text(
        f"base: {CONFIGS / 'tiny.yaml'}\nname: child\nrun_dir: runs/child\nzoo: {{dir: runs/tiny/zoo}}\n"
        "train: {grpo_steps: 7}\n")
    child, tiny = load_config(tmp_path / "child.yaml"), load_config(CONFIGS / "tiny.yaml")
    assert child.train.grpo_steps == 7 and child.train.sft_batch == tiny.train.sft_batch  # nested merge
    assert child.zoo.models == tiny.zoo.models and child.zoo_dir == Path("runs/tiny/zoo")
    assert tiny.zoo_dir == Path(tiny.run_dir) / "zoo"


def test_shared_zoo_dir_keeps_the_zoo_cache_key():
    from actors.zoo import model_key

    tiny, long = load_config(CONFIGS / "tiny.yaml"), load_config(CONFIGS / "tiny-long.yaml")
    assert long.zoo_dir == tiny.zoo_dir
    assert [model_key(long, m) for m in long.zoo.models] == [model_key(tiny, m) for m in tiny.zoo.models]


def test_base_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    with pytest.raises(ConfigError, match="b.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("- a list\n")
    with pytest.raises(ConfigError, match="b.yaml: expected a mapping"):
        load_config(tmp_path / "a.yaml")


def test_vllm_sampler_settings(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(CONFIGS / "tiny.yaml", ["train.sampler=vllm", "train.vllm.python=.venv-vllm/bin/python",
                                              "train.vllm.engine_args={max_model_len: 256}"])
    # made absolute where the config is loaded (Ray starts the actor elsewhere), not resolved (a symlink)
    assert cfg.train.vllm.python == str(tmp_path / ".venv-vllm" / "bin" / "python")
    assert cfg.train.vllm.engine_args == {"max_model_len": 256}
    assert Config.model_validate_json(cfg.model_dump_json()).train.vllm.python == cfg.train.vllm.python
    with pytest.raises(ConfigError, match="train: .*sampler vllm takes its weights through the object store"):
        load_config(CONFIGS / "tiny.yaml", ["train.sampler=vllm", "train.weight_sync=collective"])


def test_max_steps_must_cover_the_longest_facts_chain():
    with pytest.raises(ConfigError, match=r"reason.max_steps: 5 steps cannot decompose the longest facts chain \(7 hops"):
        load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", ["reason.max_steps=5"])
    assert load_config(Path(__file__).parents[1] / "configs" / "tiny.yaml", ["reason.max_steps=7"]).reason.max_steps == 7


def test_smollm_bench_config():
    """The paper-benchmark config: real models only, a launched vLLM server behind an openai member."""
    cfg = load_config(CONFIGS / "smollm-bench.yaml")
    assert cfg.zoo.models == [] and not cfg.pool.use_zoo and cfg.pool_ids() == ["smollm2-hf", "smollm2-vllm"]
    vllm = cfg.pool.models[1]
    assert vllm.backend == "openai" and vllm.launch is not None and Path(vllm.launch.python).is_absolute()
    assert cfg.labels.given_decompositions and set(cfg.eval.tasks) == set(cfg.tasks.enabled)


@pytest.mark.parametrize("override, message", [
    ("pool.models.0.launch={python: py}", "launch: only an openai backend"),  # an hf member
    ("train.queries_per_step=3", "cannot cover the 4 enabled tasks"),
    ("reason.step_max_tokens=0", "reason.step_max_tokens"),
])
def test_smollm_bench_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIGS / "smollm-bench.yaml", [override])


def test_zoo_key_ignores_the_sections_of_tasks_it_does_not_train_on():
    from actors.zoo import model_key

    tiny = load_config("configs/tiny.yaml")
    other = load_config("configs/tiny.yaml", ["tasks.musique.path=elsewhere.jsonl"])
    changed = load_config("configs/tiny.yaml", ["tasks.facts.zipf=0.7"])
    m = tiny.zoo.models[0]
    assert model_key(other, m) == model_key(tiny, m) != model_key(changed, m)
