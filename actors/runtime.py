"""Starting or joining Ray the same way from every entry point, and the pool a stage works with."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from actors.pool import pool_models, start_pool
from actors.vllm_server import launched_servers
from core.config import Config


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in RAY_ADDRESS (e.g. under `ray job submit`), else start a local one on 127.0.0.1
    (a new one even when a `ray start` cluster runs on this machine: joining needs RAY_ADDRESS)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    ray.init(
        address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
        log_to_driver=True, configure_logging=False,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                                  "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}},
    )


@contextmanager
def pool_session(cfg: Config, pool=None) -> Iterator[tuple[object, list[str]]]:
    """Ray up, the config's pool started and loaded (after the vLLM servers of `openai` models with a
    `launch` section: `actors.vllm_server`): yields (pool handle, model ids cheapest first); the pool, its
    servers and launched servers go on exit. `pool`: one already running for this config's models (e.g. one
    shared by several runs), used as it is and left running. `pool.name`: the running pool of that name is
    joined, else started under it (`start_pool(shared=True)`); either way it is left running."""
    if pool is None and cfg.pool.name:
        init_ray()
        pool = start_pool(cfg, cfg.pool.name, shared=True)  # the running pool of that name, else a new one
    if pool is not None:
        ids = ray.get(pool.model_ids.remote())
        wanted = sorted(m.id for m in pool_models(cfg))
        if sorted(ids) != wanted:
            raise ValueError(f"the given pool runs {sorted(ids)}; this config's pool is {wanted}")
        yield pool, ids
        return
    init_ray()
    with launched_servers(pool_models(cfg), cfg.run_path / "logs"):  # openai models with `launch`
        pool = start_pool(cfg)
        try:
            yield pool, ray.get(pool.model_ids.remote())
        finally:
            ray.kill(pool)
