"""Where an actor runs and on what: its device from what Ray gave it (never from the driver's view),
the node it landed on, and placement groups that are checked to fit before anything waits on them."""
from __future__ import annotations

import ray
from ray.util.placement_group import placement_group, remove_placement_group


def actor_device() -> str:
    """"cuda" when Ray assigned this actor a GPU (Ray sets CUDA_VISIBLE_DEVICES to it), else "cpu"."""
    return "cuda" if ray.get_gpu_ids() else "cpu"


def where() -> dict:
    """This actor's node and devices, for the run's placement record."""
    ctx = ray.get_runtime_context()
    return {"node_id": ctx.get_node_id(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()], "device": actor_device()}


def placed_group(name: str, bundles: list[dict[str, float]], strategy: str, timeout_s: float):
    """A placement group of `bundles`, ready; an error naming `name` when it is not placed in time
    (it is removed then, so it blocks no later group)."""
    pg = placement_group(bundles, strategy=strategy)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise RuntimeError(f"placement group {name!r} ({len(bundles)} x {bundles[0]}, {strategy}) was not placed "
                           f"within {timeout_s:g}s: the cluster lacks those resources "
                           f"(available: {ray.available_resources()})")
    return pg
