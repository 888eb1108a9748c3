"""Where the router's policies start: per-policy zoo checkpoints, HF folders, or fresh weights of a zoo shape."""
import pytest
from transformers import AutoModelForCausalLM

from core.config import load_config
from pipelines.runs import init_dirs
from policies import tiny_lm


@pytest.fixture()
def cfg(tmp_path):
    cfg = load_config("configs/test.yaml").model_copy(update={"run_dir": str(tmp_path / "run")})
    tok = tiny_lm.build_tokenizer(["city", "of", "zorbak"])
    for m in cfg.zoo.models:  # a stand-in zoo: right shapes, untrained
        tiny_lm.save(tiny_lm.build_model(tok, m.hidden, m.layers, m.heads, m.intermediate), tok, cfg.zoo_dir / m.name)
    return cfg


def with_train(cfg, **train):
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=train)})


def test_each_policy_may_start_from_its_own_checkpoint(cfg):
    names = [m.name for m in cfg.zoo.models]
    assert init_dirs(cfg) == {"decomposer": cfg.zoo_dir / names[-1], "allocator": cfg.zoo_dir / names[-1]}
    got = init_dirs(with_train(cfg, init=names[1], init_decomposer=names[0]))
    assert got == {"decomposer": cfg.zoo_dir / names[0], "allocator": cfg.zoo_dir / names[1]}
    assert init_dirs(with_train(cfg, init_allocator="some/hf-folder"))["allocator"].as_posix() == "some/hf-folder"


def test_scratch_is_fresh_weights_of_a_zoo_shape_over_the_zoo_vocabulary(cfg):
    shape = cfg.zoo.models[1]
    path = init_dirs(with_train(cfg, init_decomposer=f"scratch:{shape.name}"))["decomposer"]
    model = AutoModelForCausalLM.from_pretrained(str(path))
    zoo = AutoModelForCausalLM.from_pretrained(str(cfg.zoo_dir / shape.name))
    assert model.config.hidden_size == shape.hidden and model.config.vocab_size == zoo.config.vocab_size
    assert init_dirs(with_train(cfg, init_decomposer=f"scratch:{shape.name}"))["decomposer"] == path  # written once
    with pytest.raises(ValueError, match="train.init_decomposer"):
        init_dirs(with_train(cfg, init_decomposer="scratch:nope"))
