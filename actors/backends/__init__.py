"""Model backends, one registry: `hf` (transformers), `openai` (any OpenAI-compatible endpoint),
`vllm` (AsyncLLMEngine, imported only when used)."""
from actors.backends import hf, openai, vllm  # noqa: F401,E402  (registration)
from actors.backends.base import (
    BACKENDS,
    Backend,
    Completion,
    SamplingParams,
    Usage,
    make_backend,
    register_backend,
)

__all__ = ["BACKENDS", "Backend", "Completion", "SamplingParams", "Usage", "make_backend", "register_backend"]
