"""Length extrapolation for the router's policies: dynamic NTK-aware RoPE scaling, per sequence.

A decomposer trained on queries of up to T tokens meets longer ones (held-out shapes, real users). Past T,
the lowest RoPE frequencies turn through angles training never produced, and a tiny model copies the wrong
word. Dynamic NTK scaling (bloc97/emozilla 2023; Code Llama and Qwen extend context this way) raises the
RoPE base for a sequence longer than T so those angles stay near the trained range, and leaves shorter
sequences exactly as trained:

    base(n) = base * (factor * n / T - (factor - 1)) ** (dim / (dim - 2))   for n > T tokens

transformers' `rope_type: dynamic` applies one base to a whole batch (that of its longest row) and keeps
it between calls, so a query's decomposition would depend on its batch mates and on earlier calls. Here
each row's base follows its own prompt's length, with no state between calls. SFT writes T (its longest
decomposer prompt) and the factor into the policy's `config.json` (`length_extrapolation`); `install` applies them on load.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

CONFIG_KEY = "length_extrapolation"


class PerSequenceNTK(torch.nn.Module):
    """Drop-in for a model's rotary embedding: (cos, sin) per row, the row's base from its own length: the
    prompt's, while `reading` says it (so sampling token by token and scoring in one pass agree), else
    the tokens so far."""

    def __init__(self, rotary: torch.nn.Module, base: float, dim: int, trained_tokens: int, factor: float):
        super().__init__()
        self.rotary, self.base, self.dim = rotary, float(base), dim
        self.trained_tokens, self.factor = int(trained_tokens), float(factor)
        self.prompt_lengths: torch.Tensor | None = None
        self.register_buffer("exponents", torch.arange(0, dim, 2, dtype=torch.float) / dim, persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        length = (position_ids.amax(-1) + 1 if self.prompt_lengths is None else self.prompt_lengths).float()
        stretch = (self.factor * length / self.trained_tokens - (self.factor - 1)).clamp(min=1.0)
        base = self.base * stretch ** (self.dim / (self.dim - 2))
        inv_freq = 1.0 / (base[:, None] ** self.exponents.to(x.device))  # [batch, dim/2]
        freqs = position_ids[..., None].float() * inv_freq[:, None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        scale = getattr(self.rotary, "attention_scaling", 1.0)
        return (emb.cos() * scale).to(x.dtype), (emb.sin() * scale).to(x.dtype)


def _rotary(model):
    """The rotary embedding module of a causal LM (under LoRA adapters too), or None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "model", None), "rotary_emb", None)


@contextmanager
def reading(model, prompt_lengths: torch.Tensor):
    """While inside, each row of `model`'s batches scales by its prompt's length (tokens, [batch]); a no-op
    for a model without `PerSequenceNTK`."""
    rotary = _rotary(model)
    if not isinstance(rotary, PerSequenceNTK):
        yield
        return
    rotary.prompt_lengths = prompt_lengths
    try:
        yield
    finally:
        rotary.prompt_lengths = None


def install(model) -> bool:
    """Replace the model's rotary embedding with `PerSequenceNTK` when its config asks for length
    extrapolation (`length_extrapolation`); False when it does not. A ValueError when the model cannot."""
    spec = getattr(model.config, CONFIG_KEY, None)
    if not spec:
        return False
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or {}
    inner = getattr(model, "model", None)
    rotary = getattr(inner, "rotary_emb", None)
    if rotary is None or rope.get("rope_type", "default") != "default" or getattr(cfg, "partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"{CONFIG_KEY}: needs a model with plain RoPE on the whole head (model.rotary_emb, "
                         f"rope_type default); this {type(model).__name__} has rope {rope or 'none'}")
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if isinstance(rotary, PerSequenceNTK):
        rotary = rotary.rotary
    inner.rotary_emb = PerSequenceNTK(rotary, rope["rope_theta"], dim, spec["trained_tokens"], spec["factor"])
    return True


def recorded(folder: str | Path) -> dict | None:
    """The length extrapolation a saved policy's `config.json` records, or None."""
    return json.loads((Path(folder) / "config.json").read_text()).get(CONFIG_KEY)


def mark(folder: str | Path, trained_tokens: int, factor: float) -> None:
    """Record in a saved policy's `config.json` the longest sequence it was trained on and the factor;
    a factor of 1 records nothing (no extrapolation)."""
    if factor <= 1.0:
        return
    path = Path(folder) / "config.json"
    cfg = json.loads(path.read_text())
    cfg[CONFIG_KEY] = {"method": "dynamic-ntk-per-sequence", "trained_tokens": int(trained_tokens),
                       "factor": float(factor)}
    path.write_text(json.dumps(cfg, indent=2) + "\n")
