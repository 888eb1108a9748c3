"""What a call costs, in USD.

API models are priced per 1M prompt/completion tokens, from LiteLLM's maintained price table (the copy
that tokencost bundles) via `price.ref`, or from a declared price in config. Self-hosted models are
priced by a declared per-token price or by GPU time (latency x GPUs x $/GPU-hour). The tiny zoo is
priced on the paper pool's ladder (declared prices of the paper model each rung stands for), so tiny
results read in paper dollars.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from core.config import PriceConfig
from core.prices import token_prices_per_m
from core.types import Usage


def table_price_per_m(ref: str) -> tuple[float, float]:
    """(input, output) USD per 1M tokens of `ref` in the LiteLLM price table."""
    prices = token_prices_per_m(ref)
    if prices is None:
        raise KeyError(f"price.ref {ref!r}: no per-token price for this model in the LiteLLM price table")
    return prices


@dataclass(frozen=True)
class Rate:
    input_per_m: float = 0.0
    output_per_m: float = 0.0
    gpu_usd_per_s: float = 0.0

    def cost(self, usage: Usage, latency_s: float) -> float:
        return (
            usage.prompt_tokens * self.input_per_m / 1e6
            + usage.completion_tokens * self.output_per_m / 1e6
            + latency_s * self.gpu_usd_per_s
        )


def rate_for(price: PriceConfig) -> Rate:
    if price.ref is not None:
        return Rate(*table_price_per_m(price.ref))
    if price.gpu_hour_usd is not None:
        return Rate(gpu_usd_per_s=price.gpu_hour_usd * price.gpus / 3600.0)
    return Rate(price.input_per_m or 0.0, price.output_per_m or 0.0)


def ladder_rate(params: int, ladder: list[tuple[int, Rate]]) -> Rate:
    """The price of a model of `params` parameters on a price ladder of (parameters, rate) rungs:
    log-linear in log parameters between the two rungs around it, the end rung's price beyond the ends."""
    rungs = sorted(ladder)
    if not rungs:
        raise ValueError("an empty price ladder")
    if params <= rungs[0][0]:
        return rungs[0][1]
    if params >= rungs[-1][0]:
        return rungs[-1][1]
    (p0, r0), (p1, r1) = next((a, b) for a, b in zip(rungs, rungs[1:]) if a[0] <= params <= b[0])
    w = (math.log(params) - math.log(p0)) / (math.log(p1) - math.log(p0))

    def mix(a: float, b: float) -> float:
        return math.exp((1 - w) * math.log(a) + w * math.log(b)) if a > 0 and b > 0 else (1 - w) * a + w * b

    return Rate(mix(r0.input_per_m, r1.input_per_m), mix(r0.output_per_m, r1.output_per_m))


def usage_cost(usage: dict[str, int], rate: Rate) -> float:
    """USD of {prompt_tokens, completion_tokens} at `rate`."""
    return rate.cost(Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)), 0.0)


class CostModel:
    """Prices of the pool's models; `cost(model_id, usage, latency_s) -> USD`."""

    def __init__(self, prices: dict[str, PriceConfig]):
        self.rates = {model_id: rate_for(p) for model_id, p in prices.items()}

    def cost(self, model_id: str, usage: Usage, latency_s: float = 0.0) -> float:
        if model_id not in self.rates:
            raise KeyError(f"no price for model {model_id!r}; priced: {sorted(self.rates)}")
        return self.rates[model_id].cost(usage, latency_s)

    def output_price(self, model_id: str) -> float:
        """USD per 1M completion tokens: the order of the pool's tiers."""
        r = self.rates[model_id]
        return r.output_per_m + r.gpu_usd_per_s * 3600


@dataclass
class LedgerEntry:
    calls: int = 0  # calls that completed (each priced)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    usage_missing: int = 0  # calls whose tokens nobody counted (Usage.source "missing"): cost understated
    retries: int = 0  # requests beyond each call's first, over completed and failed calls
    failures: int = 0  # calls that failed for good (after their retries)
    fallbacks: int = 0  # completed calls this model answered in place of a model that failed


class CostLedger:
    """Running totals of every priced call, per model, and of its retries and failures."""

    def __init__(self) -> None:
        self.entries: dict[str, LedgerEntry] = {}

    def add(self, model_id: str, usage: Usage, cost_usd: float, retries: int = 0, fallback: bool = False) -> None:
        e = self.entries.setdefault(model_id, LedgerEntry())
        e.calls += 1
        e.prompt_tokens += usage.prompt_tokens
        e.completion_tokens += usage.completion_tokens
        e.cost_usd += cost_usd
        e.usage_missing += usage.source == "missing"
        e.retries += retries
        e.fallbacks += fallback

    def fail(self, model_id: str, attempts: int) -> None:
        """A call that failed for good after `attempts` requests."""
        e = self.entries.setdefault(model_id, LedgerEntry())
        e.failures += 1
        e.retries += max(attempts - 1, 0)

    @property
    def total_usd(self) -> float:
        return sum(e.cost_usd for e in self.entries.values())

    def snapshot(self) -> dict:
        return {
            "models": {m: vars(e).copy() for m, e in self.entries.items()},
            "total_usd": self.total_usd,
            "calls": sum(e.calls for e in self.entries.values()),
            "usage_missing": sum(e.usage_missing for e in self.entries.values()),
            "retries": sum(e.retries for e in self.entries.values()),
            "failures": sum(e.failures for e in self.entries.values()),
            "fallbacks": sum(e.fallbacks for e in self.entries.values()),
        }
