"""Weight sync never hangs or half-loads silently: a receiver that does not answer in time, or that
loaded other weights than the learner published, is an error naming the worker and the policy."""
import time

import pytest
import torch

from actors.weight_sync import WeightRef, WeightSyncError, check_loaded, state_checksum, wait_all

pytestmark = pytest.mark.integration


def test_checksum_sees_one_changed_bit():
    state = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.zeros(3)}
    same = {k: v.clone() for k, v in state.items()}
    assert state_checksum(state) == state_checksum(same)
    same["w"][1, 2] = torch.nextafter(same["w"][1, 2], torch.tensor(100.0))
    assert state_checksum(state) != state_checksum(same)


def test_a_mismatch_names_the_worker_and_the_policy():
    published = {"allocator": WeightRef(3, None, "a" * 32)}
    check_loaded(published, {"allocator": (3, "a" * 32)}, "rollout worker 1")
    with pytest.raises(WeightSyncError, match="rollout worker 1 holds allocator v3 .* the learner published v3"):
        check_loaded(published, {"allocator": (3, "b" * 32)}, "rollout worker 1")
    with pytest.raises(WeightSyncError, match="rollout worker 0 holds allocator v2"):
        check_loaded(published, {"allocator": (2, "a" * 32)}, "rollout worker 0")


def test_a_receiver_that_hangs_is_named_within_the_timeout(ray_local):
    import ray

    @ray.remote(num_cpus=0)
    class Receiver:
        def load(self, seconds: float) -> tuple[int, str]:
            time.sleep(seconds)
            return 1, "x"

    fast, slow = Receiver.remote(), Receiver.remote()
    ray.get([fast.load.remote(0.0), slow.load.remote(0.0)])  # both started
    start = time.perf_counter()
    with pytest.raises(WeightSyncError, match=r"weight sync of decomposer: no answer within 1s from rollout worker 1$"):
        wait_all({"rollout worker 0": fast.load.remote(0.0), "rollout worker 1": slow.load.remote(30.0)},
                 1.0, "weight sync of decomposer")
    assert time.perf_counter() - start < 10
    for a in (fast, slow):
        ray.kill(a)
