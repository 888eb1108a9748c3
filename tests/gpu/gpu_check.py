"""A short GPU check of the code paths a GPU user runs first: the `hf` pool backend and the router's
`PolicyLM` on CUDA (greedy answers equal to the CPU's, seeded sampling reproducible, the sampler's
logprobs equal the scorer's on the same tokens, a GRPO step's gradient finite), the same in bf16, and
one bf16 DeepSpeed step where deepspeed (and ray) are importable; what it could not run is listed under
"skipped".

    python tests/gpu/gpu_check.py        # prints one JSON line; exits non-zero on a failure
    pytest -m gpu tests/gpu              # the same check as a test (skipped without a GPU)

Needs only torch, transformers and tokenizers (no Ray, no pydantic), so it runs in a bare CUDA image.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # runnable as a script from any folder

import torch  # noqa: E402

from actors.backends.hf import HFBackend  # noqa: E402
from core.prompts import format_prompt  # noqa: E402
from core.types import SamplingParams  # noqa: E402
from policies.grpo import grpo_loss, pad_sequences  # noqa: E402
from policies.policy_lm import PolicyLM  # noqa: E402
from policies.tiny_lm import build_model, build_tokenizer, save  # noqa: E402


def bf16_policy_step(path: str, prompts: list[str], allowed: list[list[int]], out: dict) -> bool:
    """Sampling and a GRPO step with the policy in bf16 (what the learner runs on GPU)."""
    lm = PolicyLM.from_pretrained(path)
    lm.model.to(torch.bfloat16)
    samples = lm.sample(prompts, 8, 0.7, allowed=allowed, generator=torch.Generator().manual_seed(1))
    lps = lm.token_logprobs(prompts, [x.token_ids for x in samples], temperature=0.7, allowed=allowed)
    logp, mask = pad_sequences([lp.float() for lp in lps])
    old, _ = pad_sequences([torch.tensor(x.logprobs) for x in samples])
    loss, _ = grpo_loss(logp, old.to(logp.device), logp.detach(), torch.randn(len(prompts), 1, device=logp.device),
                        mask.to(logp.device))
    loss.backward()
    grads = [p.grad for p in lm.model.parameters() if p.grad is not None]
    out["bf16_sampler_vs_scorer_max_gap"] = max(abs(p - q) for lp, x in zip(lps, samples)
                                                for p, q in zip(lp.float().tolist(), x.logprobs))
    out["bf16_grad_finite"] = bool(grads) and all(bool(torch.isfinite(g).all()) for g in grads)
    return out["bf16_grad_finite"] and out["bf16_sampler_vs_scorer_max_gap"] < 0.1  # bf16 rounding


def deepspeed_step(path: str, prompts: list[str], allowed: list[list[int]], out: dict) -> bool:
    """One bf16 DeepSpeed engine step, as a learner rank takes it (when deepspeed and ray are importable)."""
    try:
        import deepspeed

        from actors.learner import ds_config, init_distributed_env
        from core.config import load_config
    except ImportError as err:
        out["skipped"].append(f"deepspeed step ({err.name} not installed)")
        return True
    init_distributed_env()
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "test.yaml", ["train.zero_stage=2"])
    lm = PolicyLM.from_pretrained(path)
    engine, *_ = deepspeed.initialize(model=lm.model, config=ds_config(cfg, 1e-3),
                                      model_parameters=list(lm.model.parameters()))
    before = next(engine.module.parameters()).detach().float().clone()
    lps = PolicyLM(engine.module, lm.tokenizer).token_logprobs(prompts[:8], [a[:3] for a in allowed[:8]])
    engine.backward(-torch.stack([lp.float().sum() for lp in lps]).mean())
    engine.step()
    out["deepspeed_bf16"] = bool(engine.bfloat16_enabled())
    out["deepspeed_param_changed"] = not torch.equal(before, next(engine.module.parameters()).detach().float())
    return out["deepspeed_bf16"] and out["deepspeed_param_changed"]


def main() -> dict:
    assert torch.cuda.is_available(), "no CUDA device"
    out: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}
    words = [f"w{i}" for i in range(200)]
    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(words)
        save(build_model(tok, 128, 3, 4, 384, seed=3), tok, tmp)
        prompts = [format_prompt(" ".join(words[i: i + 3 + i % 4])) for i in range(0, 64, 2)]
        params = SamplingParams(max_new_tokens=12)
        cpu, gpu = HFBackend("m", {"path": tmp, "device": "cpu"}), HFBackend("m", {"path": tmp})
        assert gpu.model.device.type == "cuda"
        a, b = cpu.generate(prompts, params), gpu.generate(prompts, params)
        same = sum(x.token_ids == y.token_ids for x, y in zip(a, b))
        out["hf_greedy_equal_cpu"] = f"{same}/{len(prompts)}"
        out["hf_max_logprob_diff"] = max(abs(p - q) for x, y in zip(a, b)
                                         for p, q in zip(x.token_logprobs, y.token_logprobs))
        lm = PolicyLM.from_pretrained(tmp)
        assert lm.device.type == "cuda"
        allowed = [tok.convert_tokens_to_ids(p.split()[1:-1]) + [tok.eos_token_id] for p in prompts]
        g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
        s1 = lm.sample(prompts, 10, 1.0, allowed=allowed, generator=g1)
        s2 = lm.sample(prompts, 10, 1.0, allowed=allowed, generator=g2)
        assert [x.token_ids for x in s1] == [x.token_ids for x in s2], "seeded sampling differs"
        assert all(set(x.token_ids) <= set(al) for x, al in zip(s1, allowed)), "token outside allowed set"
        t0 = time.perf_counter()
        lps = lm.token_logprobs(prompts, [x.token_ids for x in s1], allowed=allowed)
        out["score_seconds"] = round(time.perf_counter() - t0, 4)
        gap = max(abs(p - q) for lp, x in zip(lps, s1) for p, q in zip(lp.tolist(), x.logprobs))
        out["sampler_vs_scorer_max_gap"] = gap
        logp, mask = pad_sequences(lps)
        old, _ = pad_sequences([torch.tensor(x.logprobs) for x in s1])
        adv = torch.randn(len(prompts), 1)
        loss, stats = grpo_loss(logp, old, logp.detach(), adv, mask)
        loss.backward()
        grads = [p.grad for p in lm.model.parameters() if p.grad is not None]
        out["grad_finite"] = bool(all(torch.isfinite(g).all() for g in grads)) and bool(grads)
        out["grpo"] = {k: round(v, 6) for k, v in stats.items()}
        out["skipped"] = []
        bf16_ok = bf16_policy_step(tmp, prompts, allowed, out)
        ds_ok = deepspeed_step(tmp, prompts, allowed, out)
    ok = (same >= len(prompts) - 1 and out["hf_max_logprob_diff"] < 1e-3 and gap < 1e-3 and out["grad_finite"]
          and bf16_ok and ds_ok)
    out["ok"] = ok
    print(json.dumps(out))
    if not ok:
        raise SystemExit(1)
    return out


if __name__ == "__main__":
    main()
