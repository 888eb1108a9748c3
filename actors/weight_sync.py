"""Weight sync, learner -> rollout workers, behind one interface (`push(version, names) -> seconds`).

- `ObjectStoreSync` (default; CPU): the learner returns each policy's state dict into the Ray object
  store once, and every worker loads it by reference.
- `CollectiveSync` (GPU: NCCL; gloo on CPU, for tests): the learner is rank 0 of a process group of
  its own (built on a dedicated TCPStore, so it never touches the default group DeepSpeed uses); each
  policy's weights travel as flattened buckets by broadcast. torch.distributed is imported only here,
  only when this sync is chosen.
"""
from __future__ import annotations

import datetime
import socket
import time

import ray
import torch

from core.registry import Registry

BUCKET_BYTES = 64 << 20


def _buckets(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """Consecutive parameter names grouped into buckets of one dtype and at most BUCKET_BYTES."""
    out: list[list[str]] = []
    size, dtype = 0, None
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if not out or t.dtype != dtype or size + nbytes > BUCKET_BYTES:
            out.append([])
            size, dtype = 0, t.dtype
        out[-1].append(name)
        size += nbytes
    return out


class WeightGroupMember:
    """Mixin of the learner (rank 0, the source) and the rollout workers (receivers)."""

    _weight_group = None

    def weight_group_address(self) -> tuple[str, int]:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        return ray.util.get_node_ip_address(), port

    def join_weight_group(self, host: str, port: int, rank: int, world: int, backend: str) -> int:
        import torch.distributed as dist  # lazy: only the collective sync uses it

        timeout = datetime.timedelta(seconds=120)
        store = dist.PrefixStore("r2r-weights", dist.TCPStore(host, port, world, rank == 0, timeout=timeout))
        if backend == "nccl":
            self._weight_group = dist.ProcessGroupNCCL(store, rank, world)
        else:
            self._weight_group = dist.ProcessGroupGloo(store, rank, world, timeout)
        return rank

    def _broadcast_state(self, state: dict[str, torch.Tensor], source: bool) -> None:
        import torch.distributed as dist  # lazy: only the collective sync uses it

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        for names in _buckets(state):
            tensors = [state[n] for n in names]
            flat = torch.cat([t.detach().reshape(-1) for t in tensors]) if source else \
                torch.empty(sum(t.numel() for t in tensors), dtype=tensors[0].dtype, device=tensors[0].device)
            self._weight_group.broadcast([flat], opts).wait()
            if not source:
                offset = 0
                with torch.no_grad():
                    for t in tensors:
                        t.copy_(flat[offset: offset + t.numel()].view_as(t))
                        offset += t.numel()


class ObjectStoreSync:
    def __init__(self, learner, workers, policies):
        self.learner, self.workers, self.policies = learner, workers, policies

    def push(self, version: int, names: list[str] | None = None) -> float:
        """Sends `names` (default: every policy); returns the seconds it took."""
        start = time.perf_counter()
        for name in self.policies if names is None else names:
            ref = self.learner.weights.remote(name)  # stays in the object store; workers resolve it
            ray.get([w.set_weights.remote(name, ref, version) for w in self.workers])
        return time.perf_counter() - start


class CollectiveSync:
    def __init__(self, learner, workers, policies, backend: str = "auto"):
        self.learner, self.workers, self.policies = learner, workers, policies
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        host, port = ray.get(learner.weight_group_address.remote())
        world = len(workers) + 1
        ray.get([learner.join_weight_group.remote(host, port, 0, world, backend)]
                + [w.join_weight_group.remote(host, port, i + 1, world, backend) for i, w in enumerate(workers)])

    def push(self, version: int, names: list[str] | None = None) -> float:
        start = time.perf_counter()
        for name in self.policies if names is None else names:
            ray.get([self.learner.send_weights.remote(name)]
                    + [w.receive_weights.remote(name, version) for w in self.workers])
        return time.perf_counter() - start


SYNCS: Registry[type] = Registry("weight sync")
SYNCS.add("object_store", ObjectStoreSync)
SYNCS.add("collective", CollectiveSync)


def make_sync(kind: str, learner, workers, policies, backend: str = "auto"):
    cls = SYNCS.lookup(kind)
    return cls(learner, workers, policies, backend) if cls is CollectiveSync else cls(learner, workers, policies)
