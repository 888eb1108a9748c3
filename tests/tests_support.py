"""Small helpers shared by unit tests."""
from functools import lru_cache


@lru_cache(maxsize=1)
def tiny_policy():
    """An untrained tiny policy over the router vocabulary (built in code, no training)."""
    from policies.policy_lm import PolicyLM
    from policies.tiny_lm import MODEL_SLOTS, ROUTER_WORDS, build_model, build_tokenizer

    tok = build_tokenizer(["walk", "jump", "of", *ROUTER_WORDS, *MODEL_SLOTS])
    return PolicyLM(build_model(tok, 16, 1, 2, 32, seed=1), tok)


# the small SFT/GRPO settings of the training tests (configs/test.yaml plus these)
SMALL = ["labels.max_per_task=24", "labels.fraction=0.02", "labels.decomposition_fraction=0.04",
         "train.sft_epochs=1", "train.sft_epochs_decomposer=2", "train.sft_batch=16",
         "train.queries_per_step=8", "train.group_size=2", "train.rollout_workers=2",
         "train.alternate_every=1", "train.cost_ref_queries=8", "train.zero_stage=2", "wandb.mode=disabled"]
