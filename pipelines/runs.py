"""Where a run's outputs live, and the one home of what stages share: the reward's `cost_ref`
(computed once on the train split, stored with the run, reused by training and evaluation)."""
from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from benchmarks.tasks import Task
from core.config import Config
from policies.baselines import Context, reference_cost

COST_REF = "cost_ref.json"
ROUTER_META = "router.json"


def write_whole(path: Path, text: str) -> None:
    """Write a run's output whole or not at all: to a temporary name beside it, then renamed over it (a
    reader never sees a partial file, and a killed writer leaves the previous one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def router_dir(cfg: Config, stage: str) -> Path:
    return Path(cfg.run_dir) / "router" / stage


def labels_path(cfg: Config) -> Path:
    return Path(cfg.run_dir) / "labels" / "labels.jsonl"


def init_dir(cfg: Config) -> Path:
    """The checkpoint both router policies start from: `train.init`, a zoo model's name or any HF folder
    or id (default: the largest zoo model)."""
    names = [m.name for m in cfg.zoo.models]
    if cfg.train.init and cfg.train.init not in names:
        return Path(cfg.train.init)
    if not names:
        raise ValueError("train.init: the config has no zoo; name the policies' checkpoint (an HF folder or id)")
    return cfg.zoo_dir / (cfg.train.init or names[-1])


def cost_ref(cfg: Config, pool, model_ids: list[str], tasks: dict[str, Task]) -> dict[str, float]:
    """Per task: the reference's mean cost per query on the first `train.cost_ref_queries` train queries.
    Stored in `<run_dir>/cost_ref.json` with what it was computed from, and recomputed when that changed."""
    path = Path(cfg.run_dir) / COST_REF
    basis = {"model_ids": model_ids, "queries": cfg.train.cost_ref_queries, "split": "train"}
    stored = json.loads(path.read_text()) if path.exists() else {}
    per_task = stored.get("per_task", {}) if stored.get("basis") == basis else {}
    missing = {name: task for name, task in tasks.items() if name not in per_task}
    if missing:
        ctx = Context(pool, model_ids, cfg.reason, cfg.seed)
        examples = {name: task.load("train")[: cfg.train.cost_ref_queries] for name, task in missing.items()}
        per_task.update(asyncio.run(reference_cost(ctx, missing, examples)))
        write_whole(path, json.dumps({"basis": basis, "per_task": per_task}, indent=2))
    return {name: per_task[name] for name in tasks}


def save_router_meta(cfg: Config, out: Path, model_ids: list[str], stage: str) -> None:
    """What a router folder needs to be loaded on its own (`pipelines.controller.Router.from_run`)."""
    (out / ROUTER_META).write_text(json.dumps(
        {"stage": stage, "model_ids": model_ids, "config": cfg.model_dump(mode="json")}, indent=2))
