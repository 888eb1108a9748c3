"""The GPU lane: checks that need a CUDA device (skipped without one)."""
import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_hf_backend_and_policy_on_the_gpu_match_the_cpu():
    from tests.gpu.gpu_check import main

    out = main()
    assert out["ok"] and out["grad_finite"]
