import pytest

from actors.backends import make_backend
from core.prompts import format_prompt
from core.types import SamplingParams


def test_batched_greedy_equals_unbatched(zoo_model_dir, zoo_config):
    from benchmarks.tasks import build_world

    world = build_world(zoo_config)
    prompts = [format_prompt(e.query) for e in world.tasks["facts"].load("test")[:6]]
    prompts += [format_prompt(e.query) for e in world.tasks["scan"].clause_examples()[:6]]
    b = make_backend("hf", "m", {"path": str(zoo_model_dir)})
    params = SamplingParams(max_new_tokens=30)
    batched = b.generate(prompts, params)
    for p, out in zip(prompts, batched):
        [alone] = b.generate([p], params)
        assert out.text == alone.text and out.token_ids == alone.token_ids
        assert abs(out.token_logprobs[0] - alone.token_logprobs[0]) < 1e-4
        assert out.usage.completion_tokens == len(out.token_ids) == len(out.token_logprobs)
        assert out.usage.prompt_tokens == len(p.split()) + 1  # words + [BOS]
        assert all(lp <= 0 for lp in out.token_logprobs)


def test_answers_end_with_eos_or_hit_the_limit(zoo_model_dir):
    b = make_backend("hf", "m", {"path": str(zoo_model_dir)})
    eos = b.tokenizer.eos_token_id
    for out in b.generate([format_prompt("jump twice"), format_prompt("walk")], SamplingParams(max_new_tokens=2)):
        assert (out.finish_reason == "stop" and out.token_ids[-1] == eos) or (
            out.finish_reason == "length" and len(out.token_ids) == 2)


def test_seeded_sampling_is_reproducible(zoo_model_dir):
    b = make_backend("hf", "m", {"path": str(zoo_model_dir)})
    params = SamplingParams(max_new_tokens=8, temperature=1.5, seed=7)
    prompts = [format_prompt("run around left twice")] * 4
    first, second = b.generate(prompts, params), b.generate(prompts, params)
    assert [c.token_ids for c in first] == [c.token_ids for c in second]


def test_a_batch_shares_its_device_time(zoo_model_dir):
    """GPU-time pricing charges each request of a batch its share of the batch's time, not all of it."""
    from actors.cost import CostModel
    from core.config import PriceConfig

    b = make_backend("hf", "m", {"path": str(zoo_model_dir)})
    outs = b.generate([format_prompt("jump twice"), format_prompt("walk"), format_prompt("look")],
                      SamplingParams(max_new_tokens=4))
    assert all(o.compute_s == o.latency_s / 3 for o in outs)
    cm = CostModel({"m": PriceConfig(gpu_hour_usd=3600.0)})  # $1 per device-second
    assert sum(cm.cost("m", o.usage, o.compute_s) for o in outs) == pytest.approx(outs[0].latency_s)
