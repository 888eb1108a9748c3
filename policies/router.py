"""The router: a decomposer (query -> ordered steps) and an allocator (step -> pool tier).

`BaseRouter` is the one interface the chain (`policies.reason`) calls. `PolicyRouter` is R2's router: two
`PolicyLM`s. Baselines (`policies.baselines`) implement the same two methods with fixed rules."""
from __future__ import annotations

import abc
import copy
from dataclasses import dataclass, field

import torch

from benchmarks.tasks.base import Example, Task
from core.prompts import FUNCTION_WORDS, format_prompt
from core.registry import Registry
from policies.folding import Folding, fold_calls
from policies.parsers import Decomposition, format_decomposition, parse_decomposition
from policies.policy_lm import PolicyLM, Sample
from policies.tiny_lm import MODEL_SLOTS


@dataclass
class DecomposeDecision:
    decomposition: Decomposition
    calls: list[tuple[str, Sample]] = field(default_factory=list)  # each decomposer call: prompt, sampled tokens

    @property
    def prompt(self) -> str:
        return self.calls[0][0] if self.calls else ""

    @property
    def sample(self) -> Sample | None:
        """The first call's sample (None for a decomposition by rules)."""
        return self.calls[0][1] if self.calls else None


@dataclass
class AllocateDecision:
    tier: int
    prompt: str = ""
    logprob: float = 0.0  # log-probability of the chosen tier under the allocator
    tier_logprobs: list[float] = field(default_factory=list)


class BaseRouter(abc.ABC):
    name: str = "router"
    decomposer_name: str = "gold"

    @abc.abstractmethod
    def decompose(self, examples: list[Example], task: Task) -> list[DecomposeDecision]: ...

    @abc.abstractmethod
    def allocate(self, step_texts: list[str], examples: list[Example], n_tiers: int) -> list[AllocateDecision]:
        """One tier per (already rendered) step text; tiers count from 0 = cheapest."""

    def own_usage(self, decision: DecomposeDecision, allocation_prompts: list[str]) -> dict[str, dict[str, int]]:
        """The router's own tokens for one query, per policy ({} for a router of rules: it runs no LM)."""
        return {}

    def policy_params(self) -> dict[str, int]:
        """Parameters of each policy LM the router runs (what its own tokens are priced by)."""
        return {}


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


TEMPLATES: Registry[type] = Registry("router template")


@TEMPLATES.register("tiny")
class TinyTemplates:
    """Prompts of the tiny world's router: `decompose <what is left of the query> =` -> its next step
    (one call per step, folded into the query: `policies.folding`), and `allocate <step> =` -> one
    tier token `<mK>` (tier K of the pool, cheapest = 0)."""

    stepwise = True

    def decompose_prompt(self, query: str, tokenizer) -> str:
        return format_prompt(f"decompose {query}")

    def decomposition_calls(self, query: str, steps: list[str], tokenizer) -> list[tuple[str, str]] | None:
        """(prompt, what the decomposer writes) for every call of decomposition `steps` (its SFT targets);
        None when the steps do not fold out of the query."""
        calls = fold_calls(query, steps)
        return None if calls is None else [(self.decompose_prompt(q, tokenizer), t) for q, t in calls]

    def decomposition_from(self, query: str, outputs: list[str], max_steps: int) -> Decomposition:
        """The decomposition the calls' outputs (in order) write; total, never raises."""
        fold = Folding.of(query)
        for out in outputs:
            if not fold.write(out, max_steps):
                break
        return fold.decomposition()

    def decompose_vocab(self, prompt: str, tokenizer) -> list[int]:
        """Task-agnostic: a step copies words of what is left of the query (its references `#`
        included) and the language's function words; nothing else, and no task's grammar."""
        words = prompt.split()[1:-1]  # drop "decompose" and the separator
        ids = set(tokenizer.convert_tokens_to_ids([*words, *FUNCTION_WORDS])) - {tokenizer.unk_token_id}
        return sorted(ids | {tokenizer.eos_token_id})

    def allocate_prompt(self, step_text: str, model_ids: list[str], tokenizer) -> str:
        return format_prompt(f"allocate {step_text}")

    def candidates(self, model_ids: list[str], tokenizer) -> list[list[int]]:
        return [[i] for i in tokenizer.convert_tokens_to_ids(MODEL_SLOTS[: len(model_ids)])]


@TEMPLATES.register("chat")
class ChatTemplates:
    """Natural-language prompts for instruct LMs (chat template when the tokenizer has one); the
    allocator's candidates are the pool's model ids, written after the prompt. The decomposer's prompt
    ends with `step 1:`, so it writes the first step's text, then `step 2: ...` lines."""

    opening = "step 1:"
    stepwise = False

    decompose_instruction = (
        "Break the question into 2 to 4 short, ordered sub-questions that lead to its answer. "
        "Write one per line as 'step 1: ...', 'step 2: ...'. Do not answer them.\n\nQuestion: {query}")
    allocate_instruction = (
        "Models, from cheapest and weakest to most expensive and strongest: {models}.\n"
        "Which model should answer this sub-question? Reply with the model name only.\n\nSub-question: {step}")

    def _chat(self, text: str, tokenizer) -> str:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                 add_generation_prompt=True)
        return text + "\n"

    def decompose_prompt(self, query: str, tokenizer) -> str:
        return self._chat(self.decompose_instruction.format(query=query), tokenizer) + self.opening

    def decomposition_target(self, steps: list[str]) -> str:
        return format_decomposition(steps, numbered=True).removeprefix(self.opening)

    def decomposition_calls(self, query: str, steps: list[str], tokenizer) -> list[tuple[str, str]]:
        """The one call that writes the whole decomposition: (prompt, target)."""
        return [(self.decompose_prompt(query, tokenizer), self.decomposition_target(steps))]

    def decomposition_from(self, query: str, outputs: list[str], max_steps: int) -> Decomposition:
        """The decomposition the one call's output writes; total, never raises."""
        return parse_decomposition(self.opening + (outputs[0] if outputs else ""), max_steps)

    def decompose_vocab(self, prompt: str, tokenizer) -> None:
        return None  # free text

    def allocate_prompt(self, step_text: str, model_ids: list[str], tokenizer) -> str:
        return self._chat(self.allocate_instruction.format(models=", ".join(model_ids), step=step_text), tokenizer)

    def candidates(self, model_ids: list[str], tokenizer) -> list[list[int]]:
        return [tokenizer.encode(m, add_special_tokens=False) + [tokenizer.eos_token_id] for m in model_ids]


MIN_TEMPERATURE = 1e-3  # temperatures below this decode greedily (dividing by them overflows)


def effective_temperature(t: float) -> float:
    return t if t >= MIN_TEMPERATURE else 0.0


class ActionSpace:
    """The one definition of both policies' action distributions, used by the sampler (`PolicyRouter`)
    and the learner alike: the decomposer's vocabulary restriction and the allocator's softmax over the
    pool tiers' candidates, each at a given temperature (0 = greedy: scored at temperature 1)."""

    def __init__(self, templates: str, model_ids: list[str]):
        self.templates = TEMPLATES.lookup(templates)()
        self.model_ids = model_ids

    def decompose_vocab(self, prompts: list[str], tokenizer) -> list[list[int]] | None:
        vocab = [self.templates.decompose_vocab(p, tokenizer) for p in prompts]
        return None if any(v is None for v in vocab) else vocab

    def decomposition_logprobs(self, lm: PolicyLM, prompts: list[str], targets: list[list[int]],
                               temperature: float) -> list[torch.Tensor]:
        """Differentiable logprobs of given decomposition tokens, as the sampler drew them."""
        t = effective_temperature(temperature) or 1.0
        return lm.token_logprobs(prompts, targets, temperature=t, allowed=self.decompose_vocab(prompts, lm.tokenizer))

    def sample_decompositions(self, lm: PolicyLM, prompts: list[str], max_tokens: int, temperature: float,
                              generator: torch.Generator | None = None) -> list[Sample]:
        return lm.sample(prompts, max_tokens, effective_temperature(temperature),
                         allowed=self.decompose_vocab(prompts, lm.tokenizer), generator=generator)

    def tier_logprobs(self, lm: PolicyLM, prompts: list[str], n_tiers: int, temperature: float) -> torch.Tensor:
        """[len(prompts), n_tiers] log-softmax over the tiers' candidate scores (differentiable). Each
        distinct prompt is scored once (a GRPO group repeats its prompts), as the policy scores
        candidates (`candidate_logprobs`)."""
        cands = self.templates.candidates(self.model_ids[:n_tiers], lm.tokenizer)
        distinct = list(dict.fromkeys(prompts))
        scores = lm.candidate_logprobs(distinct, cands)
        row = {p: i for i, p in enumerate(distinct)}
        scores = scores[[row[p] for p in prompts]]
        t = effective_temperature(temperature)
        return (scores / t if t > 0 else scores).log_softmax(-1)


class PolicyRouter(BaseRouter):
    """R2's router: a decomposer and an allocator `PolicyLM`. The allocator scores every pool model's
    candidate continuation and samples from the softmax over them, so it can only name a pool model."""

    name = "r2"

    def __init__(self, decomposer: PolicyLM | None, allocator: PolicyLM, model_ids: list[str],
                 templates: str = "tiny", temperature: float = 0.0, max_steps: int = 6, max_tokens: int = 24,
                 seed: int = 0, label: str = "policy", decompose_temperature: float | None = None):
        self.decomposer, self.allocator, self.model_ids = decomposer, allocator, model_ids
        self.actions = ActionSpace(templates, model_ids)
        self.temperature = effective_temperature(temperature)
        self.decompose_temperature = effective_temperature(
            temperature if decompose_temperature is None else decompose_temperature)
        self.max_steps, self.max_tokens = max_steps, max_tokens
        self.generator = torch.Generator().manual_seed(seed)
        self.decomposer_name = label if decomposer is not None else "gold"
        self._gold = GoldDecomposition()
        self.cost_penalty: torch.Tensor | None = None  # per tier, subtracted from the allocator's log-probs

    def with_cost_penalty(self, lam: float, prices: list[float]) -> PolicyRouter:
        """This router (sharing its policies) whose allocator picks argmax_m [log pi(m | step) - lam * c_m],
        c_m = tier m's price over the largest price: lam = 0 is the trained allocator, a larger lam trades
        its preference for cheaper tiers. (For a fixed step the chosen tier's price never rises with lam.)"""
        routed = copy.copy(self)
        top = max(prices) or 1.0
        routed.cost_penalty = torch.tensor([lam * p / top for p in prices], dtype=torch.float32)
        return routed

    def own_usage(self, decision: DecomposeDecision, allocation_prompts: list[str]) -> dict[str, dict[str, int]]:
        """The router's own tokens for one query: the decomposer's prompt and generated tokens, and the
        allocator's prompt plus every tier's candidate tokens (it scores them; it generates nothing)."""
        usage = self.decomposition_usage(decision)
        cands = sum(len(c) for c in self.actions.templates.candidates(self.model_ids, self.allocator.tokenizer))
        usage["allocator"] = {"prompt_tokens": sum(self.allocator.prompt_lengths(allocation_prompts))
                              + cands * len(allocation_prompts), "completion_tokens": 0}
        return usage

    def decomposition_usage(self, decision: DecomposeDecision) -> dict[str, dict[str, int]]:
        if self.decomposer is None or not decision.calls:
            return {}
        return {"decomposer": {"prompt_tokens": sum(self.decomposer.prompt_lengths([p for p, _ in decision.calls])),
                               "completion_tokens": sum(len(s.token_ids) for _, s in decision.calls)}}

    def policy_params(self) -> dict[str, int]:
        lms = {"decomposer": self.decomposer, "allocator": self.allocator}
        return {k: sum(p.numel() for p in lm.model.parameters()) for k, lm in lms.items() if lm is not None}

    def decompose(self, examples: list[Example], task: Task) -> list[DecomposeDecision]:
        if self.decomposer is None:
            return self._gold.decompose(examples, task)
        tpl = self.actions.templates
        if tpl.stepwise:
            return self._decompose_stepwise([ex.query for ex in examples])
        prompts = [tpl.decompose_prompt(ex.query, self.decomposer.tokenizer) for ex in examples]
        samples = self._sample(prompts)
        return [DecomposeDecision(tpl.decomposition_from(ex.query, [s.text], self.max_steps), [(p, s)])
                for ex, p, s in zip(examples, prompts, samples)]

    def _sample(self, prompts: list[str]) -> list[Sample]:
        return self.actions.sample_decompositions(self.decomposer, prompts, self.max_tokens,
                                                  self.decompose_temperature, self.generator)

    def _decompose_stepwise(self, queries: list[str]) -> list[DecomposeDecision]:
        """One call per step for every query at once, each on what is left of its query, until each
        decomposer stops (or `max_steps` + 1 calls)."""
        folds = [Folding.of(q) for q in queries]
        calls: list[list[tuple[str, Sample]]] = [[] for _ in queries]
        live = list(range(len(queries)))
        for _ in range(self.max_steps + 1):
            if not live:
                break
            prompts = [self.actions.templates.decompose_prompt(folds[i].remaining, self.decomposer.tokenizer)
                       for i in live]
            going = []
            for i, p, smp in zip(live, prompts, self._sample(prompts)):
                calls[i].append((p, smp))
                if folds[i].write(smp.text, self.max_steps):
                    going.append(i)
            live = going
        return [DecomposeDecision(f.decomposition(), c) for f, c in zip(folds, calls)]

    def allocate(self, step_texts: list[str], examples: list[Example], n_tiers: int) -> list[AllocateDecision]:
        tok = self.allocator.tokenizer
        prompts = [self.actions.templates.allocate_prompt(t, self.model_ids[:n_tiers], tok) for t in step_texts]
        with torch.no_grad():
            logp = self.actions.tier_logprobs(self.allocator, prompts, n_tiers, self.temperature).cpu()
        if self.cost_penalty is not None:
            logp = (logp - self.cost_penalty[:n_tiers]).log_softmax(-1)
        if self.temperature > 0:
            tiers = torch.multinomial(logp.exp(), 1, generator=self.generator).squeeze(-1).tolist()
        else:
            tiers = logp.argmax(-1).tolist()
        return [AllocateDecision(t, p, float(logp[i, t]), logp[i].tolist())
                for i, (t, p) in enumerate(zip(tiers, prompts))]
