"""The main job on the embedded tiny world, end to end with what exists today:

1. the tiny model zoo (trained, or reused when cached) and its card;
2. a Ray pool serving every zoo model (micro-batched `ModelServer`s, least-loaded dispatch, ledger);
3. the tiny world's test queries run step by step along the gold decomposition, every step on one
   pool model (`all:<model>`), with accuracy and cost in paper dollars per model.

    python -m pipelines.demo --config configs/tiny.yaml [--limit 200]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import time

from pipelines.config import Config, add_config_args, config_from_args


async def run_decomposed(pool, task, examples, model_id: str, params) -> list[dict]:
    """Every example's gold steps in order on `model_id`, each step seeing the earlier answers."""
    from policies.tiny_lm import format_prompt

    async def one(ex):
        answers, cost = [], 0.0
        for i in range(len(ex.steps)):
            prompt = format_prompt(task.gold_step_prompt(ex, i, answers))
            [out] = await pool.generate.remote(model_id, [prompt], params)
            answers.append(out.text)
            cost += out.cost_usd
        final = task.final_answer(ex, answers)
        return {"correct": task.score(final, ex), "cost": cost, "calls": len(ex.steps)}

    return await asyncio.gather(*(one(ex) for ex in examples))


def preview(cfg: Config, limit: int, console) -> dict:
    import ray
    from rich.table import Table

    from actors.backends import SamplingParams
    from actors.pool import start_pool
    from actors.runtime import init_ray
    from pipelines.zoo import build_world

    init_ray()
    t0 = time.perf_counter()
    pool = start_pool(cfg)
    console.print(f"pool ready in {time.perf_counter() - t0:.1f}s: {ray.get(pool.model_ids.remote())}")
    world = build_world(cfg)
    tasks = {"facts": world.facts, "scan": world.scan}
    params = {"facts": SamplingParams(max_new_tokens=4), "scan": SamplingParams(max_new_tokens=26)}
    results: dict = {}
    table = Table(title=f"all:<model> on the gold decomposition ({limit} test queries per task)")
    for col in ["method", "task", "accuracy", "$ / 1k queries (paper $)", "calls / query"]:
        table.add_column(col, justify="left" if col in ("method", "task") else "right")
    for name, task in tasks.items():
        examples = task.load("test")[:limit]
        for model_id in ray.get(pool.model_ids.remote()):
            rows = asyncio.run(run_decomposed(pool, task, examples, model_id, params[name]))
            acc = sum(r["correct"] for r in rows) / len(rows)
            cost = sum(r["cost"] for r in rows) / len(rows)
            calls = sum(r["calls"] for r in rows) / len(rows)
            results.setdefault(f"all:{model_id}", {})[name] = {"accuracy": acc, "cost_per_query": cost}
            table.add_row(f"all:{model_id}", name, f"{acc:.3f}", f"{cost * 1000:.4f}", f"{calls:.2f}")
    console.print(table)
    ledger = ray.get(pool.ledger_snapshot.remote())
    console.print(f"ledger: {ledger['calls']} calls, ${ledger['total_usd']:.6f} in all")
    return {"methods": results, "ledger": ledger}


def main(argv: list[str] | None = None) -> None:
    from pipelines.zoo import CARD, card_table, run_zoo
    from pipelines.zoo import console as make_console

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--limit", type=int, default=200, help="test queries per task (default: %(default)s)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    console = make_console()
    console.rule("1. tiny model zoo")
    card = run_zoo(cfg, console)
    console.print(card_table(card))
    console.print(f"card: {cfg.zoo_dir / CARD}")
    console.rule("2-3. Ray model pool")
    out = preview(cfg, args.limit, console)
    path = cfg.zoo_dir.parent / "demo.json"
    path.write_text(json.dumps(out, indent=2))
    console.print(f"results: {path}")


if __name__ == "__main__":
    main()
