"""GRPO, as pure functions (Shao et al. 2024, as R2 uses it):

- group advantages: A_i = (r_i - mean_G r) / (std_G r + eps) over the G samples of one query;
- clipped ratio objective per token: min(rho * A, clip(rho, 1 - c, 1 + c) * A), rho = exp(logp - logp_old);
- KL to a frozen reference with the k3 estimator: exp(ref - logp) - (ref - logp) - 1 (>= 0, unbiased);
- loss = -(objective - beta_kl * kl), averaged over all tokens of the batch (token-mean).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from core.types import TrainItem

if TYPE_CHECKING:  # annotations only: the GRPO math needs nothing but torch
    from policies.reason import Trajectory


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """rewards [n_queries, G] -> advantages of the same shape (population std, as in GRPO)."""
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, unbiased=False, keepdim=True)
    return (rewards - mean) / (std + eps)


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip: float = 0.2, kl_coef: float = 0.05,
              tokens: float | None = None) -> tuple[torch.Tensor, dict]:
    """All tensors [batch, tokens] (advantages broadcast per sequence as [batch, 1]); mask marks real
    tokens. Returns the loss, a sum over tokens divided by `tokens` (default: this batch's token count,
    i.e. the token mean; a data-parallel shard passes the global count over the number of ranks, so
    that the ranks' averaged gradient is the global batch's token mean), and diagnostics (likewise)."""
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip, 1 + clip) * advantages
    objective = torch.minimum(unclipped, clipped)
    kl = k3_kl(logp, ref_logp)
    per_token = -(objective - kl_coef * kl)
    n = mask.sum().clamp(min=1) if tokens is None else torch.tensor(float(tokens))
    loss = (per_token * mask).sum() / n
    with torch.no_grad():
        stats = {
            "loss": float(loss),
            "kl": float((kl * mask).sum() / n),
            "clip_frac": float((((ratio - 1).abs() > clip).to(mask.dtype) * mask).sum() / n),
            "ratio_mean": float((ratio * mask).sum() / n),
        }
    return loss, stats


def pad_sequences(seqs: list[torch.Tensor], value: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-d tensors to [len(seqs), max_len] plus a 0/1 mask."""
    width = max((len(s) for s in seqs), default=0)
    out = torch.full((len(seqs), width), value, dtype=seqs[0].dtype if seqs else torch.float32)
    mask = torch.zeros(len(seqs), width)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return out, mask


def training_items(trajs: list[Trajectory], rewards: list[float], group: int, phase: str) -> list[TrainItem]:
    """Per decomposer call (decomposer) or per allocation decision (allocator): the sampled tokens, their
    sampler logprobs and the trajectory's group advantage. Groups without reward spread carry no
    signal and are left out."""
    adv = group_advantages(torch.tensor(rewards).view(-1, group)).view(-1).tolist()
    items = []
    for t, a in zip(trajs, adv):
        if abs(a) < 1e-6:
            continue
        if phase == "decomposer":  # every call of the decomposition (one per step with stepwise templates)
            items += [TrainItem("decomposer", p, token_ids=s.token_ids, old_logprobs=s.logprobs, advantage=a,
                                trajectory_id=t.example_id) for p, s in t.decomposition.calls if s.token_ids]
        else:
            for st in t.steps:
                if st.allocation.prompt:
                    items.append(TrainItem("allocator", st.allocation.prompt, tier=st.allocation.tier,
                                           old_logprobs=[st.allocation.logprob], advantage=a,
                                           trajectory_id=t.example_id))
    return items
