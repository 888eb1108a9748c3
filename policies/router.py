"""The router: a decomposer (query -> ordered steps) and an allocator (step -> pool tier).

`Router` is the one interface the chain (`pipelines.reason`) calls. `PolicyRouter` is R2's router: two
`PolicyLM`s. Baselines (`benchmarks.baselines`) implement the same two methods with fixed rules."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field

import torch

from benchmarks.tasks.base import Example, Task
from policies.parsers import Decomposition, format_decomposition, parse_decomposition
from policies.policy_lm import PolicyLM, Sample
from policies.tiny_lm import MODEL_SLOTS, format_prompt


@dataclass
class DecomposeDecision:
    decomposition: Decomposition
    prompt: str = ""
    sample: Sample | None = None  # the policy's sampled tokens and logprobs (None for rules)


@dataclass
class AllocateDecision:
    tier: int
    prompt: str = ""
    logprob: float = 0.0  # log-probability of the chosen tier under the allocator
    tier_logprobs: list[float] = field(default_factory=list)


class Router(abc.ABC):
    name: str = "router"
    decomposer_name: str = "gold"

    @abc.abstractmethod
    def decompose(self, examples: list[Example], task: Task) -> list[DecomposeDecision]: ...

    @abc.abstractmethod
    def allocate(self, step_texts: list[str], examples: list[Example], n_tiers: int) -> list[AllocateDecision]:
        """One tier per (already rendered) step text; tiers count from 0 = cheapest."""


class GoldDecomposition:
    """The task's gold decomposition (used until a trained decomposer exists)."""

    decomposer_name = "gold"

    def decompose(self, examples: list[Example], task: Task) -> list[DecomposeDecision]:
        return [DecomposeDecision(Decomposition([s.prompt for s in ex.steps] or [ex.query], True)) for ex in examples]


class WholeQuery:
    """No decomposition: the whole query is one step."""

    decomposer_name = "none"

    def decompose(self, examples: list[Example], task: Task) -> list[DecomposeDecision]:
        return [DecomposeDecision(Decomposition([ex.query], True)) for ex in examples]


def decompose_prompt(query: str) -> str:
    return format_prompt(f"decompose {query}")


def allocate_prompt(step_text: str) -> str:
    return format_prompt(f"allocate {step_text}")


class PolicyRouter(Router):
    """R2's router on the tiny world: both policies are tiny LMs sharing the zoo's vocabulary. The
    allocator's output is restricted to the pool's tier tokens, so it can only name a pool model."""

    name = "r2"

    def __init__(self, decomposer: PolicyLM | None, allocator: PolicyLM, temperature: float = 0.0,
                 max_steps: int = 6, max_tokens: int = 24, seed: int = 0, label: str = "policy"):
        self.decomposer, self.allocator = decomposer, allocator
        self.temperature, self.max_steps, self.max_tokens = temperature, max_steps, max_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.decomposer_name = label if decomposer is not None else "gold"
        self._gold = GoldDecomposition()

    def decompose(self, examples: list[Example], task: Task) -> list[DecomposeDecision]:
        if self.decomposer is None:
            return self._gold.decompose(examples, task)
        prompts = [decompose_prompt(ex.query) for ex in examples]
        samples = self.decomposer.sample(prompts, self.max_tokens, self.temperature, generator=self.generator)
        return [DecomposeDecision(parse_decomposition(s.text, self.max_steps), p, s) for p, s in zip(prompts, samples)]

    def tier_ids(self, n_tiers: int) -> list[int]:
        return self.allocator.tokenizer.convert_tokens_to_ids(MODEL_SLOTS[:n_tiers])

    def allocate(self, step_texts: list[str], examples: list[Example], n_tiers: int) -> list[AllocateDecision]:
        prompts = [allocate_prompt(t) for t in step_texts]
        allowed = self.tier_ids(n_tiers)
        with torch.no_grad():
            logits = self.allocator.next_token_logits(prompts)[:, allowed]
        logp = (logits / max(self.temperature, 1e-6) if self.temperature > 0 else logits).log_softmax(-1)
        if self.temperature > 0:
            tiers = torch.multinomial(logp.exp(), 1, generator=self.generator).squeeze(-1).tolist()
        else:
            tiers = logp.argmax(-1).tolist()
        return [AllocateDecision(t, p, float(logp[i, t]), logp[i].tolist())
                for i, (t, p) in enumerate(zip(tiers, prompts))]


def decomposition_target(example: Example) -> str:
    """SFT target text of the tiny decomposer for an example's gold decomposition."""
    return format_decomposition([s.prompt for s in example.steps])
