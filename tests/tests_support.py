"""Small helpers shared by unit tests."""
from functools import lru_cache


@lru_cache(maxsize=1)
def tiny_policy():
    """An untrained tiny policy over the router vocabulary (built in code, no training)."""
    from policies.policy_lm import PolicyLM
    from policies.tiny_lm import MODEL_SLOTS, ROUTER_WORDS, build_model, build_tokenizer

    tok = build_tokenizer(["walk", "jump", "of", *ROUTER_WORDS, *MODEL_SLOTS])
    return PolicyLM(build_model(tok, 16, 1, 2, 32, seed=1), tok)
