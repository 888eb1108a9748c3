"""GRPO math against values computed by hand."""
import math

import pytest
import torch

from policies.grpo import group_advantages, grpo_loss, k3_kl, pad_sequences
from policies.reward import reward


def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]), eps=0.0 + 1e-12)
    # mean 0.5, population std 0.5 -> +-1; a group of equal rewards carries no signal
    assert adv[0].tolist() == pytest.approx([1.0, -1.0, -1.0, 1.0])
    assert adv[1].tolist() == pytest.approx([0.0] * 4)


def test_k3_kl_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # d = ln(0.25/0.5) = -ln 2: exp(d) - d - 1 = 0.5 + ln2 - 1
    assert k3_kl(logp, ref).item() == pytest.approx(0.5 + math.log(2) - 1)
    assert k3_kl(ref, ref).item() == 0.0


def test_clipped_objective_by_hand():
    # two tokens of one sequence (A = +1): ratios 1.5 (clipped to 1.2) and 0.5 (min keeps 0.5)
    old = torch.log(torch.tensor([[0.2, 0.4]]))
    new = torch.log(torch.tensor([[0.3, 0.2]]))
    adv = torch.tensor([[1.0]])
    mask = torch.ones(1, 2)
    loss, stats = grpo_loss(new, old, new.detach(), adv, mask, clip=0.2, kl_coef=0.0)
    assert loss.item() == pytest.approx(-(1.2 + 0.5) / 2)
    assert stats["clip_frac"] == pytest.approx(1.0)  # both ratios are outside [0.8, 1.2]
    # negative advantage: min(rho*A, clip(rho)*A) = -1.5 and -0.8
    loss_neg, _ = grpo_loss(new, old, new.detach(), -adv, mask, clip=0.2, kl_coef=0.0)
    assert loss_neg.item() == pytest.approx((1.5 + 0.8) / 2)


def test_token_mean_ignores_padding_and_adds_kl():
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.5], [0.5, 0.1]]))
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # last token is padding
    adv = torch.tensor([[0.0], [0.0]])
    loss, stats = grpo_loss(logp, logp.detach(), ref, adv, mask, kl_coef=0.1)
    kl = (0.5 + math.log(2) - 1) / 3  # only the first token differs from the reference
    assert stats["kl"] == pytest.approx(kl)
    assert loss.item() == pytest.approx(0.1 * kl)


def test_gradient_pushes_up_good_samples():
    logits = torch.zeros(2, requires_grad=True)
    logp = logits.log_softmax(-1)[None, :]  # two one-token "sequences" as one row, each its own token
    adv = torch.tensor([[1.0, -1.0]]).T
    loss, _ = grpo_loss(logp.T, logp.T.detach(), logp.T.detach(), adv, torch.ones(2, 1), kl_coef=0.0)
    loss.backward()
    assert logits.grad[0] < 0 < logits.grad[1]  # descending the loss raises the good sample's logit


def test_reward_formula_and_padding():
    assert reward(1.0, 0.5, True, lam=0.5, beta=0.1, cost_ref=1.0) == pytest.approx(1 - 0.25 + 0.1)
    assert reward(0.0, 2.0, False, lam=1.0, beta=0.1, cost_ref=4.0) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        reward(1, 1, True, 0.5, 0.1, 0.0)
    out, mask = pad_sequences([torch.tensor([1.0, 2.0]), torch.tensor([3.0])])
    assert out.tolist() == [[1.0, 2.0], [3.0, 0.0]] and mask.tolist() == [[1, 1], [1, 0]]


def test_tier_logprobs_one_forward_per_distinct_prompt_equals_scoring_each_candidate():
    """The allocator's tier distribution from one forward per distinct prompt (single-token candidates)
    equals scoring each prompt + candidate sequence on its own, values and gradients, duplicates included."""
    from policies.policy_lm import PolicyLM
    from policies.router import MODEL_SLOTS, ActionSpace
    from policies.tiny_lm import ROUTER_WORDS, build_model, build_tokenizer

    tok = build_tokenizer([*ROUTER_WORDS, *MODEL_SLOTS, "jump", "walk", "twice", "of", "x"])
    lm = PolicyLM(build_model(tok, hidden=16, layers=1, heads=2, intermediate=32, seed=3), tok)
    ids = ["a", "b", "c", "d"]
    actions = ActionSpace("tiny", ids)
    prompts = [actions.templates.allocate_prompt(s, ids, tok) for s in ["jump twice", "walk", "jump twice", "x of x"]]
    fast = actions.tier_logprobs(lm, prompts, len(ids), temperature=0.7)
    fast[0, 1].backward()
    grad_fast = [p.grad.clone() for p in lm.model.parameters()]
    lm.model.zero_grad()
    cands = actions.templates.candidates(ids, tok)
    lps = lm.token_logprobs([p for p in prompts for _ in cands], [c for _ in prompts for c in cands])
    slow = (torch.stack([lp.sum() for lp in lps]).view(len(prompts), len(cands)) / 0.7).log_softmax(-1)
    assert torch.allclose(fast, slow, atol=1e-5)
    assert torch.equal(fast[0], fast[2])  # the repeated prompt
    slow[0, 1].backward()
    for a, b in zip(grad_fast, (p.grad for p in lm.model.parameters())):
        assert torch.allclose(a, b, atol=1e-5)
