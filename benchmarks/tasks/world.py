"""The world a run trains and evaluates in: the registry's tasks named in `tasks.enabled`, each set up
from the config (the embedded default: the tiny world's `facts` and `scan`) with the run's validation
carve (`eval.val_queries` of each raw train split: `Task.split`)."""
from __future__ import annotations

from dataclasses import dataclass

from benchmarks.tasks.base import TASKS, Example, Task, ValCarve
from core.config import Config


@dataclass
class World:
    tasks: dict[str, Task]

    def words(self) -> list[str]:
        """The tasks' words, in task order (a word-level tokenizer's vocabulary starts from them)."""
        return [w for task in self.tasks.values() for w in task.vocab()]

    def zoo_pairs(self) -> dict[str, tuple[list[tuple[str, str]], list[float] | None]]:
        return {kind: pairs for task in self.tasks.values() for kind, pairs in task.zoo_pairs().items()}

    def infer(self, query: str, task: str | None = None) -> Example:
        """The query as an example of `task`, or of the task that parses it (gold answer and
        decomposition known), or else of the task whose words cover most of it (no gold answer)."""
        if task is not None and task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; this world's tasks: {sorted(self.tasks)}")
        names = [task] if task else list(self.tasks)
        for name in names:
            example = self.tasks[name].parse_query(query)
            if example is not None:
                return example
        words = query.split()

        def coverage(name: str) -> float:
            vocab = set(self.tasks[name].vocab())
            return sum(w in vocab for w in words) / max(1, len(words))

        name = max(names, key=coverage)  # first task on ties
        return Example(id="query", task=name, query=" ".join(words), answer=None)

    def card_sets(self) -> dict[str, tuple[list[tuple[str, str]], int]]:
        return {name: s for task in self.tasks.values() for name, s in task.card_sets().items()}


def build_world(cfg: Config, names: list[str] | None = None) -> World:
    """`names` (default: `tasks.enabled`) set up from the registry."""
    names = cfg.tasks.enabled if names is None else names
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise ValueError(f"tasks.enabled: unknown task(s) {unknown}; known: {sorted(TASKS)}")
    tasks = {name: TASKS[name].from_config(cfg) for name in names}
    for task in tasks.values():
        task.val_carve = ValCarve(cfg.eval.val_queries, cfg.seed)
    return World(tasks)
