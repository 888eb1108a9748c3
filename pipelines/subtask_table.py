"""The subtask table: every gold step of a set of queries run alone on every pool model (real pool calls,
through the chain, as the label search runs its trials), recording per model whether it answered the
step's gold answer and what the call cost. One row per distinct step text (greedy decoding gives a
step one outcome per model):

    {"task", "id", "text", "correct": [per tier, cheapest first], "cost_usd": [per tier]}

A step's text is the allocator's view of it: the gold step with the gold earlier answers filled in.
Tables live in `<run_dir>/rllib/<name>.jsonl` (first line: what they were collected from, and stats) and
are reused while that basis is unchanged.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from benchmarks.tasks.base import Example, Step, Task
from core.config import Config
from pipelines.labels import PlannedRouter
from policies.reason import areason_batch

TRAIN_SAMPLE_SEED = 11  # offset of the train sample's seed from the run's


def table_path(cfg: Config, name: str) -> Path:
    return cfg.run_path / "rllib" / f"{name}.jsonl"


def subtasks(examples: list[Example], task: Task) -> list[Example]:
    """Each gold step as a one-step query of its own, scored against the step's gold answer; one per
    distinct text, in order of first appearance."""
    out: dict[str, Example] = {}
    for ex in examples:
        gold = [s.answer for s in ex.steps]
        for k, step in enumerate(ex.steps):
            text = task.gold_step_prompt(ex, k, gold[:k])
            out.setdefault(text, Example(f"{ex.id}/{k}", ex.task, text, step.answer, [Step(text, step.answer)]))
    return list(out.values())


async def collect(cfg: Config, pool, model_ids: list[str], task: Task, examples: list[Example]) -> list[dict]:
    """The rows of `examples`' subtasks: every subtask on every tier (one batched chain run per tier)."""
    subs = subtasks(examples, task)
    plan = {s.id: [s.query] for s in subs}
    runs = await asyncio.gather(*(
        areason_batch(subs, PlannedRouter(plan, {s.id: [tier] for s in subs}), pool, task, cfg.reason, model_ids,
                      review=False)
        for tier in range(len(model_ids))))
    return [{"task": task.name, "id": s.id, "text": s.query, "correct": [run[i].correct for run in runs],
             "cost_usd": [run[i].cost_usd for run in runs]} for i, s in enumerate(subs)]


def load_or_collect(cfg: Config, pool, model_ids: list[str], tasks: dict[str, Task],
                    examples: dict[str, list[Example]], name: str, split: str) -> tuple[list[dict], dict]:
    """The table `name` of `examples` (per task), from its cache when collected from the same basis; returns
    (rows, stats)."""
    path = table_path(cfg, name)
    basis = {"split": split, "model_ids": model_ids, "queries": {t: [ex.id for ex in exs] for t, exs in examples.items()},
             "world": cfg.tasks.model_dump(mode="json"), "zoo": [m.model_dump(mode="json") for m in cfg.zoo.models]}
    if path.exists():
        head, *lines = path.read_text().splitlines()
        meta = json.loads(head)
        if meta["basis"] == basis:
            return [json.loads(line) for line in lines], {**meta["stats"], "cached": True}
    start = time.perf_counter()
    rows = [r for t, exs in examples.items() for r in asyncio.run(collect(cfg, pool, model_ids, tasks[t], exs))]
    stats = {"queries": {t: len(exs) for t, exs in examples.items()}, "subtasks": len(rows),
             "pool_calls": len(rows) * len(model_ids), "wall_s": round(time.perf_counter() - start, 2)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(x) + "\n" for x in [{"basis": basis, "stats": stats}, *rows]))
    return rows, {**stats, "cached": False}
