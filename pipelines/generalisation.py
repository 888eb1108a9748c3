"""The generalisation report: for every query shape a task draws (`Task.shape_sets`: hop counts, surface
forms, ...), inside the training range and held out from it, each trained router's exact-decomposition
rate, format rate and accuracy through the chain, beside the untrained decomposer (the checkpoint the
trained one started from) under the same decoding rule and vocabulary restriction."""
from __future__ import annotations

import asyncio

from benchmarks.tasks.base import Example, Task
from policies.baselines import Context


def exact(steps: list[str], example: Example) -> bool:
    return [" ".join(s.split()) for s in steps] == [" ".join(s.prompt.split()) for s in example.steps]


def exact_rate(router, examples: list[Example], task: Task) -> float:
    """The share of `examples` that `router` decomposes exactly into their gold steps."""
    return _mean([exact(d.decomposition.steps, ex) for d, ex in zip(router.decompose(examples, task), examples)])


def shape_report(tasks: dict[str, Task], routers: dict, untrained, ctx: Context, progress=None) -> dict:
    """`{"<task>:<shape>": {task, shape, held_out, n, untrained_exact, routers: {name: {exact, format_ok,
    accuracy}}}}` for every task with shapes; `routers` are evaluation methods (`.run`), `untrained` a
    router whose decomposer is the untrained checkpoint."""
    out: dict[str, dict] = {}
    for tname, task in tasks.items():
        for shape, examples in task.shape_sets().items():
            if progress is not None:
                progress(f"shapes: {tname}:{shape}")
            row = {"task": tname, "shape": shape, "held_out": task.held_out(shape), "n": len(examples),
                   "untrained_exact": exact_rate(untrained, examples, task),
                   "routers": {}}
            for name, method in routers.items():
                trajs = asyncio.run(method.run(examples, task, ctx))
                row["routers"][name] = {
                    "exact": _mean([exact(t.decomposition.decomposition.steps, ex) for t, ex in zip(trajs, examples)]),
                    "format_ok": _mean([t.format_ok for t in trajs]),
                    "accuracy": _mean([t.correct for t in trajs])}
            out[f"{tname}:{shape}"] = row
    return out


def _mean(xs) -> float:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else float("nan")
