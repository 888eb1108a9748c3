"""Baselines, a registry: each method runs a batch of test queries over any pool and returns one
`Trajectory` per query, through the same chain (`policies.reason`) as R2.

    single:<model>  the whole query in one shot on one model
    all:<model>     the decomposition, every step on that model (all:<largest> is the reference)
    random          the decomposition, a random model per step
    task-router     RouteLLM-style: a classifier on query words picks one model per query (trained
                    on labelled train queries: the cheapest model whose chain was correct)
    cascade         FrugalGPT-style: cheapest model first; the whole query moves up a tier while any
                    step's confidence is below tau
    two-tier        DoT-style: each step on the smallest model, moved to the largest when its
                    alpha-quantile confidence is below tau
    rllib-ppo       a classic-RL allocator: a small policy on each step's bag of words picks its tier
                    (trained by RLlib PPO on a table of which model solves which train subtask at what
                    cost: pipelines.bandit; the evaluation trains it before running it)

Methods that need a decomposition take it from a named source: `<method>@gold` (the task's gold
decomposition: an oracle no deployed system has) or `<method>@<router>` (a trained router's own
decomposer, the same one that router runs with: the fair comparison). A name without `@` means `@gold`.
Each trajectory records which decomposer produced it. A new baseline is one class plus one registry line.
"""
from __future__ import annotations

import abc
import random
from collections import Counter
from dataclasses import dataclass, field

import torch

from benchmarks.tasks.base import Example, Task
from core.config import ReasonConfig
from core.registry import Registry
from policies.features import BagOfWords, fit_logreg
from policies.reason import Trajectory, areason_batch
from policies.router import AllocateDecision, BaseRouter, GoldDecomposition, WholeQuery


@dataclass
class Context:
    pool: object  # the ModelPool actor handle
    model_ids: list[str]  # cheapest tier first
    reason: ReasonConfig
    seed: int = 0
    decomposers: dict = field(default_factory=lambda: {"gold": GoldDecomposition()})  # name -> source


class Method(abc.ABC):
    name: str
    knob: str | None = None  # the setting a sweep varies (for cost-accuracy curves)

    @abc.abstractmethod
    async def run(self, examples: list[Example], task: Task, ctx: Context) -> list[Trajectory]: ...

    def with_knob(self, value: float) -> Method:
        raise NotImplementedError(f"{self.name} has no knob")

    def policy_params(self) -> dict[str, int]:
        """Parameters of each policy LM this method runs: its router's, or the decomposer it borrows."""
        if isinstance(getattr(self, "router", None), BaseRouter):
            return self.router.policy_params()
        dec = getattr(self, "decomposer", None)
        return {"decomposer": dec.policy_params()["decomposer"]} if isinstance(dec, BaseRouter) else {}


class BorrowedDecomposition(BaseRouter):
    """A router whose steps come from a decomposition source (gold, or a trained router's decomposer,
    whose tokens and size it then accounts as its own)."""

    def __init__(self, name: str, decomposer):
        self.name, self._decomposer = name, decomposer
        self.decomposer_name = decomposer.decomposer_name

    def decompose(self, examples, task):
        return self._decomposer.decompose(examples, task)

    def own_usage(self, decision, allocation_prompts):
        usage = getattr(self._decomposer, "decomposition_usage", None)
        return usage(decision) if usage else {}

    def policy_params(self):
        sizes = self._decomposer.policy_params() if isinstance(self._decomposer, BaseRouter) else {}
        return {k: v for k, v in sizes.items() if k == "decomposer"}


class FixedRouter(BorrowedDecomposition):
    """A router of rules: a decomposition source and a fixed tier per step."""

    def __init__(self, name: str, decomposer, tier_of):
        super().__init__(name, decomposer)
        self._tier_of = tier_of

    def allocate(self, step_texts, examples, n_tiers):
        return [AllocateDecision(self._tier_of(t, ex, n_tiers)) for t, ex in zip(step_texts, examples)]


class RouterMethod(Method):
    """Any `BaseRouter` run through the chain (with or without the procedural review, whose confidence
    threshold tau is then the method's knob)."""

    def __init__(self, name: str, router: BaseRouter, review: bool = False, reason: dict | None = None):
        self.name, self.router, self.review, self.reason_overrides = name, router, review, reason or {}
        self.knob = "tau" if review else None

    def with_knob(self, value):
        return RouterMethod(self.name, self.router, self.review, {**self.reason_overrides, "tau": value})

    async def run(self, examples, task, ctx):
        cfg = ctx.reason.model_copy(update=self.reason_overrides)
        return await areason_batch(examples, self.router, ctx.pool, task, cfg, ctx.model_ids, self.review)


def _tier(ctx: Context, model: str) -> int:
    if model not in ctx.model_ids:
        raise ValueError(f"unknown pool model {model!r}; pool: {ctx.model_ids}")
    return ctx.model_ids.index(model)


def single(ctx: Context, model: str, dec: str | None = None) -> Method:
    if dec is not None:
        raise ValueError(f"single:{model} answers the whole query in one call: it takes no decomposer (@...)")
    t = _tier(ctx, model)
    return RouterMethod(f"single:{model}", FixedRouter(f"single:{model}", WholeQuery(), lambda *_: t))


def all_on(ctx: Context, model: str, dec: str | None = None) -> Method:
    dec = dec or "gold"
    t, name = _tier(ctx, model), f"all:{model}@{dec}"
    return RouterMethod(name, FixedRouter(name, ctx.decomposers[dec], lambda *_: t))


class RandomMix(RouterMethod):
    """A random tier per step: the largest with probability `mix` (the knob), else a uniformly random
    cheaper one; without a mix, uniform over every tier."""

    def __init__(self, decomposer, dec: str, seed: int, mix: float | None = None):
        rng = random.Random(seed)

        def tier(_t, _e, n: int) -> int:
            if mix is None:
                return rng.randrange(n)
            return n - 1 if rng.random() < mix or n == 1 else rng.randrange(n - 1)

        name = f"random@{dec}"
        super().__init__(name, FixedRouter(name, decomposer, tier))
        self.knob, self.decomposer, self.dec, self.seed = "mix", decomposer, dec, seed

    def with_knob(self, value):
        return RandomMix(self.decomposer, self.dec, self.seed, value)


def random_method(ctx: Context, _: str | None = None, dec: str | None = None) -> Method:
    dec = dec or "gold"
    return RandomMix(ctx.decomposers[dec], dec, ctx.seed)


class TwoTier(RouterMethod):
    def __init__(self, decomposer, dec: str = "gold", tau: float | None = None):
        overrides = {"escalation": "top", "max_escalations": 1, **({"tau": tau} if tau is not None else {})}
        name = f"two-tier@{dec}"
        super().__init__(name, FixedRouter(name, decomposer, lambda *_: 0), True, overrides)
        self.decomposer, self.dec = decomposer, dec

    def with_knob(self, value):
        return TwoTier(self.decomposer, self.dec, value)


class Cascade(Method):
    knob = "tau"

    def __init__(self, decomposer, dec: str = "gold", tau: float | None = None):
        self.decomposer, self.dec, self.tau = decomposer, dec, tau
        self.name = f"cascade@{dec}"

    async def run(self, examples, task, ctx):
        tau = ctx.reason.tau if self.tau is None else self.tau
        result: dict[str, Trajectory] = {}
        todo = list(examples)
        spent: dict[str, list] = {ex.id: [] for ex in examples}
        for tier, model in enumerate(ctx.model_ids):
            router = FixedRouter(f"{self.name}:{model}", self.decomposer, lambda *_, t=tier: t)
            trajs = await areason_batch(todo, router, ctx.pool, task, ctx.reason, ctx.model_ids, review=False)
            last = tier == len(ctx.model_ids) - 1
            nxt = []
            for ex, tr in zip(todo, trajs):
                tr.steps = spent[ex.id] + tr.steps  # earlier tiers' calls are paid for too
                confident = min((s.confidence for s in tr.steps[len(spent[ex.id]):]), default=0.0) >= tau
                if confident or last:
                    tr.router = self.name
                    # the answer is the accepted tier's steps only
                    own = tr.steps[len(spent[ex.id]):]
                    tr.answer = task.final_answer(ex, [s.answer for s in own])
                    tr.correct = task.score(tr.answer, ex)
                    result[ex.id] = tr
                else:
                    spent[ex.id] = tr.steps
                    nxt.append(ex)
            todo = nxt
            if not todo:
                break
        return [result[ex.id] for ex in examples]

    def with_knob(self, value):
        return Cascade(self.decomposer, self.dec, value)


class TaskRouter(Method):
    """A bag-of-words logistic-regression classifier (one per task) picks the tier for the whole
    query; labels = cheapest tier whose `all:<tier>` chain answered a train query correctly. Its knob,
    `threshold`: the cheapest tier whose cumulative predicted probability (that it suffices) reaches it;
    without one, the most probable tier."""

    knob = "threshold"

    def __init__(self, decomposer=None, dec: str = "gold", train: dict[str, list[Example]] | None = None,
                 threshold: float | None = None):
        self.decomposer, self.dec, self.name = decomposer or GoldDecomposition(), dec, f"task-router@{dec}"
        self.train, self.threshold = train or {}, threshold
        self.models: dict[str, tuple[BagOfWords, torch.nn.Linear]] = {}

    def with_knob(self, value):
        other = TaskRouter(self.decomposer, self.dec, self.train, value)
        other.models = self.models  # the same classifier, another decision rule
        return other

    async def fit(self, task: Task, ctx: Context) -> None:
        examples = self.train.get(task.name) or []
        if not examples:
            raise ValueError(f"task-router: no train queries for {task.name}")
        n = len(ctx.model_ids)
        labels = [n - 1] * len(examples)
        for tier in reversed(range(n)):
            trajs = await all_on(ctx, ctx.model_ids[tier]).run(examples, task, ctx)
            for i, tr in enumerate(trajs):
                if tr.correct >= 1.0:
                    labels[i] = tier
        vocab = BagOfWords.from_texts(ex.query for ex in examples)
        clf = fit_logreg(vocab([ex.query for ex in examples]), torch.tensor(labels), n, ctx.seed)
        self.models[task.name] = (vocab, clf)
        self.label_counts = Counter(labels)

    async def run(self, examples, task, ctx):
        if task.name not in self.models:
            await self.fit(task, ctx)
        vocab, clf = self.models[task.name]
        with torch.no_grad():
            logits = clf(vocab([ex.query for ex in examples]))
            if self.threshold is None:
                tiers = logits.argmax(-1).tolist()
            else:
                enough = logits.softmax(-1).cumsum(-1) >= self.threshold
                tiers = torch.where(enough.any(-1), enough.float().argmax(-1), logits.shape[-1] - 1).tolist()
        by_id = {ex.id: t for ex, t in zip(examples, tiers)}
        router = FixedRouter(self.name, self.decomposer, lambda _t, ex, _n: by_id[ex.id])
        return await areason_batch(examples, router, ctx.pool, task, ctx.reason, ctx.model_ids, review=False)


class FeatureAllocator(BorrowedDecomposition):
    """A decomposition source (default: gold); each (rendered) step on the tier of the largest logit of a
    policy (a torch module: bag-of-words features -> one logit per tier)."""

    def __init__(self, name: str, features: BagOfWords, policy: torch.nn.Module, decomposer=None):
        super().__init__(name, decomposer or GoldDecomposition())
        self.features, self.policy = features, policy

    def with_decomposer(self, name: str, decomposer) -> FeatureAllocator:
        return FeatureAllocator(name, self.features, self.policy, decomposer)

    def tiers(self, texts: list[str]) -> list[int]:
        with torch.no_grad():
            return self.policy(self.features(texts)).argmax(-1).tolist()

    def allocate(self, step_texts, examples, n_tiers):
        return [AllocateDecision(min(t, n_tiers - 1)) for t in self.tiers(step_texts)]


class SubtaskAllocator(Method):
    """A subtask-level allocator whose policy is trained on a floor above this one (`rllib-ppo`: RLlib
    PPO, in pipelines.bandit): the evaluation sets `router` (a `FeatureAllocator`) before running it.
    Its decomposition source's steps, no procedural review, like `all:<model>`."""

    def __init__(self, decomposer=None, dec: str = "gold"):
        self.name, self.router, self.decomposer = f"rllib-ppo@{dec}", None, decomposer or GoldDecomposition()

    async def run(self, examples, task, ctx):
        if self.router is None:
            raise RuntimeError(f"{self.name}: no trained policy; pipelines.evaluate trains it "
                               "(pipelines.bandit) before running it")
        return await areason_batch(examples, self.router, ctx.pool, task, ctx.reason, ctx.model_ids, review=False)


# name -> factory(ctx, argument after ':' or None, decomposer name after '@')
BASELINES: Registry = Registry("method")
BASELINES.add("single", single)
BASELINES.add("all", all_on)
BASELINES.add("random", random_method)
BASELINES.add("two-tier", lambda ctx, _, dec: TwoTier(ctx.decomposers[dec or "gold"], dec or "gold"))
BASELINES.add("cascade", lambda ctx, _, dec: Cascade(ctx.decomposers[dec or "gold"], dec or "gold"))
BASELINES.add("task-router", lambda ctx, _, dec: TaskRouter(ctx.decomposers[dec or "gold"], dec or "gold"))
BASELINES.add("rllib-ppo", lambda ctx, _, dec: SubtaskAllocator(ctx.decomposers[dec or "gold"], dec or "gold"))


def expand(names: list[str], model_ids: list[str]) -> list[str]:
    """`single:*` / `all:*` stand for one method per pool model."""
    out = []
    for n in names:
        kind, _, arg = n.partition(":")
        out.extend(f"{kind}:{m}" for m in model_ids) if arg == "*" else out.append(n)
    return out


def make_method(name: str, ctx: Context) -> Method:
    """`kind[:arg][@decomposer]`, e.g. `all:t-4@r2`, `cascade@gold`, `single:t-1`."""
    base, at, dec = name.partition("@")
    kind, _, arg = base.partition(":")
    if at and dec not in ctx.decomposers:
        raise ValueError(f"{name}: unknown decomposer {dec!r} (known: {sorted(ctx.decomposers)})")
    return BASELINES.lookup(kind)(ctx, arg or None, dec if at else None)


async def reference_cost(ctx: Context, tasks: dict[str, Task], examples: dict[str, list[Example]]) -> dict[str, float]:
    """Mean cost per query of the reference (every gold step on the largest model), per task."""
    ref = make_method(f"all:{ctx.model_ids[-1]}", ctx)
    out = {}
    for name, task in tasks.items():
        trajs = await ref.run(examples[name], task, ctx)
        out[name] = sum(t.cost_usd for t in trajs) / len(trajs)
    return out
