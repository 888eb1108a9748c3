"""The learner group: 2 DeepSpeed ranks (ZeRO-2, gloo) given unequal shards of a batch update the
policy exactly as 1 rank does on the whole batch (the loss is normalised by the global token count),
with and without gradient accumulation over micro-batches; a 2-rank checkpoint resumes on 2 ranks and
is refused, with a clear error, by 1; LoRA adapters train alone and save as a merged plain folder."""
import random

import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup(zoo_config, ray_local):
    """(config, init dirs, model ids, three batches of decomposer items sampled by the real sampler)."""
    from benchmarks.tasks import build_world
    from core.types import TrainItem
    from policies.policy_lm import PolicyLM
    from policies.router import ActionSpace

    cfg = zoo_config.model_copy(update={"train": zoo_config.train.model_copy(update={"zero_stage": 2})})
    init = str(zoo_config.zoo_dir / zoo_config.zoo.models[-1].name)
    ids = [m.name for m in zoo_config.zoo.models]
    lm, actions = PolicyLM.from_pretrained(init, device="cpu"), ActionSpace("tiny", ids)
    world = build_world(cfg)
    queries = [e.query for t in world.tasks.values() for e in t.load("train")[:18]]
    gen, rng = torch.Generator().manual_seed(0), random.Random(0)
    batches = []
    for step in range(3):
        qs = queries[step * 12: step * 12 + 12]
        prompts = [actions.templates.decompose_prompt(q, lm.tokenizer) for q in qs]
        samples = actions.sample_decompositions(lm, prompts, 12, 1.0, gen)
        batches.append([TrainItem("decomposer", p, token_ids=s.token_ids, old_logprobs=s.logprobs,
                                  advantage=rng.uniform(-1, 1)) for p, s in zip(prompts, samples)])
    return cfg, {"decomposer": init, "allocator": init}, ids, batches


def group(cfg, dirs, ids, ranks, **train):
    from actors.learner import LearnerGroup

    c = cfg.model_copy(update={"train": cfg.train.model_copy(
        update={"learner": cfg.train.learner.model_copy(update={"ranks": ranks}), **train})})
    return LearnerGroup(c, dirs, ids, 1e-2)


def params(g, rank=0):
    import ray

    return ray.get(g.ranks[rank].parameters_flat.remote("decomposer"))


@pytest.fixture(scope="module")
def one_rank(setup):
    """1 rank on the three whole batches: (parameters before, each step's stats, parameters after)."""
    cfg, dirs, ids, batches = setup
    one = group(cfg, dirs, ids, 1)
    try:
        start = params(one)
        stats = [one.grpo_step("decomposer", items) for items in batches]
        return start, stats, params(one)
    finally:
        one.kill()


def unequal_split(items: list) -> list[list]:
    """The items as two shards of different sizes and token counts: the first 3 (or 4) items and the rest.
    Prefix token counts strictly increase, so at most one prefix holds exactly half of the tokens."""
    tokens = [len(i.token_ids) for i in items]
    k = 3 if 2 * sum(tokens[:3]) != sum(tokens) else 4
    shards = [items[:k], items[k:]]
    assert sum(tokens[:k]) != sum(tokens[k:]) and len(shards[0]) != len(shards[1])
    return shards


@pytest.mark.parametrize("micro_batch", [None, 2], ids=["whole-shards", "micro-batches-of-2"])
def test_two_ranks_with_unequal_shards_equal_one_rank(setup, one_rank, micro_batch):
    """Two ranks on shards of 3 (or 4) and 9 (or 8) sequences of different token counts update the policy as
    one rank does on the whole batch; with micro-batches of 2 the ranks pad to the same number of backward
    passes (the shorter shard adds empty ones)."""
    cfg, dirs, ids, batches = setup
    start, one_stats, p1 = one_rank
    two = group(cfg, dirs, ids, 2, micro_batch=micro_batch)
    try:
        assert torch.equal(params(two), start)
        for step, (items, a) in enumerate(zip(batches, one_stats)):
            shards = unequal_split(items)
            b = two.grpo_step("decomposer", items, shards=shards)
            # from the same weights the step's statistics agree; later steps start from weights that differ
            # by float rounding (bounded below), which the loss amplifies through exp(logp - old logp)
            for k in ("loss", "kl", "sampler_gap") if step == 0 else ():
                assert b[k] == pytest.approx(a[k], rel=1e-5, abs=1e-7), k
        p2 = params(two)
        assert not torch.equal(p1, start)  # they learned
        rel = float((p2 - p1).norm() / p1.norm())
        rel_update = float((p2 - p1).norm() / (p1 - start).norm())
        print(f"2 ranks vs 1: parameters rel {rel:.2e}, update rel {rel_update:.2e}, max abs {float((p2 - p1).abs().max()):.2e}")
        assert rel < 1e-5 and rel_update < 1e-4
        assert torch.equal(params(two, 1), p2)  # the ranks agree
        nodes = [p["rank"] for p in two.placement()]
        assert nodes == [0, 1]
    finally:
        two.kill()


def test_a_two_rank_checkpoint_resumes_on_two_ranks(setup, tmp_path):
    cfg, dirs, ids, batches = setup
    first = group(cfg, dirs, ids, 2)
    try:
        for items in batches[:2]:
            first.grpo_step("decomposer", items)
        first.save_checkpoint(str(tmp_path), {"step": 2})
        first.grpo_step("decomposer", batches[2])
        want = params(first)
    finally:
        first.kill()
    again = group(cfg, dirs, ids, 2)
    try:
        assert again.load_checkpoint(str(tmp_path))["state"] == {"step": 2}
        again.grpo_step("decomposer", batches[2])
        assert torch.allclose(params(again), want, rtol=1e-6, atol=1e-8)
    finally:
        again.kill()
    single = group(cfg, dirs, ids, 1)
    try:
        with pytest.raises(Exception, match="written by 2 learner ranks; this run has 1"):
            single.load_checkpoint(str(tmp_path))
    finally:
        single.kill()


def test_lora_trains_adapters_only_and_saves_merged(setup, tmp_path):
    from core.config import LoraConfig
    from policies.policy_lm import PolicyLM

    cfg, dirs, ids, batches = setup
    g = group(cfg, dirs, ids, 1, lora=LoraConfig(r=4, alpha=8.0))
    try:
        start = params(g)
        g.grpo_step("decomposer", batches[0])
        after = params(g)
        changed = int((after != start).sum())
        assert 0 < changed < 0.2 * len(start)  # the adapters moved, the base did not
        g.save_pretrained(str(tmp_path))
        want = g.logprobs("decomposer", batches[1])
    finally:
        g.kill()
    merged = PolicyLM.from_pretrained(tmp_path / "decomposer", device="cpu")
    assert not hasattr(merged.model, "peft_config")  # a plain HF folder
    from policies.router import ActionSpace

    got = ActionSpace("tiny", ids).decomposition_logprobs(
        merged, [it.prompt for it in batches[1]], [it.token_ids for it in batches[1]], cfg.train.temperature)
    gap = max(float((torch.tensor(w) - g_.detach()).abs().max()) for w, g_ in zip(want, got))
    assert gap < 1e-5, gap
