"""The paper's benchmarks end to end on SmolLM2-135M-Instruct: labels -> SFT -> a short GRPO -> evaluation.

    python -m benchmarks.smollm_bench --config configs/smollm-bench.yaml [--limit N] [--musique FILE]

One pool session holds the whole run (the config's pool, with any vLLM server it launches: see
`actors.vllm_server`); the stages are the project's own: `pipelines.sft.run_sft_stage` (labels searched, or
given by GPT-4-turbo's decompositions, then SFT), `pipelines.train.Trainer` (GRPO), and the SFT and GRPO
routers through the chain on the first `--limit` test queries of each benchmark in `eval.tasks`, timed per
benchmark. Writes `<run_dir>/bench/results.json` and prints a table per benchmark: accuracy, pool cost per
query, format_ok (the decomposer's output parsed as a well-formed decomposition) before and after GRPO,
and wall time. A plumbing run, not a routing result (see configs/smollm-bench.yaml).
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import ray
from rich.progress import Progress
from rich.table import Table

from actors.runtime import pool_session
from benchmarks.tasks import build_world
from core.config import Config, config_from_args, config_parser
from core.console import console as make_console
from core.storage import delete_staged
from pipelines.evaluate import metrics, price_ladder, router_method, router_rates
from pipelines.runs import COST_REF, cost_ref, labels_path, router_dir, synced, write_whole
from pipelines.sft import run_sft_stage
from pipelines.train import Trainer
from policies.baselines import Context

ROUTERS = ("r2-sft", "r2")  # before GRPO, after GRPO


def musique_overrides(cfg: Config, path: str) -> list[str]:
    """`--set` overrides that add MuSiQue from a local file to training and evaluation."""
    enabled = [*cfg.tasks.enabled, "musique"]
    return [f"tasks.musique.path={path}", f"tasks.enabled=[{','.join(enabled)}]",
            f"eval.tasks=[{','.join([*cfg.eval.tasks, 'musique'])}]",
            f"train.queries_per_step={max(cfg.train.queries_per_step, len(enabled))}"]


def evaluate_routers(cfg: Config, pool, model_ids: list[str], routers: dict[str, Path], limit: int) -> dict:
    """Each router on the first `limit` test queries of every benchmark in `eval.tasks`: per benchmark, each
    router's metrics (`pipelines.evaluate.metrics`) and the wall seconds of its run; and whether the pool's
    cost ledger agrees with the trajectories' costs."""
    tasks = build_world(cfg, cfg.eval.tasks).tasks
    ctx = Context(pool, model_ids, cfg.reason, cfg.seed)
    refs = cost_ref(cfg, pool, model_ids, tasks)
    methods = {name: router_method(cfg, name, path, model_ids) for name, path in routers.items()}
    ladder = price_ladder(cfg)
    out: dict = {"tasks": {}}
    ray.get(pool.reset_ledger.remote())
    spent = 0.0
    for tname, task in tasks.items():
        tests = task.split("test")[:limit]
        row: dict = {"n": len(tests), "wall_s": {}}
        for name, method in methods.items():
            start = time.perf_counter()
            trajs = asyncio.run(method.run(tests, task, ctx))
            row["wall_s"][name] = round(time.perf_counter() - start, 1)
            row[name] = metrics(trajs, refs, cfg, router_rates(cfg, method.policy_params(), ladder))
            spent += sum(t.cost_usd for t in trajs)
        out["tasks"][tname] = row
    ledger = ray.get(pool.ledger_snapshot.remote())
    out["ledger"] = {"pool_usd": ledger["total_usd"], "trajectories_usd": spent,
                     "agree": abs(ledger["total_usd"] - spent) <= 1e-9 + 1e-6 * spent}
    return out


def run_bench(cfg: Config, limit: int, console) -> dict:
    run_dir = cfg.run_path
    for stale in (labels_path(cfg).parent, run_dir / "router", run_dir / "train", run_dir / COST_REF):
        delete_staged(stale)  # each run trains afresh
    wall: dict[str, float] = {}
    start = time.perf_counter()
    with pool_session(cfg) as (pool, model_ids):
        wall["pool_start"] = time.perf_counter() - start
        t0 = time.perf_counter()
        sft_dir = run_sft_stage(cfg, console, pool=pool)
        wall["labels+sft"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        trainer = Trainer(cfg, console, pool=pool)
        try:
            with Progress(console=console) as progress:
                history = trainer.fit(progress=progress)
        finally:
            trainer.close()
        wall["grpo"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        routers = {"r2-sft": sft_dir, "r2": router_dir(cfg, "grpo")}
        evaluated = evaluate_routers(cfg, pool, model_ids, routers, limit)
        wall["evaluate"] = time.perf_counter() - t0
    wall["total"] = time.perf_counter() - start
    stats = json.loads((labels_path(cfg).parent / "stats.json").read_text())
    results = {"config": cfg.name, "pool": model_ids, "limit": limit, "routers": {k: str(v) for k, v in routers.items()},
               "labels": stats, "grpo_history": history, **evaluated,
               "wall_s": {k: round(v, 1) for k, v in wall.items()},
               "note": "plumbing run: one real 135M model on both tiers, no capability ladder; prices borrowed "
                       "from the LiteLLM table (gpt-4o-mini, gpt-4o)"}
    write_whole(run_dir / "bench" / "results.json", json.dumps(results, indent=2))
    return results


def table(results: dict) -> Table:
    t = Table(title=f"{results['config']}: SFT -> GRPO on {results['limit']} test queries per benchmark "
                    f"(pool: {', '.join(results['pool'])})")
    for col in ("benchmark", "n", "accuracy sft -> grpo", "cost/query USD sft -> grpo", "format_ok sft -> grpo",
                "wall s sft + grpo"):
        t.add_column(col)
    for name, row in results["tasks"].items():
        a, b = row["r2-sft"], row["r2"]
        t.add_row(name, str(row["n"]), f"{a['accuracy']:.2f} -> {b['accuracy']:.2f}",
                  f"{a['cost_per_query']:.2e} -> {b['cost_per_query']:.2e}",
                  f"{a['format_ok']:.2f} -> {b['format_ok']:.2f}",
                  f"{row['wall_s']['r2-sft']:.0f} + {row['wall_s']['r2']:.0f}")
    return t


def main(argv: list[str] | None = None) -> dict:
    parser = config_parser(__doc__)
    parser.set_defaults(config="configs/smollm-bench.yaml")
    parser.add_argument("--limit", type=int, help="test queries per benchmark (default: eval.limit)")
    parser.add_argument("--musique", metavar="FILE", help="also run MuSiQue from this JSONL file")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.musique:
        args.overrides += musique_overrides(cfg, args.musique)
        cfg = config_from_args(args)
    console = make_console()
    with synced(cfg):
        results = run_bench(cfg, args.limit or cfg.eval.limit, console)
    console.print(table(results))
    ledger = results["ledger"]
    console.print(f"pool ledger {ledger['pool_usd']:.6f} USD, trajectories {ledger['trajectories_usd']:.6f} USD "
                  f"({'agree' if ledger['agree'] else 'DISAGREE'}); wall time: "
                  + ", ".join(f"{k} {v:.0f}s" for k, v in results["wall_s"].items()))
    console.print(f"results: {cfg.run_path / 'bench' / 'results.json'}")
    return results


if __name__ == "__main__":
    main()
