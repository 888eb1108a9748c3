"""A router a user calls with a plain query (no gold answer), in the spirit of RouteLLM's `Controller`:

    with Router.from_run("runs/tiny/router/grpo") as router:
        trajectory = router.route("jump twice after walk left")

It owns its pool (Ray up, the pool's servers loaded) while the `with` block lasts, infers the query's
task through the task registry, and runs the one chain (`policies.reason`)."""
from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

from actors.runtime import pool_session
from benchmarks.tasks import World, build_world
from core.config import Config, config_from_tree, load_config
from core.storage import local_copy
from pipelines.runs import ROUTER_META
from policies.load import load_router
from policies.reason import Trajectory, reason
from policies.router import PolicyRouter


class Router:
    def __init__(self, cfg: Config, path: str | Path | None = None, pool=None):
        """`path`: a trained router folder; without one, the config's `router` settings decide. `pool`: a
        running pool of the config's models to use (left running); by default the router starts its own."""
        self.cfg, self.path, self._pool = cfg, Path(path) if path else None, pool
        self.world: World = build_world(cfg)
        self.policy: PolicyRouter | None = None
        self.description = ""
        self._session = ExitStack()

    @classmethod
    def from_run(cls, path: str | Path, config: str | Path | None = None, overrides: list[str] | None = None,
                 pool=None) -> Router:
        """A trained router folder (a path or URI), with the config it was trained under (stored beside
        it), or `config`."""
        path = local_copy(path)
        if config is not None:
            return cls(load_config(config, overrides), path, pool)
        meta = path / ROUTER_META
        if not meta.exists():
            raise FileNotFoundError(f"{meta} not found: pass the run's config (`config=...`)")
        return cls(config_from_tree(json.loads(meta.read_text())["config"], overrides), path, pool)

    def __enter__(self) -> Router:
        self.pool, self.model_ids = self._session.enter_context(pool_session(self.cfg, self._pool))
        self.policy, self.description = load_router(self.cfg, self.model_ids, self.path)
        return self

    def __exit__(self, *exc) -> None:
        self.policy = None
        self._session.close()

    def route(self, query: str, task: str | None = None) -> Trajectory:
        """The chain on one plain query; `task` defaults to the one the registry infers. Without a
        gold answer the trajectory's `correct` is NaN."""
        if self.policy is None:
            raise RuntimeError("use the router inside `with Router...(...) as router:` (it owns its pool)")
        example = self.world.infer(query, task)
        return reason(example, self.policy, self.pool, self.world.tasks[example.task], self.cfg.reason,
                      self.model_ids)

