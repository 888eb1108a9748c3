"""Starting or joining Ray the same way from every entry point."""
from __future__ import annotations

import os


def init_ray(num_cpus: int | None = None) -> None:
    """Join the cluster in RAY_ADDRESS (e.g. under `ray job submit`), else start a local one on 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True)
        return
    ray.init(
        num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, _node_ip_address="127.0.0.1",
        log_to_driver=True, configure_logging=False,
        runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
                                  "HF_HUB_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}},
    )
