"""Rollout scaling: trajectories/s of 2 `RolloutWorker`s over 1, on the same pool and the same queries.

The workers hold the config's SFT router (its run dir's `router/sft`; else the policies training
starts from, `pipelines.runs.init_dirs`) and run what a training step runs: `rollout(task, queries,
group_size, "allocator", ...)` per task, the queries split across the workers as the trainer splits
them. Arms alternate within each repeat; the workers are placed as training places them
(`train.rollout`), which the result records with the machine's CPU count.
"""
from __future__ import annotations

import os
import random
import statistics
import time

import ray

from actors.pool import start_pool
from actors.rollout import RolloutWorker
from actors.weight_sync import WeightRef
from benchmarks.perf.common import PerfContext, ray_up, summary
from benchmarks.tasks import build_world
from core.config import Config
from pipelines.runs import init_dirs, router_dir

POLICIES = ("decomposer", "allocator")


def router_dirs(cfg: Config) -> tuple[dict[str, str], str]:
    """The policies the workers sample with, and which they are."""
    sft = router_dir(cfg, "sft")
    if all((sft / p / "config.json").exists() for p in POLICIES):
        return {p: str(sft / p) for p in POLICIES}, str(sft)
    return {p: str(d) for p, d in init_dirs(cfg).items()}, "initial policies (no SFT router in the run dir)"


def step_queries(cfg: Config, per_task: int) -> list[tuple[str, list]]:
    """`per_task` train queries of every task, drawn as a training step draws them."""
    rng = random.Random(cfg.train.seed)
    return [(name, rng.sample(task.split("train"), per_task)) for name, task in build_world(cfg).tasks.items()]


def rollout_wall(workers: list, queries: list[tuple[str, list]], group: int, published: dict) -> tuple[float, int]:
    """(seconds, trajectories) of one step's rollouts, each task's queries split across the workers."""
    n = len(workers)
    start = time.perf_counter()
    refs = [workers[i].rollout.remote(name, exs[i::n], group, "allocator", 0, published)
            for name, exs in queries for i in range(n) if exs[i::n]]
    trajs = sum(len(r.trajectories) for r in ray.get(refs))
    return time.perf_counter() - start, trajs


def measure(ctx: PerfContext) -> dict:
    ray_up()
    cfg = ctx.cfg
    per_task = 4 if ctx.quick else cfg.train.queries_per_step // len(cfg.tasks.enabled)
    group = 2 if ctx.quick else cfg.train.group_size
    repeats = 1 if ctx.quick else 5
    dirs, policies = router_dirs(cfg)
    pool, workers = start_pool(cfg), []
    try:
        model_ids = ray.get(pool.model_ids.remote())
        opts = cfg.train.rollout.options()
        workers += [RolloutWorker.options(**opts).remote(cfg.model_dump_json(), dirs, pool, model_ids, i)
                   for i in range(2)]
        # version 0 is what every worker starts with: no worker loads anything before it samples
        published = {p: WeightRef(0, None, "") for p in POLICIES}
        queries = step_queries(cfg, per_task)
        arms = {1: workers[:1], 2: workers}
        for ws in arms.values():  # warm-up (and every worker loaded)
            rollout_wall(ws, queries, group, published)
        rates: dict[int, list[float]] = {1: [], 2: []}
        ratio = []
        for _ in range(repeats):
            walls = {}
            for k, ws in arms.items():
                wall, n = rollout_wall(ws, queries, group, published)
                walls[k] = wall
                rates[k].append(n / wall)
            ratio.append(walls[1] / walls[2])
        placement = ray.get([w.placement.remote() for w in workers])
    finally:
        for actor in [pool, *workers]:
            ray.kill(actor)
    # one training step's rollouts with 2 workers, for the weight sync's share of a step
    ctx.shared["rollout_step_s"] = len(queries) * per_task * group / statistics.median(rates[2])
    out = {"ratio": summary(ratio), "trajectories_per_s_2w": summary(rates[2]),
           "trajectories_per_s_1w": summary(rates[1]), "trajectories_per_step": len(queries) * per_task * group,
           "queries": {name: len(exs) for name, exs in queries}, "group_size": group, "policies": policies,
           "placement": {"rollout_worker": {k: v for k, v in opts.items() if v},
                         "pool_server": {k: v for k, v in cfg.pool.server.options().items() if v},
                         "machine_cpus": os.cpu_count(), "nodes": sorted({p["node_id"][:8] for p in placement})}}
    if not ctx.quick:
        out["targets"] = {"ratio": ">= 1.6 on 2 cores"}
    return {"rollout_2w_speedup": out}
