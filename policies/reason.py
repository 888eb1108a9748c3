"""The R2 chain, the only implementation of it: decompose -> allocate -> run each step in order on
its model (seeing earlier answers) -> procedural review (escalate low-confidence steps one tier up)
-> final answer -> score. Evaluation, rollouts and serving all call `reason` / `reason_batch`.

A batch of queries advances in lockstep, one step index at a time, so that the router's policies run
batched and the pool's servers micro-batch the concurrent calls of a wave.
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import asdict, dataclass, field

from benchmarks.tasks.base import Example, Task, render_step
from core.config import ReasonConfig
from core.types import Completion, SamplingParams
from policies.router import AllocateDecision, BaseRouter, DecomposeDecision


def step_confidence(logprobs: list[float], alpha: float, without_logprobs: float = 1.0) -> float:
    """The alpha-quantile of a step's token probabilities. Tokens without a log-prob (NaN: the server
    gave none for them) are left out; when no token has one (a server that gives no log-probs), the
    confidence is `without_logprobs` (ReasonConfig.confidence_without_logprobs)."""
    probs = sorted(math.exp(x) for x in logprobs if not math.isnan(x))
    if not probs:
        return without_logprobs
    h = (len(probs) - 1) * alpha  # numpy's default (linear) quantile, without numpy's per-call overhead
    lo = math.floor(h)
    return probs[lo] + (h - lo) * (probs[min(lo + 1, len(probs) - 1)] - probs[lo])


@dataclass
class Call:
    model_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    cost_usd: float
    confidence: float


@dataclass
class StepRecord:
    text: str  # the decomposer's step, possibly referring to earlier answers (#1, ...)
    prompt: str  # what the pool model was asked
    allocation: AllocateDecision
    calls: list[Call] = field(default_factory=list)  # the allocated call, then any escalations

    @property
    def answer(self) -> str:
        return self.calls[-1].text if self.calls else ""

    @property
    def model_id(self) -> str:
        return self.calls[-1].model_id if self.calls else ""

    @property
    def confidence(self) -> float:
        return self.calls[-1].confidence if self.calls else 0.0


@dataclass
class Trajectory:
    example_id: str
    task: str
    query: str
    gold: str | None
    router: str
    decomposer: str
    decomposition: DecomposeDecision
    steps: list[StepRecord] = field(default_factory=list)
    answer: str = ""
    correct: float = 0.0
    router_usage: dict = field(default_factory=dict)  # the router's own tokens, per policy (BaseRouter.own_usage)

    @property
    def calls(self) -> list[Call]:
        return [c for s in self.steps for c in s.calls]

    @property
    def cost_usd(self) -> float:
        return sum(c.cost_usd for c in self.calls)

    @property
    def latency_s(self) -> float:  # steps run one after another
        return sum(c.latency_s for c in self.calls)

    @property
    def format_ok(self) -> bool:
        return self.decomposition.decomposition.format_ok

    def summary(self) -> dict:
        return {"id": self.example_id, "correct": self.correct, "cost_usd": self.cost_usd,
                "latency_s": self.latency_s, "calls": len(self.calls), "format_ok": self.format_ok,
                "steps": len(self.steps), "escalations": sum(len(s.calls) - 1 for s in self.steps)}

    def to_dict(self) -> dict:
        return {**asdict(self), **self.summary()}


def _call(c: Completion, cfg: ReasonConfig) -> Call:
    return Call(c.model_id, c.text, c.usage.prompt_tokens, c.usage.completion_tokens, c.latency_s, c.cost_usd,
                step_confidence(c.token_logprobs, cfg.alpha, cfg.confidence_without_logprobs))


async def generate_by_model(pool, calls: list[tuple[str, str]], params: SamplingParams) -> list[Completion]:
    """The completion of each (model id, prompt), in order: one pool call per model, carrying all of that
    model's prompts, so a wave of the chain costs one Ray round trip per model, not one per prompt (the
    server batches them either way). A call that fails for good raises, as the chain's wave would."""
    by_model: dict[str, list[int]] = {}
    for i, (model, _) in enumerate(calls):
        by_model.setdefault(model, []).append(i)
    groups = list(by_model.items())
    results = await asyncio.gather(*(pool.generate.remote(m, [calls[i][1] for i in idx], params) for m, idx in groups))
    out: list[Completion | None] = [None] * len(calls)
    for (_, idx), completions in zip(groups, results):
        for i, c in zip(idx, completions):
            out[i] = c
    return out


async def areason_batch(examples: list[Example], router: BaseRouter, pool, task: Task, cfg: ReasonConfig,
                        model_ids: list[str], review: bool = True) -> list[Trajectory]:
    """Run the chain on every example. `model_ids` are the pool's models, cheapest tier first."""
    if not examples:
        return []
    decisions = router.decompose(examples, task)
    trajs = [Trajectory(ex.id, ex.task, ex.query, ex.answer, router.name, router.decomposer_name, d)
             for ex, d in zip(examples, decisions)]
    plans = [d.decomposition.steps[: cfg.max_steps] or [ex.query] for ex, d in zip(examples, decisions)]
    params = SamplingParams(max_new_tokens=cfg.step_max_tokens or task.step_max_tokens)
    top = len(model_ids) - 1
    for k in range(max(len(p) for p in plans)):
        active = [i for i, p in enumerate(plans) if k < len(p)]
        earlier = {i: [s.answer for s in trajs[i].steps] for i in active}
        prompts = [task.step_prompt(examples[i], plans[i][k], earlier[i], [s.text for s in trajs[i].steps])
                   for i in active]
        # the allocator sees each step with the earlier answers it refers to filled in
        allocs = router.allocate([render_step(plans[i][k], earlier[i]) for i in active],
                                 [examples[i] for i in active], len(model_ids))
        records = [StepRecord(plans[i][k], p, a) for i, p, a in zip(active, prompts, allocs)]
        tiers = [min(max(a.tier, 0), top) for a in allocs]
        pending = list(range(len(active)))
        for attempt in range(cfg.max_escalations + 1 if review else 1):
            outs = await generate_by_model(pool, [(model_ids[tiers[j]], records[j].prompt) for j in pending], params)
            for j, out in zip(pending, outs):
                records[j].calls.append(_call(out, cfg))
            # procedural review: escalate low-confidence steps one tier up
            pending = [j for j in pending if records[j].confidence < cfg.tau and tiers[j] < top]
            if not pending or attempt == cfg.max_escalations:
                break
            for j in pending:
                tiers[j] = top if cfg.escalation == "top" else tiers[j] + 1
        for i, rec in zip(active, records):
            trajs[i].steps.append(rec)
    # tasks whose answer needs a final call make it on the model of the chain's last step
    finals = [(i, task.final_prompt(ex, [s.text for s in t.steps], [s.answer for s in t.steps]))
              for i, (ex, t) in enumerate(zip(examples, trajs))]
    finals = [(i, p) for i, p in finals if p is not None]
    outs = await generate_by_model(pool, [(trajs[i].steps[-1].model_id, p) for i, p in finals], params)
    for (i, p), out in zip(finals, outs):
        t = trajs[i]
        t.steps.append(StepRecord("final answer", p, AllocateDecision(t.steps[-1].allocation.tier),
                                  [_call(out, cfg)]))
    for ex, t in zip(examples, trajs):
        t.router_usage = router.own_usage(t.decomposition, [s.allocation.prompt for s in t.steps if s.allocation.prompt])
        t.answer = task.final_answer(ex, [s.answer for s in t.steps])
        t.correct = task.score(t.answer, ex) if ex.answer is not None else float("nan")
    return trajs


def reason_batch(examples, router, pool, task, cfg, model_ids, review: bool = True) -> list[Trajectory]:
    return asyncio.run(areason_batch(examples, router, pool, task, cfg, model_ids, review))


def reason(example: Example, router: BaseRouter, pool, task: Task, cfg: ReasonConfig, model_ids: list[str]) -> Trajectory:
    """The chain on one query."""
    return reason_batch([example], router, pool, task, cfg, model_ids)[0]
