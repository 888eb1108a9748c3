"""Backends, a registry: `make_backend(kind, model_id, spec)` loads one pool model (`hf`, `openai`,
`vllm`); each imports its heavy dependencies only when it loads a model."""
from typing import Any

from actors.backends import hf, openai, vllm  # noqa: F401  (registration)
from actors.backends.base import BACKENDS, Backend, EndpointError, completions_or_raise, register_backend


def make_backend(kind: str, model_id: str, spec: dict[str, Any]) -> Backend:
    """Instantiate a backend by registry name."""
    return BACKENDS.lookup(kind)(model_id, spec)


__all__ = ["BACKENDS", "Backend", "EndpointError", "completions_or_raise", "make_backend", "register_backend"]
