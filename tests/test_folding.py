"""Decomposition by folding (policies.folding): every call's input and target, back to the gold steps."""
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.tasks.facts import FactsTask
from benchmarks.tasks.scan import ScanTask
from core.config import FactsConfig
from policies.folding import Folding, fold_calls, smallest_window


def test_smallest_window_takes_the_shortest_leftmost_span():
    from collections import Counter

    words = "what is the city of the sibling of the #".split()
    assert smallest_window(words, Counter({"sibling": 1, "of": 1, "#": 1})) == (6, 10)
    assert smallest_window("a b a".split(), Counter({"a": 1})) == (0, 1)
    assert smallest_window("a b".split(), Counter({"c": 1})) is None
    assert smallest_window("a b".split(), Counter()) is None


def test_each_call_sees_what_is_left_and_writes_one_step():
    calls = fold_calls("what is the city of the sibling of the rival of klostax",
                       ["rival of klostax", "sibling of #1", "city of #2"])
    assert calls == [("what is the city of the sibling of the rival of klostax", "rival of klostax"),
                     ("what is the city of the sibling of the #", "sibling of #"),
                     ("what is the city of the #", "city of #"),
                     ("what is the #", "")]
    assert fold_calls("klostax 's rival 's city", ["rival of klostax", "city of #1"])[-1] == ("#", "")
    assert fold_calls("jump twice after walk left", ["walk left", "jump twice"]) == [
        ("jump twice after walk left", "walk left"), ("jump twice after #", "jump twice"), ("# after #", "")]
    assert fold_calls("walk", ["jump"]) is None  # a step that copies nothing from the query


def test_every_gold_decomposition_of_the_tiny_world_folds_back():
    facts = FactsTask(FactsConfig(n_entities=60, n_relations=6, n_train_chains=200, n_test_chains=50))
    examples = [*facts.load("train"), *[e for exs in facts.shape_sets(20).values() for e in exs],
                *ScanTask().load("test")]
    for e in examples:
        calls = fold_calls(e.query, [s.prompt for s in e.steps])
        assert calls is not None and len(calls) == len(e.steps) + 1, e.query
        f = Folding.of(e.query)
        assert all(f.write(t, 8) for _, t in calls[:-1]) and not f.write("", 8)
        d = f.decomposition()
        assert d.format_ok and d.steps == [s.prompt for s in e.steps]


def test_malformed_calls_are_flagged_not_raised():
    f = Folding.of("city of rival of klostax")
    assert not f.write("walk twice", 6)  # copies nothing: kept as a step, flagged
    assert f.decomposition().steps == ["walk twice"] and not f.decomposition().format_ok
    f = Folding.of("city of rival of klostax")
    assert not f.write("rival of #", 6) and not f.decomposition().format_ok  # `#` of no earlier step
    f = Folding.of("city of rival of klostax")
    assert f.write("rival of klostax", 1) and not f.write("city of #", 1)  # over max_steps
    assert not f.decomposition().format_ok
    f = Folding.of("city of klostax")
    assert f.write("city of klostax", 6)
    assert not f.decomposition().format_ok and "no stop" in f.decomposition().notes
    assert not Folding.of("x").decomposition().format_ok


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60), st.lists(st.text(max_size=30), max_size=8))
def test_folding_is_total(query, outputs):
    f = Folding.of(query)
    for out in outputs:
        if not f.write(out, 6):
            break
    d = f.decomposition()
    assert isinstance(d.format_ok, bool) and (d.steps or not d.format_ok)
