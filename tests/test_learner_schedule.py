"""The SFT learning-rate schedule the learner hands DeepSpeed: linear warmup, then cosine decay to 0."""
import torch

from actors.learner import ds_config, init_distributed_env
from core.config import load_config


def test_sft_schedule_warms_up_then_decays_to_zero():
    import deepspeed

    init_distributed_env()
    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    cfg = load_config("configs/test.yaml", ["train.sft_warmup_steps=4", "train.zero_stage=0"])
    model = torch.nn.Linear(3, 1)
    engine, *_ = deepspeed.initialize(model=model, config=ds_config(cfg, 0.1, total_steps=12),
                                      model_parameters=list(model.parameters()))
    lrs = []
    for _ in range(12):
        engine.backward(model(torch.ones(cfg.train.sft_batch, 3)).pow(2).mean())
        engine.step()
        lrs.append(engine.get_lr()[0])
    peak = lrs.index(max(lrs))
    assert max(lrs) <= 0.1 + 1e-9 and 3 <= peak <= 5  # warmup over the first 4 steps
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # then non-increasing
    assert lrs[-1] < 1e-6  # down to 0 at the end of the schedule


def test_constant_learning_rate_without_a_schedule():
    cfg = load_config("configs/test.yaml")
    assert "scheduler" not in ds_config(cfg, 0.1) and "scheduler" in ds_config(cfg, 0.1, 10)
