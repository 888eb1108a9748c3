"""The pool behind its OpenAI-compatible Serve endpoint: the `openai` backend pointed at the live endpoint
gives the same greedy completions and token counts as the `hf` backend loaded directly."""
from __future__ import annotations

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

PROMPTS = ["jump twice =", "walk left and run =", "look =", "turn right thrice after jump around left ="]
WORDS = ["walk", "look", "run", "jump", "turn", "left", "right", "opposite", "around", "twice", "thrice",
         "and", "after", "I_WALK", "I_LOOK", "I_RUN", "I_JUMP", "I_TURN_LEFT", "I_TURN_RIGHT"]


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
        "serve": ServeConfig(host="127.0.0.1", port=_free_port()),
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
    try:
        ep = run_pool_endpoint(pool_config, blocking=False)
        deadline = time.time() + 60
        while True:  # the HTTP proxy may lag the app by a moment
            try:
                if httpx.get(f"{ep.url}/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"pool endpoint {ep.url} did not come up")
            time.sleep(0.2)
        print(f"pool endpoint up in {time.perf_counter() - t0:.1f}s")
        yield ep
    finally:
        serve.shutdown()
        if "ep" in locals():
            ray.kill(ep.pool)  # its model servers go with it
        if ours:
            ray.shutdown()


def _pool_ids(cfg: Config) -> list[str]:
    from actors.pool import pool_models

    return [m.id for m in pool_models(cfg)]


def _hf_models(cfg: Config) -> list[PoolModelConfig]:
    from actors.pool import pool_models

    return [m for m in pool_models(cfg) if m.backend == "hf"]


def test_models_endpoint(endpoint, pool_config: Config) -> None:
    from openai import OpenAI

    ids = _pool_ids(pool_config)
    assert len(_hf_models(pool_config)) >= 2
    body = httpx.get(f"{endpoint.url}/models").json()
    assert body["object"] == "list"
    assert sorted(m["id"] for m in body["data"]) == sorted(ids)
    client = OpenAI(base_url=endpoint.url, api_key="EMPTY")  # the official client parses it
    assert sorted(m.id for m in client.models.list().data) == sorted(ids)


def test_openai_backend_matches_hf_backend(endpoint, pool_config: Config) -> None:
    import ray

    params = SamplingParams(max_new_tokens=6)
    before = ray.get(endpoint.pool.ledger_snapshot.remote())["calls"]
    texts = []
    for m in _hf_models(pool_config):
        direct = make_backend("hf", m.id, {"path": m.path}).generate(PROMPTS, params)
        remote = make_backend("openai", m.id, {"url": endpoint.url, "timeout_s": 60, "max_retries": 1})
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


def test_completions_schema_and_errors(endpoint, pool_config: Config) -> None:
    model = _hf_models(pool_config)[0].id
    url = f"{endpoint.url}/completions"
    r = httpx.post(url, json={"model": model, "prompt": PROMPTS[:2], "max_tokens": 3, "temperature": 0,
                              "logprobs": 0}, timeout=60)
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

    r = httpx.post(url, json={"model": model, "prompt": "look =", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["logprobs"] is None

    r = httpx.post(url, json={"model": "no-such-model", "prompt": "look ="})
    assert r.status_code == 404
    err = r.json()["error"]
    assert "no-such-model" in err["message"] and err["code"] == "model_not_found" and err["param"] == "model"

    r = httpx.post(url, json={"model": model, "prompt": "look =", "n": 2})
    assert r.status_code == 400 and "n=2 is not supported" in r.json()["error"]["message"]

    r = httpx.post(url, json={"model": model, "prompt": "look =", "stream": True})
    assert r.status_code == 400 and "stream" in r.json()["error"]["message"]

    r = httpx.post(url, json={"model": model, "prompt": "look =", "max_tokens": "many"})
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "max_tokens" in err["message"] and err["param"] == "max_tokens"

    r = httpx.post(url, json={"prompt": "look ="})
    assert r.status_code == 400 and "model" in r.json()["error"]["message"]

    r = httpx.post(url, content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400


def test_failing_model_gives_500(endpoint, pool_config: Config) -> None:
    dead = next(m for m in pool_config.pool.models if m.id == "unreachable")
    r = httpx.post(f"{endpoint.url}/completions", json={"model": "unreachable", "prompt": "look ="}, timeout=60)
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["type"] == "server_error"
    assert "EndpointError" in err["message"] and "cannot connect" in err["message"]
    assert f"{dead.url}/completions" in err["message"]
    ok = httpx.post(f"{endpoint.url}/completions",  # the endpoint keeps serving
                    json={"model": _hf_models(pool_config)[0].id, "prompt": "look =", "max_tokens": 2}, timeout=60)
    assert ok.status_code == 200
