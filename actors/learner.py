"""The learner: `LearnerGroup` of `train.learner.ranks` DeepSpeed data-parallel ranks, one Ray actor
(`Learner`) each, in one torch.distributed group (gloo on CPU, NCCL on GPU; the address is rank 0's),
placed together by a placement group. Each rank owns one DeepSpeed engine per router policy it is given
(decomposer and allocator; the allocator alone for one-step allocation) and a frozen reference copy of
each for the KL term; the group splits each batch into shards, and every rank normalises its loss by
the global token (or example) count over the number of ranks, so that DeepSpeed's averaged gradient is
the global batch's mean whatever each shard holds. Rank 0 publishes weights; checkpoints are
DeepSpeed's, one shard per rank (ZeRO partitions the optimizer state by rank, so a checkpoint resumes
with the rank count that wrote it)."""
from __future__ import annotations

import copy
import json
import os
import random
import socket
from pathlib import Path

import ray
import torch
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.placement import actor_device, placed_group, remove_placement_group, where
from actors.weight_sync import WeightGroupMember, state_checksum
from core.checkpoints import list_files
from core.config import Config
from core.storage import ensure_local, pull_staged, push_staged
from core.types import TrainItem
from policies.grpo import grpo_loss, pad_sequences
from policies.policy_lm import PolicyLM
from policies.router import ActionSpace

POLICIES = ("decomposer", "allocator")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def init_distributed_env(rank: int = 0, world: int = 1, addr: str = "127.0.0.1", port: int | None = None) -> None:
    """The env DeepSpeed's process group is built from (no MPI): this rank, the world, rank 0's address.
    Each rank sees its own GPU as device 0 (Ray sets CUDA_VISIBLE_DEVICES), so LOCAL_RANK is 0."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": "0", "MASTER_ADDR": addr,
                       "MASTER_PORT": str(port or free_port())})


def ds_config(cfg: Config, lr: float, total_steps: int | None = None) -> dict:
    """DeepSpeed config; with `total_steps` the learning rate warms up linearly, then decays on a cosine."""
    schedule = {"scheduler": {"type": "WarmupCosineLR", "params": {
        "total_num_steps": total_steps, "warmup_num_steps": max(1, min(cfg.train.sft_warmup_steps, total_steps // 2)),
        "warmup_type": "linear", "cos_min_ratio": 0.0}}} if total_steps else {}
    return {
        "train_micro_batch_size_per_gpu": cfg.train.sft_batch,
        "gradient_accumulation_steps": 1,  # a step's micro-batches vary in number: the learner marks the last
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW", "params": {"lr": lr, "weight_decay": cfg.train.weight_decay,
                                                   "torch_adam": True}},
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "bf16": {"enabled": torch.cuda.is_available()},  # bf16 on GPU, fp32 on CPU
        "steps_per_print": 10**9,
        **schedule,
    }


class LearnerImpl(WeightGroupMember):
    """One rank of the learner group."""

    def __init__(self, cfg_json: str, init_dirs: dict[str, str], model_ids: list[str], lr: float | dict[str, float],
                 total_steps: dict[str, int] | None = None, rank: int = 0, world: int = 1):
        """`init_dirs`: the checkpoint of each policy this rank trains (a subset of `POLICIES`). `lr`: one
        for every policy or one per policy. `total_steps` per policy: a warmup-cosine schedule over that
        many steps (SFT); else a constant lr. A single rank sets up at once; ranks of a group set up
        together (`setup`) once rank 0's address is known."""
        if not init_dirs or set(init_dirs) - set(POLICIES):
            raise ValueError(f"learner policies {sorted(init_dirs)}: want some of {list(POLICIES)}")
        self.cfg = Config.model_validate_json(cfg_json)
        self.init_dirs, self.model_ids, self.total_steps = init_dirs, model_ids, total_steps or {}
        self.lrs = lr if isinstance(lr, dict) else dict.fromkeys(POLICIES, lr)
        self.rank, self.world = rank, world
        self.device = actor_device()
        if world == 1:
            self.setup("127.0.0.1", free_port())

    def address(self) -> tuple[str, int]:
        """Where rank 0 listens for the group's rendezvous."""
        return ray.util.get_node_ip_address(), free_port()

    def placement(self) -> dict:
        return {"rank": self.rank, **where()}

    def setup(self, addr: str, port: int) -> None:
        import deepspeed  # lazy: heavy; only the learner process needs it

        init_distributed_env(self.rank, self.world, addr, port)
        if self.device == "cpu":  # skip the JIT build of a shared-memory comm op (CPU)
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        torch.manual_seed(self.cfg.seed)
        self.engines, self.refs, self.policies = {}, {}, {}
        for name in self.init_dirs:
            lm = PolicyLM.from_pretrained(ensure_local(self.init_dirs[name]), device=self.device, lora=self.cfg.train.lora)
            self.refs[name] = copy.deepcopy(lm.model).eval().requires_grad_(False)
            config = ds_config(self.cfg, self.lrs[name], self.total_steps.get(name))
            engine, *_ = deepspeed.initialize(model=lm.model, config=config,
                                              model_parameters=[p for p in lm.model.parameters() if p.requires_grad])
            self.engines[name] = engine
            self.policies[name] = PolicyLM(engine.module, lm.tokenizer)
        self.actions = ActionSpace(self.cfg.router.templates, self.model_ids)
        self.versions = dict.fromkeys(self.engines, 0)  # updates per policy: the version samplers must hold
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

    # -- training steps (each rank: its shard; `denom`: the global count over the number of ranks) ------
    # A step runs its shard in micro-batches (`train.micro_batch` items each; `n_micro` of them when the
    # group sets the count, so that every rank runs as many backward passes), each loss divided by the
    # step's whole count, gradients accumulated, then one optimizer step. A rank with fewer items runs
    # its spare micro-batches on `filler` (an item of the batch) with weight 0: ZeRO-2 reduces gradients
    # in buckets during every backward, so every rank's backward must visit the parameters in the same
    # order, which only the same forward graph guarantees.
    def _micro(self, items: list, n_micro: int | None) -> list[slice]:
        size = self.cfg.train.micro_batch or max(1, len(items))
        n = n_micro or max(1, -(-len(items) // size))
        return [slice(min(i * size, len(items)), min((i + 1) * size, len(items))) for i in range(n)]

    def _accumulate(self, engine, items: list, n_micro: int | None, filler, loss_fn) -> dict[str, float]:
        """Backward `loss_fn(micro_batch) -> (loss, stats)` over the micro-batches, then one step; the sum
        of their stats."""
        engine.train()
        total: dict[str, float] = {}
        parts = self._micro(items, n_micro)
        for i, part in enumerate(parts):
            batch, weight = (items[part], 1.0) if items[part] else ([filler], 0.0) if filler is not None else ([], 0.0)
            if batch:
                loss, stats = loss_fn(batch)
                loss = loss * weight
                for k, v in stats.items():
                    total[k] = total.get(k, 0.0) + v * weight
            else:  # a single rank with nothing to learn from: still a step (zero gradient)
                loss = sum(p.sum() for p in engine.module.parameters() if p.requires_grad) * 0.0
            engine.set_gradient_accumulation_boundary(i == len(parts) - 1)  # ZeRO reduces at the last one
            engine.backward(loss, scale_wrt_gas=False)
        engine.step()
        return total

    def sft_step(self, name: str, prompts: list[str], targets: list[list[int]], denom: float | None = None,
                 n_micro: int | None = None, filler: tuple[str, list[int]] | None = None) -> dict:
        """Cross-entropy on the target tokens (label smoothing for the allocator's tier choice); the mean
        over this batch, or the sum over `denom` (a shard of a global batch)."""
        if denom is None:
            denom = len(targets) if name == "allocator" else sum(len(t) for t in targets)
        ls, model = self.cfg.train.label_smoothing, self.engines[name].module

        def loss_fn(batch: list[tuple[str, list[int]]]) -> tuple[torch.Tensor, dict]:
            p, t = [b[0] for b in batch], [b[1] for b in batch]
            if name == "allocator":
                logp = self._tier_logprobs(model, p, 1.0)
                tiers = torch.tensor([x[0] for x in t], device=logp.device)
                loss = (-logp.gather(-1, tiers[:, None]).sum() * (1 - ls) - logp.mean(-1).sum() * ls) / denom
                return loss, {"loss": float(loss.detach()), "acc_sum": float((logp.argmax(-1) == tiers).float().sum())}
            lps = self.actions.decomposition_logprobs(self._lm(name, model), p, t, 1.0)
            lp, mask = pad_sequences(lps)
            loss = -(lp * mask).sum() / denom
            acc = float(torch.stack([(x > -0.693).all() for x in lps]).float().sum())  # every token p > 0.5
            return loss, {"loss": float(loss.detach()), "acc_sum": acc}

        out = self._accumulate(self.engines[name], list(zip(prompts, targets)), n_micro, filler, loss_fn)
        return {"loss": out.get("loss", 0.0), "acc_sum": out.get("acc_sum", 0.0), "n": len(prompts)}

    def _grpo_loss(self, name: str, model, items: list[TrainItem], denom: float) -> tuple[torch.Tensor, dict]:
        new = self._logprobs(name, model, items)
        with torch.no_grad():
            ref = self._logprobs(name, self.refs[name], items)
        logp, mask = pad_sequences(new)
        ref_lp, _ = pad_sequences(ref)
        old, _ = pad_sequences([torch.tensor(it.old_logprobs, dtype=torch.float32) for it in items])
        adv = torch.tensor([[it.advantage] for it in items], dtype=torch.float32)
        loss, stats = grpo_loss(logp, old.to(logp.device), ref_lp, adv.to(logp.device), mask.to(logp.device),
                                clip=self.cfg.train.clip, kl_coef=self.cfg.train.kl_coef, tokens=denom)
        # learner vs sampler logprobs of the same tokens, before this update: stale weights show here
        stats["sampler_gap"] = float(((logp.detach().cpu() - old).abs() * mask).sum() / denom)
        return loss, stats

    def grpo_step(self, name: str, items: list[TrainItem], denom: float | None = None,
                  n_micro: int | None = None, filler: TrainItem | None = None) -> dict:
        """One GRPO update of `name` on the sampled items of its phase (this rank's shard; `denom`: the
        global token count over the number of ranks, default this shard's token count)."""
        denom = denom if denom is not None else sum(len(it.old_logprobs) for it in items)
        model = self.engines[name].module
        out = self._accumulate(self.engines[name], items, n_micro, filler,
                               lambda batch: self._grpo_loss(name, model, batch, denom))
        self.versions[name] += 1
        return {k: out.get(k, 0.0) for k in ("loss", "kl", "clip_frac", "ratio_mean", "sampler_gap")}

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

    def parameters_flat(self, name: str) -> torch.Tensor:
        """`name`'s parameters as one float64 vector (for comparing ranks and runs)."""
        return torch.cat([p.detach().double().cpu().reshape(-1) for p in self.engines[name].module.parameters()])

    def save_pretrained(self, out_dir: str) -> None:
        for name in self.policies:
            self.policies[name].save(Path(out_dir) / name)
        push_staged(out_dir)

    def set_state(self, state: dict) -> None:
        self.state = state

    def save_checkpoint(self, ckpt_dir: str) -> dict[str, int]:
        """DeepSpeed's checkpoint of each engine, RNG states, versions and the driver's state in `ckpt_dir`,
        uploaded when it is staged; returns the files there (relative path -> size)."""
        tag = "ckpt"
        for name, engine in self.engines.items():
            engine.save_checkpoint(str(Path(ckpt_dir) / name), tag=tag)
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate()},
                   Path(ckpt_dir) / f"rng-rank{self.rank}.pt")
        if self.rank == 0:
            meta = {"versions": self.versions, "tag": tag, "ranks": self.world, "state": self.state}
            (Path(ckpt_dir) / "learner.json").write_text(json.dumps(meta, indent=2))
        push_staged(ckpt_dir)
        return list_files(ckpt_dir)

    def load_checkpoint(self, ckpt_dir: str) -> dict:
        pull_staged(ckpt_dir)
        meta = json.loads((Path(ckpt_dir) / "learner.json").read_text())
        if meta.get("ranks", 1) != self.world:
            raise ValueError(f"checkpoint {ckpt_dir} was written by {meta.get('ranks', 1)} learner ranks; this run "
                             f"has {self.world} (train.learner.ranks): ZeRO's optimizer shards follow the rank count")
        for name, engine in self.engines.items():
            engine.load_checkpoint(str(Path(ckpt_dir) / name), tag=meta["tag"])
        rng = torch.load(Path(ckpt_dir) / f"rng-rank{self.rank}.pt", weights_only=False)
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


Learner = ray.remote(max_restarts=0)(LearnerImpl)


class LearnerGroup:
    """The driver's handle on the learner ranks: creates them in a placement group, forms their process
    group, shards batches across them and combines their statistics. Rank 0 holds the weights the
    samplers get (ZeRO stages 0-2 keep every parameter on every rank)."""

    def __init__(self, cfg: Config, init_dirs: dict[str, str], model_ids: list[str], lr: float | dict[str, float],
                 total_steps: dict[str, int] | None = None):
        spec = cfg.train.learner
        self.cfg, self.world = cfg, spec.ranks
        self.pg = placed_group("learner", [spec.bundle() or {"CPU": 0.01}] * self.world, spec.placement,
                               spec.placement_timeout_s)
        cfg_json = cfg.model_dump_json()
        self.ranks = [
            Learner.options(**spec.options(), scheduling_strategy=PlacementGroupSchedulingStrategy(
                self.pg, placement_group_bundle_index=r)).remote(cfg_json, init_dirs, model_ids, lr, total_steps, r,
                                                                 self.world)
            for r in range(self.world)]
        self.rank0 = self.ranks[0]
        if self.world > 1:
            addr, port = ray.get(self.rank0.address.remote())
            ray.get([r.setup.remote(addr, port) for r in self.ranks])

    def _all(self, method: str, *args) -> list:
        return ray.get([getattr(r, method).remote(*args) for r in self.ranks])

    def shards(self, n: int) -> list[slice]:
        """Contiguous shards of `n` items, one per rank (sizes differ by at most one)."""
        bounds = [round(i * n / self.world) for i in range(self.world + 1)]
        return [slice(a, b) for a, b in zip(bounds, bounds[1:])]

    def grpo_step(self, name: str, items: list[TrainItem], shards: list[list[TrainItem]] | None = None) -> dict:
        """One GRPO update on `items` (or on explicit per-rank `shards` of them); the global statistics."""
        shards = shards or [items[s] for s in self.shards(len(items))]
        if self.world == 1:
            return ray.get(self.rank0.grpo_step.remote(name, shards[0]))
        tokens = sum(len(it.old_logprobs) for shard in shards for it in shard)
        n_micro, filler = self._n_micro(shards), next((it for shard in shards for it in shard), None)
        stats = ray.get([r.grpo_step.remote(name, shard, tokens / self.world, n_micro, filler)
                         for r, shard in zip(self.ranks, shards)])
        return {k: sum(s[k] for s in stats) / self.world for k in stats[0]}

    def _n_micro(self, shards: list[list]) -> int:
        """Micro-batches per rank in one step: the largest shard's count (the others add filler ones)."""
        size = self.cfg.train.micro_batch
        return max(1, max(-(-len(s) // size) for s in shards)) if size else 1

    def sft_step(self, name: str, prompts: list[str], targets: list[list[int]]) -> dict:
        if self.world == 1:
            out = ray.get(self.rank0.sft_step.remote(name, prompts, targets))
        else:
            count = len(targets) if name == "allocator" else sum(len(t) for t in targets)
            shards = self.shards(len(prompts))
            n_micro = self._n_micro([prompts[s] for s in shards])
            outs = ray.get([r.sft_step.remote(name, prompts[s], targets[s], count / self.world, n_micro,
                                              (prompts[0], targets[0]))
                            for r, s in zip(self.ranks, shards)])
            out = {"loss": sum(o["loss"] for o in outs) / self.world, "acc_sum": sum(o["acc_sum"] for o in outs),
                   "n": sum(o["n"] for o in outs)}
        return {"loss": out["loss"], "acc": out["acc_sum"] / max(1, out["n"])}

    def logprobs(self, name: str, items: list[TrainItem]) -> list[list[float]]:
        return ray.get(self.rank0.logprobs.remote(name, items))

    def publish(self, name: str):
        """(object ref of rank 0's state dict, {version, checksum})."""
        state, meta = self.rank0.publish.options(num_returns=2).remote(name)
        return state, ray.get(meta)

    def save_checkpoint(self, ckpt_dir: str, state: dict) -> dict[str, int]:
        """Every rank's shard; the files written (relative path -> size), for the manifest."""
        ray.get(self.rank0.set_state.remote(state))
        return {k: v for files in self._all("save_checkpoint", ckpt_dir) for k, v in files.items()}

    def load_checkpoint(self, ckpt_dir: str) -> dict:
        return self._all("load_checkpoint", ckpt_dir)[0]

    def save_pretrained(self, out_dir: str) -> None:
        ray.get(self.rank0.save_pretrained.remote(out_dir))

    def placement(self) -> list[dict]:
        return self._all("placement")

    def kill(self) -> None:
        for r in self.ranks:
            ray.kill(r)
        remove_placement_group(self.pg)
