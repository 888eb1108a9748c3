"""One interface for every way of running a pool model: batched text generation with logprobs."""
from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, ClassVar


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
    prompt_tokens: int = 0
    completion_tokens: int = 0

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completion:
        d = dict(d)
        d["usage"] = Usage(**d["usage"])
        return cls(**d)


class Backend(abc.ABC):
    """A loaded model that turns a batch of prompts into completions."""

    name: ClassVar[str]

    def __init__(self, model_id: str, spec: dict[str, Any]):
        self.model_id = model_id
        self.spec = spec

    @abc.abstractmethod
    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """Batched generation; one completion per prompt, in order."""

    def close(self) -> None:  # pragma: no cover - optional
        pass


BACKENDS: dict[str, type[Backend]] = {}


def register_backend(name: str) -> Callable[[type[Backend]], type[Backend]]:
    def deco(cls: type[Backend]) -> type[Backend]:
        cls.name = name
        BACKENDS[name] = cls
        return cls

    return deco


def make_backend(kind: str, model_id: str, spec: dict[str, Any]) -> Backend:
    """Instantiate a backend by registry name; backends import their heavy dependencies lazily."""
    from actors import backends  # noqa: F401  (populates the registry)

    if kind not in BACKENDS:
        raise ValueError(f"unknown backend {kind!r}; known: {sorted(BACKENDS)}")
    return BACKENDS[kind](model_id, spec)
