"""Pool benchmarks: what micro-batching buys one `ModelServer` behind the `ModelPool`, and request latency
by concurrency and batch window.

Both use the largest zoo model, with subtask prompts as the reasoning chain writes them (a gold first hop
by `step_prompt`, `params` = the facts task's step budget). Arms alternate within each repeat, so a noisy
machine slows both alike.

- `pool_batching_speedup`: sequences/s of `n` subtasks of one wave sent as the chain sends them
  (`policies.reason.generate_by_model`: one pool call per model carrying the wave's prompts, which the
  server batches) over the same `n` sent one at a time (each waits for the previous: a chain of one
  query), at the config's `pool.batch_window_ms`. Beside it, `separate_calls_ratio`: the same `n` as
  separate requests in flight at once (independent callers, e.g. the HTTP endpoint's clients), which
  reach the server spread out by their own Ray calls.
- `pool_latency`: per-request latency (submit to result, at the driver) at 1, 8 and 32 concurrent
  requests, at the config's window and (not `--quick`) at 0 ms.

At the config's window the model is served by the run's shared pool (`common.shared_pool`: the config's
pool, whose other models idle meanwhile); the 0 ms window gets a pool of that model alone.
"""
from __future__ import annotations

import asyncio
import time

import ray

from actors.pool import ModelPool, pool_models
from benchmarks.perf.common import PerfContext, latency_summary, ray_up, shared_pool, summary
from benchmarks.tasks import build_world
from core.config import Config, PoolModelConfig
from core.types import SamplingParams
from policies.reason import generate_by_model

REQUESTS = 32  # the concurrent arm's requests, and the sequential arm's
CONCURRENCY = (1, 8, 32)


def zoo_size(m) -> int:
    """Parameters of a zoo model's transformer blocks (attention + MLP), enough to rank the rungs."""
    return m.layers * (4 * m.hidden * m.hidden + 3 * m.hidden * m.intermediate)


def largest_model(cfg: Config) -> PoolModelConfig:
    name = max(cfg.zoo.models, key=zoo_size).name
    return next(m for m in pool_models(cfg) if m.id == name)


def subtask_calls(cfg: Config, n: int) -> tuple[list[str], SamplingParams]:
    """`n` subtask prompts as the chain writes them (the first gold hop of facts test queries) and the
    chain's sampling params for that task."""
    task = build_world(cfg, ["facts"]).tasks["facts"]
    examples = [ex for ex in task.split("test") if ex.steps][:n]
    if len(examples) < n:
        raise ValueError(f"the facts test split has {len(examples)} decomposed queries; the benchmark needs {n}")
    prompts = [task.step_prompt(ex, ex.steps[0].prompt, [], []) for ex in examples]
    return prompts, SamplingParams(max_new_tokens=task.step_max_tokens)


def start_single_pool(cfg: Config, model: PoolModelConfig, window_ms: float):
    """A pool of `model` alone (one server) at batch window `window_ms`, loaded."""
    pool = ModelPool.options(**cfg.pool.dispatcher.options(), max_concurrency=1000).remote(
        [model.model_dump()], 1, window_ms, cfg.pool.max_batch, cfg.pool.server.options())
    ray.get(pool.ready.remote())
    return pool


async def _timed(pool, model_id: str, prompt: str, params: SamplingParams) -> float:
    start = time.perf_counter()
    [out] = await pool.generate.remote(model_id, [prompt], params)
    if not out.token_ids:
        raise RuntimeError(f"{model_id} returned an empty completion for {prompt!r}")
    return time.perf_counter() - start


async def _calls(pool, model_id: str, prompts: list[str], params: SamplingParams, concurrency: int) -> list[float]:
    """Every prompt's latency, `concurrency` requests in flight at a time (waves of that many)."""
    lat = []
    for i in range(0, len(prompts), concurrency):
        lat += await asyncio.gather(*(_timed(pool, model_id, p, params) for p in prompts[i: i + concurrency]))
    return lat


def calls(pool, model_id: str, prompts: list[str], params: SamplingParams, concurrency: int) -> tuple[float, list[float]]:
    """(wall seconds, per-request latencies) of the prompts at `concurrency`."""
    start = time.perf_counter()
    lat = asyncio.run(_calls(pool, model_id, prompts, params, concurrency))
    return time.perf_counter() - start, lat


def one_call(pool, model_id: str, prompts: list[str], params: SamplingParams) -> float:
    """Wall seconds of all the prompts as the chain sends a wave of them to one model."""
    start = time.perf_counter()
    asyncio.run(generate_by_model(pool, [(model_id, p) for p in prompts], params))
    return time.perf_counter() - start


def batching_speedup(pool, model_id: str, prompts: list[str], params: SamplingParams, repeats: int) -> dict:
    """The chain's wave over one-at-a-time (`ratio`), and separate concurrent requests over one-at-a-time."""
    n = len(prompts)
    calls(pool, model_id, prompts, params, n)  # warm-up of every arm
    calls(pool, model_id, prompts, params, 1)
    one_call(pool, model_id, prompts, params)
    seq_rate, wave_rate, ratio, separate, single = [], [], [], [], []
    for _ in range(repeats):
        seq_wall, lat = calls(pool, model_id, prompts, params, 1)
        wave_wall = one_call(pool, model_id, prompts, params)
        con_wall, _ = calls(pool, model_id, prompts, params, n)
        seq_rate.append(n / seq_wall)
        wave_rate.append(n / wave_wall)
        ratio.append(seq_wall / wave_wall)
        separate.append(seq_wall / con_wall)
        single += lat
    return {"ratio": summary(ratio), "wave_seq_per_s": summary(wave_rate),
            "sequential_seq_per_s": summary(seq_rate), "separate_calls_ratio": summary(separate),
            "single_request_latency_s": latency_summary(single), "requests": n}


def latency_by_concurrency(pool, model_id: str, prompts: list[str], params: SamplingParams, rounds: int) -> dict:
    out = {}
    for c in CONCURRENCY:
        calls(pool, model_id, prompts[:c], params, c)  # warm-up
        lat = []
        for _ in range(rounds):
            lat += calls(pool, model_id, prompts[: max(c, 8)], params, c)[1]
        out[f"c{c}"] = latency_summary(lat)
    return out


def measure(ctx: PerfContext) -> dict:
    cfg = ctx.cfg
    model = largest_model(cfg)
    prompts, params = subtask_calls(cfg, REQUESTS)
    repeats = 1 if ctx.quick else 7
    rounds = 1 if ctx.quick else 4
    pool = shared_pool(ctx)[0]
    speedup = {"model": model.id, "batch_window_ms": cfg.pool.batch_window_ms, "max_new_tokens": params.max_new_tokens,
               **batching_speedup(pool, model.id, prompts, params, repeats)}
    latency: dict = {"model": model.id, "max_new_tokens": params.max_new_tokens,
                     f"window_{cfg.pool.batch_window_ms:g}ms": latency_by_concurrency(pool, model.id, prompts, params, rounds)}
    if not ctx.quick:
        speedup["targets"] = {"ratio": ">= 12", "single_request_p50_s": "<= 0.018"}
        ray_up()
        alone = start_single_pool(cfg, model, 0.0)
        try:
            latency["window_0ms"] = latency_by_concurrency(alone, model.id, prompts, params, rounds)
        finally:
            ray.kill(alone)
    return {"pool_batching_speedup": speedup, "pool_latency": latency}
