"""GRPO training throughput, three arms of `pipelines.train.Trainer` on the config's world, one pool, the
same seed, steps and settings, each from the run's SFT router, in its own run folder under `<out>/training/`:

- sync: the synchronous trainer;
- pipelined: `train.pipelined` (step t+1's rollouts in flight during step t's update);
- dynamic: `train.dynamic_sampling` (further rounds of queries until a batch of groups with reward spread).

Figures:
- `pipelined_speedup`: GRPO steps/s pipelined over sync (steps over the time from `fit` to the end of the
  last step, the final checkpoint and router save left out), the median over `PAIRS` pairs of runs (a
  step's rollouts vary by tens of percent from run to run, about the size of the possible gain);
  `pipelined_reward`: each arm's mean reward
  over its last alternation cycle (2 x `train.alternate_every` steps; the pipelined arm's rollouts of a
  step use weights one update older);
- `pipelined_bound`: the best speedup the sync run's phase times allow. A pipelined step syncs the
  weights into the samplers (which then sample) while the learner waits for its batch, then overlaps the
  next rollouts with the update, so its best time is sync + max(rollout, learner):
  bound = sum(rollout + learner + sync) / sum(sync + max(rollout, learner)) over the sync run's steps;
  `pipelined_meets_bound`: speedup - 1 >= 0.8 (bound - 1). Overlap only fills idle cores, so the sync
  arm's average busy cores B (every process of the machine) give a second bound, `pipelined_cpu_bound` =
  cores / B; `pipelined_meets_cpu_bound` checks against the smaller of the two. A change of the machine's
  load between arms shows in the speedup (one above the bound is such noise);
- `signal_per_second`: groups with reward spread trained on per rollout second, sync and dynamic
  (`signal_per_step`: per update; `dynamic_rounds_mean`: sampling rounds per step), and
  `dynamic_reward`: the reward each reached by the same wall time (the sync run's: the dynamic arm's
  steps done by then).
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path

from rich.console import Console

from actors.runtime import pool_session
from benchmarks.perf.common import CpuMeter, PerfContext, router_dirs, shared_pool, summary
from core.config import Config, DynamicSamplingConfig
from pipelines.runs import COST_REF
from pipelines.train import Trainer

# (steps per arm, train settings over the config's) for the CI smoke run and the full measurement; a full arm
# runs 36 steps (~15 s on 2 cores): with 12, the pairs' ratios spread over 0.96-1.07, wider than the gain at stake
QUICK = (4, {"queries_per_step": 8, "group_size": 2, "alternate_every": 2, "rollout_workers": 1, "cost_ref_queries": 8})
FULL = (36, {"alternate_every": 2})
MAX_ROUNDS = 3
PAIRS = 3  # sync/pipelined pairs of a full run


class StepClock:
    """A `progress` for `Trainer.fit` that notes when each step ends."""

    def __init__(self):
        self.ends: list[float] = []

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, *args, **kwargs) -> None:
        self.ends.append(time.perf_counter())


def arm_config(base: Config, run_dir: Path, shared: Path, train: dict) -> Config:
    """`base` writing to `run_dir`, which gets a copy of base's SFT router (or, without one, of the policies
    training starts from: `common.router_dirs`) as the router GRPO starts from, and the shared `cost_ref`."""
    shutil.rmtree(run_dir, ignore_errors=True)
    for policy, path in router_dirs(base)[0].items():
        shutil.copytree(path, run_dir / "router" / "sft" / policy)
    for ref in (shared / COST_REF, base.run_path / COST_REF):  # reused when its basis matches, else recomputed
        if ref.exists():
            shutil.copy(ref, run_dir / COST_REF)
            break
    return base.model_copy(update={
        "run_dir": str(run_dir), "zoo": base.zoo.model_copy(update={"dir": str(base.zoo_dir.resolve())}),
        "wandb": base.wandb.model_copy(update={"mode": "disabled"}),
        "train": base.train.model_copy(update={"seed": 0, "checkpoint_every": 10**6, **train})})


def run_arm(base: Config, out: Path, name: str, pool, steps: int, train: dict) -> tuple[list[dict], list[float], CpuMeter]:
    """The arm's step records, the seconds from `fit` to the end of each step, and the machine's CPU use
    over `fit`."""
    cfg = arm_config(base, out / name, out, train)
    trainer = Trainer(cfg, Console(quiet=True), pool=pool)
    try:
        clock = StepClock()
        start = time.perf_counter()
        with CpuMeter() as cpu:
            history = trainer.fit(steps, progress=clock)
    finally:
        trainer.close()
    if (cfg.run_path / COST_REF).exists():
        shutil.copy(cfg.run_path / COST_REF, out / COST_REF)
    return history, [t - start for t in clock.ends], cpu


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def pipeline_bound(history: list[dict]) -> float:
    total = sum(h["time_rollout_s"] + h["time_learner_s"] + h["time_sync_s"] for h in history)
    return total / sum(h["time_sync_s"] + max(h["time_rollout_s"], h["time_learner_s"]) for h in history)


def signal_groups(h: dict, group_size: int) -> int:
    """Groups with reward spread the step trained on."""
    if "groups_kept" in h:
        return h["groups_kept"]
    return round(h["groups_with_signal"] * h["trajectories"] / group_size)


def measure(ctx: PerfContext) -> dict:
    steps, train = QUICK if ctx.quick else FULL
    window = 2 * train.get("alternate_every", ctx.cfg.train.alternate_every)
    out = ctx.out / "training"
    out.mkdir(parents=True, exist_ok=True)
    arms = {"sync": {}, "pipelined": {"pipelined": True},
            "dynamic": {"dynamic_sampling": DynamicSamplingConfig(enabled=True, max_rounds=MAX_ROUNDS)}}
    # sync and pipelined run PAIRS times, the order alternating from pair to pair (a drift of the machine's
    # load between arms cancels); the first of each arm is the reported run
    order = [("sync", "pipelined")[:: 1 if k % 2 == 0 else -1] for k in range(1 if ctx.quick else PAIRS)]
    runs, walls = {}, {"sync": [], "pipelined": []}
    ctx.release_workers()  # this module's trainer starts workers of its own
    with pool_session(ctx.cfg, shared_pool(ctx)[0]) as (pool, _):
        for k, pair in enumerate(order):
            for name in pair:
                ctx.console.print(f"training arm {name} (pair {k + 1}/{len(order)}): {steps} steps")
                run = run_arm(ctx.cfg, out, name, pool, steps, {**train, **arms[name]})
                runs.setdefault(name, run)
                walls[name].append(run[1][-1])
        ctx.console.print(f"training arm dynamic: {steps} steps")
        runs["dynamic"] = run_arm(ctx.cfg, out, "dynamic", pool, steps, {**train, **arms["dynamic"]})
    g = train.get("group_size", ctx.cfg.train.group_size)
    (sync, t_sync, cpu_sync), (pipe, _, cpu_pipe), (dyn, t_dyn, _) = runs["sync"], runs["pipelined"], runs["dynamic"]
    ratios = [s / p for s, p in zip(walls["sync"], walls["pipelined"])]  # equal step counts: ratios of steps/s
    speedup = statistics.median(ratios)
    bound = pipeline_bound(sync)
    # overlap only fills idle cores: the sync arm's busy cores on average cap any speedup at cores / that
    cpu_bound = os.cpu_count() / cpu_sync.cores
    lags = [h["learner_versions"][p] - h["sampled_versions"][p] for h in pipe for p in h["learner_versions"]]
    by_then = [h for h, t in zip(dyn, t_dyn) if t <= t_sync[-1]] or dyn[:1]  # dynamic steps done in sync's time
    result = {
        "pipelined_speedup": speedup,
        "pipelined_speedup_pairs": summary(ratios),
        "pipelined_steps_per_s": {"sync": steps / statistics.median(walls["sync"]),
                                  "pipelined": steps / statistics.median(walls["pipelined"])},
        "pipelined_reward": {"sync": mean([h["reward"] for h in sync[-window:]]),
                             "pipelined": mean([h["reward"] for h in pipe[-window:]])},
        "pipelined_bound": bound,
        "pipelined_meets_bound": speedup - 1 >= 0.8 * (bound - 1),
        "pipelined_cpu_bound": cpu_bound,
        "busy_cores": {"sync": cpu_sync.cores, "pipelined": cpu_pipe.cores, "machine_cpus": os.cpu_count()},
        "pipelined_meets_cpu_bound": speedup - 1 >= 0.8 * (min(bound, cpu_bound) - 1),
        "pipelined_max_lag": max(lags),
        "signal_per_second": {
            "sync": sum(signal_groups(h, g) for h in sync) / sum(h["time_rollout_s"] for h in sync),
            "dynamic": sum(signal_groups(h, g) for h in dyn) / sum(h["time_rollout_s"] for h in dyn)},
        "signal_per_step": {"sync": mean([signal_groups(h, g) for h in sync]),
                            "dynamic": mean([signal_groups(h, g) for h in dyn])},
        "dynamic_reward": {"sync": mean([h["reward"] for h in sync[-window:]]),
                           "dynamic": mean([h["reward"] for h in by_then[-window:]]),
                           "dynamic_steps": len(by_then), "wall_s": t_sync[-1]},
        "dynamic_rounds_mean": mean([h["sampling_rounds"] for h in dyn]),
    }
    (out / "arms.json").write_text(json.dumps({k: {"history": h, "step_end_s": t} for k, (h, t, _) in runs.items()},
                                              indent=2, default=str))
    return result
