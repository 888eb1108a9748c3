"""The placement plan a memory model decides: tensor-parallel size and GPUs of every self-hosted pool
model, the learner ranks' memory, and the placement groups (bundles per actor group) the run asks Ray
for. `check_on_cluster` tells, before creating anything, whether each group fits a live cluster's free
resources (a pending infeasible group would block every later one), then creates them to be sure."""
from __future__ import annotations

from dataclasses import dataclass

from core.config import Config, ModelShape, PlanConfig

GB = 1e9
BF16 = 2  # bytes per value


@dataclass
class Group:
    name: str
    bundles: list[dict[str, float]]
    strategy: str
    note: str = ""

    @property
    def gpus(self) -> float:
        return sum(b.get("GPU", 0) for b in self.bundles)

    @property
    def cpus(self) -> float:
        return sum(b.get("CPU", 0) for b in self.bundles)


def engine_gb(shape: ModelShape, plan: PlanConfig) -> tuple[float, float]:
    """(bf16 weights, KV cache) of one vLLM engine, in GB."""
    kv_per_token = 2 * shape.layers * shape.kv_heads * shape.head_dim * BF16
    return shape.params_b * 1e9 * BF16 / GB, kv_per_token * plan.context_tokens * plan.concurrent_sequences / GB


def tensor_parallel(shape: ModelShape, plan: PlanConfig) -> int:
    """The smallest power-of-two TP whose per-GPU share of weights and KV cache, plus the overhead, fits."""
    weights, kv = engine_gb(shape, plan)
    budget = plan.gpu_memory_gb * plan.memory_utilization - plan.overhead_gb
    tp = 1
    while (weights + kv) / tp > budget:
        tp *= 2
        if tp > plan.max_tensor_parallel:
            raise ValueError(f"{weights + kv:.0f} GB does not fit {plan.max_tensor_parallel} x {plan.gpu} "
                             f"(plan.context_tokens / plan.concurrent_sequences)")
    return tp


def learner_rank_gb(shape: ModelShape, ranks: int, zero_stage: int) -> float:
    """Per rank, for both policies: bf16 weights and the frozen reference copy (whole on every rank),
    bf16 gradients (sharded from ZeRO-2), fp32 master weights and AdamW's two moments (sharded from
    ZeRO-1)."""
    p = shape.params_b * 1e9
    grads = 2 * p / (ranks if zero_stage >= 2 else 1)
    optim = 12 * p / (ranks if zero_stage >= 1 else 1)
    return 2 * (2 * p + 2 * p + grads + optim) / GB


def plan_groups(cfg: Config) -> tuple[list[Group], list[str]]:
    """(placement groups, one line per self-hosted or API pool model)."""
    plan, groups, lines = cfg.plan, [], []
    for m in cfg.pool.models:
        price = m.price.model_dump(exclude_none=True, exclude={"gpus"})
        if m.backend == "vllm":
            if m.shape is None:
                raise ValueError(f"pool.models[{m.id}].shape: the memory model needs the shape of a vllm model")
            weights, kv = engine_gb(m.shape, plan)
            tp = tensor_parallel(m.shape, plan)
            replicas = m.replicas or cfg.pool.replicas
            cost = f"${m.price.gpu_hour_usd:g}/GPU-h x {tp} GPUs" if m.price.gpu_hour_usd is not None else price
            lines.append(f"{m.id:<16} vllm    TP {tp}  GPUs {tp * replicas:<3} {weights:6.1f} GB weights + "
                         f"{kv:5.1f} GB KV ({(weights + kv) / tp:5.1f} GB/GPU)  price {cost}")
            for r in range(replicas):
                groups.append(Group(f"pool:{m.id}#{r}", [{"GPU": 1, "CPU": 1}] * tp, "STRICT_PACK", f"TP {tp}"))
        else:
            lines.append(f"{m.id:<16} {m.backend:<7} remote                                                    "
                         f"price {price}")
    spec = cfg.train.learner
    if plan.policy is not None:
        need = learner_rank_gb(plan.policy, spec.ranks, cfg.train.zero_stage)
        budget = plan.gpu_memory_gb * plan.memory_utilization - plan.overhead_gb
        if need > budget:
            raise ValueError(f"train.learner.ranks: {spec.ranks} ZeRO-{cfg.train.zero_stage} ranks need {need:.0f} GB "
                             f"each for two {plan.policy.params_b}B policies; {plan.gpu} allows {budget:.0f} GB")
        note = f"ZeRO-{cfg.train.zero_stage}, {need:.1f} GB/rank"
    else:
        note = f"ZeRO-{cfg.train.zero_stage}"
    groups.append(Group("learner", [spec.bundle()] * spec.ranks, spec.placement, note))
    groups.append(Group("rollout", [cfg.train.rollout.bundle()] * cfg.train.rollout_workers, "PACK"))
    if cfg.train.sampler == "vllm":  # each rollout worker's two policy engines
        engines = [cfg.train.vllm.bundle()] * (2 * cfg.train.rollout_workers)
        groups.append(Group("policy engines", engines, "PACK", "vLLM, one per policy and rollout worker"))
    return groups, lines


def fits(bundles: list[dict[str, float]], strategy: str, free: list[dict[str, float]]) -> bool:
    """Whether `bundles` fit nodes with `free` resources (first fit, largest bundles first); takes them."""
    nodes = [dict(n) for n in free]
    if strategy == "STRICT_PACK":
        total = {k: sum(b.get(k, 0) for b in bundles) for k in {k for b in bundles for k in b}}
        for n, node in enumerate(nodes):
            if all(node.get(k, 0) >= v - 1e-9 for k, v in total.items()):
                free[n] = {k: node.get(k, 0) - total.get(k, 0) for k in node}
                return True
        return False
    used: set[int] = set()
    for b in sorted(bundles, key=lambda b: -b.get("GPU", 0)):
        order = sorted(range(len(nodes)), key=lambda i: (i in used) if strategy.endswith("SPREAD") else 0)
        for i in order:
            if strategy == "STRICT_SPREAD" and i in used:
                continue
            if all(nodes[i].get(k, 0) >= v - 1e-9 for k, v in b.items()):
                nodes[i] = {k: nodes[i].get(k, 0) - b.get(k, 0) for k in nodes[i]}
                used.add(i)
                break
        else:
            return False
    free[:] = nodes
    return True


def check_on_cluster(groups: list[Group], timeout_s: float = 60.0) -> str | None:
    """None when every group fits the connected cluster (checked first, then created and removed), else
    one line naming the first group that does not."""
    import ray  # lazy: a dry run without --cluster needs no Ray

    from actors.placement import placed_group, remove_placement_group

    free = [dict(n["Resources"]) for n in ray.nodes() if n["Alive"]]
    for g in groups:
        if not fits(g.bundles, g.strategy, free):
            return (f"does not fit: {g.name} ({len(g.bundles)} x {g.bundles[0]}, {g.strategy}) after the groups "
                    f"before it; cluster: {len(ray.nodes())} nodes, {ray.cluster_resources().get('GPU', 0):g} GPUs")
    created = []
    try:
        for g in groups:
            created.append(placed_group(g.name, g.bundles, g.strategy, timeout_s))
    except RuntimeError as err:
        return f"does not fit: {err}"
    finally:
        for pg in created:
            remove_placement_group(pg)
    return None
