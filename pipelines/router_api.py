"""The trained router behind an OpenAI-compatible API (model `r2-router`), served by `pipelines.serve router`.

    POST /v1/chat/completions   the last user message is the query (earlier turns are not used)
    POST /v1/completions        `prompt`: a query, or a list of queries (one choice each)
    GET  /v1/models             [r2-router]

Each query runs the one chain (`policies.reason`): the decomposer splits it, the allocator picks a pool
model per step, the steps run in order with the procedural review, and the chain's answer is the reply.
The router decodes greedily, so `temperature`, `top_p` and `seed` do not change the answer.

The cost knob, per request: `{"r2": {"lambda": L}}` in the body (with the openai client:
`extra_body={"r2": {"lambda": 0.5}}`), L >= 0, default 0. It acts on both of the chain's spending
decisions: the allocator picks, per step, argmax_m [log pi(m | step) - L * price_m / price_max] over the
pool's models (each unit of L costs the largest model one nat of the allocator's preference), and the
procedural review escalates a step only below tau / (1 + L). L = 0 is the trained router as it is; a larger
L routes to cheaper models and escalates less. (The allocation alone is not enough: a cheaper model is
less confident, and the review's escalations can then cost more than the allocation saved.) `{"r2": {"task": NAME}}`
names the query's task when the world cannot infer it.

The response is the OpenAI one plus:
- `usage`: every pool call's tokens plus the router's own (decomposer prompt + generated tokens,
  allocator prompt + scored candidate tokens), with the router's itemised in `usage.r2_router`;
- `r2` (per choice): the task, lambda, the decomposition, each step's text, model, answer, confidence,
  calls (escalations included) and cost in USD, the pool cost in total, and `correct` when the world
  knows the query's gold answer (the tiny world's synthetic queries), else null.

`stream: true` sends the whole answer as one server-sent-events chunk, then a chunk with the finish
reason, usage and `r2`, then `[DONE]`: the answer only exists once the chain's last step has run.
Errors and limits are pipelines.openai_api's (400/401/404/413, 5xx without internals).
"""
# no `from __future__ import annotations`: FastAPI must see the request models' real annotations
import asyncio
import json
import time
import uuid
from typing import Any

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray.exceptions import RayError

from benchmarks.tasks import build_world
from core.config import Config
from pipelines.openai_api import APIError, check_max_tokens, harden
from policies.load import load_router
from policies.reason import Trajectory, areason_batch

MODEL_NAME = "r2-router"


class R2Options(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    lam: float = Field(0.0, ge=0, alias="lambda")
    task: str | None = None


class _RouterRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    n: int = 1
    stream: bool | None = False
    r2: R2Options = R2Options()

    @model_validator(mode="after")
    def _one_choice(self) -> "_RouterRequest":
        if self.n != 1:
            raise ValueError(f"n={self.n} is not supported: the router gives one answer per query (n=1)")
        return self


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: the text ones
            return " ".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class ChatRequest(_RouterRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def query(self) -> str:
        users = [m.text() for m in self.messages if m.role == "user"]
        if not users or not users[-1].strip():
            raise ValueError("messages: no user message with text (the last user message is the query)")
        return users[-1]


class CompletionRequest(_RouterRequest):
    prompt: str | list[str]

    def queries(self) -> list[str]:
        queries = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not queries or not all(q.strip() for q in queries):
            raise ValueError("prompt: give a non-empty query or a non-empty list of them")
        return queries


def trajectory_details(t: Trajectory, lam: float) -> dict:
    """The `r2` object of one answer."""
    steps = [{"text": s.text, "model": s.model_id, "answer": s.answer, "confidence": s.confidence,
              "calls": [c.model_id for c in s.calls], "cost_usd": sum(c.cost_usd for c in s.calls)}
             for s in t.steps]
    return {"task": t.task, "lambda": lam, "decomposition": t.decomposition.decomposition.steps, "steps": steps,
            "cost_usd": t.cost_usd, "correct": None if t.correct != t.correct else t.correct}


class RouterAPI:
    """Handlers over a trained router and the pool actor. The router's policies load in the Serve replica,
    on its first request (or `ready()`)."""

    def __init__(self, cfg: Config, router_path: str | None, pool: Any):
        self.cfg, self.router_path, self.pool = cfg, router_path, pool
        self.created = int(time.time())
        self._lock: asyncio.Lock | None = None
        self.router = None

    async def ready(self) -> None:
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self.router is not None:
                return
            if hasattr(self.pool, "resolve"):  # another application's pool, found from this replica
                self.pool = self.pool.resolve()
            self.model_ids = list(await self.pool.model_ids.remote())
            described = await self.pool.describe.remote()
            self.prices = [float(d["input_per_m"] or 0) + float(d["output_per_m"] or 0) for d in described]
            self.world = build_world(self.cfg)
            self.router, self.description = await asyncio.to_thread(
                load_router, self.cfg, self.model_ids, self.router_path)

    async def list_models(self) -> dict:
        return {"object": "list", "data": [
            {"id": MODEL_NAME, "object": "model", "created": self.created, "owned_by": "r2-reasoner"}]}

    async def _route(self, queries: list[str], req: _RouterRequest) -> list[Trajectory]:
        if req.model != MODEL_NAME:
            raise APIError(404, f"The model {req.model!r} does not exist; this endpoint serves {MODEL_NAME!r}",
                           param="model", code="model_not_found")
        check_max_tokens(req.max_tokens, self.cfg.serve)
        await self.ready()
        try:
            examples = [self.world.infer(q, req.r2.task) for q in queries]
        except ValueError as err:  # an unknown task name
            raise APIError(400, str(err), param="r2.task") from None
        router = self.router.with_cost_penalty(req.r2.lam, self.prices)
        reason = self.cfg.reason.model_copy(update={"tau": self.cfg.reason.tau / (1 + req.r2.lam)})
        trajs: list[Trajectory | None] = [None] * len(examples)
        for name in dict.fromkeys(ex.task for ex in examples):  # one batch per task, in the chain's lockstep
            idx = [i for i, ex in enumerate(examples) if ex.task == name]
            try:
                out = await areason_batch([examples[i] for i in idx], router, self.pool, self.world.tasks[name],
                                          reason, self.model_ids)
            except RayError as err:
                raise APIError(500, "the model pool failed while answering") from err
            for i, t in zip(idx, out):
                trajs[i] = t
        return trajs

    def _usage(self, trajs: list[Trajectory]) -> dict:
        router = {part: {k: sum(t.router_usage.get(part, {}).get(k, 0) for t in trajs)
                         for k in ("prompt_tokens", "completion_tokens")}
                  for part in ("decomposer", "allocator")}
        prompt = sum(c.prompt_tokens for t in trajs for c in t.calls) + sum(r["prompt_tokens"] for r in router.values())
        completion = (sum(c.completion_tokens for t in trajs for c in t.calls)
                      + sum(r["completion_tokens"] for r in router.values()))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "r2_router": router}

    async def chat_completions(self, req: ChatRequest) -> Any:
        try:
            query = req.query()
        except ValueError as err:
            raise APIError(400, str(err), param="messages") from None
        req.max_tokens = req.max_tokens or req.max_completion_tokens
        [traj] = await self._route([query], req)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage, r2 = self._usage([traj]), trajectory_details(traj, req.r2.lam)
        if req.stream:
            head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": MODEL_NAME}
            return _event_stream([
                {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": traj.answer},
                                      "finish_reason": None}]},
                {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage, "r2": r2}])
        return {"id": rid, "object": "chat.completion", "created": created, "model": MODEL_NAME,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": traj.answer},
                             "finish_reason": "stop", "logprobs": None}],
                "usage": usage, "r2": r2}

    async def completions(self, req: CompletionRequest) -> Any:
        try:
            queries = req.queries()
        except ValueError as err:
            raise APIError(400, str(err), param="prompt") from None
        trajs = await self._route(queries, req)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        choices = [{"index": i, "text": t.answer, "finish_reason": "stop", "logprobs": None,
                    "r2": trajectory_details(t, req.r2.lam)} for i, t in enumerate(trajs)]
        body = {"id": rid, "object": "text_completion", "created": created, "model": MODEL_NAME,
                "choices": choices, "usage": self._usage(trajs)}
        if req.stream:
            return _event_stream([body])
        return body


def _event_stream(chunks: list[dict]) -> StreamingResponse:
    async def events():
        for chunk in chunks:
            yield f"data: {json.dumps(chunk)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


def router_api(cfg: Config, router_path: str | None, pool_handle: Any) -> FastAPI:
    """The router's OpenAI-compatible FastAPI app, hardened per `cfg.serve`."""
    api = RouterAPI(cfg, router_path, pool_handle)
    app = harden(FastAPI(title="r2-reasoner router", description="R2's subtask router, OpenAI-compatible"),
                 cfg.serve)
    app.add_api_route("/v1/models", api.list_models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", api.chat_completions, methods=["POST"])
    app.add_api_route("/v1/completions", api.completions, methods=["POST"])
    return app
