"""HTTP endpoints on Ray Serve.

    python -m pipelines.serve pool --config configs/tiny.yaml [--set serve.port=8000]
    python -m pipelines.serve router --config configs/tiny.yaml --router runs/tiny/router/grpo

`router` serves the trained router (pipelines.router_api: model `r2-router`, chat and completions, a
per-request cost knob, the chain's details in the response) over the config's pool.

`pool` starts Ray, the model pool (the named actor "pool") and an OpenAI-compatible API in front of it
on `serve.host:serve.port`: `GET /v1/models` lists the pool's model ids (cheapest first) and
`POST /v1/completions` runs prompts on one of them. Anything that speaks the OpenAI completions API,
including the pool's own `openai` backend, can use the pool this way.

/v1/completions takes the OpenAI completions schema: `model`, `prompt` (a string or a list of strings;
one choice per prompt), `max_tokens` (default 16), `temperature` (default 1; 0 = greedy), `top_p`,
`seed`, `logprobs` (any int >= 0 returns the chosen tokens' log-probs; no alternatives), `n` (1 only),
and vLLM's `return_tokens_as_token_ids` extension (logprobs tokens as "token_id:123"). Features the pool
cannot honour (streaming, echo, stop sequences, best_of, suffix, penalties, logit_bias) are refused with
a 400 rather than ignored. Errors use the OpenAI error format: 400 for an invalid body or `max_tokens`
over `serve.max_tokens_limit`, 401 without the API key (when `serve.api_key_env` is set), 404 for an
unknown model, 413 for a body over `serve.max_body_bytes`, and 500 when the pool fails: a generic
message with the request id, the cause in the Serve replica's log (pipelines.openai_api).

The commands block until Ctrl-C. `build_app`/`run_pool_endpoint` and `build_router_app`/
`run_router_endpoint` start the same things in-process.
"""
# no `from __future__ import annotations` here: FastAPI must see the handlers' real annotations (the
# request model), or it reads the body parameter as a query parameter
import argparse
import asyncio
import os
import signal
import socket
import time
import uuid
from typing import Any, NamedTuple

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve
from ray.exceptions import RayError

from actors.pool import pool_models, start_pool
from actors.runtime import init_ray
from core.config import Config, ServeConfig, add_config_args, config_from_args, config_from_tree, load_config
from core.storage import local_copy
from core.types import Completion, SamplingParams
from pipelines.openai_api import APIError, api_key, check_max_tokens, harden
from pipelines.router_api import MODEL_NAME, router_api
from pipelines.runs import default_router

POOL_APP = "pool"
ROUTER_APP = "router"


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


# -- the app ---------------------------------------------------------------------------------------------
class PoolAPI:
    """The endpoint's handlers: forward OpenAI-style requests to the pool actor. `tokenizer_paths` (model
    id -> local tokenizer folder) lets logprobs carry token strings; without one, tokens are given as
    "token_id:123". Each Serve replica holds its own copy."""

    def __init__(self, pool: Any, tokenizer_paths: dict[str, str] | None = None, cfg: ServeConfig | None = None):
        self.pool = pool
        self.tokenizer_paths = dict(tokenizer_paths or {})
        self.cfg = cfg or ServeConfig()
        self.tokenizers: dict[str, Any] = {}
        self.created = int(time.time())
        self._model_ids: list[str] | None = None

    async def model_ids(self) -> list[str]:
        if self._model_ids is None:
            if hasattr(self.pool, "resolve"):  # a deployment of this or another application, found here
                self.pool = self.pool.resolve()
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

    async def list_models(self) -> dict:
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": self.created, "owned_by": "r2-reasoner"}
            for m in await self.model_ids()
        ]}

    async def completions(self, req: CompletionRequest) -> Any:
        ids = await self.model_ids()
        if req.model not in ids:
            raise APIError(404, f"The model {req.model!r} does not exist; this pool serves {ids}",
                           param="model", code="model_not_found")
        check_max_tokens(req.max_tokens, self.cfg)
        try:
            await self.model_ids()  # the pool resolved
            outs: list[Completion] = await self.pool.generate.remote(
                req.model, req.prompts, req.sampling_params())
        except RayError as err:  # a failing model or actor: report it (no internals), keep serving
            raise APIError(500, f"model {req.model!r} failed") from err
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


def pool_api(pool_handle: Any, tokenizer_paths: dict[str, str] | None = None,
             cfg: ServeConfig | None = None) -> FastAPI:
    """The pool's OpenAI-compatible FastAPI app, hardened per `cfg` (limits, API key)."""
    cfg = cfg or ServeConfig()
    api = PoolAPI(pool_handle, tokenizer_paths, cfg)
    app = harden(FastAPI(title="r2-reasoner model pool", description="OpenAI-compatible completions over the pool"),
                 cfg)
    app.add_api_route("/v1/models", api.list_models, methods=["GET"])
    app.add_api_route("/v1/completions", api.completions, methods=["POST"])
    return app


def _ingress(app: FastAPI, name: str, deps: tuple = ()) -> serve.Application:
    """`app` as a Serve ingress deployment; `deps` (Serve applications, e.g. `PoolHost.bind(...)`) are bound
    to it so that they deploy with it (its handlers reach them by name: `PoolOfApp`)."""
    cls = serve.ingress(app)(type(name, (), {"__init__": lambda self, *deps: None}))
    return serve.deployment(cls, name=name, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256).bind(*deps)


def build_app(pool_handle: Any, tokenizer_paths: dict[str, str] | None = None,
              cfg: ServeConfig | None = None, deps: tuple = ()) -> serve.Application:
    """The Serve application for a running pool actor, or a `PoolOfApp` reference (bound at build time;
    the API key, if any, is read from the environment here)."""
    return _ingress(pool_api(pool_handle, tokenizer_paths, cfg), "PoolIngress", deps)


def tokenizer_paths(cfg: Config) -> dict[str, str]:
    """Local tokenizer folders of the pool's models that have one (hf, vllm)."""
    return {m.id: m.path for m in pool_models(cfg) if m.path}


class PoolEndpoint(NamedTuple):
    url: str  # the OpenAI base URL, ending in /v1
    pool: Any  # the pool actor's handle


def build_router_app(cfg: Config, router_path: str | None, pool_handle: Any) -> serve.Application:
    """The router's Serve application (pipelines.router_api) over a running pool."""
    return _ingress(router_api(cfg, router_path, pool_handle), "RouterIngress")


def run_router_endpoint(cfg: Config, router_path: str | None, blocking: bool = True, pool: Any = None) -> PoolEndpoint:
    """Start Ray (or join RAY_ADDRESS), the pool (unless `pool` is given) and the router's Serve app on
    cfg.serve.host:cfg.serve.port. With `blocking`, serve until Ctrl-C/SIGTERM, then shut Serve down."""
    pool_models(cfg)  # the pool's models exist, before Ray starts
    api_key(cfg.serve)
    router_path = str(local_copy(router_path)) if router_path else None
    init_ray()
    if pool is None:
        pool = start_pool(cfg, name="pool")
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(build_router_app(cfg, router_path, pool), name=ROUTER_APP, route_prefix="/", blocking=False)
    endpoint = PoolEndpoint(f"http://{cfg.serve.host}:{cfg.serve.port}/v1", pool)
    if blocking:
        print(f"router endpoint: {endpoint.url}  (model {MODEL_NAME!r}: POST /v1/chat/completions, "
              f"/v1/completions); Ctrl-C to stop", flush=True)
        _wait_for_interrupt()
        print("shutting down", flush=True)
        serve.shutdown()
    return endpoint


def run_pool_endpoint(cfg: Config, blocking: bool = True, pool: Any = None) -> PoolEndpoint:
    """Start Ray (or join RAY_ADDRESS), the pool (unless `pool` is given) and the Serve app on
    cfg.serve.host:cfg.serve.port. With `blocking`, serve until Ctrl-C/SIGTERM, then shut Serve down."""
    paths = tokenizer_paths(cfg)  # also checks the pool's models exist, before Ray starts
    api_key(cfg.serve)  # and that a key variable the config names is set
    init_ray()
    if pool is None:
        pool = start_pool(cfg, name="pool")
    serve.start(http_options={"host": cfg.serve.host, "port": cfg.serve.port})
    serve.run(build_app(pool, paths, cfg.serve), name=POOL_APP, route_prefix="/", blocking=False)
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
    add_config_args(sub.add_parser("pool", help="serve the model pool as an OpenAI-compatible API"))
    router = sub.add_parser("router", help="serve the trained router as an OpenAI-compatible API (model r2-router)")
    add_config_args(router)
    router.add_argument("--router", metavar="DIR", help="a trained router folder or URI (default: router.path, "
                                                        "else <run_dir>/router/grpo, else the untrained router)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if not os.environ.get("RAY_ADDRESS"):  # a fresh local Ray: the port must be ours to take
        _check_port_free(cfg.serve.host, cfg.serve.port)
    try:
        if args.command == "pool":
            run_pool_endpoint(cfg, blocking=True)
        else:
            run_router_endpoint(cfg, args.router or default_router(cfg), blocking=True)
    except (FileNotFoundError, ValueError) as err:  # a pool or router the config cannot build
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

    async def describe(self) -> list[dict]:
        return await self.pool.describe.remote()

    async def generate(self, model_id: str, prompts: list[str], params: SamplingParams) -> list[Completion]:
        return await self.pool.generate.remote(model_id, prompts, params)


class PoolOfApp:
    """The `PoolHost` of a Serve application (default: the caller's own), looked up in the replica that
    uses it."""

    def __init__(self, app: str | None = None):
        self.app = app

    def resolve(self) -> Any:
        return serve.get_deployment_handle("PoolHost", app_name=self.app or serve.get_replica_context().app_name)


def _app_config(args: dict, builder: str) -> Config:
    if not isinstance(args, dict) or "config" not in args:
        raise ValueError(f"{builder}: args need `config` (a config path), got {args!r}")
    return load_config(args["config"], args.get("set"))


def pool_app(args: dict) -> serve.Application:
    """The pool endpoint as a Serve application builder (`import_path: pipelines.serve:pool_app`). `args`:
    `config` (a config path, relative to the working directory) and optionally `set` (overrides)."""
    cfg = _app_config(args, "pool_app")
    return build_app(PoolOfApp(), tokenizer_paths(cfg), cfg.serve, deps=(PoolHost.bind(cfg.model_dump()),))


def router_app(args: dict) -> serve.Application:
    """The router endpoint as a Serve application builder (`import_path: pipelines.serve:router_app`).
    `args`: `config`, optionally `set`, `router` (a trained router folder or URI; default: router.path) and
    `pool_app` (the name of the application whose pool it routes over, default "pool")."""
    cfg = _app_config(args, "router_app")
    return build_router_app(cfg, args.get("router") or cfg.router.path, PoolOfApp(args.get("pool_app", POOL_APP)))


if __name__ == "__main__":
    main()
