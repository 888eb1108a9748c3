"""What every perf benchmark shares: the run context (with the Ray actors the modules share) and
repeated timing with warm-up."""
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from actors.learner import POLICIES
from core.config import Config
from pipelines.runs import init_dirs, router_dir


@dataclass
class PerfContext:
    cfg: Config  # the world whose zoo and policies are measured
    quick: bool  # a smoke run: fewest repeats, smallest sizes, no targets
    out: Path  # runs/perf: results.json and any artefacts
    console: object
    shared: dict = field(default_factory=dict)  # figures one module measures for a later one's (e.g. a step's time)
    actors: dict = field(default_factory=dict)  # what `shared_pool` / `shared_workers` started, for `close`

    def release_workers(self) -> None:
        """Kill the shared rollout workers: a module that starts a trainer of its own needs their CPUs
        (on 2 cores, the pool, two workers and a trainer's learner and workers do not all fit)."""
        if self.actors.get("workers"):
            import ray

            for handle in self.actors.pop("workers"):
                ray.kill(handle)

    def close(self) -> None:
        """Kill the shared actors (a pool's servers go with it) and stop the run's Ray session."""
        if "ray" not in sys.modules:  # no module used Ray
            return
        import ray

        self.release_workers()
        if "pool" in self.actors:
            ray.kill(self.actors.pop("pool"))
        if ray.is_initialized():
            ray.shutdown()


def summary(samples: list[float]) -> dict:
    """median, min and max of `samples` (and how many there were)."""
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def repeat(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Wall seconds of `fn()`: `warmup` untimed calls, then `repeats` timed ones, summarised."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return summary(samples)


class CpuMeter:
    """The machine's busy CPU time over the `with` blocks it measures (every process: the pool's servers,
    the workers, Ray and the driver), summed over blocks: core-seconds, and busy cores on average."""

    def __init__(self):
        self.busy_s = self.wall_s = 0.0

    @staticmethod
    def _busy() -> float:
        import psutil

        t = psutil.cpu_times()  # seconds summed over the cores (guest time is already in user)
        return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)

    def __enter__(self) -> CpuMeter:
        self._start = (self._busy(), time.perf_counter())
        return self

    def __exit__(self, *exc) -> None:
        self.busy_s += self._busy() - self._start[0]
        self.wall_s += time.perf_counter() - self._start[1]

    @property
    def cores(self) -> float:
        return self.busy_s / self.wall_s if self.wall_s else 0.0


def latency_summary(samples: list[float]) -> dict:
    """p50 and p95 (linear interpolation between order statistics) of latencies in seconds, and their count."""
    p50, p95 = np.percentile(samples, [50, 95])
    return {"p50": float(p50), "p95": float(p95), "n": len(samples)}


def ray_up() -> None:
    """Ray as every entry point starts it (joined when RAY_ADDRESS is set); idempotent: one session for
    the run, which the runner stops at the end (`PerfContext.close`)."""
    from actors.runtime import init_ray  # lazy: only the modules that run actors need Ray

    init_ray()


def router_dirs(cfg: Config) -> tuple[dict[str, str], str]:
    """The router policies rollout workers sample with (the run dir's `router/sft`; else the policies
    training starts from, `pipelines.runs.init_dirs`), and which they are."""
    sft = router_dir(cfg, "sft")
    if all((sft / p / "config.json").exists() for p in POLICIES):
        return {p: str(sft / p) for p in POLICIES}, str(sft)
    return {p: str(d) for p, d in init_dirs(cfg).items()}, "initial policies (no SFT router in the run dir)"


def shared_pool(ctx: PerfContext) -> tuple[object, list[str]]:
    """The config's pool (its servers loaded) and its model ids, started once per run: every module that
    needs a pool uses this one (each server is a process that imports torch: seconds to start)."""
    import ray

    from actors.pool import start_pool

    if "pool" not in ctx.actors:
        start = time.perf_counter()
        ray_up()
        ctx.actors["pool"] = start_pool(ctx.cfg)
        ctx.shared.setdefault("start_s", {})["ray_and_pool"] = time.perf_counter() - start
    pool = ctx.actors["pool"]
    return pool, ray.get(pool.model_ids.remote())


def shared_workers(ctx: PerfContext, n: int) -> list:
    """`n` rollout workers placed as training places them (`train.rollout`), holding `router_dirs`'
    policies and sampling on `shared_pool`; started once per run (more when a later module wants more)."""
    import ray

    from actors.rollout import RolloutWorker

    pool, model_ids = shared_pool(ctx)
    workers = ctx.actors.setdefault("workers", [])
    dirs = router_dirs(ctx.cfg)[0]
    opts = ctx.cfg.train.rollout.options()
    if len(workers) < n:
        start = time.perf_counter()
        workers += [RolloutWorker.options(**opts).remote(ctx.cfg.model_dump_json(), dirs, pool, model_ids, i)
                    for i in range(len(workers), n)]
        ray.get([w.placement.remote() for w in workers])  # constructed: policies loaded
        ctx.shared.setdefault("start_s", {})["rollout_workers"] = time.perf_counter() - start
    return workers[:n]
