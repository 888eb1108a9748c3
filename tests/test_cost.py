import pytest

from actors.cost import CostLedger, CostModel, table_price_per_m
from core.config import PriceConfig
from core.types import Usage


def test_table_price_comes_from_litellm_data():
    inp, out = table_price_per_m("gpt-4o")
    assert inp > 0 and out > inp  # completion tokens cost more than prompt tokens for gpt-4o


def test_cost_of_declared_table_and_gpu_prices():
    cm = CostModel({
        "small": PriceConfig(input_per_m=0.02, output_per_m=0.06),
        "api": PriceConfig(ref="gpt-4o"),
        "gpu": PriceConfig(gpu_hour_usd=3.6, gpus=2),
    })
    u = Usage(prompt_tokens=1000, completion_tokens=500)
    assert cm.cost("small", u) == pytest.approx(1000 * 0.02e-6 + 500 * 0.06e-6)
    inp, out = table_price_per_m("gpt-4o")
    assert cm.cost("api", u) == pytest.approx((1000 * inp + 500 * out) / 1e6)
    assert cm.cost("gpu", u, latency_s=10.0) == pytest.approx(10.0 * 2 * 3.6 / 3600)


def test_unknown_model_and_unknown_ref_are_clear_errors():
    with pytest.raises(KeyError, match="no price for model 'x'"):
        CostModel({}).cost("x", Usage())
    with pytest.raises(KeyError, match="price.ref 'no-such-model'"):
        table_price_per_m("no-such-model")
    with pytest.raises(ValueError, match="ref\n.*unknown model 'no-such-model'"):  # at config time
        PriceConfig(ref="no-such-model")


def test_price_needs_exactly_one_way():
    with pytest.raises(ValueError):
        PriceConfig(input_per_m=1.0, output_per_m=1.0, ref="gpt-4o")
    with pytest.raises(ValueError):
        PriceConfig(input_per_m=1.0)


def test_ledger_sums_calls():
    led = CostLedger()
    led.add("a", Usage(3, 2), 0.5)
    led.add("a", Usage(1, 1), 0.25)
    led.add("b", Usage(4, 0), 1.0)
    led.add("b", Usage(0, 3, source="missing"), 0.0)  # an endpoint that reported no usage
    snap = led.snapshot()
    assert snap["total_usd"] == pytest.approx(1.75) and snap["calls"] == 4 and snap["usage_missing"] == 1
    assert snap["models"]["a"] == {"calls": 2, "prompt_tokens": 4, "completion_tokens": 3, "cost_usd": 0.75,
                                   "usage_missing": 0, "retries": 0, "failures": 0, "fallbacks": 0}
    assert snap["models"]["b"]["usage_missing"] == 1


def test_ledger_counts_retries_failures_and_fallbacks():
    led = CostLedger()
    led.add("a", Usage(3, 2), 0.5, retries=2)
    led.fail("a", attempts=4)  # gave up after 4 requests: 3 retries
    led.add("b", Usage(3, 2), 0.25, retries=1, fallback=True)
    snap = led.snapshot()
    assert (snap["calls"], snap["retries"], snap["failures"], snap["fallbacks"]) == (2, 6, 1, 1)
    assert {k: snap["models"]["a"][k] for k in ("calls", "retries", "failures", "fallbacks")} == {
        "calls": 1, "retries": 5, "failures": 1, "fallbacks": 0}
    assert snap["models"]["b"]["fallbacks"] == 1 and snap["total_usd"] == pytest.approx(0.75)


def test_ladder_rate_interpolates_log_linearly_and_clamps_at_the_ends():
    from actors.cost import Rate, ladder_rate, usage_cost

    ladder = [(1_000, Rate(0.1, 0.2)), (100_000, Rate(10.0, 20.0))]
    mid = ladder_rate(10_000, ladder)  # halfway in log parameters: the geometric mean of the prices
    assert mid.input_per_m == pytest.approx(1.0) and mid.output_per_m == pytest.approx(2.0)
    assert ladder_rate(10, ladder) == ladder[0][1] and ladder_rate(10**9, ladder) == ladder[1][1]
    assert usage_cost({"prompt_tokens": 1_000_000, "completion_tokens": 500_000}, mid) == pytest.approx(2.0)
