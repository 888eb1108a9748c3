"""`ModelPool`: the pool's registry (model id -> replicas), tiers by price, least-loaded dispatch, each
model's fallback, and the cost ledger. An async Ray actor, so rollout workers, the evaluator and the HTTP
endpoint share it."""
from __future__ import annotations

import ray
from ray.exceptions import RayTaskError

from actors.backends import EndpointError, completions_or_raise
from actors.cost import CostLedger, CostModel
from actors.placement import where
from actors.server import ModelServer
from core.config import Config, PoolModelConfig
from core.storage import ensure_local
from core.types import Completion, SamplingParams


def pool_models(cfg: Config) -> list[PoolModelConfig]:
    """The pool a config describes: the zoo's models (hf backend, zoo prices) plus explicit entries."""
    models = []
    if cfg.pool.use_zoo:
        for m in cfg.zoo.models:
            path = ensure_local(cfg.zoo_dir / m.name)
            if not (path / "config.json").exists():
                raise FileNotFoundError(
                    f"zoo model {m.name!r} not found at {path}: train it with "
                    f"`python -m pipelines.zoo --config <config>`"
                )
            models.append(PoolModelConfig(id=m.name, backend="hf", path=str(path), price=m.price))
    models.extend(cfg.pool.models)
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids):
        raise ValueError(f"pool model ids must be unique, got {ids}")
    check_fallbacks(models)
    return models


def check_fallbacks(models: list[PoolModelConfig]) -> None:
    """Every `fallback` names a model of the pool, and no chain of fallbacks comes back round."""
    fallback = {m.id: m.fallback for m in models}
    for m in models:
        if m.fallback is not None and m.fallback not in fallback:
            raise ValueError(f"pool model {m.id!r}: fallback {m.fallback!r} is not a pool model; "
                             f"pool: {sorted(fallback)}")
    for m in models:
        chain = [m.id]
        while fallback[chain[-1]] is not None:
            chain.append(fallback[chain[-1]])
            if chain[-1] in chain[:-1]:
                raise ValueError(f"pool model fallbacks form a cycle: {' -> '.join(chain)}")


class ModelPoolImpl:
    def __init__(self, models: list[dict], replicas: int = 1, batch_window_ms: float = 5.0,
                 max_batch: int = 64, server_options: dict | None = None, colocate: bool = False):
        specs = [PoolModelConfig.model_validate(m) for m in models]
        check_fallbacks(specs)
        self.cost_model = CostModel({s.id: s.price for s in specs})
        # tiers: cheapest first (by completion-token price, then declaration order)
        order = sorted(range(len(specs)), key=lambda i: (self.cost_model.output_price(specs[i].id), i))
        self.specs = {specs[i].id: specs[i] for i in order}
        self.replicas: dict[str, list] = {s.id: [] for s in self.specs.values()}
        self.inflight: dict[str, list[int]] = {}
        self.batch_window_ms, self.max_batch = batch_window_ms, max_batch
        self.servers: list = []
        opts = {**(server_options or {"num_cpus": 0.25}), "max_concurrency": 1000}
        colocated: dict[int, list[tuple[str, str, dict]]] = {}  # replica r of every small hf model: server r
        for s in self.specs.values():
            n = s.replicas or replicas
            self.inflight[s.id] = [0] * n
            spec = (s.id, s.backend, s.model_dump(exclude={"price", "python", "fallback"}))
            for r in range(n):
                if colocate and s.backend == "hf" and not s.python:
                    colocated.setdefault(r, []).append(spec)
                else:  # a server of its own, in its own interpreter if it names one (e.g. a venv with vllm)
                    self._serve([spec], {**opts, "runtime_env": {"py_executable": s.python}} if s.python else opts)
        for models in colocated.values():
            self._serve(models, opts)
        self.ledger = CostLedger()

    def _serve(self, models: list[tuple[str, str, dict]], opts: dict) -> None:
        server = ModelServer.options(**opts).remote(models, self.batch_window_ms, self.max_batch)
        self.servers.append(server)
        for model_id, _, _ in models:
            self.replicas[model_id].append(server)

    async def ready(self) -> list[str]:
        """Wait until every server has loaded its model; returns the model ids, cheapest first."""
        for s in self.servers:
            await s.queue_length.remote()
        return self.model_ids()

    def model_ids(self) -> list[str]:
        return list(self.specs)

    def tiers(self) -> dict[str, int]:
        return {m: i for i, m in enumerate(self.specs)}

    def describe(self) -> list[dict]:
        return [
            {"id": s.id, "tier": i, "backend": s.backend, "replicas": len(self.replicas[s.id]),
             "input_per_m": self.cost_model.rates[s.id].input_per_m,
             "output_per_m": self.cost_model.rates[s.id].output_per_m,
             "paper_model": s.price.paper_model}
            for i, s in enumerate(self.specs.values())
        ]

    async def generate(self, model_id: str, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """Run prompts on `model_id`'s least-loaded replica; each completion carries its cost. Prompts
        that fail for good (`EndpointError`, after the backend's bounded retries) go to the model's
        `fallback`, whose completions say so (`fallback_from`); without one, the error is raised. The
        ledger counts every completed call and its retries, and every failed call and its attempts."""
        if model_id not in self.replicas:
            raise KeyError(f"unknown model {model_id!r}; pool: {self.model_ids()}")
        return await self._generate(model_id, prompts, params, None)

    async def _generate(self, model_id: str, prompts: list[str], params: SamplingParams,
                        fallback_from: str | None) -> list[Completion]:
        outcomes = await self._dispatch(model_id, prompts, params)
        for c in outcomes:
            if isinstance(c, EndpointError):
                self.ledger.fail(model_id, c.attempts)
                continue
            c.fallback_from = fallback_from
            c.cost_usd = self.cost_model.cost(model_id, c.usage, c.latency_s if c.compute_s is None else c.compute_s)
            self.ledger.add(model_id, c.usage, c.cost_usd, c.retries, fallback=fallback_from is not None)
        failed = [i for i, c in enumerate(outcomes) if isinstance(c, EndpointError)]
        fallback = self.specs[model_id].fallback
        if failed and fallback is not None:  # checked at start: a pool model, no cycle
            again = await self._generate(fallback, [prompts[i] for i in failed], params, fallback_from or model_id)
            for i, c in zip(failed, again):
                outcomes[i] = c
        return completions_or_raise(outcomes)

    async def _dispatch(self, model_id: str, prompts: list[str],
                        params: SamplingParams) -> list[Completion | EndpointError]:
        """Each prompt's completion on `model_id`'s least-loaded replica, or its `EndpointError`."""
        load = self.inflight[model_id]
        i = min(range(len(load)), key=load.__getitem__)
        load[i] += len(prompts)
        try:
            return await self.replicas[model_id][i].generate.remote(model_id, prompts, params)
        except EndpointError as err:
            cause = err.cause if isinstance(err, RayTaskError) else err  # the backend's own error
            return list(cause.outcomes or [cause] * len(prompts))
        finally:
            load[i] -= len(prompts)

    def ledger_snapshot(self) -> dict:
        return self.ledger.snapshot()

    def reset_ledger(self) -> None:
        self.ledger = CostLedger()

    async def placement(self) -> dict:
        """Where the dispatcher and each server run."""
        return {"dispatcher": where(), "servers": [await s.placement.remote() for s in self.servers]}

    async def server_stats(self) -> dict[str, list[dict]]:
        return {m: [await s.stats.remote(m) for s in servers] for m, servers in self.replicas.items()}


ModelPool = ray.remote(max_restarts=1, max_task_retries=1)(ModelPoolImpl)


SHARED_NAMESPACE = "r2r-pools"  # where pools named by `pool.name` live, so that every job finds them


def start_pool(cfg: Config, name: str | None = None, shared: bool = False):
    """Create the pool actor for `cfg` and wait until its models are loaded; returns the handle. Named, an
    actor of that name already running (in the job's namespace) is returned instead, once it is checked to
    run this config's models. `shared` (`pool.name`): in the namespace every job sees, and detached: it
    outlives the job that started it, for the jobs that join it, until it is killed or the cluster stops."""
    models = [m.model_dump() for m in pool_models(cfg)]  # checked to exist first
    opts = {**cfg.pool.dispatcher.options(), "max_concurrency": 1000}
    if name:
        opts.update(name=name, get_if_exists=True)
        if shared:
            opts.update(namespace=SHARED_NAMESPACE, lifetime="detached")
    pool = ModelPool.options(**opts).remote(
        models, cfg.pool.replicas, cfg.pool.batch_window_ms, cfg.pool.max_batch, cfg.pool.server.options(),
        cfg.pool.colocate)
    ready = ray.get(pool.ready.remote())
    wanted = {m["id"] for m in models}
    if set(ready) != wanted:
        raise RuntimeError(f"a pool named {name!r} already runs other models ({ready}); this config wants {sorted(wanted)}")
    return pool


__all__ = ["SHARED_NAMESPACE", "ModelPool", "ModelPoolImpl", "pool_models", "start_pool"]
