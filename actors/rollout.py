"""`RolloutWorker`: a Ray actor holding sampler copies of the router policies (both, or the allocator
alone, which then routes each query's gold decomposition); it runs the chain (`policies.reason`) G times
per query against the shared `ModelPool` and returns the trajectories, with the sampled tokens'
logprobs, for GRPO.

Every rollout call carries the learner's published weights (`WeightRef`: version, object-store
reference, checksum) of both policies; a worker whose versions differ loads them before it samples.
So a worker that Ray restarted (and re-ran the call on) never samples with its start-up weights.

`train.sampler` says how the worker samples: `hf` holds a `PolicyLM` per policy; `vllm` holds a
`VLLMPolicy` per policy (`actors.policy_engine`: a vLLM engine actor of the worker's own, started with
`train.vllm.python`), which `PolicyRouter` drives through the same interface and which reloads the
published weights in place."""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import ray
import torch

from actors.placement import actor_device, where
from actors.policy_engine import VLLMPolicy
from actors.weight_sync import WeightGroupMember, WeightRef, check_loaded, state_checksum
from benchmarks.tasks import build_world
from core.config import Config
from core.storage import ensure_local
from policies.policy_lm import PolicyLM
from policies.reason import Trajectory, areason_batch
from policies.router import PolicyRouter


@dataclass
class RolloutResult:
    trajectories: list[Trajectory]
    weights: dict[str, tuple[int, str]]  # policy -> (version, checksum) the trajectories were sampled with
    instance: str  # changes when Ray restarts the worker
    reloaded: list[str] = field(default_factory=list)  # policies loaded because their version was stale


class RolloutWorkerImpl(WeightGroupMember):
    def __init__(self, cfg_json: str, init_dirs: dict[str, str], pool, model_ids: list[str], seed: int):
        torch.set_num_threads(1)
        self.cfg = Config.model_validate_json(cfg_json)
        self.tasks = build_world(self.cfg).tasks
        self.pool, self.model_ids, self.seed = pool, model_ids, seed
        self.policies = {name: self._policy(name, path) for name, path in init_dirs.items()}
        self.version = dict.fromkeys(self.policies, 0)
        self.checksum = {name: self._checksum(name) for name in self.policies}
        self.instance = uuid.uuid4().hex[:12]

    def _policy(self, name: str, path: str) -> PolicyLM | VLLMPolicy:
        if self.cfg.train.sampler == "vllm":  # the engines start concurrently; _checksum waits for them
            engine = self.cfg.train.vllm
            return VLLMPolicy(name, str(ensure_local(path)), engine.options(), engine.python, engine.engine_args)
        return PolicyLM.from_pretrained(ensure_local(path), device=actor_device(), lora=self.cfg.train.lora)

    def _checksum(self, name: str) -> str:
        policy = self.policies[name]
        if isinstance(policy, VLLMPolicy):
            return policy.weights()[1]
        return state_checksum(policy.model.state_dict())

    def _loaded(self, name: str, version: int) -> tuple[int, str]:
        self.version[name], self.checksum[name] = version, self._checksum(name)
        return version, self.checksum[name]

    def set_weights(self, name: str, state: dict, version: int) -> tuple[int, str]:
        """Load `name`'s published state dict; returns (version, checksum of what was loaded)."""
        policy = self.policies[name]
        if isinstance(policy, VLLMPolicy):
            policy.load_state(state, version)
        else:
            policy.model.load_state_dict(state)
        return self._loaded(name, version)

    def receive_weights(self, name: str, version: int) -> tuple[int, str]:
        """Receive `name`'s weights from the learner's broadcast (CollectiveSync)."""
        self._broadcast_state(self.policies[name].model.state_dict(), source=False)
        return self._loaded(name, version)

    def placement(self) -> dict:
        return {"instance": self.instance, **where()}

    def weights_report(self) -> dict[str, tuple[int, str]]:
        """Per policy: (version, checksum) of the weights this worker samples with."""
        return {name: (self.version[name], self.checksum[name]) for name in self.policies}

    async def ensure_weights(self, published: dict[str, WeightRef]) -> list[str]:
        """Load every published policy whose version this worker does not hold; returns their names. A
        call that finds another one loaded the version meanwhile loads nothing."""
        stale = [name for name, ref in published.items() if self.version[name] != ref.version]
        states = await asyncio.gather(*(published[name].state for name in stale))
        loaded = []
        for name, state in zip(stale, states):
            if self.version[name] != published[name].version:
                check_loaded(published, {name: self.set_weights(name, state, published[name].version)},
                             f"rollout worker {self.instance}")
                loaded.append(name)
        return loaded

    async def rollout(self, task_name: str, examples: list, group_size: int, phase: str, step: int,
                      published: dict[str, WeightRef]) -> RolloutResult:
        """G samples per example (consecutive in the result). The trained policy of `phase` samples at
        the training temperature; the frozen one decodes greedily, as it will when deployed, so a
        group's reward spread comes from the trained policy's choices alone. A worker without a
        decomposer runs each example's gold decomposition (one-step allocation: one gold step each).
        Calls run concurrently (an async actor): a step's jobs of several tasks on one worker interleave
        their pool calls; each call samples with its own seeded router, so results do not depend on the
        interleaving."""
        reloaded = await self.ensure_weights(published)
        t = self.cfg.train.temperature
        router = PolicyRouter(
            self.policies.get("decomposer"), self.policies["allocator"], self.model_ids,
            templates=self.cfg.router.templates, temperature=t if phase == "allocator" else 0.0,
            max_steps=self.cfg.reason.max_steps, max_tokens=self.cfg.reason.decompose_max_tokens,
            seed=self.seed * 100_003 + step, label="policy", decompose_temperature=t if phase == "decomposer" else 0.0)
        reps = [ex for ex in examples for _ in range(group_size)]
        trajs = await areason_batch(reps, router, self.pool, self.tasks[task_name], self.cfg.reason, self.model_ids)
        return RolloutResult(trajs, self.weights_report(), self.instance, reloaded)


RolloutWorker = ray.remote(num_cpus=0.25, max_restarts=2, max_task_retries=2)(RolloutWorkerImpl)
