"""HTTP endpoints on Ray Serve.

    python -m pipelines.serve pool --config configs/tiny.yaml [--set serve.port=8000]

`pool` starts Ray, the model pool (the named actor "pool") and an OpenAI-compatible API in front of it
on `serve.host:serve.port`: `GET /v1/models` lists the pool's model ids (cheapest first) and
`POST /v1/completions` runs prompts on one of them. Anything that speaks the OpenAI completions API,
including the pool's own `openai` backend, can use the pool this way.

/v1/completions takes the OpenAI completions schema: `model`, `prompt` (a string or a list of strings;
one choice per prompt), `max_tokens` (default 16), `temperature` (default 1; 0 = greedy), `top_p`,
`seed`, `logprobs` (any int >= 0 returns the chosen tokens' log-probs; no alternatives), `n` (1 only),
and vLLM's `return_tokens_as_token_ids` extension (logprobs tokens as "token_id:123"). Features the pool
cannot honour (streaming, echo, stop sequences, best_of, suffix, penalties, logit_bias) are refused with
a 400 rather than ignored. Errors use the OpenAI error format: 400 for an invalid body, 404 for an
unknown model, 500 when the pool fails.

The command blocks until Ctrl-C. `build_app` and `run_pool_endpoint` start the same thing in-process.
"""
# no `from __future__ import annotations` here: FastAPI must see the request model's real annotation
# through Serve's ingress wrapper, or it reads the body parameter as a query parameter
import argparse
import asyncio
import os
import signal
import socket
import time
import uuid
from typing import Any, NamedTuple

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.exceptions import RayError

from actors.pool import pool_models, start_pool
from actors.runtime import init_ray
from core.config import Config, add_config_args, config_from_args, config_from_tree, load_config
from core.types import Completion, SamplingParams

POOL_APP = "pool"


# -- request schema --------------------------------------------------------------------------------------
class CompletionRequest(BaseModel):
    """The OpenAI completions request, as far as the pool supports it (unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    prompt: str | list[str]
    max_tokens: int | None = Field(16, ge=1)  # null: the default, 16
    temperature: float = Field(1.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    logprobs: int | None = Field(None, ge=0)
    n: int = 1
    return_tokens_as_token_ids: bool = False
    # accepted only at their "off" values
    stream: bool | None = False
    echo: bool | None = False
    stop: str | list[str] | None = None
    best_of: int | None = None
    suffix: str | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[str, float] | None = None

    @model_validator(mode="after")
    def _supported(self) -> "CompletionRequest":
        if self.n != 1:
            raise ValueError(f"n={self.n} is not supported: this endpoint returns one choice per prompt (n=1)")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: give a string or a non-empty list of strings")
        unsupported = {
            "stream": bool(self.stream), "echo": bool(self.echo), "stop": bool(self.stop),
            "best_of": self.best_of not in (None, 1), "suffix": bool(self.suffix),
            "presence_penalty": bool(self.presence_penalty), "frequency_penalty": bool(self.frequency_penalty),
            "logit_bias": bool(self.logit_bias),
        }
        bad = [k for k, on in unsupported.items() if on]
        if bad:
            raise ValueError(f"not supported by this endpoint: {', '.join(bad)}")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def sampling_params(self) -> SamplingParams:
        return SamplingParams(max_new_tokens=self.max_tokens or 16, temperature=self.temperature, top_p=self.top_p,
                              seed=self.seed)


def openai_error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> JSONResponse:
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": type_, "param": param, "code": code}})


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    parts, first_param = [], None
    for e in err.errors():
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        where = ".".join(loc)
        first_param = first_param or (loc[0] if loc else None)
        parts.append(f"{where}: {msg}" if where else msg)
    return "invalid request: " + "; ".join(parts), first_param


# -- the app ---------------------------------------------------------------------------------------------
app = FastAPI(title="r2-reasoner model pool", description="OpenAI-compatible completions over the pool")


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    message, param = _validation_message(err)
    return openai_error(400, message, param=param)


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(app)
class PoolIngress:
    """Forwards OpenAI-style requests to the pool actor. `tokenizer_paths` (model id -> local tokenizer
    folder) lets logprobs carry token strings; without one, tokens are given as "token_id:123"."""

    def __init__(self, pool: Any, tokenizer_paths: dict[str, str] | None = None):
        self.pool = pool
        self.tokenizer_paths = dict(tokenizer_paths or {})
        self.tokenizers: dict[str, Any] = {}
        self.created = int(time.time())
        self._model_ids: list[str] | None = None

    async def model_ids(self) -> list[str]:
        if self._model_ids is None:
            self._model_ids = list(await self.pool.model_ids.remote())
        return self._model_ids

    async def _token_strings(self, model_id: str, ids: list[int]) -> list[str]:
        path = self.tokenizer_paths.get(model_id)
        if path is None:
            return [f"token_id:{i}" for i in ids]
        if model_id not in self.tokenizers:
            from transformers import AutoTokenizer  # lazy: only for token strings of logprobs

            self.tokenizers[model_id] = await asyncio.to_thread(AutoTokenizer.from_pretrained, path)
        return [str(t) for t in self.tokenizers[model_id].convert_ids_to_tokens(ids)]

    @app.get("/v1/models")
    async def list_models(self) -> dict:
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": self.created, "owned_by": "r2-reasoner"}
            for m in await self.model_ids()
        ]}

    @app.post("/v1/completions")
    async def completions(self, req: CompletionRequest) -> Any:
        ids = await self.model_ids()
        if req.model not in ids:
            return openai_error(404, f"The model {req.model!r} does not exist; this pool serves {ids}",
                                param="model", code="model_not_found")
        try:
            outs: list[Completion] = await self.pool.generate.remote(
                req.model, req.prompts, req.sampling_params())
        except RayError as err:  # a failing model or actor: report it, keep serving
            return openai_error(500, f"model {req.model!r} failed: {err}", type_="server_error")
        choices = []
        for i, c in enumerate(outs):
            logprobs = None
            if req.logprobs is not None:
                tokens = ([f"token_id:{t}" for t in c.token_ids] if req.return_tokens_as_token_ids
                          else await self._token_strings(req.model, c.token_ids))
                logprobs = {"tokens": tokens, "token_logprobs": c.token_logprobs, "top_logprobs": None,
                            "text_offset": None}
            choices.append({"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": logprobs})
        prompt_tokens = sum(c.usage.prompt_tokens for c in outs)
        completion_tokens = sum(c.usage.completion_tokens for c in outs)
        return {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": req.model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


def build_app(pool_handle: Any, tokenizer_paths: dict[str, str] | None = None) -> serve.Application:
    """The Serve application for a running pool actor (bound at build time)."""
    return PoolIngress.bind(pool_handle, tokenizer_paths or {})


def tokenizer_paths(cfg: Config) -> dict[str, str]:
    """Local tokenizer folders of the pool's models that have one (hf, vllm)."""
    return {m.id: m.path for m in pool_models(cfg) if m.path}


class PoolEndpoint(NamedTuple):
    url: str  # the OpenAI base URL, ending in /v1
    pool: Any  # the pool actor's handle


def run_pool_endpoint(cfg: Config, blocking: bool = True, pool: Any = None) -> PoolEndpoint:
    """Start Ray (or join RAY_ADDRESS), the pool (unless `pool` is given) and the Serve app on
    cfg.serve.host:cfg.serve.port. With `blocking`, serve until Ctrl-C/SIGTERM, then shut Serve down."""
    paths = tokenizer_paths(cfg)  # also checks the pool's models exist, before Ray starts
    init_ray()
    if pool is None:
        pool = start_pool(cfg, name="pool")
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(build_app(pool, paths), name=POOL_APP, route_prefix="/", blocking=False)
    endpoint = PoolEndpoint(f"http://{cfg.serve.host}:{cfg.serve.port}/v1", pool)
    if blocking:
        print(f"pool endpoint: {endpoint.url}  (GET /v1/models, POST /v1/completions); Ctrl-C to stop",
              flush=True)
        _wait_for_interrupt()
        print("shutting down", flush=True)
        serve.shutdown()
    return endpoint


def _wait_for_interrupt() -> None:
    def _stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C, even when started in the background
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _check_port_free(host: str, port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as err:
            raise SystemExit(f"error: cannot serve on {host}:{port} ({err.strerror}); "
                             f"choose another port with --set serve.port=N") from None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.serve", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pool = sub.add_parser("pool", help="serve the model pool as an OpenAI-compatible API")
    add_config_args(pool)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.command == "pool":
        if not os.environ.get("RAY_ADDRESS"):  # a fresh local Ray: the port must be ours to take
            _check_port_free(cfg.serve.host, cfg.serve.port)
        try:
            run_pool_endpoint(cfg, blocking=True)
        except (FileNotFoundError, ValueError) as err:  # a pool the config cannot build
            raise SystemExit(f"error: {err}") from None


# -- an application for Serve configs (`serve deploy`, KubeRay's serveConfigV2) ----------------------------
@serve.deployment(ray_actor_options={"num_cpus": 0})
class PoolHost:
    """Starts the config's pool and owns it, so the pool and its model servers live as long as this
    replica. (An application builder runs in a one-off task: an actor it starts dies with that task.)
    The health check fails when the pool has died; Serve then restarts the replica and the pool with it."""

    def __init__(self, cfg_tree: dict):
        self.pool = start_pool(config_from_tree(cfg_tree), name="pool")

    async def check_health(self) -> None:
        await self.pool.model_ids.remote()

    async def model_ids(self) -> list[str]:
        return await self.pool.model_ids.remote()

    async def generate(self, model_id: str, prompts: list[str], params: SamplingParams) -> list[Completion]:
        return await self.pool.generate.remote(model_id, prompts, params)


def pool_app(args: dict) -> serve.Application:
    """The pool endpoint as a Serve application builder (`import_path: pipelines.serve:pool_app`). `args`:
    `config` (a config path, relative to the working directory) and optionally `set` (overrides)."""
    if not isinstance(args, dict) or "config" not in args:
        raise ValueError(f"pool_app: args need `config` (a config path), got {args!r}")
    cfg = load_config(args["config"], args.get("set"))
    return build_app(PoolHost.bind(cfg.model_dump()), tokenizer_paths(cfg))


if __name__ == "__main__":
    main()
