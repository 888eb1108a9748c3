"""Weight sync, learner -> rollout workers, behind one interface (`push(published, names) -> seconds`).

The learner *publishes* each policy after an update: its state dict goes into the Ray object store once,
with the policy's version (its update count) and a checksum of the tensors. Every rollout call carries
the published `WeightRef`s, so a worker whose versions differ (a restarted worker, say) loads them
before it samples; the syncs below push eagerly, so that normally nothing is left to load.

- `ObjectStoreSync` (default; CPU): every worker loads the published state dict by reference.
- `CollectiveSync` (GPU: NCCL; gloo on CPU, for tests): the learner is rank 0 of a process group of
  its own (built on a dedicated TCPStore, so it never touches the default group DeepSpeed uses); each
  policy's weights travel as flattened buckets by broadcast.

Every push waits at most `timeout_s` and compares the checksum each worker computed of what it loaded
with the learner's: a hang or a mismatch raises `WeightSyncError` naming the worker and the policy.
"""
from __future__ import annotations

import datetime
import hashlib
import socket
import time
from dataclasses import dataclass
from typing import Any

import ray
import torch

from core.registry import Registry

BUCKET_BYTES = 64 << 20


class WeightSyncError(RuntimeError):
    pass


@dataclass(frozen=True)
class WeightRef:
    """A published policy: its version, a reference to its state dict in the object store, a checksum."""

    version: int
    state: Any  # ray.ObjectRef of the state dict (resolved only by a worker that needs it)
    checksum: str


def state_checksum(state: dict[str, torch.Tensor]) -> str:
    """A digest of every tensor's name, shape, dtype and bytes (equal iff the weights are bit-equal)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in state.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def wait_all(calls: dict[str, Any], timeout_s: float, what: str) -> dict[str, Any]:
    """ray.get of named calls within `timeout_s`; the names of those that did not answer go in the error."""
    refs = list(calls.values())
    _, pending = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
    if pending:
        late = [name for name, r in calls.items() if r in pending]
        raise WeightSyncError(f"{what}: no answer within {timeout_s:g}s from {', '.join(late)}")
    return dict(zip(calls, ray.get(refs)))


def check_loaded(published: dict[str, WeightRef], loaded: dict[str, tuple[int, str]], who: str) -> None:
    """`loaded`: policy -> (version, checksum) a receiver reports; any difference is an error."""
    for name, (version, checksum) in loaded.items():
        want = published[name]
        if (version, checksum) != (want.version, want.checksum):
            raise WeightSyncError(f"{who} holds {name} v{version} (checksum {checksum[:12]}), "
                                  f"the learner published v{want.version} (checksum {want.checksum[:12]})")


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

    def join_weight_group(self, host: str, port: int, rank: int, world: int, backend: str,
                          timeout_s: float = 120.0) -> int:
        import torch.distributed as dist  # lazy: only the collective sync uses it

        timeout = datetime.timedelta(seconds=timeout_s)
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
    def __init__(self, learner, workers, policies, timeout_s: float = 300.0):
        self.learner, self.workers, self.policies, self.timeout_s = learner, workers, policies, timeout_s

    def push(self, published: dict[str, WeightRef], names: list[str]) -> float:
        """Sends `names`; returns the seconds it took."""
        start = time.perf_counter()
        for name in names:
            ref = published[name]
            loaded = wait_all({f"rollout worker {i}": w.set_weights.remote(name, ref.state, ref.version)
                               for i, w in enumerate(self.workers)}, self.timeout_s, f"weight sync of {name}")
            for who, report in loaded.items():
                check_loaded(published, {name: report}, who)
        return time.perf_counter() - start


class CollectiveSync:
    def __init__(self, learner, workers, policies, timeout_s: float = 300.0, backend: str = "auto"):
        self.learner, self.workers, self.policies, self.timeout_s = learner, workers, policies, timeout_s
        if backend == "auto":
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        host, port = ray.get(learner.weight_group_address.remote())
        world = len(workers) + 1
        calls = {"learner": learner.join_weight_group.remote(host, port, 0, world, backend, timeout_s)}
        calls.update({f"rollout worker {i}": w.join_weight_group.remote(host, port, i + 1, world, backend, timeout_s)
                      for i, w in enumerate(workers)})
        wait_all(calls, timeout_s, "joining the weight group")

    def push(self, published: dict[str, WeightRef], names: list[str]) -> float:
        start = time.perf_counter()
        for name in names:
            calls = {"learner": self.learner.send_weights.remote(name)}
            calls.update({f"rollout worker {i}": w.receive_weights.remote(name, published[name].version)
                          for i, w in enumerate(self.workers)})
            loaded = wait_all(calls, self.timeout_s, f"weight broadcast of {name}")
            for who, report in loaded.items():
                if who != "learner":
                    check_loaded(published, {name: report}, who)
        return time.perf_counter() - start


SYNCS: Registry[type] = Registry("weight sync")
SYNCS.add("object_store", ObjectStoreSync)
SYNCS.add("collective", CollectiveSync)


def make_sync(kind: str, learner, workers, policies, timeout_s: float = 300.0, backend: str = "auto"):
    cls = SYNCS.lookup(kind)
    if cls is CollectiveSync:
        return cls(learner, workers, policies, timeout_s, backend)
    return cls(learner, workers, policies, timeout_s)
