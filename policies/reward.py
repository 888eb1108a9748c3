"""The reward R2 trains on: r = correct - lam * cost / cost_ref + beta * format_ok.

`correct` in [0, 1] from the task's scorer; `cost` in USD for the whole chain; `cost_ref` normalises
cost to "the price of answering with the largest model" (the reference method's mean cost per query
on the task, or a config constant), so lam is a unitless budget knob: lam = 0.5 means spending as much
as the reference must buy half a correct answer. `beta` rewards a well-formed decomposition."""
from __future__ import annotations


def reward(correct: float, cost_usd: float, format_ok: bool, lam: float, beta: float, cost_ref: float) -> float:
    if cost_ref <= 0:
        raise ValueError(f"cost_ref must be positive, got {cost_ref}")
    return float(correct) - lam * cost_usd / cost_ref + beta * float(format_ok)
