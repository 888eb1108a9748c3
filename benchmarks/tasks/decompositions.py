"""Real decompositions by GPT-4-turbo (DoT's step-1 outputs) as SFT targets for the decomposer.

`decompositions/<task>.json` maps "0".."199" to `{steps, steps_dict, int_edges, depths, problemText,
...}`. The keys are not row indices of the task files, so decompositions join with a task's examples
by problem text: `problem_key` (whitespace-normalised) of `problemText` on one side and of
`example.meta["problem_text"]` (else `example.query`) on the other. For CSQA, DoT's `problemText`
appends "\\nThe options are: A: ...; B: ..." to the stem, which is dropped before keying (the csqa task
keeps the bare stem in `meta["problem_text"]`).

Coverage with the shared data (the decompositions files hold 200 problems each): p3 200/200 (the first
200 puzzles), csqa 200/200 (the first 200 rows), champ 83 of the 116 CHAMP-116 problems (the other
117 decompositions are of CHAMP problems outside CHAMP-116), math 6 of MATH-200 (DoT decomposed a
different sample of MATH; the 194 others are still usable as SFT pairs, keyed by their problem text),
scan 200 commands.

Cleaning: steps are stripped of surrounding whitespace and of quotes around the step (also a lone
unbalanced quote at one end, and the trailing comma of a quoted list); empty
steps (gaps in DoT's numbering) and the truncated prompt echo DoT's parser left in some first steps
("estion \\"...\\", we need to clarify/solve:", "... we need to:") are dropped. `order="written"` keeps GPT-4's order;
`order="topological"` orders steps by the dependency edges (`int_edges`), ties in written order.
"""
from __future__ import annotations

import heapq
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.tasks.base import Example
from benchmarks.tasks.splits import data_file

TASKS = ("math", "champ", "p3", "csqa", "scan")
_ECHO = re.compile(r"^(?:for the )?(?:qu)?estion\b.*,\s*we need to(?:\s+[\w/]+)?:?$", re.IGNORECASE | re.DOTALL)


def problem_key(text: str) -> str:
    """The join key of a problem: its text with runs of whitespace made single spaces."""
    return " ".join(str(text).split())


def example_key(example: Example) -> str:
    return problem_key(example.meta.get("problem_text", example.query))


@dataclass
class Decomposition:
    problem_text: str
    steps: list[str]  # cleaned, in written order
    edges: list[tuple[int, int]] = field(default_factory=list)  # (i, j): step j uses step i (0-based)

    @property
    def key(self) -> str:
        return problem_key(self.problem_text)

    def topological(self) -> list[str]:
        """Steps in an order that respects `edges`, ties (and any cycle's remainder) in written order."""
        n = len(self.steps)
        indeg = [0] * n
        succ: list[list[int]] = [[] for _ in range(n)]
        for i, j in self.edges:
            succ[i].append(j)
            indeg[j] += 1
        ready = [i for i in range(n) if indeg[i] == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for j in succ[i]:
                indeg[j] -= 1
                if indeg[j] == 0:
                    heapq.heappush(ready, j)
        order += [i for i in range(n) if i not in set(order)]
        return [self.steps[i] for i in order]


def _clean(step: str) -> str:
    """Whitespace, and quotes wrapping the step (GPT-4 sometimes wrote a quoted list, `"...",`) gone."""
    s = str(step).strip()
    m = re.fullmatch(r'"(.*)"[.,]?', s, re.DOTALL)
    if m:
        s = m.group(1)
    elif s.endswith('",'):
        s = s[:-2]
    elif s.count('"') % 2 == 1:  # one unbalanced quote at an end
        s = s[1:] if s.startswith('"') else s[:-1] if s.endswith('"') else s
    return s.strip()


def _problem_text(task: str, text: str) -> str:
    if task == "csqa":
        return text.split("\nThe options are:")[0]
    return text


def load_records(task: str, path: str | Path | None = None) -> list[Decomposition]:
    """Every decomposition of `task` in the file's order, cleaned (see the module docstring)."""
    if task not in TASKS:
        raise ValueError(f"decompositions: unknown task {task!r} (one of {', '.join(TASKS)})")
    p = data_file(path, f"decompositions/{task}.json", f"decompositions[{task}]")
    raw = json.loads(p.read_text(encoding="utf-8"))
    out = []
    for k in sorted(raw, key=lambda k: int(k) if str(k).isdigit() else str(k)):
        rec = raw[k]
        steps_raw = rec.get("steps") or []
        keep: dict[int, int] = {}  # 1-based number in the file -> index among kept steps
        steps: list[str] = []
        for num, s in enumerate(steps_raw, start=1):
            c = _clean(s)
            if not c or _ECHO.match(c):
                continue
            keep[num] = len(steps)
            steps.append(c)
        edges = [(keep[a], keep[b]) for a, b in rec.get("int_edges") or [] if a in keep and b in keep and a != b]
        out.append(Decomposition(_problem_text(task, rec["problemText"]), steps, edges))
    return out


def load_decompositions(task_name: str, path: str | Path | None = None,
                        order: str = "written") -> dict[str, list[str]]:
    """`problem_key(problem text) -> steps` for every decomposition of `task_name` with at least one step.
    Join with a task's examples through `example_key` (or use `join_decompositions`)."""
    if order not in ("written", "topological"):
        raise ValueError(f"decompositions: order must be 'written' or 'topological', got {order!r}")
    out: dict[str, list[str]] = {}
    for d in load_records(task_name, path):
        if d.steps:
            out.setdefault(d.key, d.steps if order == "written" else d.topological())
    return out


def join_decompositions(task_name: str, examples: list[Example], path: str | Path | None = None,
                        order: str = "written") -> dict[str, list[str]]:
    """`example.id -> steps` for the examples that have a decomposition."""
    table = load_decompositions(task_name, path, order)
    return {e.id: table[k] for e in examples if (k := example_key(e)) in table}
