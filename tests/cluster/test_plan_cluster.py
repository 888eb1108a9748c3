"""The paper plan against live loopback clusters with logical GPUs: it fits 2 nodes x 8 GPUs and, on
1 node x 8, fails with one line naming the group that does not fit. Nothing is left behind."""
import pytest
from rich.console import Console

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("nodes, fits", [(2, True), (1, False)])
def test_paper_plan_on_a_cluster(nodes, fits, capsys):
    import ray
    from ray.cluster_utils import Cluster

    from core.config import load_config
    from pipelines.train import dry_run

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 16, "num_gpus": 8, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=16, num_gpus=8)
        cluster.wait_for_nodes()
        code = dry_run(load_config("configs/paper.yaml"), Console(width=200), cluster.address)
        out = capsys.readouterr().out.strip().splitlines()
        if fits:
            assert code == 0 and out[-1] == f"fits the cluster at {cluster.address}"
        else:
            # the pool's engines come first: 1+1+1+1+1+2 GPUs leave 2, and the 72B engine needs 4 on one node
            assert code == 1 and out[-1].startswith("does not fit: pool:qwen2.5-72b#0 (4 x")
            assert sum(line.startswith("does not fit") for line in out) == 1
        ray.init(address=cluster.address)
        assert ray.util.placement_group_table() == {} or all(
            pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())
    finally:
        ray.shutdown()
        cluster.shutdown()
