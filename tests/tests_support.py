"""Small helpers shared by tests."""
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


TEST_POOL = "test-zoo"  # the name of the suite's shared pool of the test zoo (`zoo_pool`), for `pool.name`


SHARP_WORDS = "what is one two three four five six seven plus minus times jump walk left right twice".split()


def sharp_tiny_llama(path, hidden: int, heads: int, seed: int = 0, words: list[str] = SHARP_WORDS,
                     max_positions: int = 128):
    """An untrained tiny Llama saved as an HF folder, whose attention and logits are sharp enough that a
    wrong rotary mapping or softmax scale shows, and whose greedy continuations vary (random-init ones
    repeat one token)."""
    import torch

    from policies.tiny_lm import build_model, build_tokenizer, save

    tok = build_tokenizer(list(words))
    model = build_model(tok, hidden=hidden, layers=2, heads=heads, intermediate=2 * hidden,
                        max_positions=max_positions, seed=seed)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(10)
            layer.self_attn.k_proj.weight.mul_(10)
            layer.mlp.up_proj.weight.mul_(10 / 3)
            layer.mlp.down_proj.weight.mul_(10)
    save(model, tok, path)
    return path


def drive(proc, log, kill_when=None, timeout: float = 600, poll: float = 0.05) -> int | None:
    """A training driver subprocess (its output in `log`): run to its end (asserting exit 0), or SIGKILL it
    as soon as `kill_when()` holds. Returns the step its output says it resumed at, else None."""
    import re
    import signal
    import time

    if kill_when is None:
        assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    else:
        deadline = time.time() + timeout
        while not kill_when():
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(poll)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    found = re.search(r"resumed from \S+ at step (\d+)", log.read_text())
    return int(found.group(1)) if found else None
