"""`math`: MATH-200 (200 MATH test problems, Hendrycks et al., as sampled by DoT).

Each row has `problem, level, type, solution`; the gold answer is the content of the solution's last
`\\boxed{}`. A prediction is free-form model output: its last `\\boxed{}` (else its tail) is compared with
the gold by math-verify (see `mathcheck`). Ids are `math-<row index>`.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

from benchmarks.tasks.base import Example, register_task
from benchmarks.tasks.mathcheck import last_boxed, math_equal
from benchmarks.tasks.natural import NaturalLanguageTask
from benchmarks.tasks.splits import DEFAULT_TEST_FRACTION, data_file, split_examples

DATA_FILE = "math/math200.json"


@register_task("math")
class MathTask(NaturalLanguageTask):
    answer_instruction = "Give the final answer in \\boxed{}."

    def __init__(self, path: str | Path | None = None, seed: int = 0,
                 test_fraction: float = DEFAULT_TEST_FRACTION) -> None:
        self.path = data_file(path, DATA_FILE, "math")
        self.seed = seed
        self.test_fraction = test_fraction

    @cached_property
    def examples(self) -> list[Example]:
        rows = json.loads(self.path.read_text(encoding="utf-8"))
        out = []
        for i, row in enumerate(rows):
            answer = last_boxed(row["solution"])
            if answer is None:
                raise ValueError(f"math: row {i} of {self.path} has no \\boxed{{}} answer in its solution")
            out.append(Example(
                id=f"math-{i}", task="math", query=row["problem"], answer=answer.strip(),
                bucket=row.get("level", ""),
                meta={"problem_text": row["problem"], "type": row.get("type", ""),
                      "level": row.get("level", ""), "solution": row["solution"]},
            ))
        return out

    def load(self, split: str) -> list[Example]:
        return split_examples(self.examples, split, self.seed, self.test_fraction, "math")

    def score(self, prediction: str, example: Example) -> float:
        return float(math_equal([example.answer], prediction))
