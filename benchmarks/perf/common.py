"""What every perf benchmark shares: the run context and repeated timing with warm-up."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.config import Config


@dataclass
class PerfContext:
    cfg: Config  # the world whose zoo and policies are measured
    quick: bool  # a smoke run: fewest repeats, smallest sizes, no targets
    out: Path  # runs/perf: results.json and any artefacts
    console: object
    shared: dict = field(default_factory=dict)  # figures one module measures for a later one's (e.g. a step's time)


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


def latency_summary(samples: list[float]) -> dict:
    """p50 and p95 (linear interpolation between order statistics) of latencies in seconds, and their count."""
    p50, p95 = np.percentile(samples, [50, 95])
    return {"p50": float(p50), "p95": float(p95), "n": len(samples)}


def ray_up() -> None:
    """Ray as every entry point starts it (joined when RAY_ADDRESS is set); idempotent across modules."""
    from actors.runtime import init_ray  # lazy: only the modules that run actors need Ray

    init_ray()
