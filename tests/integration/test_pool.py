"""A Ray pool of zoo models under concurrent load: micro-batched answers equal each model's own
unbatched greedy answers, and the ledger equals the sum of per-call costs."""
import asyncio
from pathlib import Path

import pytest

from actors.backends import make_backend
from actors.pool import start_pool
from core.prompts import format_prompt
from core.types import SamplingParams

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pool(zoo_config, ray_local):
    cfg = zoo_config.model_copy(update={"pool": zoo_config.pool.model_copy(update={"batch_window_ms": 20.0})})
    handle = start_pool(cfg)
    yield handle
    ray_local.kill(handle)


def test_64_concurrent_requests_match_unbatched_greedy(pool, zoo_config, ray_local):
    from benchmarks.tasks import build_world

    world = build_world(zoo_config)
    questions = [e.query for e in world.tasks["facts"].load("test")[:24]] + [s.prompt for e in world.tasks["facts"].load("test")[:20]
                                                                     for s in e.steps]
    questions = questions[:64]
    models = ray_local.get(pool.model_ids.remote())
    assert len(models) >= 3
    params = SamplingParams(max_new_tokens=6)
    jobs = [(models[i % len(models)], format_prompt(q)) for i, q in enumerate(questions)]

    async def fire():
        return await asyncio.gather(*(pool.generate.remote(m, [p], params) for m, p in jobs))

    results = asyncio.run(fire())
    assert len(results) == 64

    # each model's own unbatched greedy answer, outside Ray
    backends = {m: make_backend("hf", m, {"path": str(zoo_config.zoo_dir / m)}) for m in models}
    for (m, p), [out] in zip(jobs, results):
        [alone] = backends[m].generate([p], params)
        assert out.model_id == m
        assert out.text == alone.text and out.token_ids == alone.token_ids
        assert out.usage == alone.usage

    ledger = ray_local.get(pool.ledger_snapshot.remote())
    per_call = sum(out.cost_usd for [out] in results)
    assert ledger["calls"] == 64
    assert ledger["total_usd"] == pytest.approx(per_call, rel=1e-12)
    for m in models:
        mine = [out for (mm, _), [out] in zip(jobs, results) if mm == m]
        assert ledger["models"][m]["cost_usd"] == pytest.approx(sum(o.cost_usd for o in mine), rel=1e-12)
        assert ledger["models"][m]["completion_tokens"] == sum(o.usage.completion_tokens for o in mine)

    # concurrency really was micro-batched: fewer backend calls than requests
    stats = ray_local.get(pool.server_stats.remote())
    assert sum(s["batches_run"] for servers in stats.values() for s in servers) < 64


def test_tiers_are_ordered_by_price(pool, ray_local):
    desc = ray_local.get(pool.describe.remote())
    prices = [d["output_per_m"] for d in desc]
    assert prices == sorted(prices) and [d["tier"] for d in desc] == list(range(len(desc)))


def test_unknown_model_is_a_clear_error(pool, ray_local):
    with pytest.raises(Exception, match="unknown model 'nope'"):
        ray_local.get(pool.generate.remote("nope", ["x ="], SamplingParams()))


def test_a_named_pool_is_joined_and_outlives_the_job_that_started_it(zoo_config, zoo_pool, ray_local, tmp_path):
    """`pool.name`: a stage joins the running pool of that name (the suite's own is named `TEST_POOL`) and
    leaves it running; one that runs other models than the config's is refused; a pool that a job started
    under a new name still serves after that job has ended."""
    import os
    import subprocess
    import sys

    from tests_support import TEST_POOL

    from actors.pool import SHARED_NAMESPACE
    from actors.runtime import pool_session

    cfg = zoo_config.model_copy(update={"pool": zoo_config.pool.model_copy(update={"name": TEST_POOL})})
    with pool_session(cfg) as (pool, ids):
        assert pool._actor_id == zoo_pool._actor_id
    assert ray_local.get(zoo_pool.model_ids.remote()) == ids  # still serving
    fewer = cfg.model_copy(update={"zoo": cfg.zoo.model_copy(update={"models": cfg.zoo.models[:2]})})
    with pytest.raises(RuntimeError, match="already runs other models"), pool_session(fewer):
        pass

    job = ("from core.config import load_config; from actors.runtime import pool_session\n"
           f"cfg = load_config('configs/test.yaml', ['zoo.dir={zoo_config.zoo_dir}', 'pool.name=another'])\n"
           "with pool_session(cfg) as (_, ids): print(ids)")
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    done = subprocess.run([sys.executable, "-c", job], cwd=Path(__file__).resolve().parents[2], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    other = ray_local.get_actor("another", namespace=SHARED_NAMESPACE)
    try:
        assert ray_local.get(other.model_ids.remote()) == ids and other._actor_id != zoo_pool._actor_id
    finally:
        ray_local.kill(other)


def test_colocated_models_share_one_server_process_per_replica(zoo_config, ray_local):
    """`pool.colocate` with 2 replicas of two zoo models: replica r of every hf model lives in server r (2
    processes, not one per model and replica), and each model answers as it does alone; without it, every
    model and replica has a process of its own."""
    from core.prompts import format_prompt

    zoo = zoo_config.zoo.model_copy(update={"models": zoo_config.zoo.models[:2]})
    models = [m.name for m in zoo.models]
    prompt, params = format_prompt("what is one plus two"), SamplingParams(max_new_tokens=4)
    alone = {m: make_backend("hf", m, {"path": str(zoo_config.zoo_dir / m)}).generate([prompt], params)[0].text
             for m in models}
    for colocate, processes in ((True, 2), (False, 2 * len(models))):
        cfg = zoo_config.model_copy(update={"zoo": zoo, "pool": zoo_config.pool.model_copy(update={
            "colocate": colocate, "replicas": 2})})
        pool = start_pool(cfg)
        try:
            outs = ray_local.get([pool.generate.remote(m, [prompt], params) for m in models for _ in range(2)])
            stats = ray_local.get(pool.server_stats.remote())
        finally:
            ray_local.kill(pool)
        assert [o.text for [o] in outs] == [alone[m] for m in models for _ in range(2)]
        pids = {m: [s["pid"] for s in stats[m]] for m in models}
        assert len({p for ps in pids.values() for p in ps}) == processes, pids
        if colocate:  # replica r of every model in the same process
            assert all(ps == pids[models[0]] for ps in pids.values()), pids
