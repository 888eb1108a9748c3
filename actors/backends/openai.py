"""openai backend: any OpenAI-compatible endpoint (vLLM, `pipelines.serve pool`, a hosted API), through the
official `openai` client: `/v1/completions`, or `/v1/chat/completions` for a chat model (`chat: true`).

spec keys (PoolModelConfig): `url` (base URL, e.g. http://127.0.0.1:8000/v1), `remote_model` (the
model name at that endpoint; default: the pool model id), `api_key_env` (name of the environment
variable holding the key; "EMPTY" when unset, as local servers expect), `timeout_s`, `max_retries`,
`chat`, and `path` (optional: a local tokenizer folder, see usage below).
Optional spec keys (not in PoolModelConfig): `max_concurrency` (parallel requests, default 32) and
`return_token_ids` (default true, see below).

Chat models (`chat: true`): each prompt is sent as one user message, `messages=[{"role": "user",
"content": prompt}]`, so the server applies the model's chat template; `max_tokens` goes as
`max_completion_tokens`, and log-probs are asked for with `logprobs=true` (no alternatives) and read
from `choices[0].logprobs.content`. The reply is `choices[0].message.content`.

Retries are the openai client's own: a failed attempt is retried on 408/409/429/5xx, on timeouts and on
connection errors (a body cut short included), at most `max_retries` times, after a jittered exponential
backoff (0.5 s doubling, capped at 8 s, minus up to 25 % jitter) or after the server's
`Retry-After`/`retry-after-ms` when it sends one (up to 2 minutes). `timeout_s` bounds each attempt, not
the whole call: each connect, write and read (a server that stalls after its headers), and the whole
response (a body still trickling in is cut at its first chunk past `timeout_s`, `actors.backends.attempts`).
Other 4xx errors and a 200 whose body is not JSON are not retried. When the last attempt fails,
`EndpointError` names the endpoint, the remote model, the cause and the attempts made (no key). Every
attempt is counted: a `Completion` carries the requests beyond the first it took (`retries`), an
`EndpointError` its `attempts`; the pool's ledger sums both (`actors.cost.CostLedger`), and re-issues
failed prompts to the model's `fallback` when it has one (`actors.pool`).

Each prompt is its own request, issued concurrently from a thread pool, so every `Completion` carries
the exact usage the server reported for it. Sampling: greedy is `temperature=0`; `seed` is passed when
set. Log-probs are requested (`logprobs=1`; chat: `logprobs=true`) and the chosen tokens' log-probs
returned. Token ids are returned when the server supports vLLM's `return_tokens_as_token_ids` extension
(sent in the request body; tokens come back as "token_id:123"); otherwise `token_ids` is empty.
A server that rejects an optional request field with a 400 naming it (the token-id extension, or
`logprobs`, which some hosted models refuse) is asked again without it, and the backend stops sending it.

Without log-probs (refused, or a server that returns none) `token_logprobs` is empty; the chain then
gives the step `ReasonConfig.confidence_without_logprobs` (policies.reason.step_confidence).
Without usage in a response, tokens are counted with the tokenizer at `path` when one is configured
(`Usage.source` "tokenizer": the prompt as the server would see it, with the chat template for a chat
model; the reply's tokens, plus one end-of-sequence token when the model stopped) and are otherwise
marked `Usage.source` "missing" (prompt_tokens 0), which the pool's ledger counts as `usage_missing`.
"""
from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from actors.backends.base import Backend, EndpointError, completions_or_raise, register_backend
from core.types import Completion, SamplingParams, Usage

TOKEN_ID_EXTENSION = "return_tokens_as_token_ids"
_TOKEN_ID_PREFIX = "token_id:"
_RETRYABLE_STATUS = {408, 409, 429}


def parse_token_ids(tokens: list[str] | None) -> list[int]:
    """Token ids from vLLM-style "token_id:123" tokens; [] unless every token has that form."""
    if not tokens:
        return []
    ids = []
    for t in tokens:
        if not isinstance(t, str) or not t.startswith(_TOKEN_ID_PREFIX):
            return []
        try:
            ids.append(int(t[len(_TOKEN_ID_PREFIX):]))
        except ValueError:
            return []
    return ids


@register_backend("openai")
class OpenAIBackend(Backend):
    concurrent_batches = 4  # a remote endpoint serves several micro-batches at once

    def __init__(self, model_id: str, spec: dict[str, Any]):
        super().__init__(model_id, spec)
        # lazy: only a pool with an openai model needs the client
        from openai import DefaultHttpx2Client, OpenAI

        from actors.backends.attempts import AttemptTracker

        self.url = spec.get("url")
        if not self.url:
            raise ValueError(f"openai backend for {model_id!r}: spec needs url")
        self.remote_model = spec.get("remote_model") or model_id
        key_env = spec.get("api_key_env")
        self.api_key = (os.environ.get(key_env) if key_env else None) or "EMPTY"
        self.timeout_s = float(spec.get("timeout_s") or 30.0)
        self.max_retries = int(spec.get("max_retries") if spec.get("max_retries") is not None else 3)
        self.max_concurrency = int(spec.get("max_concurrency") or 32)
        self.chat = bool(spec.get("chat"))
        self.tokenizer_path = spec.get("path")
        self.send_token_ids = bool(spec.get("return_token_ids", True))
        self.send_logprobs = True
        self.tracker = AttemptTracker(self.timeout_s)
        self.client = OpenAI(
            base_url=self.url, api_key=self.api_key, timeout=self.timeout_s, max_retries=self.max_retries,
            http_client=DefaultHttpx2Client(event_hooks=self.tracker.event_hooks()),
        )
        self._executor: ThreadPoolExecutor | None = None
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    # -- helpers ---------------------------------------------------------------------------------------
    @property
    def endpoint(self) -> str:
        return f"{self.url.rstrip('/')}/{'chat/completions' if self.chat else 'completions'}"

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.max_concurrency, thread_name_prefix=f"openai-{self.model_id}")
            return self._executor

    def _request(self, prompt: str, params: SamplingParams) -> dict[str, Any]:
        greedy = params.greedy
        req: dict[str, Any] = {
            "model": self.remote_model, "temperature": 0.0 if greedy else params.temperature,
            "top_p": 1.0 if greedy else params.top_p, "n": 1,
        }
        if self.chat:
            req.update(messages=[{"role": "user", "content": prompt}], max_completion_tokens=params.max_new_tokens)
        else:
            req.update(prompt=prompt, max_tokens=params.max_new_tokens)
        if self.send_logprobs:
            req["logprobs"] = True if self.chat else 1
        if params.seed is not None:
            req["seed"] = params.seed
        if self.send_token_ids:
            req["extra_body"] = {TOKEN_ID_EXTENSION: True}
        return req

    def _drop_rejected(self, req: dict[str, Any], message: str) -> bool:
        """Stop sending an optional field of `req` that the server refused with a 400 naming it; True if
        `req` had one (so asking again without it may succeed)."""
        if TOKEN_ID_EXTENSION in req.get("extra_body", {}) and TOKEN_ID_EXTENSION in message:
            self.send_token_ids = False
            return True
        if "logprobs" in req and "logprobs" in message:
            self.send_logprobs = False
            return True
        return False

    def _fail(self, err: Exception | str) -> EndpointError:
        """The clear error of a request that failed for good: `err` from the client, or what was wrong."""
        import httpx2
        import openai  # lazy, as above

        where = f"openai backend {self.model_id!r}: POST {self.endpoint} (model {self.remote_model!r})"
        n = self.tracker.attempts
        attempts = f"gave up after {n} attempt(s) (max_retries={self.max_retries})"
        if isinstance(err, str):
            why = f"{err} (not retried; {n} attempt(s))"
        elif isinstance(err, openai.APITimeoutError):
            why = f"{attempts}; last attempt timed out after {self.timeout_s:g}s"
        elif isinstance(err, openai.APIConnectionError):
            cause = err.__cause__ or err
            what = "cannot connect" if isinstance(cause, httpx2.ConnectError) else "connection failed"
            why = f"{attempts}; last error: {what}: {type(cause).__name__}: {cause}"
        elif isinstance(err, openai.APIStatusError):
            status = err.status_code
            if status in _RETRYABLE_STATUS or status >= 500:
                why = f"{attempts}; last error: HTTP {status}: {err.message}"
            else:
                why = f"HTTP {status} (not retried; {n} attempt(s)): {err.message}"
        else:
            why = f"{type(err).__name__}: {err}"
        return EndpointError(f"{where} failed: {why}", attempts=n)

    def _tokenizer_or_none(self) -> Any:
        if self.tokenizer_path is None:
            return None
        with self._lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer  # lazy: only to count what the server did not

                self._tokenizer = AutoTokenizer.from_pretrained(self.tokenizer_path)
            return self._tokenizer

    def count_usage(self, prompt: str, text: str, tokens_back: int, finish_reason: str) -> Usage:
        """Usage of a call whose response had none (see the module docstring)."""
        tok = self._tokenizer_or_none()
        if tok is None:
            return Usage(prompt_tokens=0, completion_tokens=tokens_back, source="missing")
        if self.chat and getattr(tok, "chat_template", None):
            rendered = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
            prompt_tokens = len(tok(rendered, add_special_tokens=False).input_ids)
        else:
            prompt_tokens = len(tok(prompt).input_ids)
        completion_tokens = tokens_back or (len(tok(text, add_special_tokens=False).input_ids)
                                            + (finish_reason == "stop"))
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, source="tokenizer")

    def _create(self, req: dict[str, Any]) -> Any:
        return (self.client.chat.completions if self.chat else self.client.completions).create(**req)

    def _send(self, prompt: str, params: SamplingParams) -> Any:
        """The parsed response to `prompt`, after the client's retries (and after asking again without
        an optional field the server refused); `EndpointError` when it fails for good."""
        import openai  # lazy, as above

        while True:
            req = self._request(prompt, params)
            try:
                resp = self._create(req)
            except openai.BadRequestError as err:
                if self._drop_rejected(req, str(err.message)):
                    continue
                raise self._fail(err) from err
            except openai.OpenAIError as err:
                raise self._fail(err) from err
            except json.JSONDecodeError as err:  # a JSON content type, a body that is not
                raise self._fail(f"the response body is not JSON: {err.doc[:80]!r}") from err
            if isinstance(resp, str):  # the client hands back a body whose content type is not JSON as text
                raise self._fail(f"the response body is not JSON: {resp[:80]!r}")
            if not getattr(resp, "choices", None):
                raise self._fail("the response has no choices")
            return resp

    def _one(self, prompt: str, params: SamplingParams) -> Completion:
        self.tracker.reset()
        start = time.perf_counter()
        resp = self._send(prompt, params)
        latency = time.perf_counter() - start
        choice = resp.choices[0]
        text, tokens, raw = self._parse_choice(choice)
        logprobs = [float("nan") if x is None else float(x) for x in raw]
        finish_reason = choice.finish_reason or "stop"
        if resp.usage is not None:
            usage = Usage(prompt_tokens=resp.usage.prompt_tokens, completion_tokens=resp.usage.completion_tokens)
        else:
            usage = self.count_usage(prompt, text, len(tokens), finish_reason)
        return Completion(
            text=text.strip(), token_ids=parse_token_ids(tokens), token_logprobs=logprobs, usage=usage,
            latency_s=latency, model_id=self.model_id, finish_reason=finish_reason,
            retries=self.tracker.attempts - 1,
        )

    def _parse_choice(self, choice: Any) -> tuple[str, list[str], list[float | None]]:
        """(text, tokens, their log-probs) of a completions or chat choice; no log-probs: empty lists."""
        lp = choice.logprobs
        if self.chat:
            content = (lp.content if lp else None) or []
            return choice.message.content or "", [t.token for t in content], [t.logprob for t in content]
        return choice.text or "", (lp.tokens if lp else None) or [], (lp.token_logprobs if lp else None) or []

    # -- Backend ---------------------------------------------------------------------------------------
    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """One completion per prompt; when some fail for good, an `EndpointError` whose `outcomes` keep
        the others' completions."""
        if len(prompts) <= 1:
            return [self._one(p, params) for p in prompts]
        futures: list[Future] = [self._pool().submit(self._one, p, params) for p in prompts]
        outcomes: list[Completion | EndpointError] = []
        try:
            for f in futures:
                try:
                    outcomes.append(f.result())
                except EndpointError as err:
                    outcomes.append(err)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
        return completions_or_raise(outcomes)

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
        self.client.close()
