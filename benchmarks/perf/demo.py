"""`demo_wall`: the seconds per phase of the last `make demo` of the measured config (zoo, labels, SFT,
GRPO, evaluation), as the demo recorded them in `<run_dir>/demo_wall.json`. The demo takes most of an
hour on 2 cores, so the suite reports the last run rather than starting one."""
from __future__ import annotations

import json

from benchmarks.perf.common import PerfContext
from pipelines.demo import WALL


def measure(ctx: PerfContext) -> dict:
    path = ctx.cfg.run_path / WALL
    if ctx.quick or not path.exists():
        why = "quick run" if ctx.quick else f"no {path}: run `make demo` first"
        ctx.console.print(f"demo_wall: skipped ({why})", markup=False)
        return {"demo_wall": {"skipped": why}}
    return {"demo_wall": {**json.loads(path.read_text()), "source": str(path)}}
