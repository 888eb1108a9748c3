"""`RolloutWorker`: a Ray actor holding sampler copies of both router policies; it runs the chain
(`policies.reason`) G times per query against the shared `ModelPool` and returns the trajectories,
with the sampled tokens' logprobs, for GRPO."""
from __future__ import annotations

import asyncio

import ray
import torch

from actors.weight_sync import WeightGroupMember
from benchmarks.tasks import build_world
from core.config import Config
from policies.policy_lm import PolicyLM
from policies.reason import Trajectory, areason_batch
from policies.router import PolicyRouter


class RolloutWorkerImpl(WeightGroupMember):
    def __init__(self, cfg_json: str, init_dirs: dict[str, str], pool, model_ids: list[str], seed: int):
        torch.set_num_threads(1)
        self.cfg = Config.model_validate_json(cfg_json)
        world = build_world(self.cfg)
        self.tasks = world.tasks
        self.pool, self.model_ids, self.seed = pool, model_ids, seed
        self.policies = {name: PolicyLM.from_pretrained(path) for name, path in init_dirs.items()}
        self.version = {name: 0 for name in self.policies}

    def set_weights(self, name: str, state: dict, version: int) -> int:
        self.policies[name].model.load_state_dict(state)
        self.version[name] = version
        return version

    def receive_weights(self, name: str, version: int) -> int:
        """Receive `name`'s weights from the learner's broadcast (CollectiveSync)."""
        self._broadcast_state(self.policies[name].model.state_dict(), source=False)
        self.version[name] = version
        return version

    def weights_digest(self, name: str) -> float:
        return float(sum(p.detach().double().abs().sum() for p in self.policies[name].model.parameters()))

    def rollout(self, task_name: str, examples: list, group_size: int, phase: str, step: int) -> list[Trajectory]:
        """G samples per example (consecutive in the result). The trained policy of `phase` samples at
        the training temperature; the frozen one decodes greedily, as it will when deployed, so a
        group's reward spread comes from the trained policy's choices alone."""
        t = self.cfg.train.temperature
        router = PolicyRouter(
            self.policies["decomposer"], self.policies["allocator"], self.model_ids,
            templates=self.cfg.router.templates, temperature=t if phase == "allocator" else 0.0,
            max_steps=self.cfg.reason.max_steps, max_tokens=self.cfg.reason.decompose_max_tokens,
            seed=self.seed * 100_003 + step, label="policy", decompose_temperature=t if phase == "decomposer" else 0.0)
        reps = [ex for ex in examples for _ in range(group_size)]
        return asyncio.run(areason_batch(reps, router, self.pool, self.tasks[task_name], self.cfg.reason,
                                         self.model_ids))


RolloutWorker = ray.remote(num_cpus=0.25, max_restarts=2, max_task_retries=2)(RolloutWorkerImpl)
