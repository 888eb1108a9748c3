"""The paper-scale plan: a memory model picks tensor-parallel sizes and checks the learner's ranks; the
dry run validates configs/paper.yaml offline and names all nine pool models."""
import subprocess
import sys

import pytest

from actors.plan import engine_gb, fits, learner_rank_gb, plan_groups, tensor_parallel
from core.config import ModelShape, PlanConfig, load_config

QWEN_72B = ModelShape(params_b=72.7, layers=80, kv_heads=8, head_dim=128)


def test_tensor_parallel_follows_memory():
    plan = PlanConfig()
    weights, kv = engine_gb(QWEN_72B, plan)
    assert weights == pytest.approx(145.4) and kv == pytest.approx(42.95, rel=1e-3)
    assert tensor_parallel(QWEN_72B, plan) == 4  # 188 GB over a 68 GB budget per 80 GB GPU
    assert tensor_parallel(QWEN_72B, plan.model_copy(update={"gpu_memory_gb": 141})) == 2
    with pytest.raises(ValueError, match="does not fit 2"):
        tensor_parallel(QWEN_72B, plan.model_copy(update={"max_tensor_parallel": 2}))


def test_learner_memory_shrinks_with_zero_shards():
    shape = ModelShape(params_b=1.54, layers=28, kv_heads=2, head_dim=128)
    assert learner_rank_gb(shape, 1, 0) == pytest.approx(2 * 18 * 1.54)  # weights, ref, grads, fp32 + Adam
    assert learner_rank_gb(shape, 4, 2) == pytest.approx(2 * (4 + 0.5 + 3) * 1.54)


def test_paper_plan_and_an_impossible_learner():
    cfg = load_config("configs/paper.yaml")
    groups, models = plan_groups(cfg)
    assert len(models) == 9
    assert {g.name: g.gpus for g in groups}["pool:qwen2.5-72b#0"] == 4
    assert "policy engines" not in {g.name for g in groups}
    vllm = load_config("configs/paper.yaml", ["train.sampler=vllm", "train.vllm.num_gpus=0.5"])
    engines = {g.name: g for g in plan_groups(vllm)[0]}["policy engines"]
    assert len(engines.bundles) == 2 * vllm.train.rollout_workers and engines.bundles[0]["GPU"] == 0.5
    big = load_config("configs/paper.yaml", ["plan.policy.params_b=72", "train.learner.ranks=2"])
    with pytest.raises(ValueError, match="train.learner.ranks: 2 ZeRO-2 ranks need"):
        plan_groups(big)


def test_fits_respects_strategies():
    two = [{"GPU": 8.0, "CPU": 16.0}, {"GPU": 8.0, "CPU": 16.0}]
    assert fits([{"GPU": 1}] * 4, "STRICT_PACK", two) and two[0]["GPU"] == 4
    assert not fits([{"GPU": 1}] * 5, "STRICT_PACK", [{"GPU": 4.0}, {"GPU": 4.0}])
    assert fits([{"GPU": 1}] * 5, "PACK", [{"GPU": 4.0}, {"GPU": 4.0}])
    assert not fits([{"GPU": 1}] * 3, "STRICT_SPREAD", [{"GPU": 4.0}, {"GPU": 4.0}])


def test_dry_run_names_every_model_and_loads_nothing():
    out = subprocess.run([sys.executable, "-m", "pipelines.train", "--config", "configs/paper.yaml", "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for model in ("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-3b", "qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b",
                  "qwen2.5-72b", "deepseek-v3", "gpt-4o"):
        assert model in out.stdout
    assert "total: 15 GPUs" in out.stdout and "benchmarks:" in out.stdout and "scan" in out.stdout


def test_a_config_without_a_zoo_names_what_the_router_lacks():
    from policies.load import load_router

    with pytest.raises(ValueError, match="router.init: no trained router"):
        load_router(load_config("configs/paper.yaml"), ["a", "b"])
    with pytest.raises(Exception, match="pool: no models"):
        load_config("configs/paper.yaml", ["pool.models=[]"])
