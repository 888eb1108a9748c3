"""The performance suite: `python -m benchmarks.perf [--quick] [--only NAME ...]`.

Each module of `MODULES` has `measure(ctx: PerfContext) -> dict` and returns its figures as top-level
keys (`pool_batching_speedup`, `pool_latency`, ...; a repeated timing is `{median, min, max, n}`); the
runner merges them into `runs/perf/results.json` and prints a table. Every headline figure is a ratio of two arms measured in the same run on the same machine."""

# measurement modules, in the order they run (cheap and independent first)
MODULES = ["pool", "rollout", "learner", "training", "peer_trl", "demo"]
