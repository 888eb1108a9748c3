"""Benchmark registry: `TASKS[name](**settings)` loads and scores one benchmark."""
from benchmarks.tasks import champ, csqa, facts, hendrycks_math, musique, p3, scan  # noqa: F401,E402  (registration)
from benchmarks.tasks.base import TASKS, Example, Step, Task, data_dir, exact_match, register_task

__all__ = ["TASKS", "Example", "Step", "Task", "data_dir", "exact_match", "register_task"]
