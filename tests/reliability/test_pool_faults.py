"""The pool's actors killed under load: a `ModelServer` SIGKILLed with a rollout batch queued at it, and
the `ModelPool` itself killed mid-evaluation (once: Ray restarts it; twice: it is gone for good). What
comes back is asserted item by item against an unfaulted run."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from rich.console import Console
from tests_support import SMALL

from core.config import load_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


@pytest.fixture
def config(zoo_config, tmp_path):
    """configs/test.yaml (+ SMALL) in a run folder of its own, on the shared test zoo; a wave of concurrent
    calls waits `batch_window_ms` at its server once a second request has joined the first (a lone request
    waits only `actors.server.PROBE_S`), so a fault lands while the rollout's requests are queued there."""
    def make(*overrides: str):
        return load_config(ROOT / "configs" / "test.yaml", [
            f"run_dir={tmp_path / 'run'}", f"zoo.dir={zoo_config.zoo_dir}", *SMALL, *overrides])
    return make


def wait_for(what: str, check, timeout_s: float = 120.0, every_s: float = 0.01):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def trajectory_record(t) -> tuple:
    """What a trajectory decided and got, without timings."""
    return (t.example_id, t.decomposition.decomposition.steps, [(s.model_id, s.answer, len(s.calls)) for s in t.steps],
            t.answer, t.correct, round(t.cost_usd, 15))


def test_a_model_server_sigkilled_mid_rollout_batch(config, ray_local):
    """Every trajectory of the batch comes back once, equal to an unfaulted rollout's; Ray restarts the
    server and re-runs its calls; the ledger counts each completed call once."""
    import ray

    from actors.pool import start_pool
    from actors.rollout import RolloutWorker
    from benchmarks.tasks import build_world

    cfg = config("pool.batch_window_ms=500")
    pool = start_pool(cfg)
    try:
        model_ids = ray.get(pool.model_ids.remote())
        init = str(cfg.zoo_dir / model_ids[-1])
        worker = RolloutWorker.remote(cfg.model_dump_json(), {"decomposer": init, "allocator": init}, pool,
                                      model_ids, 0)
        examples = build_world(cfg).tasks["scan"].load("train")[:8]
        group = 4

        def rollout():
            return worker.rollout.remote("scan", examples, group, "allocator", 0, {})

        clean = ray.get(rollout(), timeout=300)
        before = ray.get(pool.ledger_snapshot.remote())
        ref = rollout()

        def queued_server():
            stats = ray.get(pool.server_stats.remote())
            return next(((m, s) for m, servers in stats.items() for s in servers if s["queue"]), None)

        model, victim = wait_for("a request queued at a server", queued_server)
        os.kill(victim["pid"], signal.SIGKILL)
        at_kill = ray.get(pool.ledger_snapshot.remote())
        result = ray.get(ref, timeout=300)
        after = ray.get(pool.ledger_snapshot.remote())
        stats = ray.get(pool.server_stats.remote())[model]
    finally:
        ray.kill(pool)

    trajs = result.trajectories
    assert Counter(t.example_id for t in trajs) == {e.id: group for e in examples}  # all back, none twice
    assert [trajectory_record(t) for t in trajs] == [trajectory_record(t) for t in clean.trajectories]
    assert all(t.steps and all(s.calls for s in t.steps) for t in trajs)
    # the server came back as a new process and answered the requests that were queued at the dead one
    assert [s["pid"] for s in stats] != [victim["pid"]]
    assert after["models"][model]["calls"] > at_kill["models"].get(model, {"calls": 0})["calls"]
    # the ledger: each completed call once, at its price
    calls = [c for t in trajs for c in t.calls]
    assert after["calls"] - before["calls"] == len(calls)
    assert after["total_usd"] - before["total_usd"] == pytest.approx(sum(c.cost_usd for c in calls), rel=1e-9)


EVAL = ["eval.tasks=[facts, scan]", "eval.sweep_tau=[]", "eval.val_queries=6", "pool.batch_window_ms=300"]
METHODS, LIMIT = ["random"], 6  # and the reference, all:t-4


def comparable(results: dict) -> dict:
    """results.json without timings."""
    skip = {"latency_per_query", "wall_seconds"}

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in skip}
        return x

    return strip(results)


def test_the_pool_killed_mid_evaluation_is_restarted_and_every_query_answered_once(config, ray_local, tmp_path):
    import ray

    from actors.pool import start_pool
    from pipelines.evaluate import _evaluate

    cfg = config(*EVAL)
    pool = start_pool(cfg)
    try:
        model_ids = ray.get(pool.model_ids.remote())
        clean = _evaluate(cfg, pool, model_ids, METHODS, LIMIT, tmp_path / "clean", Console(quiet=True), None)
        calls = ray.get(pool.ledger_snapshot.remote())["calls"]
        ray.get(pool.reset_ledger.remote())
        outcome = {}

        def run():
            try:
                outcome["results"] = _evaluate(cfg, pool, model_ids, METHODS, LIMIT, tmp_path / "faulted",
                                               Console(quiet=True), None)
            except Exception as err:  # reported below
                outcome["error"] = err

        runner = threading.Thread(target=run)
        runner.start()
        wait_for("a third of the calls", lambda: ray.get(pool.ledger_snapshot.remote())["calls"] >= calls // 3)
        ray.kill(pool, no_restart=False)
        runner.join(timeout=300)
    finally:
        ray.kill(pool)
    assert "error" not in outcome, outcome.get("error")
    faulted = json.loads((tmp_path / "faulted" / "results.json").read_text())
    assert faulted == json.loads(json.dumps(outcome["results"]))
    for m in faulted["methods"].values():  # every query of every task once
        assert m["n"] == LIMIT * 2 and all(t["n"] == LIMIT for t in m["tasks"].values())
    assert comparable(faulted) == comparable(json.loads(json.dumps(clean)))


# what Ray itself prints on the driver's stderr: its INFO lines, and the output of its actors and workers it
# forwards with a "(Name pid=N)" or "(pid=N)" tag (e.g. an idle worker's stack dump when the driver's exit
# SIGTERMs it)
RAY_LOG = re.compile(r"\d{4}-\d\d-\d\d .*(INFO|WARNING)|(\x1b\[\d+m)?\((raylet|(\w+ )?pid=\d+)\)|Loading weights|Token auth")


def ray_processes(title: str) -> set[int]:
    """This test's Ray workers (descendants of this process: its cluster's raylet spawned them) whose
    process title (Ray's `ray::<class>[.<method>]`) starts with `title`."""
    parent, cmd = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        parent[int(pid)] = int(stat.rsplit(")", 1)[1].split()[1])

    def mine(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 1)
            if pid == os.getpid():
                return True
        return False

    return {pid for pid, c in cmd.items() if c.startswith(f"ray::{title}".encode()) and mine(pid)}


def test_the_pool_killed_for_good_ends_the_evaluation_with_one_line_and_no_results(config, ray_local, tmp_path):
    """`python -m pipelines.evaluate` whose pool is SIGKILLed twice (Ray restarts it once)."""
    settings = EVAL
    cfg = config(*settings)
    out = tmp_path / "eval"
    args = [sys.executable, "-m", "pipelines.evaluate", "--config", "configs/test.yaml",
            *(x for o in [f"run_dir={cfg.run_dir}", f"zoo.dir={cfg.zoo.dir}", *SMALL, *settings] for x in ("--set", o)),
            "--methods", *METHODS, "--limit", str(LIMIT), "--out", str(out)]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "evaluate.log"
    # pools already in this cluster (the session's shared zoo pool) are not the evaluation's
    killed, seen = ray_processes("ModelPoolImpl"), ray_processes("ModelServerImpl")
    with log.open("w") as sink:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.PIPE, text=True)
        try:
            cost_ref = Path(cfg.run_dir) / "cost_ref.json"  # written before the methods run
            wait_for("the reference cost", cost_ref.exists, timeout_s=300, every_s=0.05)
            for _ in range(2):  # the first death is restarted, the second is final
                pid = wait_for("the pool's process", lambda: ray_processes("ModelPoolImpl") - killed, 300).pop()
                # the pool is alive (past its __init__) once it has started its servers
                seen |= wait_for("its servers", lambda seen=seen: ray_processes("ModelServerImpl") - seen, 300)
                assert proc.poll() is None, "the evaluation ended before the pool was killed twice"
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            err = proc.communicate(timeout=300)[1]
        finally:
            proc.kill()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 1, (proc.returncode, err[-3000:], log.read_text()[-2000:])
    ours = [ln for ln in lines if not RAY_LOG.match(ln)]
    assert len(ours) == 1 and ours[0].startswith("evaluation failed: a pool actor died for good during"), err
    assert "Traceback" not in err
    assert not out.exists() or list(out.iterdir()) == []  # no results.json, partial or not
