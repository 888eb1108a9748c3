"""What every perf benchmark shares: the run context and repeated timing with warm-up."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.config import Config


@dataclass
class PerfContext:
    cfg: Config  # the world whose zoo and policies are measured
    quick: bool  # a smoke run: fewest repeats, smallest sizes, no targets
    out: Path  # runs/perf: results.json and any artefacts
    console: object


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
