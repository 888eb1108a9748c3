"""The task interface: load examples of a split, score a prediction. One file per benchmark.

Splits: each task implements its raw splits (`load("train")`, `load("test")`); a run sees them through
`Task.split`, which carves the validation split out of the raw train split (`ValCarve`, set from
`eval.val_queries` by `build_world`): "val" is that carve, "train" is the raw train split without it
(what labels, SFT, GRPO, `cost_ref` and trained baselines see), "test" is the raw test split, untouched.
"""
from __future__ import annotations

import abc
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from core.prompts import format_prompt
from core.registry import Registry

if TYPE_CHECKING:  # annotations only: the tasks' base stays importable without pydantic
    from core.config import Config


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
    answer: str | None  # None: a user's query without a gold answer (routed, not scored)
    steps: list[Step] = field(default_factory=list)  # gold decomposition, in execution order
    bucket: str = ""  # a difficulty bucket for reports (e.g. facts: popular/mid/rare)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ValCarve:
    """The validation split: `queries` examples of a task's raw train split (at most half of it), drawn by
    a shuffle seeded with `seed` and the task's name. A smaller carve with the same seed is a subset of a
    larger one, so a router trained with a larger carve never saw the queries of a smaller one."""

    queries: int = 0
    seed: int = 0

    def positions(self, task: str, n_train: int) -> set[int]:
        """Positions in the raw train split (of `n_train` examples) that form the validation split."""
        order = list(range(n_train))
        random.Random(f"val:{task}:{self.seed}").shuffle(order)
        return set(order[: min(self.queries, n_train // 2)])


RUN_SPLITS = ("train", "val", "test")  # what `Task.split` serves


class Task(abc.ABC):
    name: ClassVar[str]
    step_max_tokens: ClassVar[int] = 32  # generation budget of one step's answer
    val_carve: ValCarve = ValCarve()  # no validation split unless the run sets one (build_world)

    @classmethod
    def from_config(cls, cfg: Config) -> Task:
        """The task as a run's config sets it up (default: its own defaults and the run's seed)."""
        return cls(seed=cfg.seed)

    @abc.abstractmethod
    def load(self, split: str) -> list[Example]:
        """Examples of the raw `split` ("train" or "test"), deterministic for a given config. A run reads
        its data through `split`, which keeps the validation queries out of "train"."""

    def split(self, name: str) -> list[Example]:
        """"train" (the raw train split without the validation queries), "val" (the `val_carve` of the raw
        train split, in train order) or "test" (the raw test split)."""
        if name not in RUN_SPLITS:
            raise ValueError(f"{self.name}: unknown split {name!r} ({', '.join(RUN_SPLITS)})")
        if name == "test":
            return self.load("test")
        train = self.load("train")
        val = self.val_carve.positions(self.name, len(train))
        return [ex for i, ex in enumerate(train) if (i in val) == (name == "val")]

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
        return format_prompt(render_step(step_text, earlier))

    def final_prompt(self, example: Example, steps: list[str], answers: list[str]) -> str | None:
        """The prompt of a final call that answers the query from the steps (their texts as the
        decomposer wrote them) and their answers, or None when the answer follows from the step
        answers directly (`final_answer`)."""
        return None

    def final_answer(self, example: Example, step_answers: list[str]) -> str:
        """The query's answer from its step answers (default: the last step's)."""
        return step_answers[-1] if step_answers else ""

    # -- what the tiny zoo learns from a task (tasks generated in code provide these) ------------------
    def vocab(self) -> list[str]:
        """Words a word-level tiny model needs for this task."""
        return []

    def zoo_pairs(self) -> dict[str, tuple[list[tuple[str, str]], list[float] | None]]:
        """(question, answer) training pairs per kind of the zoo's mix, with sampling weights (None:
        uniform)."""
        return {}

    def card_sets(self) -> dict[str, tuple[list[tuple[str, str]], int]]:
        """Test questions per bucket of the zoo's card, with each bucket's answer budget in tokens."""
        return {}

    # -- query shapes, for the generalisation report ---------------------------------------------------
    def shape_sets(self, n: int | None = None) -> dict[str, list[Example]]:
        """Queries per shape (e.g. hop count, surface form), none of them in a split: {} when the task
        has no notion of shape."""
        return {}

    def held_out(self, shape: str) -> bool:
        """Whether a shape of `shape_sets` lies outside everything training saw."""
        return False


def exact_match(prediction: str, gold: str) -> float:
    return float(" ".join(prediction.split()) == " ".join(gold.split()))


TASKS: Registry[type[Task]] = Registry("task")
register_task = TASKS.register


def data_dir() -> Path:
    """Shared benchmark data: env `R2R_DATA`, else `../shared/data` relative to the working directory."""
    return Path(os.environ.get("R2R_DATA", "../shared/data"))
