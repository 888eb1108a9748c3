"""One interface for every way of running a pool model: batched text generation with logprobs."""
from __future__ import annotations

import abc
from typing import Any, ClassVar

from core.registry import Registry
from core.types import Completion, SamplingParams


class Backend(abc.ABC):
    """A loaded model that turns a batch of prompts into completions."""

    name: ClassVar[str]
    # True: the backend batches requests itself as they arrive (vLLM's continuous batching) and offers
    # `async agenerate(prompts, params)`; `ModelServer` then hands each call straight to it
    continuous_batching: ClassVar[bool] = False

    def __init__(self, model_id: str, spec: dict[str, Any]):
        self.model_id = model_id
        self.spec = spec

    @abc.abstractmethod
    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """Batched generation; one completion per prompt, in order."""

    def close(self) -> None:  # pragma: no cover - optional
        pass


BACKENDS: Registry[type[Backend]] = Registry("backend")
register_backend = BACKENDS.register
