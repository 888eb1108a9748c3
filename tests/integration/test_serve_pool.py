"""The pool behind its OpenAI-compatible Serve endpoint: the `openai` backend pointed at the live endpoint
gives the same greedy completions and token counts as the `hf` backend loaded directly; the endpoint's
hardening (pipelines.openai_api) answers bad requests with the right 4xx, keeps internals out of its 500s
and serves 200 concurrent requests without losing one. One Serve start for the module: the endpoint runs
with an API key and small limits, and every test sends the key."""
from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from actors.backends import make_backend
from core.config import Config, PoolModelConfig, ServeConfig
from core.types import SamplingParams

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

API_KEY_ENV, API_KEY = "R2R_TEST_POOL_KEY", "sk-test-pool-key"
LIMITS = {"max_body_bytes": 16 * 1024, "max_tokens_limit": 64}
PROMPTS = ["jump twice =", "walk left and run =", "look =", "turn right thrice after jump around left ="]
WORDS = ["walk", "look", "run", "jump", "turn", "left", "right", "opposite", "around", "twice", "thrice",
         "and", "after", "I_WALK", "I_LOOK", "I_RUN", "I_JUMP", "I_TURN_LEFT", "I_TURN_RIGHT"]


AUTH = {"Authorization": f"Bearer {API_KEY}"}
RECORD_START = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) \d{4}-\d\d-\d\d ")  # a Serve log record


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_pool_config(root: Path) -> Config:
    """Two random-weight tiny models (fixed seeds; embeddings scaled up so the greedy choice is never a
    near-tie) in an explicit pool."""
    from policies.tiny_lm import build_model, build_tokenizer, save

    tok = build_tokenizer(WORDS)
    models = []
    for i, (name, hidden) in enumerate([("small", 16), ("large", 32)]):
        model = build_model(tok, hidden=hidden, layers=1, heads=2, intermediate=2 * hidden, seed=i)
        model.get_input_embeddings().weight.data.mul_(40.0)
        save(model, tok, root / name)
        models.append({"id": name, "backend": "hf", "path": str(root / name),
                       "price": {"input_per_m": 0.1 * (i + 1), "output_per_m": 0.2 * (i + 1)}})
    return Config.model_validate({
        "name": "serve-test", "run_dir": str(root / "run"),
        "zoo": {"models": [{"name": "x", "hidden": 8, "layers": 1, "heads": 1, "intermediate": 8, "lr": 0.01,
                            "price": {"input_per_m": 0.1, "output_per_m": 0.1}}]},
        "pool": {"use_zoo": False, "models": models, "batch_window_ms": 5},
    })


@pytest.fixture(scope="module")
def pool_config(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """The shared test zoo when tests/conftest.py provides one, else two tiny models built here."""
    try:
        cfg = request.getfixturevalue("zoo_config")
    except pytest.FixtureLookupError:
        cfg = _tiny_pool_config(tmp_path_factory.mktemp("serve_pool"))
    # plus a model behind an endpoint that is down: its failures must come back as clean 500s
    dead = PoolModelConfig(id="unreachable", backend="openai", url=f"http://127.0.0.1:{_free_port()}/v1",
                           max_retries=0, price={"input_per_m": 0.01, "output_per_m": 0.01})
    return cfg.model_copy(update={
        "serve": ServeConfig(host="127.0.0.1", port=_free_port(), api_key_env=API_KEY_ENV, **LIMITS),
        "pool": cfg.pool.model_copy(update={"models": [*cfg.pool.models, dead]}),
    })


@pytest.fixture(scope="module")
def endpoint(pool_config: Config) -> Iterator:
    import ray
    from ray import serve

    from actors.runtime import init_ray
    from pipelines.serve import run_pool_endpoint

    t0 = time.perf_counter()
    ours = not ray.is_initialized()  # leave a session-wide Ray (tests/conftest.py) running
    init_ray()
    env = pytest.MonkeyPatch()
    env.setenv(API_KEY_ENV, API_KEY)  # read when the app is built (and by the openai backend)
    try:
        ep = run_pool_endpoint(pool_config, blocking=False)
        deadline = time.time() + 60
        while True:  # the HTTP proxy may lag the app by a moment
            try:
                if httpx.get(f"{ep.url}/models", headers=AUTH, timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"pool endpoint {ep.url} did not come up")
            time.sleep(0.2)
        print(f"pool endpoint up in {time.perf_counter() - t0:.1f}s")
        yield ep
    finally:
        env.undo()
        serve.shutdown()
        if "ep" in locals():
            ray.kill(ep.pool)  # its model servers go with it
        if ours:
            ray.shutdown()


@pytest.fixture
def http(endpoint) -> Iterator[httpx.Client]:
    """An HTTP client for the endpoint that sends the API key."""
    with httpx.Client(base_url=endpoint.url, headers=AUTH, timeout=60) as client:
        yield client


def _pool_ids(cfg: Config) -> list[str]:
    from actors.pool import pool_models

    return [m.id for m in pool_models(cfg)]


def _hf_models(cfg: Config) -> list[PoolModelConfig]:
    from actors.pool import pool_models

    return [m for m in pool_models(cfg) if m.backend == "hf"]


def test_models_endpoint(http, endpoint, pool_config: Config) -> None:
    from openai import OpenAI

    ids = _pool_ids(pool_config)
    assert len(_hf_models(pool_config)) >= 2
    body = http.get("/models").json()
    assert body["object"] == "list"
    assert sorted(m["id"] for m in body["data"]) == sorted(ids)
    client = OpenAI(base_url=endpoint.url, api_key=API_KEY)  # the official client parses it
    assert sorted(m.id for m in client.models.list().data) == sorted(ids)


def test_openai_backend_matches_hf_backend(endpoint, pool_config: Config) -> None:
    import ray

    params = SamplingParams(max_new_tokens=6)
    before = ray.get(endpoint.pool.ledger_snapshot.remote())["calls"]
    texts = []
    for m in _hf_models(pool_config):
        direct = make_backend("hf", m.id, {"path": m.path}).generate(PROMPTS, params)
        remote = make_backend("openai", m.id, {"url": endpoint.url, "timeout_s": 60, "max_retries": 1,
                                               "api_key_env": API_KEY_ENV})
        try:
            served = remote.generate(PROMPTS, params)
        finally:
            remote.close()
        assert len(served) == len(direct) == len(PROMPTS)
        for d, s in zip(direct, served):
            assert s.text == d.text, m.id
            assert s.usage == d.usage, m.id
            assert s.token_ids == d.token_ids, m.id
            assert s.finish_reason == d.finish_reason, m.id
            assert s.token_logprobs == pytest.approx(d.token_logprobs, abs=1e-4), m.id
            texts.append(s.text)
    assert any(texts)  # the comparison is not vacuous
    after = ray.get(endpoint.pool.ledger_snapshot.remote())
    assert after["calls"] - before == len(PROMPTS) * len(_hf_models(pool_config))
    assert after["total_usd"] > 0


def test_completions_schema_and_errors(http, pool_config: Config) -> None:
    model = _hf_models(pool_config)[0].id
    r = http.post("/completions", json={"model": model, "prompt": PROMPTS[:2], "max_tokens": 3, "temperature": 0,
                                        "logprobs": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for c in body["choices"]:
        lp = c["logprobs"]
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) >= 1
        assert not any(t.startswith("token_id:") for t in lp["tokens"])  # token strings from the tokenizer
        assert c["finish_reason"] in ("stop", "length")
    u = body["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] > 0

    r = http.post("/completions", json={"model": model, "prompt": "look =", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is None

    r = http.post("/completions", json={"model": "no-such-model", "prompt": "look ="})
    assert r.status_code == 404
    err = r.json()["error"]
    assert "no-such-model" in err["message"] and err["code"] == "model_not_found" and err["param"] == "model"

    r = http.post("/completions", json={"model": model, "prompt": "look =", "n": 2})
    assert r.status_code == 400 and "n=2 is not supported" in r.json()["error"]["message"]

    r = http.post("/completions", json={"model": model, "prompt": "look =", "stream": True})
    assert r.status_code == 400 and "stream" in r.json()["error"]["message"]

    r = http.post("/completions", json={"model": model, "prompt": "look =", "max_tokens": "many"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "max_tokens" in err["message"] and err["param"] == "max_tokens"

    r = http.post("/completions", json={"prompt": "look ="})
    assert r.status_code == 400 and "model" in r.json()["error"]["message"]


def test_bad_requests_get_clear_4xx(http, endpoint, pool_config: Config) -> None:
    import openai

    model = _hf_models(pool_config)[0].id
    json_headers = {"Content-Type": "application/json"}

    r = http.post("/completions", content=b'{"model": "x", "prompt": ', headers=json_headers)  # malformed JSON
    assert r.status_code == 400, r.text
    assert "not valid JSON" in r.json()["error"]["message"]

    big = {"model": model, "prompt": "look " * (LIMITS["max_body_bytes"] // 4)}  # > the body limit
    r = http.post("/completions", json=big)
    assert r.status_code == 413, r.text
    assert f"at most {LIMITS['max_body_bytes']} bytes" in r.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # the same body without Content-Length: refused as it grows
        yield b'{"model": "%s", "prompt": "' % model.encode()
        for _ in range(LIMITS["max_body_bytes"] // 1000 + 1):
            yield b"look " * 200
        yield b'"}'

    r = http.post("/completions", content=chunks(), headers=json_headers)
    assert "content-length" not in r.request.headers and r.status_code == 413, r.text

    r = http.get("/no-such-route")
    assert r.status_code == 404 and "error" in r.json()

    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": API_KEY}):  # no/wrong key
        r = httpx.post(f"{endpoint.url}/completions", json={"model": model, "prompt": "look ="}, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "invalid_api_key"

    # the same answers through the official client
    client = openai.OpenAI(base_url=endpoint.url, api_key=API_KEY, max_retries=0)
    over = LIMITS["max_tokens_limit"] + 1
    with pytest.raises(openai.BadRequestError, match=f"max_tokens={over} is over this endpoint's limit"):
        client.completions.create(model=model, prompt="look =", max_tokens=over)
    with pytest.raises(openai.NotFoundError, match="no-such-model"):
        client.completions.create(model="no-such-model", prompt="look =", max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=endpoint.url, api_key="wrong-key", max_retries=0).models.list()
    ok = client.completions.create(model=model, prompt="look =", max_tokens=LIMITS["max_tokens_limit"])
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_failing_model_gives_500_without_internals(http, pool_config: Config) -> None:
    """A model that fails (its endpoint is down) gives a 500 with a generic message and the request id; the
    cause, with the internal URL, is in the Serve replica's log under that id, never in the response."""
    dead = next(m for m in pool_config.pool.models if m.id == "unreachable")
    r = http.post("/completions", json={"model": "unreachable", "prompt": "look ="})
    assert r.status_code == 500
    err = r.json()["error"]
    rid = r.headers["x-request-id"]
    assert err["type"] == "server_error"
    assert err["message"] == f"model 'unreachable' failed (request id {rid}; details in the server log)"
    assert dead.url not in r.text and "127.0.0.1" not in r.text and "Error" not in r.text
    logged = _replica_log_record(rid)
    assert f"{dead.url}/completions" in logged and "cannot connect" in logged, logged
    ok = http.post("/completions",  # the endpoint keeps serving
                   json={"model": _hf_models(pool_config)[0].id, "prompt": "look =", "max_tokens": 2})
    assert ok.status_code == 200


def _replica_log_record(request_id: str, timeout_s: float = 15.0) -> str:
    """The first record of the pool endpoint's Serve replica logs that names `request_id`, traceback
    included (waits for it to be written)."""
    import ray

    serve_logs = Path(ray._private.worker._global_node.get_logs_dir_path()) / "serve"
    deadline = time.time() + timeout_s
    while True:
        for path in serve_logs.glob("replica_pool_PoolIngress_*.log"):
            lines = path.read_text(errors="replace").splitlines()
            start = next((i for i, line in enumerate(lines) if request_id in line), None)
            if start is not None:
                end = next((j for j in range(start + 1, len(lines)) if RECORD_START.match(lines[j])), len(lines))
                return "\n".join(lines[start:end])
        if time.time() > deadline:
            return ""
        time.sleep(0.2)


N_CONCURRENT = 200


def test_200_concurrent_requests_all_answered(endpoint, pool_config: Config) -> None:
    """200 requests at once (every SCAN clause, then single facts, alternating between the two largest
    models): each gets a 200 with the answer the hf backend gives that prompt directly, none is lost, and
    the endpoint answers afterwards."""
    from benchmarks.tasks import build_world
    from benchmarks.tasks.scan import all_clauses
    from core.prompts import format_prompt

    models = _hf_models(pool_config)[-2:]
    hops = [f"{f.relation} of {f.subject}" for f in build_world(pool_config).tasks["facts"].world.facts]
    prompts = [format_prompt(q) for q in [*all_clauses(), *hops]]
    jobs = [(models[i % 2].id, p) for i, p in enumerate(prompts[:N_CONCURRENT])]
    assert len(jobs) == N_CONCURRENT
    params = SamplingParams(max_new_tokens=12)
    expected = {}
    for m in models:
        mine = [p for mid, p in jobs if mid == m.id]
        expected.update({(m.id, p): c.text for p, c in
                         zip(mine, make_backend("hf", m.id, {"path": m.path}).generate(mine, params))})
    assert len(set(expected.values())) > N_CONCURRENT // 2  # distinct answers: a mix-up would show

    async def one(client: httpx.AsyncClient, model: str, prompt: str) -> tuple[int, str]:
        r = await client.post("/completions", json={"model": model, "prompt": prompt, "max_tokens": 12,
                                                    "temperature": 0})
        return r.status_code, (r.json()["choices"][0]["text"] if r.status_code == 200 else r.text)

    async def all_at_once() -> list[tuple[int, str]]:
        limits = httpx.Limits(max_connections=N_CONCURRENT, max_keepalive_connections=N_CONCURRENT)
        async with httpx.AsyncClient(base_url=endpoint.url, headers=AUTH, timeout=120, limits=limits) as client:
            return await asyncio.wait_for(asyncio.gather(*(one(client, m, p) for m, p in jobs)), timeout=180)

    import ray

    calls = ray.get(endpoint.pool.ledger_snapshot.remote())["calls"]
    t0 = time.perf_counter()
    results = asyncio.run(all_at_once())
    elapsed = time.perf_counter() - t0
    print(f"{N_CONCURRENT} concurrent requests in {elapsed:.1f}s")
    assert len(results) == N_CONCURRENT
    assert ray.get(endpoint.pool.ledger_snapshot.remote())["calls"] - calls == N_CONCURRENT  # each ran once
    assert [status for status, _ in results] == [200] * N_CONCURRENT, [r for r in results if r[0] != 200][:3]
    for (model, prompt), (_, text) in zip(jobs, results):
        assert text == expected[(model, prompt)], (model, prompt)
    r = httpx.post(f"{endpoint.url}/completions", headers=AUTH, timeout=60,
                   json={"model": models[0].id, "prompt": prompts[0], "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected[(models[0].id, prompts[0])]
