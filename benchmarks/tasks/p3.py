"""`p3`: Python Programming Puzzles (Schuster et al. 2021; the 1,715 puzzles DoT uses).

A puzzle is a function `sat(x, ...)`; a solution is any `x` for which `sat(x)` returns True. Rows have
`name, sat, ans_type, sol_header ("def sol():" or with the puzzle's parameters as defaults),
sol_docstring, sol_bodies` (gold bodies; 54 puzzles have none). The query is the `sat` source (as in
DoT); the gold answer is the first gold solution as a whole `sol` function. Ids are `p3-<row index>`
(`meta["name"]` keeps the puzzle's own name).

A prediction is Python source in any of three forms (a Markdown code fence around it is dropped):
a whole `def sol(...)` (imports and helpers may come before it), the body of `sol` (statements with a
`return`), or a single expression (the answer itself).

Scoring runs in two sandboxed processes (see `sandbox`). The first runs the untrusted solution, calls
`sol()` and writes `repr(answer)` to a file. The second, which runs only trusted code, reads the answer
back with `ast.literal_eval`, checks its type against `ans_type` and calls `sat(answer)`; the score is
1 iff that returns True (`is True`). Passing the answer as a literal means nothing the solution defines
(a str subclass with a doctored `count`, a patched builtin) reaches `sat`, and nothing it prints can be
taken for the verdict. The verdict (`P3Verdict`): `ok`, `false` (sat returned something else, raised,
or the answer has the wrong type), `error` (the solution raised or gave no literal answer), `timeout`,
`crash`.
"""
from __future__ import annotations

import ast
import json
import re
import textwrap
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from benchmarks.tasks.base import Example, register_task
from benchmarks.tasks.natural import NaturalLanguageTask
from benchmarks.tasks.sandbox import run_python
from benchmarks.tasks.splits import DEFAULT_TEST_FRACTION, data_file, split_examples

DATA_FILE = "p3/puzzles.json"
PRELUDE = "from typing import List\n"  # what P3's sat/sol sources assume is in scope
ANSWER_FILE = "answer.repr"
_VERDICT = "R2R-P3-VERDICT "

_SOL_RUNNER = """

__r2r_answer = sol()
with open({answer_file!r}, "w", encoding="utf-8") as __r2r_f:
    __r2r_f.write(repr(__r2r_answer))
"""

_SAT_RUNNER = """
import ast as __r2r_ast


def __r2r_type_ok(x, t):
    t = t.replace(" ", "")
    if t.startswith("List[") and t.endswith("]"):
        return isinstance(x, list) and all(__r2r_type_ok(v, t[5:-1]) for v in x)
    if t == "float":
        return isinstance(x, (int, float)) and not isinstance(x, bool)
    if t == "int":
        return isinstance(x, int) and not isinstance(x, bool)
    return {{"str": str, "bool": bool}}.get(t, object) is object or isinstance(x, {{"str": str, "bool": bool}}[t])


with open({answer_file!r}, encoding="utf-8") as __r2r_f:
    __r2r_src = __r2r_f.read()
try:
    __r2r_answer = __r2r_ast.literal_eval(__r2r_src)
except Exception as __r2r_e:
    print({verdict!r} + "error answer is not a Python literal: " + type(__r2r_e).__name__)
    raise SystemExit(0)
if not __r2r_type_ok(__r2r_answer, {ans_type!r}):
    print({verdict!r} + "false answer has type " + type(__r2r_answer).__name__ + ", expected " + {ans_type!r})
    raise SystemExit(0)
try:
    __r2r_result = sat(__r2r_answer)
except Exception as __r2r_e:
    print({verdict!r} + "false sat raised " + type(__r2r_e).__name__ + ": " + str(__r2r_e)[:200])
    raise SystemExit(0)
print({verdict!r} + ("ok" if __r2r_result is True else "false sat returned " + repr(__r2r_result)[:100]))
"""


@dataclass
class P3Verdict:
    status: str  # "ok" | "false" | "error" | "timeout" | "crash"
    reason: str = ""
    stage: str = ""  # "sol" (running the solution) or "sat" (checking its answer)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _strip_fence(text: str) -> str:
    blocks = re.findall(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)```", text, re.DOTALL | re.IGNORECASE)
    return blocks[-1] if blocks else text


def solution_source(prediction: str, sol_header: str = "def sol():") -> str:
    """A program defining `sol` from a prediction in any of the accepted forms (module docstring)."""
    code = _strip_fence(prediction).strip("\n")
    if re.search(r"^\s*def\s+sol\s*\(", code, re.MULTILINE):
        return textwrap.dedent(code)
    try:
        ast.parse(code.strip(), mode="eval")
        return f"{sol_header}\n    return (\n{code.strip()}\n    )\n"
    except SyntaxError:
        pass
    return sol_header + "\n" + textwrap.indent(textwrap.dedent(code), "    ") + "\n"


def check_solution(sat: str, prediction: str, sol_header: str = "def sol():", ans_type: str = "",
                   timeout_s: float = 10.0, memory_mb: int = 1024, answer_mb: int = 128) -> P3Verdict:
    """Run `prediction` and check its answer with `sat`, each in the sandbox (`timeout_s`, `memory_mb`
    each; the answer's repr may take up to `answer_mb`). Never raises."""
    try:
        program = PRELUDE + solution_source(prediction, sol_header) + _SOL_RUNNER.format(answer_file=ANSWER_FILE)
    except Exception as e:
        return P3Verdict("error", f"could not read the prediction: {type(e).__name__}", "sol")
    first = run_python(program, timeout_s, memory_mb, read_files=[ANSWER_FILE], file_size_mb=answer_mb)
    if first.status != "ok":
        return P3Verdict(first.status, first.reason, "sol", first.wall_s)
    if ANSWER_FILE not in first.files:
        return P3Verdict("error", "the solution wrote no answer", "sol", first.wall_s)
    checker = PRELUDE + sat + "\n" + _SAT_RUNNER.format(answer_file=ANSWER_FILE, verdict=_VERDICT,
                                                        ans_type=ans_type)
    second = run_python(checker, timeout_s, memory_mb, files={ANSWER_FILE: first.files[ANSWER_FILE]},
                        file_size_mb=answer_mb)
    wall = first.wall_s + second.wall_s
    if second.status != "ok":
        return P3Verdict(second.status, second.reason, "sat", wall)
    lines = [ln for ln in second.stdout.splitlines() if ln.startswith(_VERDICT)]
    if not lines:
        return P3Verdict("error", "the checker printed no verdict", "sat", wall)
    status, _, reason = lines[-1][len(_VERDICT):].partition(" ")
    return P3Verdict(status, reason, "sat", wall)


@register_task("p3")
class P3Task(NaturalLanguageTask):
    step_max_tokens = 64  # the final call writes code
    answer_instruction = ("Write a Python function `def sol():` that returns an input for which `sat` returns True. "
                          "Reply with the code only.")

    def question_text(self, example: Example) -> str:
        return f"Find an input for which this Python function returns True.\n{example.query.strip()}"

    def __init__(self, path: str | Path | None = None, seed: int = 0,
                 test_fraction: float = DEFAULT_TEST_FRACTION, timeout_s: float = 10.0,
                 memory_mb: int = 1024) -> None:
        self.path = data_file(path, DATA_FILE, "p3")
        self.seed = seed
        self.test_fraction = test_fraction
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb

    @cached_property
    def examples(self) -> list[Example]:
        rows = json.loads(self.path.read_text(encoding="utf-8"))
        out = []
        for i, row in enumerate(rows):
            bodies = row.get("sol_bodies") or []
            out.append(Example(
                id=f"p3-{i}", task="p3", query=row["sat"],
                answer=f"{row['sol_header']}\n{bodies[0]}" if bodies else "",
                bucket=row.get("module", "").removesuffix(".py"),
                meta={"problem_text": row["sat"], "name": row["name"], "ans_type": row["ans_type"],
                      "sol_header": row["sol_header"], "sol_docstring": row.get("sol_docstring", ""),
                      "sol_bodies": bodies},
            ))
        return out

    def load(self, split: str) -> list[Example]:
        return split_examples(self.examples, split, self.seed, self.test_fraction, "p3")

    def check(self, prediction: str, example: Example) -> P3Verdict:
        if not isinstance(prediction, str) or not prediction.strip():
            return P3Verdict("error", "empty prediction", "sol")
        return check_solution(example.meta["problem_text"], prediction, example.meta["sol_header"],
                              example.meta["ans_type"], self.timeout_s, self.memory_mb)

    def score(self, prediction: str, example: Example) -> float:
        try:
            return float(self.check(prediction, example).ok)
        except Exception:
            return 0.0
