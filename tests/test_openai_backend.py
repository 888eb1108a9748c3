"""The openai backend against a scripted local OpenAI-compatible server (/v1/completions and
/v1/chat/completions): retries, timeouts, errors, chat models, responses without log-probs or usage, and
the chain's confidence rule on models without log-probs."""
from __future__ import annotations

import asyncio
import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from actors.backends import make_backend
from actors.backends.openai import EndpointError, OpenAIBackend, parse_token_ids
from core.types import SamplingParams
from policies.reason import step_confidence


def answer(prompt: str) -> dict:
    """The scripted server's deterministic answer to `prompt`: its words reversed, then [EOS]."""
    words = prompt.split()[::-1]
    ids = [10 + len(w) for w in words] + [2]
    return {
        "text": " " + " ".join(words),
        "ids": ids,
        "logprobs": [-0.1 * (i + 1) for i in range(len(ids))],
        "prompt_tokens": len(prompt.split()) + 1,
    }


class Script:
    """What the server does: fail with `failures` (status codes, in order) before answering; optionally
    sleep `delay_s` per request; optionally reject the token-id extension or `logprobs` with a 400, or
    answer without log-probs (`logprobs=False`) or without usage (`usage=False`)."""

    def __init__(self, failures: list[int] | None = None, delay_s: float = 0.0, retry_after_ms: int | None = 5,
                 reject_extension: bool = False, reject_logprobs: bool = False, logprobs: bool = True,
                 usage: bool = True):
        self.failures = list(failures or [])
        self.delay_s = delay_s
        self.retry_after_ms = retry_after_ms
        self.reject_extension = reject_extension
        self.reject_logprobs = reject_logprobs
        self.logprobs = logprobs
        self.usage = usage
        self.requests: list[dict] = []
        self.times: list[float] = []
        self.lock = threading.Lock()


def make_handler(script: Script) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.requests.append(body)
                script.times.append(time.perf_counter())
                failure = script.failures.pop(0) if script.failures else None
            if script.delay_s:
                time.sleep(script.delay_s)
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                self._send(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
                return
            if failure is not None:
                headers = {} if script.retry_after_ms is None else {"retry-after-ms": str(script.retry_after_ms)}
                self._send(failure, {"error": {"message": f"scripted failure {failure}", "type": "server"}},
                           headers)
                return
            for refused, field in [(script.reject_extension, "return_tokens_as_token_ids"),
                                   (script.reject_logprobs, "logprobs")]:
                if refused and field in body:
                    self._send(400, {"error": {"message": f"Unrecognized request argument supplied: {field}",
                                               "type": "invalid_request_error"}})
                    return
            chat = self.path == "/v1/chat/completions"
            if chat:
                [message] = body["messages"]
                assert message["role"] == "user" and "prompt" not in body and "max_tokens" not in body
                prompt = message["content"]
            else:
                prompt = body["prompt"]
            a = answer(prompt)
            as_ids = body.get("return_tokens_as_token_ids")
            tokens = [f"token_id:{i}" for i in a["ids"]] if as_ids else [*a["text"].split(), "</s>"]
            with_logprobs = script.logprobs and body.get("logprobs") not in (None, False)
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": a["text"]}, "finish_reason": "stop",
                          "logprobs": {"content": [{"token": t, "logprob": lp, "bytes": None, "top_logprobs": []}
                                                   for t, lp in zip(tokens, a["logprobs"])]} if with_logprobs else None}
            else:
                choice = {"index": 0, "text": a["text"], "finish_reason": "stop", "logprobs": {
                    "tokens": tokens, "token_logprobs": a["logprobs"], "top_logprobs": None,
                    "text_offset": None} if with_logprobs else None}
            self._send(200, {
                "id": "cmpl-test", "object": "chat.completion" if chat else "text_completion", "created": 0,
                "model": body["model"], "choices": [choice],
                "usage": {"prompt_tokens": a["prompt_tokens"], "completion_tokens": len(a["ids"]),
                          "total_tokens": a["prompt_tokens"] + len(a["ids"])} if script.usage else None,
            })

    return Handler


@pytest.fixture
def serve_script() -> Iterator[Callable[[Script], str]]:
    servers: list[ThreadingHTTPServer] = []

    def start(script: Script) -> str:
        server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(script))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def backend(url: str, **spec) -> OpenAIBackend:
    b = make_backend("openai", "m", {"url": url, "timeout_s": 5.0, "max_retries": 3, **spec})
    assert isinstance(b, OpenAIBackend)
    return b


def check(c, prompt: str, token_ids: bool = True) -> None:
    a = answer(prompt)
    assert c.text == a["text"].strip()
    assert c.token_ids == (a["ids"] if token_ids else [])
    assert c.token_logprobs == pytest.approx(a["logprobs"])
    assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (a["prompt_tokens"], len(a["ids"]))
    assert c.model_id == "m" and c.finish_reason == "stop" and c.latency_s > 0


def test_retries_429_then_500_then_answers(serve_script) -> None:
    script = Script(failures=[429, 500, 429, 500])
    b = backend(serve_script(script), max_retries=4, remote_model="remote-name")
    [c] = b.generate(["jump twice ="], SamplingParams(max_new_tokens=5, seed=7))
    check(c, "jump twice =")
    assert len(script.requests) == 5 and c.retries == 4
    req = script.requests[-1]
    assert req["model"] == "remote-name" and req["prompt"] == "jump twice ="
    assert req["max_tokens"] == 5 and req["temperature"] == 0.0 and req["top_p"] == 1.0
    assert req["seed"] == 7 and req["logprobs"] == 1 and req["return_tokens_as_token_ids"] is True


def test_default_backoff_is_exponential_with_jitter(serve_script) -> None:
    """No Retry-After from the server: the client waits ~0.5 s, then ~1 s (each minus up to 25 %)."""
    script = Script(failures=[500, 503], retry_after_ms=None)
    [c] = backend(serve_script(script)).generate(["walk ="], SamplingParams())
    check(c, "walk =")
    gaps = [b - a for a, b in zip(script.times, script.times[1:])]
    assert len(gaps) == 2
    assert 0.3 <= gaps[0] <= 1.0 and 0.7 <= gaps[1] <= 1.6 and gaps[1] > gaps[0]


def test_gives_up_after_max_retries_with_clear_error(serve_script) -> None:
    script = Script(failures=[500] * 10)
    url = serve_script(script)
    with pytest.raises(EndpointError) as info:
        backend(url, max_retries=2).generate(["look ="], SamplingParams())
    msg = str(info.value)
    assert f"{url}/completions" in msg and "'m'" in msg
    assert "3 attempt(s)" in msg and "HTTP 500" in msg and "scripted failure 500" in msg
    assert len(script.requests) == 3


def test_client_errors_are_not_retried(serve_script) -> None:
    script = Script(failures=[404])
    with pytest.raises(EndpointError, match="HTTP 404 \\(not retried; 1 attempt\\(s\\)\\)"):
        backend(serve_script(script)).generate(["look ="], SamplingParams())
    assert len(script.requests) == 1


def test_timeout_is_honoured(serve_script) -> None:
    script = Script(delay_s=2.0)
    url = serve_script(script)
    start = time.perf_counter()
    with pytest.raises(EndpointError, match="timed out after 0.3s") as info:
        backend(url, timeout_s=0.3, max_retries=1).generate(["look ="], SamplingParams())
    elapsed = time.perf_counter() - start
    assert url in str(info.value) and "2 attempt(s)" in str(info.value)
    assert len(script.requests) == 2  # the timed-out attempt was retried once
    assert elapsed < 1.9  # two 0.3 s attempts plus one backoff, never the server's 2 s


def test_connection_refused_names_endpoint() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    b = backend(url, max_retries=1)
    with pytest.raises(EndpointError, match="cannot connect") as info:
        b.generate(["look ="], SamplingParams())
    assert f"{url}/completions" in str(info.value) and "2 attempt(s)" in str(info.value)
    b.close()


def test_prompts_are_concurrent_requests_with_own_usage(serve_script) -> None:
    script = Script(delay_s=0.4)
    prompts = ["jump =", "walk left =", "run around right twice =", "look and jump ="]
    b = backend(serve_script(script))
    start = time.perf_counter()
    outs = b.generate(prompts, SamplingParams(max_new_tokens=8, temperature=0.7, top_p=0.9))
    elapsed = time.perf_counter() - start
    assert elapsed < 1.2  # four 0.4 s requests overlapped
    for c, p in zip(outs, prompts):
        check(c, p)
    assert sorted(r["prompt"] for r in script.requests) == sorted(prompts)
    assert all(r["temperature"] == 0.7 and r["top_p"] == 0.9 and "seed" not in r for r in script.requests)
    b.close()


def test_server_without_token_id_extension(serve_script) -> None:
    script = Script(reject_extension=True)
    b = backend(serve_script(script))
    outs = b.generate(["jump =", "walk ="], SamplingParams())
    for c, p in zip(outs, ["jump =", "walk ="]):
        check(c, p, token_ids=False)
    assert not b.send_token_ids
    assert "return_tokens_as_token_ids" not in script.requests[-1]


def test_api_key_from_env(serve_script, monkeypatch) -> None:
    url = serve_script(Script())
    monkeypatch.setenv("R2R_TEST_KEY", "sk-test")
    assert backend(url, api_key_env="R2R_TEST_KEY").api_key == "sk-test"
    assert backend(url, api_key_env="R2R_TEST_KEY_UNSET").api_key == "EMPTY"
    assert backend(url).api_key == "EMPTY"


def test_parse_token_ids() -> None:
    assert parse_token_ids(["token_id:3", "token_id:17"]) == [3, 17]
    assert parse_token_ids(["token_id:3", "jump"]) == []
    assert parse_token_ids(None) == [] and parse_token_ids([]) == []


# -- chat models ---------------------------------------------------------------------------------------------
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}= {% endif %}")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    """A local word-level tokenizer with a chat template: "[BOS]user <prompt> =" for one user turn."""
    from policies.tiny_lm import build_tokenizer

    tok = build_tokenizer(["user", "jump", "walk", "run", "look", "left", "twice", "around"])
    tok.chat_template = CHAT_TEMPLATE
    path = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(path)
    return str(path)


def test_chat_model_uses_chat_completions(serve_script) -> None:
    script = Script(failures=[503])
    b = backend(serve_script(script), chat=True, remote_model="chat-model")
    assert b.endpoint.endswith("/v1/chat/completions")
    prompts = ["jump twice =", "walk left ="]
    for c, p in zip(b.generate(prompts, SamplingParams(max_new_tokens=5, seed=3)), prompts):
        check(c, p)
        assert c.usage.source == "reported"
    req = script.requests[-1]
    assert req["model"] == "chat-model" and req["max_completion_tokens"] == 5 and req["seed"] == 3
    assert req["logprobs"] is True and req["return_tokens_as_token_ids"] is True and req["temperature"] == 0.0
    assert sorted(r["messages"][0]["content"] for r in script.requests[1:]) == sorted(prompts)
    b.close()


def test_chat_model_without_logprobs(serve_script) -> None:
    """A server that answers without log-probs: empty token_logprobs (and ids), the text and usage intact."""
    [c] = backend(serve_script(Script(logprobs=False)), chat=True).generate(["jump twice ="], SamplingParams())
    a = answer("jump twice =")
    assert c.text == a["text"].strip() and c.token_logprobs == [] and c.token_ids == []
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.source) == (a["prompt_tokens"], len(a["ids"]), "reported")


def test_refused_logprobs_are_no_longer_asked_for(serve_script) -> None:
    script = Script(reject_logprobs=True)
    b = backend(serve_script(script), chat=True)
    outs = b.generate(["jump =", "walk ="], SamplingParams())
    assert [c.text for c in outs] == ["= jump", "= walk"] and all(c.token_logprobs == [] for c in outs)
    assert not b.send_logprobs and "logprobs" not in script.requests[-1]


@pytest.mark.parametrize("chat", [False, True])
def test_missing_usage_is_counted_with_the_tokenizer(serve_script, tokenizer_dir, chat) -> None:
    prompt = "jump around left twice ="
    a = answer(prompt)
    words = len(prompt.split())
    # what the server would have seen: [BOS] + the prompt, or [BOS] user + the prompt + the template's "="
    prompt_tokens = 1 + words + (2 if chat else 0)
    for logprobs in (True, False):
        url = serve_script(Script(usage=False, logprobs=logprobs))
        [c] = backend(url, chat=chat, path=tokenizer_dir).generate([prompt], SamplingParams())
        assert c.text == a["text"].strip()
        # with log-probs the tokens that came back; without, the reply's tokens plus the end-of-sequence token
        assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.source) == (
            prompt_tokens, words + 1, "tokenizer"), logprobs


def test_missing_usage_without_tokenizer_is_flagged(serve_script) -> None:
    [c] = backend(serve_script(Script(usage=False)), chat=True).generate(["jump twice ="], SamplingParams())
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.source) == (0, 4, "missing")
    [c] = backend(serve_script(Script(usage=False, logprobs=False))).generate(["jump ="], SamplingParams())
    assert (c.usage.prompt_tokens, c.usage.completion_tokens, c.usage.source) == (0, 0, "missing")


# -- the chain on a model without log-probs ------------------------------------------------------------------
class BackendPool:
    """Unit-test stand-in for the pool actor: `generate.remote` runs real backends in threads."""

    def __init__(self, backends: dict[str, OpenAIBackend]):
        self.backends = backends
        self.generate = SimpleNamespace(remote=self._generate)

    async def _generate(self, model_id: str, prompts: list[str], params: SamplingParams):
        return await asyncio.to_thread(self.backends[model_id].generate, prompts, params)


def test_step_confidence_without_logprobs() -> None:
    assert step_confidence([-0.1, -0.2], alpha=0.0) == pytest.approx(math.exp(-0.2))
    assert step_confidence([-0.1, float("nan"), -0.2], alpha=0.0) == pytest.approx(math.exp(-0.2))
    assert step_confidence([], alpha=0.1) == 1.0
    assert step_confidence([float("nan")], alpha=0.1, without_logprobs=0.25) == 0.25


def test_chain_on_models_without_logprobs(serve_script) -> None:
    """The procedural review on chat models that give no log-probs: confidence_without_logprobs decides
    (1.0 by default: answers kept, no escalation; 0.0: every step escalated one tier up)."""
    from benchmarks.tasks.scan import ScanTask
    from core.config import ReasonConfig, ScanConfig
    from policies.baselines import FixedRouter
    from policies.reason import reason_batch
    from policies.router import GoldDecomposition

    url = serve_script(Script(logprobs=False))
    pool = BackendPool({m: make_backend("openai", m, {"url": url, "chat": True}) for m in ("cheap", "dear")})
    task = ScanTask(ScanConfig(n_test_commands=4), seed=0)
    examples = task.load("test")
    router = FixedRouter("tier0", GoldDecomposition(), lambda *_: 0)

    trajs = reason_batch(examples, router, pool, task, ReasonConfig(), ["cheap", "dear"])
    steps = [s for t in trajs for s in t.steps]
    assert len(steps) >= len(examples)
    for s in steps:
        assert [c.model_id for c in s.calls] == ["cheap"] and s.confidence == 1.0
        assert s.answer == answer(s.prompt)["text"].strip()

    escalate = ReasonConfig(confidence_without_logprobs=0.0)
    for t in reason_batch(examples, router, pool, task, escalate, ["cheap", "dear"]):
        assert all([c.model_id for c in s.calls] == ["cheap", "dear"] and s.confidence == 0.0 for s in t.steps)
