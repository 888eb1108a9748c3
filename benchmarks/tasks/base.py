"""The task interface: load examples of a split, score a prediction. One file per benchmark."""
from __future__ import annotations

import abc
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class Step:
    """One subtask of a gold decomposition: its text, which may refer to earlier steps' answers as
    `#1`, `#2`, ... (see `render_step`), and its gold answer."""

    prompt: str
    answer: str


_REF = re.compile(r"#(\d+)")


def render_step(text: str, earlier: list[str]) -> str:
    """Substitute `#k` with the k-th earlier answer (1-based); unknown references stay as written."""

    def sub(m: re.Match) -> str:
        k = int(m.group(1))
        return earlier[k - 1].strip() or m.group(0) if 1 <= k <= len(earlier) else m.group(0)

    return _REF.sub(sub, text)


@dataclass
class Example:
    id: str
    task: str
    query: str  # the whole query, as a pool model would be asked it in one shot
    answer: str
    steps: list[Step] = field(default_factory=list)  # gold decomposition, in execution order
    bucket: str = ""  # a difficulty bucket for reports (e.g. facts: popular/mid/rare)
    meta: dict[str, Any] = field(default_factory=dict)


class Task(abc.ABC):
    name: ClassVar[str]
    step_max_tokens: ClassVar[int] = 32  # generation budget of one step's answer

    @abc.abstractmethod
    def load(self, split: str) -> list[Example]:
        """Examples of `split` ("train" or "test"), deterministic for a given config."""

    @abc.abstractmethod
    def score(self, prediction: str, example: Example) -> float:
        """1.0 for a correct prediction, 0.0 for a wrong one (fractional where the metric is)."""

    def parse_query(self, query: str) -> Example | None:
        """An example (gold answer and decomposition) for a free-form query of this task, where the
        task can derive them (the tiny world's tasks can); None otherwise."""
        return None

    def gold_step_prompt(self, example: Example, i: int, earlier: list[str]) -> str:
        """Step i of the gold decomposition with the chain's own earlier answers filled in."""
        return render_step(example.steps[i].prompt, earlier)

    def step_prompt(self, example: Example, step_text: str, earlier: list[str],
                    earlier_steps: list[str] | None = None) -> str:
        """What a pool model is asked for one step, given the earlier steps' answers and (optionally)
        their texts (default: the tiny world's `question =` form with earlier answers filled in;
        natural-language tasks also show the query and the earlier sub-questions with their answers)."""
        from policies.tiny_lm import format_prompt

        return format_prompt(render_step(step_text, earlier))

    def final_prompt(self, example: Example, steps: list[str], answers: list[str]) -> str | None:
        """The prompt of a final call that answers the query from the steps (their texts as the
        decomposer wrote them) and their answers, or None when the answer follows from the step
        answers directly (`final_answer`)."""
        return None

    def final_answer(self, example: Example, step_answers: list[str]) -> str:
        """The query's answer from its step answers (default: the last step's)."""
        return step_answers[-1] if step_answers else ""


def exact_match(prediction: str, gold: str) -> float:
    return float(" ".join(prediction.split()) == " ".join(gold.split()))


TASKS: dict[str, type[Task]] = {}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    def deco(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS[name] = cls
        return cls

    return deco


def data_dir() -> Path:
    """Shared benchmark data: env `R2R_DATA`, else `../shared/data` relative to the working directory."""
    return Path(os.environ.get("R2R_DATA", "../shared/data"))
