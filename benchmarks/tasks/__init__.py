"""Benchmark registry: `TASKS[name](**settings)` loads and scores one benchmark; `build_world(cfg)`
sets up the tasks a run uses."""
from benchmarks.tasks import champ, csqa, facts, hendrycks_math, musique, p3, scan  # noqa: F401  (registration)
from benchmarks.tasks.base import TASKS, Example, Step, Task, data_dir, exact_match, register_task
from benchmarks.tasks.world import World, build_world

__all__ = ["TASKS", "Example", "Step", "Task", "World", "build_world", "data_dir", "exact_match", "register_task"]
