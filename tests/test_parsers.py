"""The router's parsers are total: any string parses, never raises; allocations stay in the pool."""
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.parsers import format_decomposition, parse_decomposition

STEP = st.text(alphabet=st.characters(blacklist_characters="|\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
               min_size=1).map(str.strip).filter(bool)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_string_parses(text):
    d = parse_decomposition(text, max_steps=6)
    assert isinstance(d.format_ok, bool) and len(d.steps) <= 6
    assert all(isinstance(s, str) and s for s in d.steps)
    if d.format_ok:
        assert d.steps


@settings(max_examples=200, deadline=None)
@given(st.lists(STEP, min_size=1, max_size=6), st.booleans())
def test_formatted_decompositions_round_trip(steps, numbered):
    if numbered:  # a numbered step whose text itself looks like "2: x" would be ambiguous
        steps = [s for s in steps if not s[:1].isdigit()] or ["a"]
    d = parse_decomposition(format_decomposition(steps, numbered=numbered), max_steps=6)
    assert d.format_ok and d.steps == steps


def test_malformed_outputs_are_flagged():
    assert not parse_decomposition("").format_ok
    assert not parse_decomposition("a | | b").format_ok
    assert parse_decomposition("1. a\n3. b").steps == ["a", "b"]
    assert not parse_decomposition("1. a\n3. b").format_ok
    assert not parse_decomposition(" | ".join("x" * 9), max_steps=6).format_ok


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=8), st.integers(1, 8), st.floats(0, 2))
def test_allocator_never_names_a_model_outside_the_pool(step_texts, n_tiers, temperature):
    from tests_support import tiny_policy

    from policies.router import PolicyRouter

    router = PolicyRouter(None, tiny_policy(), [f"m{i}" for i in range(8)], temperature=temperature)
    for d in router.allocate(step_texts, [None] * len(step_texts), n_tiers):
        assert 0 <= d.tier < n_tiers and len(d.tier_logprobs) == n_tiers and d.logprob <= 0
