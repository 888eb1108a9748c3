"""One-step allocation GRPO: the allocator alone, trained on the RLlib baseline's environment (each train
subtask of `pipelines.subtask_table` run alone, through the chain without review, on the tier the
allocator samples), with the training job's actors: `RolloutWorker`s sample the allocator and call the
pool, the DeepSpeed `LearnerGroup` takes the GRPO step, and the workers load the published weights
before the next step's rollouts. The reward is R2's (`policies.reward`): correct - lam * cost / cost_ref
+ beta (the gold one-step decomposition is always well formed).

The perf suite's `peer_trl` figure times it against TRL's GRPOTrainer on the same problem."""
from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import replace

import ray
import torch

from actors.learner import LearnerGroup
from actors.rollout import RolloutWorker
from actors.weight_sync import WeightRef
from benchmarks.tasks import Example, Task
from core.config import Config
from pipelines.labels import PlannedRouter
from pipelines.subtask_table import TRAIN_SAMPLE_SEED, subtasks
from policies.grpo import training_items
from policies.policy_lm import PolicyLM
from policies.reason import Trajectory, areason_batch
from policies.reward import reward
from policies.router import PolicyRouter


def one_step_config(cfg: Config) -> Config:
    """`cfg` with the procedural review off (no escalation): a subtask runs once, on the chosen tier."""
    return cfg.model_copy(update={"reason": cfg.reason.model_copy(update={"max_escalations": 0})})


def one_step_problems(tasks: dict[str, Task], split: str, n: int, seed: int) -> list[tuple[str, Example]]:
    """`n` distinct subtasks (task name, one-step example) of `split`, the tasks taking turns, each task's
    in the order of a seeded shuffle of its queries."""
    if n < 1:
        raise ValueError(f"want at least one subtask, got n={n}")
    per_task = {}
    for name, task in tasks.items():
        queries = task.split(split)
        queries = random.Random(seed + TRAIN_SAMPLE_SEED).sample(queries, len(queries))  # a new list: splits may be cached
        per_task[name] = subtasks(queries[: n], task)  # a query gives at least one subtask
    out = [(name, subs[k]) for k in range(n) for name, subs in per_task.items() if k < len(subs)]
    if len(out) < n:
        raise ValueError(f"the {split} split has {len(out)} subtasks; {n} wanted")
    return out[:n]


def trajectory_reward(cfg: Config, t: Trajectory, cost_ref: dict[str, float]) -> float:
    return reward(t.correct, t.cost_usd, t.format_ok, cfg.reward.lam, cfg.reward.beta,
                  cfg.reward.cost_ref or cost_ref[t.task])


def planned_rewards(cfg: Config, pool, model_ids: list[str], tasks: dict[str, Task],
                    calls: list[tuple[tuple[str, Example], int]], cost_ref: dict[str, float]) -> list[float]:
    """R2's reward of each call (one-step problem, tier): the subtask run once on that pool model through the
    chain without review (real pool calls), each task's calls in one batched chain run."""
    one_step = one_step_config(cfg)
    by_task: dict[str, list[tuple[int, Example, int]]] = {}
    for i, ((task, ex), tier) in enumerate(calls):
        by_task.setdefault(task, []).append((i, replace(ex, id=f"{ex.id}#{i}"), tier))  # a problem may recur

    async def run() -> list[list[Trajectory]]:
        return await asyncio.gather(*(
            areason_batch([ex for _, ex, _ in rows], PlannedRouter({ex.id: [ex.query] for _, ex, _ in rows},
                                                                   {ex.id: [tier] for _, ex, tier in rows}),
                          pool, tasks[task], one_step.reason, model_ids, review=False)
            for task, rows in by_task.items()))

    out = [0.0] * len(calls)
    for rows, trajs in zip(by_task.values(), asyncio.run(run())):
        for (i, _, _), t in zip(rows, trajs):
            out[i] = trajectory_reward(one_step, t, cost_ref)
    return out


class HeldOutRewards:
    """One-step `problems` with the reward of every pool tier on each, from one pool call per (problem, tier)
    made here, so that any allocator is scored without further calls: `score(lm)` gives the mean reward of
    its greedy tier and its expected reward when sampling tiers at the training temperature (the quantity
    GRPO raises; exact, not sampled)."""

    def __init__(self, cfg: Config, pool, model_ids: list[str], tasks: dict[str, Task],
                 problems: list[tuple[str, Example]], cost_ref: dict[str, float]):
        self.cfg, self.model_ids, self.problems = cfg, model_ids, problems
        n = len(model_ids)
        rewards = planned_rewards(cfg, pool, model_ids, tasks, [(p, k) for p in problems for k in range(n)], cost_ref)
        self.table = torch.tensor(rewards, dtype=torch.float64).view(len(problems), n)

    def score(self, allocator: PolicyLM) -> dict[str, float]:
        router = PolicyRouter(None, allocator, self.model_ids, templates=self.cfg.router.templates,
                              temperature=self.cfg.train.temperature)
        decisions = router.allocate([ex.query for _, ex in self.problems], [ex for _, ex in self.problems],
                                    len(self.model_ids))
        logp = torch.tensor([d.tier_logprobs for d in decisions], dtype=torch.float64)
        greedy = self.table.gather(1, logp.argmax(-1, keepdim=True)).mean()
        return {"greedy": float(greedy), "expected": float((logp.exp() * self.table).sum(-1).mean())}


class AllocatorGRPO:
    """The allocator's GRPO on one-step problems: `step(batch)` samples G tiers per subtask, calls the pool,
    and takes one learner step on the groups with reward spread."""

    def __init__(self, cfg: Config, pool, model_ids: list[str], allocator_dir: str, cost_ref: dict[str, float]):
        self.cfg, self.pool, self.model_ids, self.cost_ref = one_step_config(cfg), pool, model_ids, cost_ref
        dirs = {"allocator": str(allocator_dir)}
        self.learner = LearnerGroup(self.cfg, dirs, model_ids, self.cfg.train.grpo_lr)
        cfg_json = self.cfg.model_dump_json()
        self.workers = [RolloutWorker.options(**self.cfg.train.rollout.options()).remote(
                            cfg_json, dirs, pool, model_ids, 1000 * self.cfg.train.seed + i)
                        for i in range(self.cfg.train.rollout_workers)]
        self.published = self._publish()
        self.steps = 0

    def _publish(self) -> dict[str, WeightRef]:
        state, meta = self.learner.publish("allocator")
        return {"allocator": WeightRef(meta["version"], state, meta["checksum"])}

    def _launch(self, batch: list[tuple[str, Example]], step: int) -> tuple[list, list, list, int]:
        """Start G rollouts per subtask with the published weights (the samplers seeded by `step`), each
        task's subtasks dealt round the workers; (batch, jobs, refs, the weights' version) for `_collect`."""
        g, n = self.cfg.train.group_size, len(self.workers)
        jobs = [(name, part) for name in dict.fromkeys(t for t, _ in batch)
                for exs in [[ex for t, ex in batch if t == name]] for i in range(n) if (part := exs[i::n])]
        refs = [self.workers[k % n].rollout.remote(name, exs, g, "allocator", step, self.published)
                for k, (name, exs) in enumerate(jobs)]
        return batch, jobs, refs, self.published["allocator"].version

    def _collect(self, launched: tuple[list, list, list, int]) -> list[Trajectory]:
        """The launched rollouts' trajectories, G per subtask, in batch order."""
        batch, jobs, refs, _ = launched
        g, groups = self.cfg.train.group_size, {}
        for (name, exs), res in zip(jobs, ray.get(refs)):
            for i, ex in enumerate(exs):
                groups[name, ex.id] = res.trajectories[i * g: (i + 1) * g]
        return [t for name, ex in batch for t in groups[name, ex.id]]

    def rollouts(self, batch: list[tuple[str, Example]]) -> list[Trajectory]:
        """G trajectories per subtask, in batch order, sampled with the published weights."""
        return self._collect(self._launch(batch, self.steps))

    def train(self, batches: list[list[tuple[str, Example]]]) -> Iterator[dict]:
        """One GRPO step per batch (task name, one-step example), in order; yields each step's reward,
        accuracy and learner stats (`skipped`: no group had reward spread, so no update). With
        `train.pipelined` the next batch's rollouts run during this step's update, sampled with the
        weights before it (one step off-policy; the ratio is against the sampler's log-probabilities)."""
        first = self.steps
        pending = self._launch(batches[0], first) if batches else None
        for k in range(len(batches)):
            trajs, sampled = self._collect(pending), pending[3]
            rewards = [trajectory_reward(self.cfg, t, self.cost_ref) for t in trajs]
            items = training_items(trajs, rewards, self.cfg.train.group_size, "allocator")
            more = k + 1 < len(batches)
            if more and self.cfg.train.pipelined:
                pending = self._launch(batches[k + 1], first + k + 1)
            stats = self.learner.grpo_step("allocator", items) if items else {"skipped": 1}
            if items:
                self.published = self._publish()
            self.steps += 1
            if more and not self.cfg.train.pipelined:
                pending = self._launch(batches[k + 1], first + k + 1)
            yield {"reward": sum(rewards) / len(rewards), "accuracy": sum(t.correct for t in trajs) / len(trajs),
                   "cost_usd": sum(t.cost_usd for t in trajs) / len(trajs), "items": len(items),
                   "tiers": torch.bincount(torch.tensor([t.steps[0].allocation.tier for t in trajs]),
                                           minlength=len(self.model_ids)).tolist(),
                   "sampled_version": sampled, **stats}

    def step(self, batch: list[tuple[str, Example]]) -> dict:
        """One GRPO step on `batch` (synchronous: sampled with the current weights)."""
        return next(self.train([batch]))

    def allocator(self, init_dir: str) -> PolicyLM:
        """The allocator `init_dir` holds, with the learner's current weights (on the CPU)."""
        lm = PolicyLM.from_pretrained(init_dir, device="cpu")
        lm.model.load_state_dict(ray.get(self.published["allocator"].state))
        return lm

    def close(self) -> None:
        for w in self.workers:
            ray.kill(w)
        self.learner.kill()
