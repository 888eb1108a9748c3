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
