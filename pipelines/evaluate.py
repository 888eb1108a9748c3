"""Evaluate routing methods on the test split over the Ray pool.

    python -m pipelines.evaluate --config configs/tiny.yaml [--methods all:* cascade ...] [--limit N]

Writes `<run_dir>/eval/results.json`:
`{"reference": "all:<largest>", "methods": {name: {accuracy, cost_per_query, reward, latency_per_query,
calls_per_query, n, decomposer, tasks: {...}, curve}}, "aiq": {name: value}, ...}`, the Pareto plot
`pareto.png`, and a markdown table on stdout (and a W&B table when W&B is enabled). `results.json` is
written whole, once every method has run: a run that fails (a pool actor that died for good, say) ends
with one line saying so and writes no results.
"""
from __future__ import annotations

import asyncio
import json
import time
from contextlib import contextmanager
from pathlib import Path

import ray
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from actors.runtime import pool_session
from benchmarks import report
from benchmarks.tasks import build_world
from core.config import Config, config_from_args, config_parser
from core.console import console as make_console
from pipelines.runs import cost_ref as run_cost_ref
from pipelines.runs import write_whole
from policies.baselines import Context, FixedRouter, RouterMethod, TaskRouter, expand, make_method
from policies.load import trained_router
from policies.reward import reward


def metrics(trajs, cost_ref: dict[str, float], cfg: Config) -> dict:
    n = len(trajs)
    rewards = [reward(t.correct, t.cost_usd, t.format_ok, cfg.reward.lam, cfg.reward.beta,
                      cfg.reward.cost_ref or cost_ref[t.task]) for t in trajs]
    return {
        "accuracy": sum(t.correct for t in trajs) / n,
        "cost_per_query": sum(t.cost_usd for t in trajs) / n,
        "reward": sum(rewards) / n,
        "latency_per_query": sum(t.latency_s for t in trajs) / n,
        "calls_per_query": sum(len(t.calls) for t in trajs) / n,
        "escalations_per_query": sum(t.summary()["escalations"] for t in trajs) / n,
        "format_ok": sum(t.format_ok for t in trajs) / n,
        "n": n,
    }


class EvaluationFailed(RuntimeError):
    """An evaluation that cannot finish; its message is one line."""


@contextmanager
def pool_alive(what: str):
    """A pool actor that died for good (Ray restarts each a bounded number of times) ends the evaluation."""
    try:
        yield
    except ray.exceptions.RayActorError as err:
        raise EvaluationFailed(f"a pool actor died for good during {what} ({type(err).__name__}); "
                               "no results were written") from err


def router_method(cfg: Config, name: str, path: str | Path, model_ids: list[str]):
    """A trained router (decomposer/ and allocator/ under `path`) as a method: greedy policies, with
    the chain's procedural review."""
    router = trained_router(cfg, path, model_ids, label=name)
    router.name = name
    return RouterMethod(name, router, review=True)


def own_decomposition_reference(name: str, method, model_ids: list[str]):
    """The reference on a trained router's own decomposition: its steps, every one on the largest model
    (so the comparison isolates what allocation and review save)."""
    ref_name = f"all:{model_ids[-1]}@{name}"
    top = len(model_ids) - 1
    return ref_name, RouterMethod(ref_name, FixedRouter(ref_name, method.router, lambda *_: top))


def evaluate(cfg: Config, method_names: list[str], limit: int, out_dir: Path, console,
             router_dirs: dict[str, str] | None = None) -> dict:
    with pool_session(cfg) as (pool, model_ids):
        return _evaluate(cfg, pool, model_ids, method_names, limit, out_dir, console, router_dirs)


def _evaluate(cfg: Config, pool, model_ids: list[str], method_names: list[str], limit: int, out_dir: Path,
              console, router_dirs: dict[str, str] | None) -> dict:
    tasks = build_world(cfg, cfg.eval.tasks).tasks
    tests = {name: t.load("test")[:limit] for name, t in tasks.items()}
    ctx = Context(pool, model_ids, cfg.reason, cfg.seed)
    reference = f"all:{model_ids[-1]}"
    names = expand(method_names, model_ids)
    names = [reference] + [n for n in names if n != reference]
    methods = {n: make_method(n, ctx) for n in names}
    trained = {n: router_method(cfg, n, d, model_ids) for n, d in (router_dirs or {}).items()}
    own_refs = {n: own_decomposition_reference(n, m, model_ids) for n, m in trained.items()
                if m.router.decomposer is not None}  # router name -> (reference name, method)
    methods.update(trained)
    methods.update(dict(own_refs.values()))
    for m in methods.values():
        if isinstance(m, TaskRouter):
            m.train = {name: t.load("train")[: cfg.eval.task_router_train] for name, t in tasks.items()}
    sweeps = {n: [m.with_knob(v) for v in cfg.eval.sweep_tau] for n, m in methods.items() if m.knob}

    results: dict = {"reference": None, "methods": {}, "aiq": {}, "config": cfg.name,
                     "tasks": {k: len(v) for k, v in tests.items()},
                     "prices": "tiny pool priced on the paper pool's price ladder (USD per 1M tokens)"}
    with pool_alive("the reference cost"):
        cost_ref = run_cost_ref(cfg, pool, model_ids, tasks)  # the train split's, as training used
    columns = [TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    runs = len(methods) * len(tests) + sum(len(s) for s in sweeps.values()) * len(tests)
    start = time.perf_counter()
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("evaluate", total=runs)

        def run_all(method) -> list:
            trajs = []
            for tname, exs in tests.items():
                progress.update(bar, description=f"{method.name} on {tname}")
                with pool_alive(f"{method.name} on {tname}"):
                    trajs += asyncio.run(method.run(exs, tasks[tname], ctx))
                progress.advance(bar)
            return trajs

        for name, method in methods.items():
            trajs = run_all(method)
            m = metrics(trajs, cost_ref, cfg)
            m["decomposer"] = trajs[0].decomposer if trajs else "-"
            m["tasks"] = {tname: metrics([t for t in trajs if t.task == tname], cost_ref, cfg) for tname in tests}
            m["curve"] = [(m["cost_per_query"], m["accuracy"])]
            for variant in sweeps.get(name, []):
                vm = metrics(run_all(variant), cost_ref, cfg)
                m["curve"].append((vm["cost_per_query"], vm["accuracy"]))
            results["methods"][name] = m
    results["reference"] = reference
    results["cost_ref_per_task"] = cost_ref
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    costs = [c for m in results["methods"].values() for c, _ in m["curve"]]
    lo, hi = min(costs), max(costs)
    ref = results["methods"][reference]
    for name, m in results["methods"].items():
        results["aiq"][name] = report.aiq(m["curve"], lo, hi)
        match = report.cost_at_accuracy(m["curve"], ref["accuracy"] - 0.01)
        m["cost_cut_at_matched_accuracy"] = None if match is None else 1 - match / ref["cost_per_query"]
        m["cost_cut_vs_reference"] = 1 - m["cost_per_query"] / ref["cost_per_query"]
        m["accuracy_loss_vs_reference"] = ref["accuracy"] - m["accuracy"]
    for name, (ref_name, _) in own_refs.items():
        m, r = results["methods"][name], results["methods"][ref_name]
        m["own_decomposition_reference"] = {"method": ref_name, "accuracy_loss": r["accuracy"] - m["accuracy"],
                                            "cost_cut": 1 - m["cost_per_query"] / r["cost_per_query"]}
    write_whole(out_dir / "results.json", json.dumps(results, indent=2))
    report.pareto_png(results["methods"], reference, out_dir / "pareto.png",
                      f"{cfg.name}: {sum(results['tasks'].values())} test queries ({', '.join(tests)}); "
                      f"reference {reference}")
    _log_wandb(cfg, results)
    return results


def _log_wandb(cfg: Config, results: dict) -> None:
    if cfg.wandb.mode == "disabled":
        return
    import wandb  # lazy: optional and heavy, only when W&B is on

    run = wandb.init(project=cfg.wandb.project, mode=cfg.wandb.mode, dir=cfg.run_dir, job_type="evaluate",
                     config={"config": cfg.name})
    cols = ["method", "decomposer", "accuracy", "cost_per_query", "reward", "latency_per_query", "calls_per_query", "aiq"]
    table = wandb.Table(columns=cols)
    for name, m in results["methods"].items():
        table.add_data(name, m["decomposer"], m["accuracy"], m["cost_per_query"], m["reward"],
                       m["latency_per_query"], m["calls_per_query"], results["aiq"][name])
    run.log({"eval/results": table})
    run.finish()


def main(argv: list[str] | None = None) -> dict:
    parser = config_parser(__doc__)
    parser.add_argument("--methods", nargs="+", help="methods to run (default: eval.methods in the config)")
    parser.add_argument("--limit", type=int, help="test queries per task (default: eval.limit)")
    parser.add_argument("--out", help="output folder (default: <run_dir>/eval)")
    parser.add_argument("--router", action="append", default=[], metavar="NAME=DIR",
                        help="also evaluate a trained router (e.g. r2=runs/tiny/router/grpo); repeatable")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    console = make_console()
    out = Path(args.out) if args.out else Path(cfg.run_dir) / "eval"
    routers = dict(r.split("=", 1) if "=" in r else (Path(r).name, r) for r in args.router)
    try:
        results = evaluate(cfg, args.methods or cfg.eval.methods, args.limit or cfg.eval.limit, out, console, routers)
    except EvaluationFailed as err:
        raise SystemExit(f"evaluation failed: {err}") from None
    console.print(report.markdown_table(results), markup=False)
    console.print(f"results: {out / 'results.json'}  plot: {out / 'pareto.png'}  ({results['wall_seconds']}s)")
    return results


if __name__ == "__main__":
    main()
