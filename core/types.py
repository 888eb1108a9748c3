"""Types shared across floors: sampling settings, a model call's completion and usage, and the
typed record a rollout hands the learner."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Usage:
    """Token counts of one call. `source` says who counted them: "reported" by the engine or endpoint
    that ran the model; "tokenizer": the endpoint reported none, so they were counted here with the
    model's local tokenizer (an estimate: a hosted model's own tokenizer may differ); "missing": nobody
    could count them (prompt_tokens is 0; completion_tokens is the number of tokens that came back with
    log-probs, else 0), so the call's cost is understated; the pool's ledger counts such calls."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    source: str = "reported"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class Completion:
    """One generated continuation. `token_logprobs` are the model's (temperature-1) log-probabilities
    of the generated tokens; `token_ids` include the end-of-sequence token when one was generated."""

    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    usage: Usage
    latency_s: float
    model_id: str
    cost_usd: float = 0.0
    finish_reason: str = "stop"
    # this request's share of the device time of the batch it ran in (GPU-time pricing); None: latency_s
    compute_s: float | None = None
    retries: int = 0  # requests to the endpoint beyond the first that this completion took (openai)
    fallback_from: str | None = None  # the pool model asked, which failed for good: its fallback answered

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completion:
        d = dict(d)
        d["usage"] = Usage(**d["usage"])
        return cls(**d)


@dataclass
class TrainItem:
    """One policy decision a rollout hands the learner: the prompt, the sampled action (token ids of a
    decomposition, or the allocator's tier), the sampler's logprobs of it, and its group advantage."""

    policy: str  # "decomposer" or "allocator"
    prompt: str
    token_ids: list[int] = field(default_factory=list)  # decomposer: the sampled tokens
    tier: int = -1  # allocator: the chosen tier
    old_logprobs: list[float] = field(default_factory=list)
    advantage: float = 0.0
    trajectory_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
