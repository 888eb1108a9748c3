"""Reliability: the `openai` backend against a real HTTP server on 127.0.0.1 that injects faults (429
with Retry-After, 500, a reply slower than the timeout, a body cut short, a body that is not JSON, a
server that stalls after its headers or trickles its body): bounded retries, each counted, then the
answer, a clear error, or the model's configured fallback through the real pool actor; never a hang,
and no prompt lost: every prompt ends with a completion or an error that names it, and the ledger
counts every attempt.

The HTTP cases drive the backend directly (no Ray); the fallback and ledger cases run the real
`ModelPool` (one Ray start for the suite) over two fault servers."""
from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from actors.backends import EndpointError, make_backend
from core.types import Completion, SamplingParams

pytestmark = pytest.mark.timeout(120)

SECRET_ENV, SECRET = "R2R_FAULTS_TEST_KEY", "sk-fault-test-secret"
FAULTS = {"ok", "429", "500", "502-html", "slow", "truncate", "not-json", "html", "hang", "trickle"}
BACKOFF_S = (0.5, 1.0, 2.0)  # the openai client's backoff ceilings without Retry-After (jitter only shortens)
SLACK_S = 1.0  # scheduling on a busy 2-core machine


class FaultServer:
    """An OpenAI-compatible /v1/completions server on 127.0.0.1 that answers each request with the next
    fault queued for its prompt (`by_prompt`), else the next of `faults`, else `then` ("ok": a valid
    completion, `"<tag> <prompt>"`). Records every request: (time, prompt, fault)."""

    def __init__(self, faults: list[str] | None = None, then: str = "ok", by_prompt: dict[str, list[str]] | None = None,
                 tag: str = "srv", retry_after_s: str = "1", slow_s: float = 3.0, trickle_gap_s: float = 0.1):
        assert set(faults or []) | {then} | {f for q in (by_prompt or {}).values() for f in q} <= FAULTS
        self.faults, self.then, self.by_prompt = list(faults or []), then, {k: list(v) for k, v in (by_prompt or {}).items()}
        self.tag, self.retry_after_s, self.slow_s, self.trickle_gap_s = tag, retry_after_s, slow_s, trickle_gap_s
        self.requests: list[tuple[float, str, str]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()  # releases handlers that hang, when the test ends
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def next_fault(self, prompt: str) -> str:
        with self.lock:
            queue = self.by_prompt.get(prompt) or self.faults
            fault = queue.pop(0) if queue else self.then
            self.requests.append((time.perf_counter(), prompt, fault))
            return fault

    def count(self, prompt: str | None = None) -> int:
        return sum(prompt is None or p == prompt for _, p, _ in self.requests)

    def settled_count(self, expected: int, within_s: float = 5.0) -> int:
        """count() once it reaches `expected` or `within_s` has passed: an attempt the client timed out on
        before this server read it (a busy machine) is recorded a moment later; it only ever adds."""
        deadline = time.perf_counter() + within_s
        while self.count() < expected and time.perf_counter() < deadline:
            time.sleep(0.01)
        return self.count()

    def gaps(self) -> list[float]:
        times = [t for t, _, _ in self.requests]
        return [b - a for a, b in zip(times, times[1:])]

    def answer(self, prompt: str) -> bytes:
        return json.dumps({
            "id": "cmpl-fault", "object": "text_completion", "created": 0, "model": "remote",
            "choices": [{"index": 0, "text": f" {self.tag} {prompt}", "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 2,
                      "total_tokens": len(prompt.split()) + 2},
        }).encode()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(srv: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def _head(self, status: int, content_type: str, length: int, **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(length))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.flush()

        def _send(self, status: int, body: bytes, content_type: str = "application/json", **headers: str) -> None:
            self._head(status, content_type, len(body), **headers)
            self.wfile.write(body)

        def do_POST(self) -> None:
            prompt = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["prompt"]
            fault = srv.next_fault(prompt)
            ok = srv.answer(prompt)
            error = json.dumps({"error": {"message": f"injected {fault}", "type": "server_error"}}).encode()
            html = b"<html><body>upstream hiccup</body></html>"
            try:
                if fault == "ok":
                    self._send(200, ok)
                elif fault == "429":
                    self._send(429, error, **{"Retry-After": srv.retry_after_s})
                elif fault == "500":
                    self._send(500, error)
                elif fault == "502-html":
                    self._send(502, html, "text/html")
                elif fault == "not-json":  # says JSON, is not
                    self._send(200, html)
                elif fault == "html":
                    self._send(200, html, "text/html")
                elif fault == "slow":  # answers, after the client's timeout
                    srv.stop.wait(srv.slow_s)
                    self._send(200, ok)
                elif fault == "truncate":  # Content-Length says more than comes: the connection closes
                    self._head(200, "application/json", len(ok))
                    self.wfile.write(ok[: len(ok) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                elif fault == "hang":  # headers, then nothing
                    self._head(200, "application/json", len(ok))
                    srv.stop.wait(60)
                    self.close_connection = True
                elif fault == "trickle":  # the body, one byte at a time: each read succeeds
                    self._head(200, "application/json", len(ok))
                    for i in range(len(ok)):
                        if srv.stop.wait(srv.trickle_gap_s):
                            break
                        self.wfile.write(ok[i:i + 1])
                        self.wfile.flush()
                    self.close_connection = True
            except OSError:  # the client gave up on this attempt
                self.close_connection = True

    return Handler


@pytest.fixture
def serve() -> Iterator:
    servers: list[FaultServer] = []

    def start(*args, **kwargs) -> FaultServer:
        servers.append(FaultServer(*args, **kwargs))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def backend(url: str, **spec):
    return make_backend("openai", "m", {"url": url, "timeout_s": 0.5, "max_retries": 2, "return_token_ids": False,
                                        **spec})


def generate(b, prompts: list[str]) -> tuple[list[Completion], float]:
    start = time.perf_counter()
    outs = b.generate(prompts, SamplingParams(max_new_tokens=4))
    return outs, time.perf_counter() - start


def fails(b, prompts: list[str]) -> tuple[EndpointError, float]:
    start = time.perf_counter()
    with pytest.raises(EndpointError) as info:
        b.generate(prompts, SamplingParams(max_new_tokens=4))
    return info.value, time.perf_counter() - start


def worst_wall(max_retries: int, attempt_s: float) -> float:
    """The most a call may take: every attempt at its bound, every backoff at its ceiling, plus slack."""
    return (max_retries + 1) * attempt_s + sum(BACKOFF_S[:max_retries]) + SLACK_S


# -- the backend against each fault ------------------------------------------------------------------------
def test_429_retry_after_is_honoured_and_counted(serve) -> None:
    srv = serve(["429"], retry_after_s="1")
    [c], wall = generate(backend(srv.url), ["jump ="])
    assert c.text == "srv jump =" and c.retries == 1 and srv.count() == 2
    assert 0.95 <= srv.gaps()[0] <= 1.0 + SLACK_S  # waited the server's 1 s, not the 0.5 s default backoff
    assert wall <= 1.0 + SLACK_S


def test_500_then_answer(serve) -> None:
    srv = serve(["500"])
    [c], wall = generate(backend(srv.url), ["walk ="])
    assert c.text == "srv walk =" and c.retries == 1 and srv.count() == 2
    assert wall <= BACKOFF_S[0] + SLACK_S


def test_persistent_500_gives_a_clear_error_after_max_retries_plus_one_attempts(serve, monkeypatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    srv = serve(then="500")
    err, wall = fails(backend(srv.url, api_key_env=SECRET_ENV, max_retries=2), ["look ="])
    msg = str(err)
    assert srv.count() == 3 and err.attempts == 3  # exactly max_retries + 1, counted by the server
    assert "'m'" in msg and f"{srv.url}/completions" in msg and "HTTP 500" in msg and "injected 500" in msg
    assert "gave up after 3 attempt(s) (max_retries=2)" in msg and SECRET not in msg
    assert wall <= worst_wall(2, 0.1)


def test_slow_reply_times_out_then_retry_answers(serve) -> None:
    srv = serve(["slow"], slow_s=5.0)
    [c], wall = generate(backend(srv.url, timeout_s=0.5), ["run ="])
    assert c.text == "srv run =" and c.retries == 1 and srv.count() == 2
    assert wall <= worst_wall(1, 0.5)


def test_persistent_timeout_is_bounded(serve) -> None:
    srv = serve(then="slow", slow_s=5.0)
    err, wall = fails(backend(srv.url, timeout_s=0.5, max_retries=1), ["run ="])
    assert "timed out after 0.5s" in str(err) and "2 attempt(s)" in str(err) and srv.settled_count(2) == 2
    assert wall <= worst_wall(1, 0.5)


def test_truncated_body_is_retried(serve) -> None:
    srv = serve(["truncate"])
    [c], _ = generate(backend(srv.url), ["jump ="])
    assert c.text == "srv jump =" and c.retries == 1 and srv.count() == 2

    always = serve(then="truncate")
    err, wall = fails(backend(always.url, max_retries=2), ["jump ="])
    assert always.count() == 3 and err.attempts == 3
    assert "connection failed: RemoteProtocolError" in str(err) and "3 attempt(s)" in str(err)
    assert wall <= worst_wall(2, 0.1)


@pytest.mark.parametrize("fault", ["not-json", "html"])
def test_body_that_is_not_json_is_a_clear_error_not_retried(serve, fault) -> None:
    """A 200 whose body is not JSON (whatever its content type) is not retried: the server answered."""
    srv = serve([fault])
    err, _ = fails(backend(srv.url), ["look ="])
    assert "the response body is not JSON" in str(err) and "upstream hiccup" in str(err)
    assert "not retried; 1 attempt(s)" in str(err) and srv.count() == 1 and err.attempts == 1


def test_error_page_that_is_not_json_is_retried(serve) -> None:
    """A gateway's HTML error page (502) is a retryable status: retried, then the answer."""
    srv = serve(["502-html"])
    [c], _ = generate(backend(srv.url), ["look ="])
    assert c.text == "srv look =" and c.retries == 1 and srv.count() == 2


def test_hang_after_headers_is_bounded(serve) -> None:
    srv = serve(then="hang")
    err, wall = fails(backend(srv.url, timeout_s=0.5, max_retries=2), ["walk ="])
    assert "timed out after 0.5s" in str(err) and "3 attempt(s)" in str(err) and srv.settled_count(3) == 3
    assert wall <= worst_wall(2, 0.5)


def test_trickled_body_is_cut_at_the_timeout(serve) -> None:
    """Every read gets a byte within the read timeout, so only the whole-response bound can stop it:
    ~250 bytes at 0.1 s each would take 25 s per attempt."""
    srv = serve(then="trickle", trickle_gap_s=0.1)
    err, wall = fails(backend(srv.url, timeout_s=0.5, max_retries=1), ["walk ="])
    assert "timed out after 0.5s" in str(err) and "2 attempt(s)" in str(err) and srv.settled_count(2) == 2
    assert wall <= worst_wall(1, 0.5 + 0.1)


def test_batch_keeps_what_completed(serve) -> None:
    """One prompt of a batch fails for good: the error carries the others' completions, in order."""
    srv = serve(by_prompt={"walk =": ["500"] * 3, "run =": ["500"]})
    err, _ = fails(backend(srv.url, max_retries=2), ["jump =", "walk =", "run ="])
    jump, walk, run = err.outcomes
    assert "1 of 3 prompts failed" in str(err) and isinstance(walk, EndpointError) and walk.attempts == 3
    assert (jump.text, jump.retries, run.text, run.retries) == ("srv jump =", 0, "srv run =", 1)
    assert srv.count("walk =") == 3 and srv.count() == 6


# -- the pool: fallback, errors and the ledger -----------------------------------------------------------
def _model(mid: str, url: str, **extra) -> dict:
    return {"id": mid, "backend": "openai", "url": url, "remote_model": "remote", "timeout_s": 0.5,
            "max_retries": 2, "price": {"input_per_m": 1.0, "output_per_m": 2.0}, **extra}


def test_fallback_is_checked_at_pool_start(tmp_path: Path) -> None:
    from actors.pool import pool_models
    from core.config import Config

    def cfg(models: list[dict]) -> Config:
        return Config.model_validate({"name": "faults", "run_dir": str(tmp_path), "pool": {"use_zoo": False,
                                                                                           "models": models}})

    url = "http://127.0.0.1:9/v1"
    with pytest.raises(ValueError, match="pool model 'a': fallback 'nope' is not a pool model; pool: \\['a'\\]"):
        pool_models(cfg([_model("a", url, fallback="nope")]))
    with pytest.raises(ValueError, match="cycle: a -> b -> a"):
        pool_models(cfg([_model("a", url, fallback="b"), _model("b", url, fallback="a")]))
    with pytest.raises(ValueError, match="cycle: a -> a"):
        pool_models(cfg([_model("a", url, fallback="a")]))
    assert [m.fallback for m in pool_models(cfg([_model("a", url, fallback="b"), _model("b", url)]))] == ["b", None]


@pytest.fixture(scope="module")
def fault_pool(ray_local, tmp_path_factory) -> Iterator[tuple]:
    """A pool of three openai models over two fault servers: `primary` (fallback `backup`) and `lonely`
    (no fallback) on the primary server, `backup` on the other. Tests set the primary server's faults."""
    import ray

    from actors.pool import start_pool
    from core.config import Config

    primary, spare = FaultServer(tag="primary"), FaultServer(tag="backup")
    cfg = Config.model_validate({"name": "faults", "run_dir": str(tmp_path_factory.mktemp("faults")), "pool": {
        "use_zoo": False, "batch_window_ms": 5,
        "models": [_model("primary", primary.url, fallback="backup"), _model("lonely", primary.url),
                   _model("backup", spare.url, price={"input_per_m": 3.0, "output_per_m": 6.0})]}})
    pool = start_pool(cfg)
    yield pool, primary, spare
    ray.kill(pool)
    primary.close()
    spare.close()


def _script(srv: FaultServer, then: str = "ok", by_prompt: dict[str, list[str]] | None = None,
            retry_after_s: str = "1") -> None:
    with srv.lock:
        srv.faults, srv.then, srv.by_prompt, srv.requests = [], then, dict(by_prompt or {}), []
        srv.retry_after_s = retry_after_s


def _ask(pool, model_id: str, prompts: list[str]):
    import ray

    start = time.perf_counter()
    outs = ray.get(pool.generate.remote(model_id, prompts, SamplingParams(max_new_tokens=4)))
    return outs, time.perf_counter() - start


@pytest.mark.integration
def test_persistent_failure_goes_to_the_fallback(fault_pool) -> None:
    import ray

    pool, primary, spare = fault_pool
    _script(primary, then="500")
    _script(spare)
    ray.get(pool.reset_ledger.remote())
    prompts = ["jump =", "walk left =", "run twice ="]
    outs, wall = _ask(pool, "primary", prompts)
    assert [c.text for c in outs] == [f"backup {p}" for p in prompts]  # every prompt answered, in order
    assert all(c.model_id == "backup" and c.fallback_from == "primary" and c.cost_usd > 0 for c in outs)
    assert primary.count() == 3 * len(prompts) and spare.count() == len(prompts)
    led = ray.get(pool.ledger_snapshot.remote())
    p, b = led["models"]["primary"], led["models"]["backup"]
    assert (p["calls"], p["failures"], p["retries"], p["cost_usd"]) == (0, 3, 6, 0.0)
    assert (b["calls"], b["failures"], b["retries"], b["fallbacks"]) == (3, 0, 0, 3)
    assert (led["calls"], led["failures"], led["retries"]) == (3, 3, 6)
    assert led["total_usd"] == pytest.approx(sum(c.cost_usd for c in outs))
    assert wall <= worst_wall(2, 0.1) + SLACK_S  # prompts run concurrently; plus the fallback's call


@pytest.mark.integration
def test_partial_failure_keeps_the_primary_answers(fault_pool) -> None:
    """Only the prompt that fails for good goes to the fallback; a retried prompt keeps its answer."""
    import ray

    pool, primary, spare = fault_pool
    _script(primary, by_prompt={"walk left =": ["500"] * 3, "run twice =": ["429"]}, retry_after_s="0.2")
    _script(spare)
    ray.get(pool.reset_ledger.remote())
    outs, _ = _ask(pool, "primary", ["jump =", "walk left =", "run twice ="])
    assert [c.text for c in outs] == ["primary jump =", "backup walk left =", "primary run twice ="]
    assert [c.fallback_from for c in outs] == [None, "primary", None] and [c.retries for c in outs] == [0, 0, 1]
    led = ray.get(pool.ledger_snapshot.remote())
    p, b = led["models"]["primary"], led["models"]["backup"]
    assert (p["calls"], p["failures"], p["retries"]) == (2, 1, 3)  # 2 retries of the failed call, 1 of the 429
    assert (b["calls"], b["fallbacks"]) == (1, 1) and spare.count() == 1


@pytest.mark.integration
def test_no_fallback_is_a_clear_error_and_counted(fault_pool) -> None:
    import ray

    pool, primary, _ = fault_pool
    _script(primary, then="hang")
    ray.get(pool.reset_ledger.remote())
    start = time.perf_counter()
    with pytest.raises(EndpointError) as info:
        ray.get(pool.generate.remote("lonely", ["look ="], SamplingParams(max_new_tokens=4)))
    wall = time.perf_counter() - start
    msg = str(info.value)
    assert "openai backend 'lonely'" in msg and f"{primary.url}/completions" in msg and "(model 'remote')" in msg
    assert "gave up after 3 attempt(s) (max_retries=2); last attempt timed out after 0.5s" in msg
    assert primary.settled_count(3) == 3 and wall <= worst_wall(2, 0.5)
    led = ray.get(pool.ledger_snapshot.remote())
    assert led["models"]["lonely"] == {
        "calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "usage_missing": 0,
        "retries": 2, "failures": 1, "fallbacks": 0}
    assert ray.get(pool.model_ids.remote())  # the pool keeps serving
    ok, _ = _ask(pool, "backup", ["look ="])
    assert ok[0].text == "backup look ="
