"""Per-sequence dynamic NTK scaling (policies.positions): inputs within the trained length read exactly as
trained, longer ones extrapolate, each row by its own length whatever its batch mates, and the setting
survives SFT's folder, a reload and a re-save (GRPO's)."""
import json

import pytest
import torch

from policies import positions
from policies.policy_lm import PolicyLM
from policies.tiny_lm import build_model, build_tokenizer, save

WORDS = [f"w{i}" for i in range(40)]
TRAINED = 8


@pytest.fixture()
def folders(tmp_path):
    """(plain policy folder, the same weights marked as trained on prompts of TRAINED tokens, factor 4)."""
    tok = build_tokenizer(WORDS)
    model = build_model(tok, hidden=24, layers=2, heads=2, intermediate=64, seed=3)
    with torch.no_grad():  # sharp attention, so that positions matter as in a trained model
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(30.0)
            layer.self_attn.k_proj.weight.mul_(30.0)
    plain, marked = tmp_path / "plain", tmp_path / "marked"
    save(model, tok, plain)
    save(model, tok, marked)
    positions.mark(marked, TRAINED, 4.0)
    return plain, marked


def logits(lm: PolicyLM, prompts: list[str]) -> torch.Tensor:
    enc = lm.encode(prompts)
    pos = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        return lm.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask, position_ids=pos).logits


def test_within_the_trained_length_nothing_changes_beyond_it_the_rows_extrapolate(folders):
    plain, marked = (PolicyLM.from_pretrained(f, device="cpu") for f in folders)
    assert isinstance(marked.model.model.rotary_emb, positions.PerSequenceNTK)
    short = ["w1 w2 w3 w4 w5"]  # 6 tokens with BOS
    assert torch.equal(logits(marked, short), logits(plain, short))
    long = [" ".join(WORDS[:20])]
    assert not torch.allclose(logits(marked, long), logits(plain, long), atol=1e-4)


def test_a_rows_extrapolation_does_not_depend_on_its_batch_mates(folders):
    _, marked = folders
    lm = PolicyLM.from_pretrained(marked, device="cpu")
    long, short = " ".join(WORDS[:20]), "w7 w8"
    alone_long, alone_short = logits(lm, [long])[0], logits(lm, [short])[0]
    together = logits(lm, [short, long])  # left-padded: the short row's positions are its own
    assert torch.allclose(together[1], alone_long, atol=1e-5)
    assert torch.allclose(together[0, -3:], alone_short, atol=1e-5)
    # sampling (token by token, KV cache) and scoring (one pass) agree on the same tokens, past the trained
    # length too: a row's base follows its prompt's length in both
    samples = lm.sample([short, long], max_new_tokens=6, temperature=1.0, generator=torch.Generator().manual_seed(0))
    scored = lm.token_logprobs([short, long], [s.token_ids for s in samples])
    for s, lp in zip(samples, scored):
        assert torch.allclose(lp, torch.tensor(s.logprobs), atol=1e-5)


def test_the_setting_survives_a_reload_and_a_resave(folders, tmp_path):
    _, marked = folders
    lm = PolicyLM.from_pretrained(marked, device="cpu")
    lm.save(tmp_path / "resaved")  # as GRPO saves what it loaded from SFT
    spec = json.loads((tmp_path / "resaved" / "config.json").read_text())[positions.CONFIG_KEY]
    assert spec == {"method": "dynamic-ntk-per-sequence", "trained_tokens": TRAINED, "factor": 4.0}
    assert isinstance(PolicyLM.from_pretrained(tmp_path / "resaved", device="cpu").model.model.rotary_emb,
                      positions.PerSequenceNTK)


def test_factor_one_records_nothing_and_vllm_engines_refuse_a_marked_policy(folders):
    plain, marked = folders
    positions.mark(plain, TRAINED, 1.0)
    assert positions.CONFIG_KEY not in json.loads((plain / "config.json").read_text())
    from actors.policy_engine import VLLMPolicy

    with pytest.raises(ValueError, match="extrapolates RoPE per sequence"):
        VLLMPolicy("decomposer", marked, {})
