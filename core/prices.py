"""The LiteLLM price table that tokencost bundles (`model_prices.json`), read as data: importing tokencost
itself pulls in tokenizers and API clients (seconds), which a config check does not need."""
from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def price_table() -> dict[str, dict]:
    """Model name -> LiteLLM's entry (`input_cost_per_token`, `output_cost_per_token`, ...)."""
    spec = importlib.util.find_spec("tokencost")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "model_prices.json"
        if path.is_file():
            return json.loads(path.read_text())
    raise FileNotFoundError("the LiteLLM price table (tokencost's model_prices.json) is not installed: "
                            "pip install tokencost")


def token_prices_per_m(ref: str) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens of `ref` in the price table, or None when it has no such price."""
    entry = price_table().get(ref)
    if not entry or "input_cost_per_token" not in entry or "output_cost_per_token" not in entry:
        return None
    return entry["input_cost_per_token"] * 1e6, entry["output_cost_per_token"] * 1e6
