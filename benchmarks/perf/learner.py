"""Learner benchmarks: what the DeepSpeed engine costs a GRPO step, and the learner -> rollout workers
weight sync.

- `deepspeed_step_ratio`: one decomposer GRPO step (`LearnerImpl.grpo_step`) through the DeepSpeed
  engines the Learner builds, over the same step with the engine swapped for plain torch (same module
  copy, same items, AdamW with ds_config's lr, weight decay and betas, gradient clipping 1.0). Measured
  in this process: `LearnerImpl` is constructed here as the Learner actor constructs it (world of 1), so
  the ratio is the engine's own overhead, without a Ray hop. At the demo's policy size (the config's
  router, tiny-2's shape) and at ~10M parameters (a fresh model of that size over the router's
  vocabulary); the items are SFT decomposition calls of the run's labels with sampler logprobs and
  advantages set, so every token counts.
- `weight_sync`: the configured sync (`train.weight_sync`; the object store by default) of one policy
  to `train.rollout_workers` workers at three parameter counts, and its share of a training step,
  sync / (sync + rollout + learner step), with the rollout time the rollout benchmark measured (when it
  ran) and the learner step measured here at the demo size. The state dict is put in the object store
  by this process, where the Learner actor puts it from its own; the workers' load is the same. At the
  demo size the workers are the run's shared rollout workers when the rollout benchmark started them; the larger sizes start workers of their own.
"""
from __future__ import annotations

import copy
import json
import random
import tempfile
from pathlib import Path

import ray
import torch

from actors.learner import POLICIES, LearnerImpl
from actors.rollout import RolloutWorker
from actors.weight_sync import WeightRef, make_sync, state_checksum
from benchmarks.perf.common import PerfContext, ray_up, repeat, router_dirs, shared_workers, summary
from core.config import Config
from core.types import TrainItem
from pipelines.runs import labels_path
from pipelines.sft import sft_data
from policies.policy_lm import PolicyLM
from policies.tiny_lm import build_model, save

# (hidden, layers, heads, intermediate) of the larger sizes: ~1M and ~10M parameters
SHAPES = {"1M": (128, 5, 4, 384), "10M": (320, 8, 5, 960)}


class TorchEngine:
    """What `LearnerImpl._accumulate` asks of an engine, in plain torch: the optimizer and clipping of
    `actors.learner.ds_config` (AdamW, betas and eps at their defaults in both)."""

    def __init__(self, module: torch.nn.Module, lr: float, weight_decay: float, clip: float = 1.0):
        self.module, self.clip = module, clip
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay)

    def train(self) -> None:
        self.module.train()

    def set_gradient_accumulation_boundary(self, boundary: bool) -> None:
        pass

    def backward(self, loss: torch.Tensor, scale_wrt_gas: bool = False) -> None:
        loss.backward()

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def grpo_items(cfg: Config, tokenizer, n: int) -> list[TrainItem]:
    """`n` decomposer items: SFT decomposition calls of the run's labels, as sampled tokens."""
    rows = [json.loads(line) for line in labels_path(cfg).read_text().splitlines() if line.strip()]
    calls = sft_data(rows, tokenizer, cfg.router.templates)["decomposer"]
    if not calls:
        raise ValueError(f"no decomposition calls in {labels_path(cfg)}")
    rng = random.Random(cfg.seed)
    return [TrainItem("decomposer", p, token_ids=t, old_logprobs=[-0.5] * len(t), advantage=rng.choice([-1.0, 1.0]))
            for p, t in (rng.choice(calls) for _ in range(n))]


def sized_policy(tokenizer, shape: tuple[int, int, int, int], path: Path) -> str:
    hidden, layers, heads, intermediate = shape
    save(build_model(tokenizer, hidden, layers, heads, intermediate, max_positions=256), tokenizer, path)
    return str(path)


def step_ratio(cfg: Config, policy_dir: str, items: list[TrainItem], repeats: int) -> dict:
    model_ids = [m.name for m in cfg.zoo.models]
    ds = LearnerImpl(cfg.model_dump_json(), dict.fromkeys(POLICIES, policy_dir), model_ids, cfg.train.grpo_lr)
    plain = copy.copy(ds)
    plain.versions = dict(ds.versions)
    plain.engines = {name: TorchEngine(copy.deepcopy(e.module), cfg.train.grpo_lr, cfg.train.weight_decay)
                     for name, e in ds.engines.items()}
    arms = {"deepspeed": ds, "torch": plain}
    for learner in arms.values():  # warm-up
        learner.grpo_step("decomposer", items)
    secs: dict[str, list[float]] = {k: [] for k in arms}
    ratio = []
    for _ in range(repeats):
        for k, learner in arms.items():
            secs[k].append(repeat(lambda lr=learner: lr.grpo_step("decomposer", items), 1, warmup=0)["median"])
        ratio.append(secs["deepspeed"][-1] / secs["torch"][-1])
    return {"ratio": summary(ratio), "deepspeed_step_s": summary(secs["deepspeed"]),
            "torch_step_s": summary(secs["torch"]), "params": sum(p.numel() for p in ds.engines["decomposer"].module.parameters()),
            "items": len(items), "tokens": sum(len(it.token_ids) for it in items)}


def sync_times(cfg: Config, policy_dir: str, repeats: int, workers: list | None = None) -> dict:
    """Seconds of the configured sync of one policy's weights to the rollout workers: `workers` (holding a
    decomposer of `policy_dir`'s shape), else `train.rollout_workers` fresh ones holding `policy_dir`."""
    own = [] if workers else [RolloutWorker.options(**cfg.train.rollout.options()).remote(
        cfg.model_dump_json(), dict.fromkeys(POLICIES, policy_dir), None, [], i) for i in range(cfg.train.rollout_workers)]
    workers = workers or own
    try:
        sync = make_sync(cfg.train.weight_sync, None, workers, POLICIES, cfg.train.sync_timeout_s, cfg.train.sync_backend)
        state = PolicyLM.from_pretrained(policy_dir, device="cpu").model.state_dict()
        secs = []
        for version in range(1, repeats + 2):  # the first push is the warm-up
            state = {k: v + 1e-3 if v.is_floating_point() else v for k, v in state.items()}  # new weights each time
            published = {"decomposer": WeightRef(version, ray.put(state), state_checksum(state))}
            secs.append(sync.push(published, ["decomposer"]))
        return {**summary(secs[1:]), "params": sum(v.numel() for v in state.values()), "workers": len(workers)}
    finally:
        for w in own:
            ray.kill(w)


def measure(ctx: PerfContext) -> dict:
    ray_up()
    cfg = ctx.cfg
    torch.set_num_threads(1)  # as the Learner actor runs under Ray on its CPU share
    repeats = 1 if ctx.quick else 5
    demo_dir = router_dirs(cfg)[0]["decomposer"]
    tokenizer = PolicyLM.from_pretrained(demo_dir, device="cpu").tokenizer
    n_items = 16 if ctx.quick else cfg.train.queries_per_step * cfg.train.group_size
    step: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {"demo": demo_dir}
        if not ctx.quick:  # quick: the demo size alone (each size starts rollout workers of its own)
            for label, shape in SHAPES.items():
                dirs[label] = sized_policy(tokenizer, shape, Path(tmp) / label)
        step["demo"] = step_ratio(cfg, demo_dir, grpo_items(cfg, tokenizer, n_items), repeats)
        if not ctx.quick:  # a smaller batch at 10M: the step is ~500x the demo's compute per item
            step["10M"] = step_ratio(cfg, dirs["10M"], grpo_items(cfg, tokenizer, 32), repeats)
            step["targets"] = {"ratio": "<= 1.15"}
        sync: dict = {"kind": cfg.train.weight_sync}
        for label, path in dirs.items():  # the demo size: the run's rollout workers when a module started them
            workers = shared_workers(ctx, cfg.train.rollout_workers) if label == "demo" and "workers" in ctx.actors else None
            sync[label] = sync_times(cfg, path, 1 if ctx.quick else 5, workers)
    rollout_s = ctx.shared.get("rollout_step_s")
    learner_s = step["demo"]["deepspeed_step_s"]["median"]
    sync["step_basis"] = {"rollout_s": rollout_s, "learner_s": learner_s,
                          "note": "rollout: the rollout benchmark's 2-worker step (None: it did not run); "
                                  "learner: the demo-size DeepSpeed step measured here"}
    if rollout_s is not None:
        for label in dirs:
            s = sync[label]["median"]
            sync[label]["share_of_step"] = s / (s + rollout_s + learner_s)
    return {"deepspeed_step_ratio": step, "weight_sync": sync}
