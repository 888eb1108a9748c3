"""Where a run's outputs live, and the one home of what stages share: the reward's `cost_ref`
(computed once on the train split, stored with the run, reused by training and evaluation).

`synced(cfg)` wraps a stage whose `run_dir` / `zoo.dir` may be URIs: it brings their staging copies up to
date on entry (the URI is the truth: local files it lacks go) and uploads what the stage wrote on exit,
whether it succeeded or not. Stages that must survive a kill (training's checkpoints) push as they go."""
from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from transformers import AutoTokenizer

from benchmarks.tasks import Task
from core.config import Config
from core.storage import Storage
from policies import tiny_lm
from policies.baselines import Context, reference_cost

COST_REF = "cost_ref.json"
ROUTER_META = "router.json"


def storages(cfg: Config) -> list[Storage]:
    """The run directory's storage, and the zoo's when it lives elsewhere."""
    return [Storage(cfg.run_dir)] + ([Storage(cfg.zoo.dir)] if cfg.zoo.dir else [])


@contextmanager
def synced(cfg: Config) -> Iterator[Config]:
    for store in storages(cfg):
        store.pull(mirror=True)
    try:
        yield cfg
    finally:
        for store in storages(cfg):
            store.push()


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
    return cfg.run_path / "router" / stage


def default_router(cfg: Config) -> str | None:
    """The router `route` and `serve router` use without a flag: `router.path`, else the run's GRPO-trained
    router when training has written one, else None (the config's untrained router)."""
    if cfg.router.path:
        return cfg.router.path
    grpo = router_dir(cfg, "grpo")
    return str(grpo) if (grpo / "allocator").exists() else None


def labels_path(cfg: Config) -> Path:
    return cfg.run_path / "labels" / "labels.jsonl"


SCRATCH = "scratch:"


def init_dirs(cfg: Config) -> dict[str, Path]:
    """The checkpoint each router policy starts from: `train.init_<policy>`, else `train.init`, each a zoo
    model's name, any HF folder or id (default: the largest zoo model), or `scratch:<zoo model>`: fresh
    weights of that model's shape over the zoo's vocabulary (seeded by `seed`, written under the run)."""
    names = {m.name: m for m in cfg.zoo.models}

    def resolve(policy: str) -> Path:
        field_ = f"init_{policy}" if getattr(cfg.train, f"init_{policy}") else "init"
        init = getattr(cfg.train, field_)
        if init and init.startswith(SCRATCH):
            if init.removeprefix(SCRATCH) not in names:
                raise ValueError(f"train.{field_}: {init!r} names no zoo model ({', '.join(names)})")
            return scratch_policy(cfg, names[init.removeprefix(SCRATCH)], policy)
        if init and init not in names:
            return Path(init)
        if not names:
            raise ValueError(f"train.{field_}: the config has no zoo; name the policy's checkpoint (an HF folder or id)")
        return cfg.zoo_dir / (init or list(names)[-1])

    return {policy: resolve(policy) for policy in ("decomposer", "allocator")}


def scratch_policy(cfg: Config, shape, policy: str) -> Path:
    """A freshly initialised tiny LM of a zoo model's shape, with the zoo's tokenizer (written once)."""
    out = cfg.run_path / "init" / f"{policy}-{shape.name}-seed{cfg.seed}"
    if not (out / "config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(cfg.zoo_dir / shape.name))
        tiny_lm.save(tiny_lm.build_model(tokenizer, shape.hidden, shape.layers, shape.heads, shape.intermediate,
                                         seed=cfg.seed), tokenizer, out)
    return out


def cost_ref(cfg: Config, pool, model_ids: list[str], tasks: dict[str, Task]) -> dict[str, float]:
    """Per task: `reward.cost_ref` when the config sets it, else the reference's mean cost per query on the
    first `train.cost_ref_queries` train queries (the validation queries left out: `Task.split`).
    Stored in `<run_dir>/cost_ref.json` with what it was computed from, and recomputed when that changed."""
    if cfg.reward.cost_ref is not None:  # a configured constant: nothing to measure
        return dict.fromkeys(tasks, cfg.reward.cost_ref)
    path = cfg.run_path / COST_REF
    basis = {"model_ids": model_ids, "queries": cfg.train.cost_ref_queries, "split": "train",
             "val_queries": cfg.eval.val_queries}
    stored = json.loads(path.read_text()) if path.exists() else {}
    per_task = stored.get("per_task", {}) if stored.get("basis") == basis else {}
    missing = {name: task for name, task in tasks.items() if name not in per_task}
    if missing:
        ctx = Context(pool, model_ids, cfg.reason, cfg.seed)
        examples = {name: task.split("train")[: cfg.train.cost_ref_queries] for name, task in missing.items()}
        per_task.update(asyncio.run(reference_cost(ctx, missing, examples)))
        write_whole(path, json.dumps({"basis": basis, "per_task": per_task}, indent=2))
    return {name: per_task[name] for name in tasks}


def save_router_meta(cfg: Config, out: Path, model_ids: list[str], stage: str) -> None:
    """What a router folder needs to be loaded on its own (`pipelines.controller.Router.from_run`)."""
    (out / ROUTER_META).write_text(json.dumps(
        {"stage": stage, "model_ids": model_ids, "config": cfg.model_dump(mode="json")}, indent=2))
