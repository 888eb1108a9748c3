"""Evaluate routing methods on the test split over the Ray pool, each knob set on the validation split.

    python -m pipelines.evaluate --config configs/tiny.yaml [--methods all:* cascade ...] [--limit N]

A method with a knob (tau of the confidence methods and of a trained router's review, the task-router's
threshold, random's mix) runs every setting of its sweep (`eval.sweep_<knob>`) on the validation split
(`Task.split("val")`: carved from train, never from test) and keeps the cheapest whose accuracy is within
`eval.val_tolerance` of the reference's validation accuracy (else its most accurate); its row is that
setting on test. Every setting also runs on test, for the method's curve (AIQ, the plot); an empty sweep
leaves the method at its default setting.

Writes `<run_dir>/eval/results.json`:
`{"reference": "all:<largest>@<router>", "methods": {name: {accuracy, cost_per_query, router_cost_per_query,
total_cost_per_query, reward, latency_per_query, calls_per_query, n, decomposer, tasks: {...}, curve,
knob (knob methods: name, chosen, candidates, validation_curve, target_accuracy)}}, "validation": {...},
"splits": {task: {train, val, test}}, "aiq": {name: value}, "headline": {..., "seeds": {...}},
"best_single": {...}, ...}` (with `rllib-ppo` evaluated, also
`"rllib"`: PPO beside the subtask table's oracle and a supervised classifier, per step on the test table:
pipelines.bandit), the Pareto plot `pareto.png`, and a markdown table on stdout (and a W&B table when
W&B is enabled). `results.json` is written whole, once every method has run: a run that fails (a pool
actor that died for good, say) ends with one line saying so and writes no results.
"""
from __future__ import annotations

import asyncio
import json
import re
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import ray
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from actors.cost import Rate, ladder_rate, rate_for, usage_cost
from actors.runtime import pool_session
from actors.zoo import CARD
from benchmarks import report
from benchmarks.tasks import Example, build_world
from core.config import Config, PriceConfig, config_from_args, config_parser
from core.console import console as make_console
from pipelines.bandit import fit_subtask_allocator
from pipelines.generalisation import shape_report
from pipelines.runs import cost_ref as run_cost_ref
from pipelines.runs import init_dirs, synced, write_whole
from policies.baselines import Context, RouterMethod, SubtaskAllocator, TaskRouter, expand, make_method
from policies.load import load_router, trained_router
from policies.reward import reward


def price_ladder(cfg: Config) -> list[tuple[int, Rate]]:
    """(parameters, price) of every model whose size is known: the zoo's (card.json) and pool models with
    a `shape`."""
    card = cfg.zoo_dir / CARD
    rungs = [(m["params"], rate_for(PriceConfig(**{k: v for k, v in m["price"].items() if k != "gpus"})))
             for m in (json.loads(card.read_text())["models"] if card.exists() else [])]
    rungs += [(int(m.shape.params_b * 1e9), rate_for(m.price)) for m in cfg.pool.models if m.shape]
    return rungs


def router_rates(cfg: Config, sizes: dict[str, int], ladder: list[tuple[int, Rate]]) -> dict[str, Rate] | None:
    """The price of each policy LM (of `sizes` parameters) a method runs: `router.price` when the config
    declares one, else interpolated from the policy's size on the price ladder; None when neither is known."""
    if cfg.router.price is not None:
        return dict.fromkeys(sizes, rate_for(cfg.router.price))
    if sizes and not ladder:
        return None
    return {part: ladder_rate(n, ladder) for part, n in sizes.items()}


def router_cost(t, rates: dict[str, Rate] | None) -> float:
    """USD of a trajectory's router tokens (NaN when the router's price is unknown)."""
    if rates is None:
        return float("nan")
    return sum(usage_cost(u, rates[part]) for part, u in t.router_usage.items())


def per_query(trajs, cost_ref: dict[str, float], cfg: Config, rates: dict[str, Rate] | None) -> dict[str, list[float]]:
    """Per query: correct, pool cost, total cost (with the router's own; NaN when its price is unknown),
    reward (on pool cost, as training's)."""
    unpriced = rates is None and any(t.router_usage for t in trajs)
    return {
        "correct": [t.correct for t in trajs],
        "cost": [t.cost_usd for t in trajs],
        "total": [t.cost_usd + (float("nan") if unpriced else router_cost(t, rates or {})) for t in trajs],
        "reward": [reward(t.correct, t.cost_usd, t.format_ok, cfg.reward.lam, cfg.reward.beta,
                          cfg.reward.cost_ref or cost_ref[t.task]) for t in trajs],
    }


def metrics(trajs, cost_ref: dict[str, float], cfg: Config, rates: dict[str, Rate] | None = None) -> dict:
    """Pool cost (`cost_per_query`, which the reward and the reference comparisons use) and the router's
    own cost beside it (`router_cost_per_query`; `total_cost_per_query` is both)."""
    n = len(trajs)
    q = per_query(trajs, cost_ref, cfg, rates)
    return {
        "accuracy": sum(q["correct"]) / n,
        "cost_per_query": sum(q["cost"]) / n,
        "router_cost_per_query": (sum(q["total"]) - sum(q["cost"])) / n,
        "total_cost_per_query": sum(q["total"]) / n,
        "router_tokens_per_query": sum(sum(u.values()) for t in trajs for u in t.router_usage.values()) / n,
        "reward": sum(q["reward"]) / n,
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


def headline(router: str, reference: str, vectors: dict[str, dict[str, list[float]]], seed: int) -> dict:
    """The router against the reference on the same test queries, with paired-bootstrap 95% intervals:
    accuracy difference, pool-cost cut, total-cost cut (the router's own cost included), reward difference."""
    a, b = vectors[router], vectors[reference]

    def boot(key: str, stat) -> dict:
        return report.paired_bootstrap(a[key], b[key], stat, seed=seed)

    return {"router": router, "reference": reference, "queries": len(a["correct"]),
            "accuracy_diff": boot("correct", lambda x, y: x.mean() - y.mean()),
            "cost_cut": boot("cost", lambda x, y: 1 - x.mean() / y.mean()),
            "cost_cut_with_router": boot("total", lambda x, y: 1 - x.mean() / y.mean()),
            "reward_diff": boot("reward", lambda x, y: x.mean() - y.mean())}


def best_single(router: str, methods: dict[str, dict]) -> dict:
    """The router against the best single model (RouterArena's question): the cost-accuracy hull of every
    `single:<m>` and `all:<m>@<router>`, read at the router's cost and at its accuracy."""
    names = [n for n in methods if n.startswith("single:") or (n.startswith("all:") and n.endswith(f"@{router}"))]
    points = [(methods[n]["cost_per_query"], methods[n]["accuracy"]) for n in names]
    r = methods[router]
    at_cost = report.accuracy_at_cost(points, r["cost_per_query"])
    at_acc = report.cost_at_accuracy(points, r["accuracy"])
    return {"methods": names, "router": [r["cost_per_query"], r["accuracy"]],
            "hull_accuracy_at_router_cost": at_cost,
            "router_accuracy_gain": None if at_cost is None else r["accuracy"] - at_cost,
            "hull_cost_at_router_accuracy": at_acc,
            "router_cost_cut": None if at_acc is None else 1 - r["cost_per_query"] / at_acc}


def evaluate(cfg: Config, method_names: list[str], limit: int, out_dir: Path, console,
             router_dirs: dict[str, str] | None = None, pool=None) -> dict:
    """`pool`: a running pool of the config's models to use (else one is started for the evaluation)."""
    with pool_session(cfg, pool) as (pool, model_ids):
        return _evaluate(cfg, pool, model_ids, method_names, limit, out_dir, console, router_dirs)


def _evaluate(cfg: Config, pool, model_ids: list[str], method_names: list[str], limit: int, out_dir: Path,
              console, router_dirs: dict[str, str] | None) -> dict:
    tasks = build_world(cfg, cfg.eval.tasks).tasks
    tests = {name: t.split("test")[:limit] for name, t in tasks.items()}
    vals = {name: t.split("val") for name, t in tasks.items()}
    ctx = Context(pool, model_ids, cfg.reason, cfg.seed)
    trained = {n: router_method(cfg, n, d, model_ids) for n, d in (router_dirs or {}).items()}
    ctx.decomposers.update({n: m.router for n, m in trained.items() if m.router.decomposer is not None})
    # the baselines run on the gold decomposition (oracles, `@gold`) and on the headline router's own
    # decomposer (`@<router>`: the fair comparison); the reference is every step of the latter on the largest
    head = cfg.eval.router if cfg.eval.router in ctx.decomposers else "gold"
    reference = f"all:{model_ids[-1]}@{head}"
    baselines = [make_method(n, ctx) for n in expand(method_names, model_ids)]
    if head != "gold":
        baselines += [make_method(f"{n}@{head}", ctx) for n in expand(method_names, model_ids)
                      if not n.startswith("single:") and "@" not in n]
    methods = {m.name: m for m in [make_method(reference, ctx), *baselines]}
    own_refs = {n: f"all:{model_ids[-1]}@{n}" for n in trained if n in ctx.decomposers}  # each router's own reference
    methods.update(trained)
    methods.update({r: make_method(r, ctx) for r in own_refs.values() if r not in methods})
    for m in methods.values():
        if isinstance(m, TaskRouter):
            m.train = {name: t.split("train")[: cfg.eval.task_router_train] for name, t in tasks.items()}
    # each knob method's settings: (value, the method at it); none for a method without a knob
    sweeps = {n: [(v, m.with_knob(v)) for v in getattr(cfg.eval, f"sweep_{m.knob}")]
              for n, m in methods.items() if m.knob}
    if any(sweeps.values()) and not any(vals.values()):
        raise ValueError("no validation queries to choose the knobs on (eval.val_queries; each task's train "
                         "split needs at least 2 queries)")

    results: dict = {"reference": None, "methods": {}, "aiq": {}, "config": cfg.name,
                     "tasks": {k: len(v) for k, v in tests.items()},
                     "splits": {k: {"train": len(t.split("train")), "val": len(vals[k]), "test": len(tests[k])}
                                for k, t in tasks.items()},
                     "prices": "tiny pool priced on the paper pool's price ladder (USD per 1M tokens)"}
    with pool_alive("the reference cost"):
        cost_ref = run_cost_ref(cfg, pool, model_ids, tasks)  # the train split's, as training used
    ladder = price_ladder(cfg)  # prices the routers' own tokens by their policies' size
    rates = {name: router_rates(cfg, m.policy_params(), ladder) for name, m in methods.items()}
    subtask = [m for m in methods.values() if isinstance(m, SubtaskAllocator)]
    if subtask:  # rllib-ppo: subtask tables, PPO (trained once), and its table-level comparison
        fitted, results["rllib"] = fit_subtask_allocator(cfg, pool, model_ids, tasks, tests, cost_ref)
        for m in subtask:
            m.router = fitted.with_decomposer(m.name, m.decomposer)
        console.print(_bandit_line(results["rllib"]))
    columns = [TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    settings = sum(len(s) for s in sweeps.values())
    runs = (sum(max(1, len(sweeps.get(n, []))) for n in methods) * len(tests)
            + (1 + settings) * sum(bool(v) for v in vals.values()) * bool(settings))
    start = time.perf_counter()
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("evaluate", total=runs)

        def run_all(method, split: dict[str, list[Example]], label: str) -> list:
            trajs = []
            for tname, exs in split.items():
                if not exs:
                    continue
                progress.update(bar, description=f"{method.name} on {tname} {label}")
                with pool_alive(f"{method.name} on {tname} {label}"):
                    trajs += asyncio.run(method.run(exs, tasks[tname], ctx))
                progress.advance(bar)
            return trajs

        chosen: dict[str, int] = {}  # knob method -> index of its validation-chosen setting
        knobs: dict[str, dict] = {}  # knob method -> the record of its choice
        if settings:
            ref_val = metrics(run_all(methods[reference], vals, "val"), cost_ref, cfg, rates[reference])
            results["validation"] = validation_target(reference, ref_val, cfg.eval.val_tolerance, vals)
            for name, variants in sweeps.items():
                if variants:
                    points = [point(value, metrics(run_all(v, vals, "val"), cost_ref, cfg, rates[name]))
                              for value, v in variants]
                    chosen[name], knobs[name] = choose_knob(methods[name].knob, points, results["validation"])
        vectors = {}
        for name, method in methods.items():
            variants = sweeps.get(name) or [(None, method)]
            runs_on_test = [run_all(v, tests, "test") for _, v in variants]
            trajs = runs_on_test[chosen.get(name, 0)]
            vectors[name] = per_query(trajs, cost_ref, cfg, rates[name])
            m = metrics(trajs, cost_ref, cfg, rates[name])
            m["decomposer"] = trajs[0].decomposer if trajs else "-"
            m["tasks"] = {tname: metrics([t for t in trajs if t.task == tname], cost_ref, cfg, rates[name])
                          for tname in tests}
            m["router_params"] = method.policy_params()
            m["curve"] = [(c["cost_per_query"], c["accuracy"])
                          for c in (metrics(r, cost_ref, cfg, rates[name]) for r in runs_on_test)]
            if method.knob:
                m["knob"] = knobs.get(name) or default_knob(method.knob)
            results["methods"][name] = m
    results["reference"] = reference
    results["cost_ref_per_task"] = cost_ref
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    costs = [c for m in results["methods"].values() for c, _ in m["curve"]]
    lo, hi = min(costs), max(costs)
    ref = results["methods"][reference]
    for name, m in results["methods"].items():
        results["aiq"][name] = report.aiq(m["curve"], lo, hi)
        match = report.cost_at_accuracy(m["curve"], ref["accuracy"] - cfg.eval.val_tolerance)
        m["cost_cut_at_matched_accuracy"] = None if match is None else 1 - match / ref["cost_per_query"]
        m["cost_cut_vs_reference"] = 1 - m["cost_per_query"] / ref["cost_per_query"]
        m["cost_cut_vs_reference_with_router"] = 1 - m["total_cost_per_query"] / ref["total_cost_per_query"]
        m["accuracy_loss_vs_reference"] = ref["accuracy"] - m["accuracy"]
    for name, ref_name in own_refs.items():
        m, r = results["methods"][name], results["methods"][ref_name]
        m["own_decomposition_reference"] = {"method": ref_name, "accuracy_loss": r["accuracy"] - m["accuracy"],
                                            "cost_cut": 1 - m["cost_per_query"] / r["cost_per_query"],
                                            "cost_cut_with_router": 1 - m["total_cost_per_query"] / r["total_cost_per_query"]}
    if head in trained:
        results["headline"] = headline(head, reference, vectors, cfg.seed)
        results["headline"]["setting"] = results["methods"][head].get("knob")
        results["headline"]["seeds"] = seed_spread(head, reference, vectors, cfg.seed)
        results["best_single"] = best_single(head, results["methods"])
    if trained:
        untrained, _ = load_router(cfg.model_copy(update={"router": cfg.router.model_copy(update={
            "path": None, "init": str(init_dirs(cfg)["decomposer"]), "decomposer": "policy"})}), model_ids)
        with pool_alive("the generalisation report"):
            results["generalisation"] = shape_report(tasks, trained, untrained, ctx, console.log)
    write_whole(out_dir / "results.json", json.dumps(results, indent=2))
    report.pareto_png(results["methods"], reference, out_dir / "pareto.png",
                      f"{cfg.name}: {sum(results['tasks'].values())} test queries ({', '.join(tests)}); "
                      f"reference {reference}; knobs chosen on {sum(map(len, vals.values()))} validation queries")
    _log_wandb(cfg, results)
    return results


def validation_target(reference: str, ref_val: dict, tolerance: float, vals: dict[str, list]) -> dict:
    """What every knob method's setting is chosen for: the reference's validation accuracy less `tolerance`."""
    return {"reference": reference, "reference_accuracy": ref_val["accuracy"],
            "reference_cost_per_query": ref_val["cost_per_query"], "tolerance": tolerance,
            "target_accuracy": ref_val["accuracy"] - tolerance, "queries": {k: len(v) for k, v in vals.items()},
            "rule": "the cheapest setting (pool cost per query) whose validation accuracy reaches the target; "
                    "if none does, the most accurate"}


def point(value: float, m: dict) -> dict:
    """One setting of a knob on validation."""
    return {"value": value, "accuracy": m["accuracy"], "cost_per_query": m["cost_per_query"],
            "total_cost_per_query": m["total_cost_per_query"], "n": m["n"]}


def choose_knob(knob: str, points: list[dict], validation: dict) -> tuple[int, dict]:
    """The index of the chosen setting among `points` (report.choose_setting) and the record of the choice."""
    i = report.choose_setting([(p["cost_per_query"], p["accuracy"]) for p in points], validation["target_accuracy"])
    return i, {"name": knob, "chosen": points[i]["value"], "candidates": [p["value"] for p in points],
               "validation_curve": points, "target_accuracy": validation["target_accuracy"],
               "meets_target": points[i]["accuracy"] >= validation["target_accuracy"]}


def default_knob(knob: str) -> dict:
    """The record of a knob method run at its default setting (its sweep is empty: nothing to choose from)."""
    return {"name": knob, "chosen": None, "candidates": [], "validation_curve": [], "target_accuracy": None,
            "meets_target": None}


def seed_spread(head: str, reference: str, vectors: dict[str, dict[str, list[float]]], seed: int) -> dict:
    """Every seed of the headline router (`<router>`, `<router>-seed<k>`) against the reference: each seed's
    headline (with its paired-bootstrap interval), and the mean, sample standard deviation, min and max of
    each value over the seeds."""
    names = [n for n in vectors if n == head or re.fullmatch(rf"{re.escape(head)}-seed\d+", n)]
    per_seed = {n: headline(n, reference, vectors, seed) for n in names}
    keys = ("accuracy_diff", "cost_cut", "cost_cut_with_router", "reward_diff")
    values = {k: [per_seed[n][k]["value"] for n in names] for k in keys}
    return {"routers": names, "per_seed": per_seed,
            "mean": {k: statistics.fmean(v) for k, v in values.items()},
            "sd": {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in values.items()},
            "min": {k: min(v) for k, v in values.items()}, "max": {k: max(v) for k, v in values.items()}}


def _bandit_line(report: dict) -> str:
    parts = [f"{k} acc {v['accuracy']:.3f} cost/step {v['cost_per_step']:.2e} reward {v['reward']:.3f}"
             for k, v in report.items() if isinstance(v, dict) and "accuracy" in v]
    return f"rllib-ppo on the test subtask table ({report['ppo']['n']} steps): " + "; ".join(parts)


def _log_wandb(cfg: Config, results: dict) -> None:
    if cfg.wandb.mode == "disabled":
        return
    import wandb  # lazy: optional and heavy, only when W&B is on

    run = wandb.init(project=cfg.wandb.project, mode=cfg.wandb.mode, dir=str(cfg.run_path), job_type="evaluate",
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
    out = Path(args.out) if args.out else cfg.run_path / "eval"
    routers = dict(r.split("=", 1) if "=" in r else (Path(r).name, r) for r in args.router)
    try:
        with synced(cfg):
            results = evaluate(cfg, args.methods or cfg.eval.methods, args.limit or cfg.eval.limit, out, console,
                               routers)
    except EvaluationFailed as err:
        raise SystemExit(f"evaluation failed: {err}") from None
    console.print(report.markdown_table(results), markup=False)
    if "validation" in results:
        v = results["validation"]
        console.print(f"settings chosen on {sum(v['queries'].values())} validation queries: the cheapest within "
                      f"{v['tolerance'] * 100:g} pt of {v['reference']}'s validation accuracy "
                      f"{v['reference_accuracy']:.3f} (else its most accurate)", markup=False)
    console.print(f"results: {out / 'results.json'}  plot: {out / 'pareto.png'}  ({results['wall_seconds']}s)")
    return results


if __name__ == "__main__":
    main()
