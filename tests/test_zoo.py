"""The zoo's ladder is real: bigger models remember more rare facts, at equal training tokens."""
import json
import math
import time
from pathlib import Path

import pytest

from actors.zoo import TokenStream, zoo_tokenizer
from benchmarks.tasks import build_world
from pipelines.zoo import run_zoo

ROOT = Path(__file__).resolve().parents[1]


Z = 1.96  # two accuracies differ when they are this many standard errors apart (95%, two-sided)


def apart(a: float, b: float, n: int) -> float:
    """b - a in standard errors of the difference of two accuracies over n items each (with one success
    and one failure added to each, so that 0 and 1 keep some noise)."""
    pa, pb = ((x * n + 1) / (n + 2) for x in (a, b))
    return (b - a) / math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / n)


def assert_ladder(card: dict, n_rare: int) -> None:
    """Bigger models remember more rare facts: no rung below the one before it beyond sampling noise of
    `n_rare` test facts, and at least three rungs that stand apart from each other beyond it."""
    rare = [m["accuracy"]["facts:rare"] for m in card["models"]]
    params = [m["params"] for m in card["models"]]
    assert params == sorted(params), "card models must be listed smallest first"
    assert all(apart(a, b, n_rare) > -Z for a, b in zip(rare, rare[1:])), f"rare accuracy falls: {rare} (n={n_rare})"
    assert rare[0] < 0.5 and rare[-1] > 0.9, rare
    rungs = [rare[0]]
    for acc in rare[1:]:
        if apart(rungs[-1], acc, n_rare) >= Z:
            rungs.append(acc)
    assert len(rungs) >= 3, f"fewer than three distinct rungs: {rare} (n={n_rare})"
    assert len({m["tokens"] for m in card["models"]}) == 1, "every rung must see the same training tokens"


def rare_facts(cfg) -> int:
    """How many rare facts the card's accuracy is measured on."""
    return len(build_world(cfg).tasks["facts"].hop_examples()["rare"])


def test_test_zoo_ladder(zoo_config, zoo_card):
    assert_ladder(zoo_card, rare_facts(zoo_config))


def test_tiny_zoo_ladder():
    from core.config import load_config

    path = ROOT / "runs" / "tiny" / "zoo" / "card.json"
    if not path.exists():
        pytest.skip("the tiny zoo is trained by `make demo` (python -m pipelines.zoo --config configs/tiny.yaml)")
    assert_ladder(json.loads(path.read_text()), rare_facts(load_config(ROOT / "configs" / "tiny.yaml")))


def card(rare: list[float]) -> dict:
    return {"models": [{"params": i, "tokens": 1, "accuracy": {"facts:rare": r}} for i, r in enumerate(rare)]}


def test_a_ladder_within_noise_passes_and_one_beyond_it_fails():
    assert_ladder(card([0.073, 0.327, 0.287, 1.0]), 150)  # a dip of 0.04 on 150 facts is noise (0.75 s.e.)
    for rare, n in (([0.073, 0.427, 0.287, 1.0], 150),  # a dip of 0.14 on 150 facts is not (2.6 s.e.)
                    ([0.137, 0.217, 0.98, 1.0], 60)):  # on 60 facts, only two rungs stand apart
        with pytest.raises(AssertionError):
            assert_ladder(card(rare), n)
    assert_ladder(card([0.137, 0.217, 0.98, 1.0]), 300)  # at n=300 the same accuracies make four rungs


def test_card_has_every_bucket(zoo_card):
    buckets = {"facts:popular", "facts:mid", "facts:rare", "facts:chain-oneshot", "scan:clause", "scan:command"}
    for m in zoo_card["models"]:
        assert set(m["accuracy"]) == buckets
        assert m["train_seconds"] > 0 and m["tokens"] > 0 and "price" in m


def test_second_run_reuses_checkpoints(zoo_config, zoo_card):
    start = time.perf_counter()
    again = run_zoo(zoo_config)
    assert time.perf_counter() - start < 10
    assert [m["accuracy"] for m in again["models"]] == [m["accuracy"] for m in zoo_card["models"]]


def test_token_stream_is_deterministic_and_masks_prompts(zoo_config):
    world = build_world(zoo_config)
    tok = zoo_tokenizer(world)
    cfg = zoo_config.model_copy(update={"zoo": zoo_config.zoo.model_copy(update={"train_tokens": 5000})})
    a = list(TokenStream(cfg, tok, world.zoo_pairs()).batches())
    b = list(TokenStream(cfg, tok, world.zoo_pairs()).batches())
    assert len(a) == len(b) > 0
    sep = tok.convert_tokens_to_ids("=")
    for (ids, labels, _), (ids2, _, _) in zip(a, b):
        assert (ids == ids2).all()
        for row, lab in zip(ids.tolist(), labels.tolist()):
            first = next(i for i, x in enumerate(lab) if x != -100)
            assert row[first - 1] == sep  # the loss starts right after the separator
            answer = [x for x in lab if x != -100]
            assert answer[-1] == tok.eos_token_id and tok.unk_token_id not in answer


@pytest.mark.timeout(60)
def test_a_training_process_that_dies_silently_is_an_error_not_a_hang():
    import multiprocessing as mp
    import os

    from pipelines.zoo import next_event

    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    proc = ctx.Process(target=os._exit, args=(9,), daemon=True)
    proc.start()
    kind, name, why = next_event(events, {"t-x": proc})
    assert (kind, name) == ("error", "t-x") and "exit code 9" in why
