"""The trained router behind its OpenAI-compatible endpoint (pipelines.router_api), driven with the official
`openai` client: answers with `usage` (the router's own tokens itemised) and the chain's details; the same
answers as evaluation's chain for the same router and seed; the cost knob lowers cost; API-key auth and the
hardening cases; streaming. One Serve start for the module (with an API key and small limits)."""
from __future__ import annotations

import asyncio
import json
import socket
import time

import httpx
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

KEY_ENV, KEY = "R2R_TEST_ROUTER_KEY", "sk-test-router"
AUTH = {"Authorization": f"Bearer {KEY}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(sft_config, zoo_pool):
    """(config, router dir, pool, base URL) of a live router endpoint over the SFT-trained test router."""
    import os

    from ray import serve

    from core.config import ServeConfig
    from pipelines.runs import router_dir
    from pipelines.serve import run_router_endpoint

    os.environ[KEY_ENV] = KEY
    cfg = sft_config.model_copy(update={"serve": ServeConfig(
        port=_free_port(), api_key_env=KEY_ENV, max_body_bytes=64 * 1024, max_tokens_limit=64)})
    path = str(router_dir(cfg, "sft"))
    endpoint = run_router_endpoint(cfg, path, blocking=False, pool=zoo_pool)
    yield cfg, path, zoo_pool, endpoint.url
    serve.shutdown()


def _client(url: str, key: str = KEY):
    from openai import OpenAI

    return OpenAI(base_url=url, api_key=key, max_retries=0, timeout=300)


def _queries(cfg, n_per_task: int) -> list:
    from benchmarks.tasks import build_world

    world = build_world(cfg)
    return [ex for task in world.tasks.values() for ex in task.load("test")[:n_per_task]]


def _answered(cfg, client) -> tuple:
    """The first of 3 test queries per task that the test router decomposes and answers with text, and its
    unstreamed reply (what a trained router writes for a given query depends on its training trajectory);
    skips, saying so, when there is none."""
    for ex in _queries(cfg, 3):
        reply = client.chat.completions.create(model="r2-router", messages=[{"role": "user", "content": ex.query}])
        if reply.model_extra["r2"]["decomposition"] and reply.choices[0].message.content:
            return ex, reply
    pytest.skip("the test router decomposed and answered none of the test queries")


def test_chat_answer_usage_and_details(served):
    cfg, _, _, url = served
    ex, out = _answered(cfg, _client(url))
    assert out.model == "r2-router" and out.choices[0].finish_reason == "stop"
    r2 = out.model_extra["r2"]
    assert r2["decomposition"] and all(s["model"] for s in r2["steps"]) and r2["cost_usd"] > 0
    # a synthetic query: the world knows its gold answer, and `correct` scores the reply itself
    from benchmarks.tasks import build_world

    task = build_world(cfg).tasks[ex.task]
    assert r2["correct"] == task.score(out.choices[0].message.content, ex)
    usage = out.usage.model_dump()
    router = usage["r2_router"]
    assert router["decomposer"]["prompt_tokens"] > 0 and router["allocator"]["prompt_tokens"] > 0
    own = sum(v for part in router.values() for v in part.values())
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > own


def test_answers_equal_evaluations_chain_on_50_queries(served):
    from rich.console import Console  # noqa: F401  (evaluation's own method object, as evaluate builds it)

    from pipelines.evaluate import router_method
    from policies.baselines import Context

    cfg, path, pool, url = served
    examples = _queries(cfg, 25)
    model_ids = ray_get(pool.model_ids.remote())
    method = router_method(cfg, "r2", path, model_ids)
    ctx = Context(pool, model_ids, cfg.reason, cfg.seed)
    from benchmarks.tasks import build_world

    tasks = build_world(cfg).tasks
    expected = {}
    for name in dict.fromkeys(ex.task for ex in examples):
        exs = [ex for ex in examples if ex.task == name]
        for ex, t in zip(exs, asyncio.run(method.run(exs, tasks[name], ctx))):
            expected[ex.query] = t
    client = _client(url)
    for ex in examples:
        got = client.completions.create(model="r2-router", prompt=ex.query).choices[0]
        want = expected[ex.query]
        assert got.text == want.answer, ex.query
        assert [s["model"] for s in got.model_extra["r2"]["steps"]] == [s.model_id for s in want.steps], ex.query


def ray_get(ref):
    import ray

    return ray.get(ref)


def test_cost_falls_as_lambda_rises(served):
    cfg, _, _, url = served
    examples = _queries(cfg, 100)  # 200 tiny-world queries (facts and scan)
    assert len(examples) == 200
    client = _client(url)
    rows = {}
    for lam in (0.0, 0.25, 1.0, 4.0):
        choices = client.completions.create(model="r2-router", prompt=[ex.query for ex in examples],
                                            extra_body={"r2": {"lambda": lam}}).choices
        costs = [c.model_extra["r2"]["cost_usd"] for c in choices]
        correct = [c.model_extra["r2"]["correct"] for c in choices]
        rows[lam] = (sum(costs) / len(costs), sum(correct) / len(correct))
    print("lambda -> (mean cost USD per query, accuracy):", json.dumps(rows))
    means = [rows[lam][0] for lam in sorted(rows)]
    assert all(b <= a * (1 + 1e-9) for a, b in zip(means, means[1:])), rows
    assert means[-1] < means[0], rows


def test_auth_and_hardening(served):
    cfg, _, _, url = served
    from openai import AuthenticationError, BadRequestError, NotFoundError

    base = url.removesuffix("/v1")
    with pytest.raises(AuthenticationError):
        _client(url, key="wrong").chat.completions.create(model="r2-router", messages=[{"role": "user", "content": "x"}])
    assert httpx.get(f"{base}/v1/models").status_code == 401  # no key
    with pytest.raises(NotFoundError):
        _client(url).chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(BadRequestError, match="max_tokens"):
        _client(url).chat.completions.create(model="r2-router", max_tokens=10_000,
                                             messages=[{"role": "user", "content": "x"}])
    r = httpx.post(f"{base}/v1/chat/completions", content=b"{not json", headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    r = httpx.post(f"{base}/v1/completions", headers=AUTH,
                   json={"model": "r2-router", "prompt": "walk " * 40_000})
    assert r.status_code == 413
    r = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, json={"model": "r2-router", "messages": []})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]


def test_200_concurrent_requests_none_lost(served):
    cfg, _, _, url = served
    base = url.removesuffix("/v1")
    queries = [ex.query for ex in _queries(cfg, 100)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=600, headers=AUTH) as client:
            return await asyncio.gather(*(client.post(f"{base}/v1/completions",
                                                      json={"model": "r2-router", "prompt": q}) for q in queries))

    start = time.perf_counter()
    responses = asyncio.run(run())
    wall = time.perf_counter() - start
    assert [r.status_code for r in responses] == [200] * len(queries)
    assert wall < 600
    assert {r.json()["choices"][0]["r2"]["task"] for r in responses} == {"facts", "scan"}  # every one answered
    assert httpx.get(f"{base}/v1/models", headers=AUTH).json()["data"][0]["id"] == "r2-router"  # still serving
    print(f"200 concurrent router requests: {wall:.1f}s")


def test_stream_sends_one_chunk_then_done(served):
    """The stream carries the answer the same request gets unstreamed (the router decodes greedily) in one
    chunk, then a chunk that ends it with the usage and the chain's details."""
    cfg, _, _, url = served
    client = _client(url)
    ex, whole = _answered(cfg, client)  # a non-empty answer, so that the chunk's text is checked
    chunks = list(client.chat.completions.create(
        model="r2-router", messages=[{"role": "user", "content": ex.query}], stream=True))
    assert len(chunks) == 2 and chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == "stop"
    steps = [[(s["text"], s["answer"]) for s in c.model_extra["r2"]["steps"]] for c in (chunks[-1], whole)]
    assert steps[0] == steps[1] and steps[0]
