"""Rollout scaling: trajectories/s of 2 `RolloutWorker`s over 1, on the same pool and the same queries.

The workers (`common.shared_workers`, on the run's shared pool) hold the config's SFT router
(`common.router_dirs`) and run what a training step runs: `rollout(task, queries,
group_size, "allocator", ...)` per task, the queries split across the workers as the trainer splits
them. Arms alternate within each repeat; the workers are placed as training places them
(`train.rollout`), which the result records with the machine's CPU count. The machine's busy CPU time
per arm (every process: servers, workers, Ray) gives `cpu_ms_per_trajectory`; `cpu_bound_ratio` is the
most the 2-worker arm could reach over the 1-worker arm at its measured CPU cost per trajectory.
"""
from __future__ import annotations

import os
import random
import statistics
import time

import ray

from actors.learner import POLICIES
from actors.weight_sync import WeightRef
from benchmarks.perf.common import CpuMeter, PerfContext, router_dirs, shared_workers, summary
from benchmarks.tasks import build_world
from core.config import Config


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
    cfg = ctx.cfg
    per_task = 2 if ctx.quick else cfg.train.queries_per_step // len(cfg.tasks.enabled)
    group = 2 if ctx.quick else cfg.train.group_size
    repeats = 1 if ctx.quick else 5
    workers = shared_workers(ctx, 2)
    # version 0 is what every worker starts with: no worker loads anything before it samples
    published = {p: WeightRef(0, None, "") for p in POLICIES}
    queries = step_queries(cfg, per_task)
    arms = {1: workers[:1], 2: workers}
    # warm-up (and every worker loaded): the 2-worker arm runs both workers; quick: that alone
    for ws in [workers] if ctx.quick else arms.values():
        rollout_wall(ws, queries, group, published)
    rates: dict[int, list[float]] = {1: [], 2: []}
    cpu = {k: CpuMeter() for k in arms}
    made = dict.fromkeys(arms, 0)
    ratio = []
    for _ in range(repeats):
        walls = {}
        for k, ws in arms.items():
            with cpu[k]:
                wall, n = rollout_wall(ws, queries, group, published)
            walls[k], made[k] = wall, made[k] + n
            rates[k].append(n / wall)
        ratio.append(walls[1] / walls[2])
    # the machine's CPU time per trajectory with 2 workers caps their rate at cores / that; over the
    # 1-worker rate, the most the 2-worker arm could reach on this machine at that cost
    cpu_per_traj = {k: cpu[k].busy_s / made[k] for k in arms}
    cpu_bound = os.cpu_count() / cpu_per_traj[2] / statistics.median(rates[1])
    placement = ray.get([w.placement.remote() for w in workers])
    # one training step's rollouts with 2 workers, for the weight sync's share of a step
    ctx.shared["rollout_step_s"] = len(queries) * per_task * group / statistics.median(rates[2])
    out = {"ratio": summary(ratio), "trajectories_per_s_2w": summary(rates[2]),
           "trajectories_per_s_1w": summary(rates[1]),
           "busy_cores": {f"{k}w": cpu[k].cores for k in arms},
           "cpu_ms_per_trajectory": {f"{k}w": 1000 * cpu_per_traj[k] for k in arms},
           "cpu_bound_ratio": cpu_bound, "trajectories_per_step": len(queries) * per_task * group,
           "queries": {name: len(exs) for name, exs in queries}, "group_size": group,
           "policies": router_dirs(cfg)[1],
           "placement": {"rollout_worker": {k: v for k, v in cfg.train.rollout.options().items() if v},
                         "pool_server": {k: v for k, v in cfg.pool.server.options().items() if v},
                         "machine_cpus": os.cpu_count(), "nodes": sorted({p["node_id"][:8] for p in placement})}}
    if not ctx.quick:
        out["targets"] = {"ratio": ">= 1.6 on 2 cores"}
    return {"rollout_2w_speedup": out}
