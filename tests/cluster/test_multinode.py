"""A 3-node Ray cluster on 127.0.0.1 (nodes with distinct custom resources): the config pins the pool to
one node, the 2 learner ranks to another and the rollout workers to the head. A 3-step GRPO run records
where each actor ran; weights cross nodes (checked by checksum at every step); the metrics equal a
single-node run of the same config and seed. Runs in a pytest invocation of its own (it starts and
stops its own clusters; the suite's session-wide Ray would clash)."""
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

PINS = {"pool.server.resources": {"pool": 0.1}, "pool.dispatcher.resources": {"pool": 0.01},
        "train.learner.resources": {"learner": 0.1}, "train.rollout.resources": {"rollout": 0.1}}


def run(cfg, sft: bool, steps: int = 3) -> tuple[list[dict], dict]:
    from rich.console import Console

    from pipelines.sft import run_sft_stage
    from pipelines.train import Trainer

    if sft:
        run_sft_stage(cfg, Console(quiet=True))
    trainer = Trainer(cfg, Console(quiet=True))
    try:
        history = trainer.fit(steps=steps)
        placement = json.loads((trainer.out / "placement.json").read_text())
    finally:
        trainer.close()
    return history, placement


def test_three_nodes_place_each_group_where_the_config_pins_it(zoo_config, zoo_card, tmp_path):
    import shutil

    import ray
    from conftest import current_sft, sft_outputs, sft_world
    from ray.cluster_utils import Cluster
    from tests_support import SMALL

    from core.config import load_config

    base = [f"run_dir={tmp_path / 'run'}", f"zoo.dir={zoo_config.zoo_dir}", *SMALL,
            "train.learner.ranks=2", "train.alternate_every=1"]
    pinned = load_config("configs/test.yaml", base + [f"{k}={json.dumps(v)}" for k, v in PINS.items()])
    shared = sft_world()  # the suite's SFT router, where another session made it from this zoo: the run
    reuse = current_sft(shared, zoo_card)  # starts from it, else trains its own (in the pinned cluster)
    for part in sft_outputs() if reuse else ():
        copy = shutil.copytree if (shared.run_path / part).is_dir() else shutil.copy
        copy(shared.run_path / part, pinned.run_path / part)
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={
        "num_cpus": 4, "resources": {"rollout": 1}, "include_dashboard": False})
    try:
        pool_node = cluster.add_node(num_cpus=4, resources={"pool": 1})
        learner_node = cluster.add_node(num_cpus=4, resources={"learner": 1})
        cluster.wait_for_nodes()
        history, placement = run(pinned, sft=not reuse)
    finally:
        ray.shutdown()
        cluster.shutdown()
    head = placement["driver"]
    assert {r["node_id"] for r in placement["learner"]} == {learner_node.node_id}
    assert [r["rank"] for r in placement["learner"]] == [0, 1]
    assert {w["node_id"] for w in placement["rollout_workers"]} == {head}
    assert placement["pool"]["dispatcher"]["node_id"] == pool_node.node_id
    assert {s["node_id"] for s in placement["pool"]["servers"]} == {pool_node.node_id}
    assert len({head, pool_node.node_id, learner_node.node_id}) == 3
    assert [h["phase"] for h in history] == ["decomposer", "allocator", "decomposer"]
    # weights crossed nodes: every step pushed the learner's weights to the head's workers and checked
    # their checksums; a step that updated a policy bumped its version
    assert sum(h["items"] > 0 for h in history) >= 1

    from actors.runtime import init_ray

    single = load_config("configs/test.yaml", base)  # the same run dir and SFT router
    init_ray(num_cpus=8)
    try:
        alone, where = run(single, sft=False)
    finally:
        ray.shutdown()
    assert len({r["node_id"] for r in where["learner"]} | {where["driver"]}) == 1
    for a, b in zip(history, alone):
        for k in ("reward", "accuracy", "cost_per_query", "items"):
            assert a[k] == pytest.approx(b[k], rel=1e-6), (a["step"], k)
        for k in ("loss", "kl", "sampler_gap"):
            if k in b:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), (a["step"], k)
    assert Path(tmp_path / "run" / "router" / "grpo" / "allocator").exists()
