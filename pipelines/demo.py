"""The main job on the embedded tiny world, end to end:

1. the tiny model zoo (trained, or reused when cached) and its card;
2. evaluation of every routing method over the Ray pool of zoo models: results.json, pareto.png and
   the results table.

    python -m pipelines.demo --config configs/tiny.yaml [--limit N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from pipelines.config import add_config_args, config_from_args


def main(argv: list[str] | None = None) -> None:
    from benchmarks.report import markdown_table
    from pipelines.evaluate import evaluate
    from pipelines.zoo import CARD, card_table, console as make_console, run_zoo

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--limit", type=int, help="test queries per task (default: eval.limit)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    console = make_console()
    timings = {}
    start = time.perf_counter()
    console.rule("1. tiny model zoo")
    card = run_zoo(cfg, console)
    console.print(card_table(card))
    console.print(f"card: {cfg.zoo_dir / CARD}")
    timings["zoo"] = time.perf_counter() - start
    console.rule("2. evaluation over the Ray pool")
    start = time.perf_counter()
    out = Path(cfg.run_dir) / "eval"
    results = evaluate(cfg, cfg.eval.methods, args.limit or cfg.eval.limit, out, console)
    timings["evaluate"] = time.perf_counter() - start
    console.print(markdown_table(results), markup=False)
    console.print(f"results: {out / 'results.json'}  plot: {out / 'pareto.png'}")
    console.print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))


if __name__ == "__main__":
    main()
