"""Training on Ray: label search + SFT, a 2-step GRPO run with 2 rollout workers and a real DeepSpeed
engine per policy on CPU, and checkpoint -> resume."""
import shutil

import pytest

pytestmark = pytest.mark.integration

SMALL = ["labels.max_per_task=24", "labels.fraction=0.02", "labels.decomposition_fraction=0.04",
         "train.sft_epochs=1", "train.sft_epochs_decomposer=2", "train.sft_batch=16",
         "train.queries_per_step=8", "train.group_size=2", "train.rollout_workers=2",
         "train.alternate_every=1", "train.cost_ref_queries=8", "train.zero_stage=2", "wandb.mode=disabled"]


@pytest.fixture(scope="module")
def sft_config(zoo_config, ray_local):
    from core.config import load_config
    from pipelines.sft import main as sft_main

    root = zoo_config.zoo_dir.parent
    for d in ("labels", "router", "train"):
        shutil.rmtree(root / d, ignore_errors=True)
    args = ["--config", "configs/test.yaml", "--set", f"run_dir={root}"]
    for s in SMALL:
        args += ["--set", s]
    out = sft_main(args)
    assert (out / "decomposer" / "config.json").exists() and (out / "allocator" / "config.json").exists()
    return load_config("configs/test.yaml", [f"run_dir={root}", *SMALL])


def test_a_trained_router_folder_routes_on_its_own(sft_config):
    from pipelines.controller import Router
    from pipelines.runs import router_dir

    with Router.from_run(router_dir(sft_config, "sft")) as router:  # the config stored beside it
        assert router.cfg == sft_config and router.description.startswith("trained router")
        t = router.route("walk twice and look")
    assert t.task == "scan" and t.decomposer.startswith("trained:") and t.steps


def test_labels_cover_both_policies(sft_config):
    import json

    rows = [json.loads(x) for x in (sft_config.zoo_dir.parent / "labels" / "labels.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"facts", "scan"}
    alloc = [r for r in rows if "tiers" in r]
    assert alloc and all(len(r["tiers"]) == len(r["steps"]) == len(r["rendered"]) for r in alloc)


def test_two_grpo_steps_then_resume_reproduces(sft_config):
    import ray
    from rich.console import Console

    from pipelines.train import Trainer

    cfg = sft_config.model_copy(update={"train": sft_config.train.model_copy(update={"checkpoint_every": 2})})
    first = Trainer(cfg, Console(quiet=True))
    history = first.fit(steps=2)  # 2 steps: one per policy (alternate_every=1), checkpoint after step 2
    assert [h["phase"] for h in history] == ["decomposer", "allocator"]
    for h in history:
        assert {"reward", "accuracy", "cost_per_query", "format_ok", "time_rollout_s"} <= set(h)
    digest = ray.get(first.learner.optimizer_state_digest.remote())
    third = first.step()  # the step after the checkpoint, from the live run
    first.close()

    resumed = Trainer(cfg, Console(quiet=True), resume=True)
    assert resumed.state["step"] == 2
    assert ray.get(resumed.learner.optimizer_state_digest.remote()) == pytest.approx(digest)
    again = resumed.step()
    resumed.close()
    assert again["phase"] == third["phase"]
    for k in ("reward", "accuracy", "cost_per_query", "items"):
        assert again[k] == pytest.approx(third[k], rel=1e-6), k
    for k in ("loss", "kl", "sampler_gap"):
        if k in third:
            assert again[k] == pytest.approx(third[k], rel=1e-4, abs=1e-6), k


def test_collective_weight_sync_matches_the_learner(sft_config):
    """The broadcast path (NCCL on GPU; gloo here) delivers the learner's weights to every worker."""
    import ray
    from rich.console import Console

    from pipelines.train import Trainer

    cfg = sft_config.model_copy(update={"train": sft_config.train.model_copy(
        update={"weight_sync": "collective", "sync_backend": "gloo"})})
    trainer = Trainer(cfg, Console(quiet=True))
    try:
        m = trainer.step()  # pushes the weights, rolls out, updates the decomposer
        assert m["sampler_gap"] < 1e-4 if "sampler_gap" in m else m["items"] == 0
        trainer.sync.push(1)  # the updated decomposer goes out again
        for name in ("decomposer", "allocator"):
            want = ray.get(trainer.learner.weights_digest.remote(name))
            got = ray.get([w.weights_digest.remote(name) for w in trainer.workers])
            assert got == pytest.approx([want] * len(got), rel=1e-9)
    finally:
        trainer.close()
