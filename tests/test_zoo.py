"""The zoo's ladder is real: bigger models remember more rare facts, at equal training tokens."""
import json
import time
from pathlib import Path

import pytest

from actors.zoo import TokenStream, zoo_tokenizer
from benchmarks.tasks import build_world
from pipelines.zoo import run_zoo

ROOT = Path(__file__).resolve().parents[1]


def assert_ladder(card: dict) -> None:
    rare = [m["accuracy"]["facts:rare"] for m in card["models"]]
    params = [m["params"] for m in card["models"]]
    assert params == sorted(params), "card models must be listed smallest first"
    assert all(b >= a - 0.02 for a, b in zip(rare, rare[1:])), f"rare accuracy not non-decreasing: {rare}"
    assert rare[0] < 0.5 and rare[-1] > 0.9, rare
    rungs = [rare[0]]
    for acc in rare[1:]:
        if acc - rungs[-1] >= 0.10:
            rungs.append(acc)
    assert len(rungs) >= 3, f"fewer than three distinct rungs: {rare}"
    assert len({m["tokens"] for m in card["models"]}) == 1, "every rung must see the same training tokens"


def test_test_zoo_ladder(zoo_card):
    assert_ladder(zoo_card)


def test_tiny_zoo_ladder():
    path = ROOT / "runs" / "tiny" / "zoo" / "card.json"
    if not path.exists():
        pytest.skip("the tiny zoo is trained by `make demo` (python -m pipelines.zoo --config configs/tiny.yaml)")
    assert_ladder(json.loads(path.read_text()))


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
