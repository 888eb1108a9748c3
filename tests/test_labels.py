"""The decomposition label rule: the whole query scored like any candidate (the paper's rule), or only
the fallback when no decomposition is solved (`labels.whole_query: fallback`)."""
import asyncio
from types import SimpleNamespace

import pytest

from benchmarks.tasks.base import Example, Step
from core.config import load_config
from pipelines.labels import LabelSearch

EXAMPLE = Example("q", "facts", "city of mentor of zorbak", "x",
                  [Step("mentor of zorbak", "a"), Step("city of #1", "x")])


class Reference(LabelSearch):
    """The label search with a stand-in reference model: `solves` says which candidates it answers."""

    def __init__(self, rule: str, solves: set[int]):
        cfg = load_config("configs/test.yaml", [f"labels.whole_query={rule}"])
        super().__init__(cfg, pool=None, model_ids=["small", "large"], task=None)
        self.solves, self.tried = solves, []

    async def run(self, example, steps, tiers):
        self.tried.append(len(steps))
        return SimpleNamespace(correct=float(len(steps) in self.solves),
                               calls=[SimpleNamespace(prompt_tokens=8, completion_tokens=2)] * len(steps))


@pytest.mark.parametrize("rule, solves, label, tried", [
    ("scored", {1, 2}, 1, [1, 2]),     # both solved: conciseness picks the whole query
    ("fallback", {1, 2}, 2, [2]),      # both solvable: the decomposition, and the whole query is never run
    ("fallback", {1}, 1, [2, 1]),      # the decomposition fails: the whole query is the fallback
    ("fallback", set(), None, [2, 1]),  # nothing solved: no label
])
def test_the_whole_query_is_scored_or_a_fallback(rule, solves, label, tried):
    search = Reference(rule, solves)
    best = asyncio.run(search.decomposition(EXAMPLE))
    assert (None if best is None else len(best[0])) == label and search.tried == tried


def test_given_decompositions_are_labels_and_drawn_first(monkeypatch):
    """GPT-4-turbo's decompositions (at most reason.max_steps steps) label their queries without a search,
    and those queries are labelled first."""
    from pipelines import labels

    cfg = load_config("configs/smollm-bench.yaml", ["labels.max_per_task=2", "labels.decomposition_fraction=0.5",
                                                    "reason.max_steps=2"])
    train = [Example(f"q{i}", "csqa", f"question {i}", "A") for i in range(10)]
    monkeypatch.setattr(labels, "join_decompositions", lambda name, exs: {
        "q7": ["a", "b"], "q3": ["a"], "q5": ["a", "b", "c"]})  # q5: longer than max_steps
    task = SimpleNamespace(name="csqa")
    given, too_long = labels.given_decompositions(cfg, task, train)
    assert given == {"q7": ["a", "b"], "q3": ["a"]} and too_long == 1
    queries, _ = labels.select_queries(cfg, train, set(given))
    assert {ex.id for ex in queries} == {"q3", "q7"}
    assert labels.given_decompositions(cfg.model_copy(update={"labels": cfg.labels.model_copy(
        update={"given_decompositions": False})}), task, train) == ({}, 0)
    search = LabelSearch(cfg, pool=None, model_ids=["small", "large"], task=SimpleNamespace(name="csqa"))
    row = asyncio.run(search.label(train[7], allocate=False, given=given["q7"]))
    assert row["steps"] == ["a", "b"] and row["source"] == "given" and search.calls == 0


def test_rare_decomposition_lengths_are_topped_up_after_the_uniform_draw():
    """`labels.min_per_length`: one-step queries, rare in the split, are all labelled (for decomposition,
    after the draw, so the allocation-labelled prefix is the draw's); a common length gets none added."""
    from pipelines import labels

    def example(i: int, steps: int) -> Example:
        return Example(f"q{i}", "scan", f"command {i}", "x", [Step(f"part {j} of {i}", "x") for j in range(steps)])

    train = [example(i, 1 if i % 50 == 0 else 2) for i in range(500)]  # 10 one-step queries
    cfg = load_config("configs/test.yaml", ["labels.decomposition_fraction=0.1", "labels.fraction=0.02"])
    plain, n_alloc = labels.select_queries(cfg, train)
    topped_cfg = cfg.model_copy(update={"labels": cfg.labels.model_copy(update={"min_per_length": 20})})
    topped, n_alloc_topped = labels.select_queries(topped_cfg, train)
    assert topped[: len(plain)] == plain and n_alloc_topped == n_alloc
    added = topped[len(plain):]
    assert {labels.decomposition_length(ex) for ex in added} == {1}
    assert sum(labels.decomposition_length(ex) == 1 for ex in topped) == 10  # every one-step query, no repeats
    assert len({ex.id for ex in topped}) == len(topped)
