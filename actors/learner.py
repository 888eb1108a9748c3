"""`Learner`: a Ray actor owning one DeepSpeed engine per router policy (decomposer, allocator), a
frozen reference copy of each for the KL term, SFT and GRPO steps, weights for the samplers, and
checkpoints (weights, optimizer, RNG, step, phase and the driver's state)."""
from __future__ import annotations

import copy
import json
import os
import random
import socket
from pathlib import Path

import ray
import torch

from actors.weight_sync import WeightGroupMember, state_checksum
from core.config import Config
from core.types import TrainItem
from policies.grpo import grpo_loss, pad_sequences
from policies.policy_lm import PolicyLM
from policies.router import ActionSpace

POLICIES = ("decomposer", "allocator")


def init_distributed_env() -> None:
    """DeepSpeed needs a (single-process) process group; on CPU it uses gloo, no MPI."""
    for k, v in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(k, v)
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])


def ds_config(cfg: Config, lr: float, total_steps: int | None = None) -> dict:
    """DeepSpeed config; with `total_steps` the learning rate warms up linearly, then decays on a cosine."""
    schedule = {"scheduler": {"type": "WarmupCosineLR", "params": {
        "total_num_steps": total_steps, "warmup_num_steps": max(1, min(cfg.train.sft_warmup_steps, total_steps // 2)),
        "warmup_type": "linear", "cos_min_ratio": 0.0}}} if total_steps else {}
    return {
        "train_micro_batch_size_per_gpu": cfg.train.sft_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": cfg.train.weight_decay,
                                                   "torch_adam": True}},
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "steps_per_print": 10**9,
        **schedule,
    }


class LearnerImpl(WeightGroupMember):
    def __init__(self, cfg_json: str, init_dirs: dict[str, str], model_ids: list[str], lr: float | dict[str, float],
                 total_steps: dict[str, int] | None = None):
        """`lr`: one for both policies or one per policy. `total_steps` per policy: a warmup-cosine
        schedule over that many steps (SFT); else a constant lr."""
        import deepspeed  # lazy: heavy; only the learner process needs it

        self.cfg = Config.model_validate_json(cfg_json)
        init_distributed_env()
        if not torch.cuda.is_available():  # skip the JIT build of a shared-memory comm op (CPU)
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        torch.manual_seed(self.cfg.seed)
        self.model_ids = model_ids
        self.engines, self.refs, self.policies = {}, {}, {}
        lrs = lr if isinstance(lr, dict) else dict.fromkeys(POLICIES, lr)
        for name in POLICIES:
            lm = PolicyLM.from_pretrained(init_dirs[name])
            self.refs[name] = copy.deepcopy(lm.model).eval().requires_grad_(False)
            config = ds_config(self.cfg, lrs[name], (total_steps or {}).get(name))
            engine, *_ = deepspeed.initialize(model=lm.model, config=config,
                                              model_parameters=[p for p in lm.model.parameters() if p.requires_grad])
            self.engines[name] = engine
            self.policies[name] = PolicyLM(engine.module, lm.tokenizer)
        self.actions = ActionSpace(self.cfg.router.templates, model_ids)
        self.versions = dict.fromkeys(POLICIES, 0)  # updates per policy: the version samplers must hold
        self.state: dict = {}  # the driver's resumable state (its step, cost_ref, W&B run id, ...)

    # -- the policies' action distributions, as the sampler defines them (`ActionSpace`) ----------------
    def _lm(self, name: str, model) -> PolicyLM:
        return PolicyLM(model, self.policies[name].tokenizer)

    def _tier_logprobs(self, model, prompts: list[str], temperature: float) -> torch.Tensor:
        return self.actions.tier_logprobs(self._lm("allocator", model), prompts, len(self.model_ids), temperature)

    def _logprobs(self, name: str, model, items: list[TrainItem]) -> list[torch.Tensor]:
        """Logprobs of the items' sampled actions at the sampling temperature (`train.temperature`)."""
        t = self.cfg.train.temperature
        prompts = [it.prompt for it in items]
        if name == "decomposer":
            return self.actions.decomposition_logprobs(self._lm(name, model), prompts, [it.token_ids for it in items], t)
        logp = self._tier_logprobs(model, prompts, t)
        return [logp[i, it.tier].view(1) for i, it in enumerate(items)]

    # -- training steps --------------------------------------------------------------------------------
    def sft_step(self, name: str, prompts: list[str], targets: list[list[int]]) -> dict:
        """Cross-entropy on the target tokens (label smoothing for the allocator's tier choice)."""
        engine = self.engines[name]
        engine.train()
        if name == "allocator":
            logp = self._tier_logprobs(engine.module, prompts, 1.0)
            tiers = torch.tensor([t[0] for t in targets])
            loss = torch.nn.functional.nll_loss(logp, tiers) * (1 - self.cfg.train.label_smoothing) \
                - logp.mean(-1).mean() * self.cfg.train.label_smoothing
            acc = float((logp.argmax(-1) == tiers).float().mean())
        else:
            lps = self.actions.decomposition_logprobs(self._lm(name, engine.module), prompts, targets, 1.0)
            lp, mask = pad_sequences(lps)
            loss = -(lp * mask).sum() / mask.sum()
            acc = float(torch.stack([(x > -0.693).all() for x in lps]).float().mean())  # every token p > 0.5
        engine.backward(loss)
        engine.step()
        return {"loss": float(loss.detach()), "acc": acc}

    def grpo_step(self, name: str, items: list[TrainItem]) -> dict:
        """One GRPO update of `name` on the sampled items of its phase."""
        engine = self.engines[name]
        engine.train()
        new = self._logprobs(name, engine.module, items)
        with torch.no_grad():
            ref = self._logprobs(name, self.refs[name], items)
        logp, mask = pad_sequences(new)
        ref_lp, _ = pad_sequences(ref)
        old, _ = pad_sequences([torch.tensor(it.old_logprobs, dtype=torch.float32) for it in items])
        adv = torch.tensor([[it.advantage] for it in items], dtype=torch.float32)
        loss, stats = grpo_loss(logp, old, ref_lp, adv, mask, clip=self.cfg.train.clip,
                                kl_coef=self.cfg.train.kl_coef)
        # learner vs sampler logprobs of the same tokens, before this update: stale weights show here
        stats["sampler_gap"] = float(((logp.detach() - old).abs() * mask).sum() / mask.sum())
        engine.backward(loss)
        engine.step()
        self.versions[name] += 1
        stats["version"] = self.versions[name]
        return stats

    def logprobs(self, name: str, items: list[TrainItem]) -> list[list[float]]:
        """The current weights' logprobs of the items' actions, as `grpo_step` scores them."""
        with torch.no_grad():
            return [lp.tolist() for lp in self._logprobs(name, self.engines[name].module, items)]

    # -- weights and checkpoints -----------------------------------------------------------------------
    def weights(self, name: str) -> dict:
        return {k: v.detach().cpu().clone() for k, v in self.engines[name].module.state_dict().items()}

    def publish(self, name: str) -> tuple[dict, dict]:
        """(state dict, {version, checksum}); called with num_returns=2, so the state dict stays in the
        object store for the workers while the driver reads only the small second part."""
        state = self.weights(name)
        return state, {"version": self.versions[name], "checksum": state_checksum(state)}

    def send_weights(self, name: str) -> None:
        """Broadcast `name`'s weights to the rollout workers' weight group (CollectiveSync)."""
        self._broadcast_state(self.engines[name].module.state_dict(), source=True)

    def save_pretrained(self, out_dir: str) -> None:
        for name in POLICIES:
            self.policies[name].save(Path(out_dir) / name)

    def set_state(self, state: dict) -> None:
        self.state = state

    def save_checkpoint(self, ckpt_dir: str) -> str:
        """DeepSpeed's checkpoint of each engine, RNG states, versions and the driver's state in `ckpt_dir`."""
        tag = "ckpt"
        for name, engine in self.engines.items():
            engine.save_checkpoint(str(Path(ckpt_dir) / name), tag=tag)
        meta = {"versions": self.versions, "tag": tag, "state": self.state}
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()}, Path(ckpt_dir) / "rng.pt")
        (Path(ckpt_dir) / "learner.json").write_text(json.dumps(meta, indent=2))
        return tag

    def load_checkpoint(self, ckpt_dir: str) -> dict:
        meta = json.loads((Path(ckpt_dir) / "learner.json").read_text())
        for name, engine in self.engines.items():
            engine.load_checkpoint(str(Path(ckpt_dir) / name), tag=meta["tag"])
        rng = torch.load(Path(ckpt_dir) / "rng.pt", weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        self.versions, self.state = meta["versions"], meta["state"]
        return meta

    def optimizer_state_digest(self) -> dict[str, float]:
        """Per policy: Adam's step count, number of state tensors and sum of |exp_avg| (to check that a
        resumed optimizer is the saved one)."""
        out = {}
        for name, engine in self.engines.items():
            inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
            states = [s for s in inner.state.values() if "exp_avg" in s]
            out[f"{name}.tensors"] = float(len(states))
            out[f"{name}.exp_avg_abs_sum"] = float(sum(s["exp_avg"].abs().sum() for s in states))
            out[f"{name}.adam_step"] = float(states[0]["step"]) if states else 0.0
        return out


Learner = ray.remote(num_cpus=0.5, max_restarts=0)(LearnerImpl)
