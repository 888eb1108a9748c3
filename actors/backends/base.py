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

    def dead(self) -> bool:
        """True when the backend can never serve again (e.g. its engine process died): its server exits so
        that Ray starts a fresh one and retries the calls."""
        return False

    def close(self) -> None:  # pragma: no cover - optional
        pass


class EndpointError(RuntimeError):
    """A model's endpoint failed a request for good, after its bounded retries. `attempts`: the HTTP
    requests the failed prompt took. `outcomes`: for a call of several prompts, each prompt's
    `Completion` or its own `EndpointError`, in order (None: the error stands for every prompt of the
    call), so a caller keeps what did complete and re-issues only what failed."""

    def __init__(self, message: str, attempts: int = 1, outcomes: list | None = None):
        super().__init__(message)
        self.attempts = attempts
        self.outcomes = outcomes


def completions_or_raise(outcomes: list[Completion | BaseException]) -> list[Completion]:
    """`outcomes` when every prompt completed; else the failure: a lone prompt's own error, or an
    `EndpointError` carrying every prompt's outcome. A failure other than `EndpointError` is raised as is."""
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if not failed:
        return outcomes  # type: ignore[return-value]
    other = next((o for o in failed if not isinstance(o, EndpointError)), None)
    if other is not None:
        raise other
    if len(outcomes) == 1:
        raise failed[0]
    raise EndpointError(f"{len(failed)} of {len(outcomes)} prompts failed; the first: {failed[0]}",
                        attempts=failed[0].attempts, outcomes=outcomes)


BACKENDS: Registry[type[Backend]] = Registry("backend")
register_backend = BACKENDS.register
