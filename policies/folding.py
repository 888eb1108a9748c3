"""Decomposition one step per call, by folding: the decomposer is shown what is left of the query, writes
its next step (copying the words it needs), and the smallest span of the query that holds the step's
copied words is folded into a reference `#`. The next call sees the shorter query; an empty step ends
the decomposition.

    what is the city of the sibling of the rival of klostax   ->  rival of klostax
    what is the city of the sibling of the #                  ->  sibling of #
    what is the city of the #                                 ->  city of #
    what is the #                                             ->  (done)

Why: each call is a local edit near one end of a query that shrinks as it goes, so a decomposer trained on
short chains writes longer ones (nothing to count, no step number to invent), and a `#` it copies names
exactly one earlier step (the one folded there), which the fold turns into `#k`. The rule is task-agnostic:
it only knows words and references, never a task's grammar.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from policies.parsers import Decomposition
from policies.tiny_lm import PREVIOUS

_ABS_REF = re.compile(r"(?<!\S)#\d+(?!\S)")


def smallest_window(words: list[str], need: Counter) -> tuple[int, int] | None:
    """The shortest [i, j) of `words` holding the multiset `need` (leftmost of the shortest); None when
    `need` is empty or not all there."""
    if not need:
        return None
    have: Counter = Counter()
    missing, best, i = sum(need.values()), None, 0
    for j, w in enumerate(words):
        if have[w] < need[w]:
            missing -= 1
        have[w] += 1
        while missing == 0:
            if best is None or j + 1 - i < best[1] - best[0]:
                best = (i, j + 1)
            have[words[i]] -= 1
            if have[words[i]] < need[words[i]]:
                missing += 1
            i += 1
    return best


@dataclass
class Folding:
    """What is left of one query, and the steps written so far (references absolute: `#k`)."""

    words: list[str]
    origin: list[int | None] = field(default_factory=list)  # per word: the step whose answer a `#` stands for
    steps: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)  # what each call wrote
    notes: list[str] = field(default_factory=list)  # what was malformed
    stopped: bool = False

    def __post_init__(self):
        self.origin = self.origin or [None] * len(self.words)

    @classmethod
    def of(cls, query: str) -> Folding:
        return cls(query.split())

    @property
    def remaining(self) -> str:
        return " ".join(self.words)

    def fold(self, step: str) -> bool:
        """Fold a written step (references as `#`) into what is left; False (nothing changes) when the
        step copies no word of it."""
        written = step.split()
        span = smallest_window(self.words, Counter(w for w in written if w in self.words))
        if span is None:
            return False
        i, j = span
        refs = iter(self.origin[k] for k in range(i, j) if self.words[k] == PREVIOUS)
        resolved = [f"#{next(refs, None) or ''}" if w == PREVIOUS else w for w in written]
        if PREVIOUS in resolved:
            self.notes.append("a reference to no earlier step")
        self.steps.append(" ".join(resolved))
        k = len(self.steps)
        self.words, self.origin = self.words[:i] + [PREVIOUS] + self.words[j:], self.origin[:i] + [k] + self.origin[j:]
        return True

    def write(self, text: str, max_steps: int) -> bool:
        """One call's output: a step to fold in, or nothing to stop. True while the decomposition goes on;
        never raises."""
        step = " ".join(text.split()) if isinstance(text, str) else ""
        self.outputs.append(step)
        if not step:
            self.stopped = True
        elif len(self.steps) >= max_steps:
            self.notes.append(f"more than {max_steps} steps")
        elif not self.fold(step):
            self.steps.append(step)
            self.notes.append("a step that copies nothing from the query")
        return not (self.stopped or self.notes)

    def decomposition(self) -> Decomposition:
        notes = [*self.notes, *([] if self.steps else ["no steps"]),
                 *([] if self.stopped or self.notes else ["no stop"])]
        return Decomposition(list(self.steps), not notes, " | ".join(self.outputs), notes)


def written(step: str) -> str:
    """A step as the decomposer writes it: every reference `#k` as `#`."""
    return _ABS_REF.sub(PREVIOUS, step)


def fold_calls(query: str, steps: list[str]) -> list[tuple[str, str]] | None:
    """Every call of a decomposition: (what is left of the query, the step written there), then
    (what is left, "") for the stop. None when folding the steps does not give them back (a step that
    copies nothing from the query, or a reference the fold would resolve to another step)."""
    state, calls = Folding.of(query), []
    for step in steps:
        calls.append((state.remaining, written(step)))
        if not state.fold(written(step)) or state.steps[-1] != " ".join(step.split()):
            return None
    return [*calls, (state.remaining, "")]
