"""Run the performance suite: `python -m benchmarks.perf [--quick] [--only NAME ...] [--config C]`.

Writes `<out>/results.json` (default `runs/perf/`) and prints one table row per figure. `--quick` is the
CI smoke run (smallest sizes, fewest repeats, targets not checked)."""
from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

from rich.table import Table

from benchmarks.perf import MODULES
from benchmarks.perf.common import PerfContext
from core.config import load_config
from core.console import console as make_console


def flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not {"median", "min", "max"} <= v.keys():
            rows += flatten(v, key + ".")
        else:
            rows.append((key, v))
    return rows


def show(v: object) -> str:
    if isinstance(v, dict):
        return f"{v['median']:.4g} [{v['min']:.4g}, {v['max']:.4g}]"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/tiny.yaml", help="the world whose zoo and policies are measured")
    parser.add_argument("--quick", action="store_true", help="smoke run: smallest sizes, fewest repeats")
    parser.add_argument("--only", nargs="+", choices=MODULES, help="run only these modules")
    parser.add_argument("--out", default="runs/perf", help="folder of results.json")
    args = parser.parse_args(argv)
    console = make_console()
    ctx = PerfContext(load_config(args.config), args.quick, Path(args.out), console)
    ctx.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"quick": args.quick, "config": args.config, "module_wall_s": {}}
    try:  # in MODULES' order whatever the order of --only: a later module may use what an earlier one measured
        for name in [m for m in MODULES if m in (args.only or MODULES)]:
            console.rule(f"perf: {name}")
            start = time.perf_counter()
            results.update(importlib.import_module(f"benchmarks.perf.{name}").measure(ctx))
            results["module_wall_s"][name] = time.perf_counter() - start
            results["shared_start_s"] = ctx.shared.get("start_s", {})  # within module_wall_s of the first user
            (ctx.out / "results.json").write_text(json.dumps(results, indent=2))
    finally:
        ctx.close()  # the shared pool and rollout workers, and Ray
    table = Table(title="performance (median [min, max] where repeated)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, v in flatten({k: v for k, v in results.items() if k not in ("quick", "config")}):
        table.add_row(key, show(v))
    console.print(table)
    console.print(f"results: {ctx.out / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
