"""The training driver SIGKILLed at three steps drawn with seeds 0, 1 and 2, each time resumed with
`--resume` on a fresh staging directory, with the run directory on a real S3-compatible server (moto on
127.0.0.1; so everything a resume starts from comes from the bucket): the history holds every step once and
equals an uninterrupted run on local disk, step for step (rewards, accuracy and cost to 1e-6 relative; loss
to 1e-4, as the correctness tests hold a resumed run). One rollout worker: each driver starts its own Ray,
pool and learner, and the two-worker resume is tests/integration/test_train.py's SIGKILL test."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import SMALL, drive

pytestmark = pytest.mark.integration
BUCKET = "r2r-test"  # the s3 fixture's (tests/conftest.py)
STEPS = 6


def kill_points() -> list[int]:
    """Three distinct steps after which the driver dies, one drawn per seed."""
    left, points = list(range(1, STEPS)), []
    for seed in (0, 1, 2):
        points.append(left.pop(random.Random(seed).randrange(len(left))))
    return sorted(points)


def test_driver_killed_at_three_steps_resumes_from_the_bucket(sft_config, zoo_pool, s3, tmp_path):
    from rich.console import Console

    from pipelines.train import Trainer

    fs, s3_env = s3
    settings = {**dict(s.split("=", 1) for s in SMALL), "train.seed": "5", "train.queries_per_step": "4",
                "train.checkpoint_every": "1", "train.grpo_steps": str(STEPS), "train.rollout_workers": "1"}
    cfg = sft_config.model_copy(update={"train": sft_config.train.model_copy(update={
        "seed": 5, "queries_per_step": 4, "checkpoint_every": 1, "grpo_steps": STEPS, "rollout_workers": 1})})
    reference = Trainer(cfg, Console(quiet=True), pool=zoo_pool)  # uninterrupted, on local disk
    expected = reference.fit()
    reference.close()

    run, zoo = f"s3://{BUCKET}/run", f"s3://{BUCKET}/zoo"
    local_run = Path(sft_config.run_dir)
    for part in ("labels", "router/sft", "cost_ref.json"):
        fs.put(str(local_run / part), f"{BUCKET}/run/{part}", recursive=True)
    fs.put(str(sft_config.zoo_dir), f"{BUCKET}/zoo", recursive=True)
    args = [sys.executable, "-m", "pipelines.train", "--config", "configs/test.yaml",
            "--set", f"run_dir={run}", "--set", f"zoo.dir={zoo}",
            *(x for k, v in settings.items() for x in ("--set", f"{k}={v}"))]

    def driver(i: int) -> tuple[subprocess.Popen, Path]:
        env = {**os.environ, **s3_env, "R2R_STAGE_DIR": str(tmp_path / f"stage{i}")}  # a fresh machine each time
        env.pop("RAY_ADDRESS", None)
        log = tmp_path / f"driver{i}.log"
        return subprocess.Popen(args + (["--resume"] if i else []), env=env, stdout=log.open("w"),
                                stderr=subprocess.STDOUT), log

    points = kill_points()
    resumed_at = []
    for i, step in enumerate([*points, None]):
        proc, log = driver(i)
        manifest = f"{BUCKET}/run/train-seed5/checkpoints/step-{step or 0:08d}/manifest.json"
        resumed = drive(proc, log, None if step is None else lambda m=manifest: fs.exists(m), poll=0.2)
        if i:
            assert resumed is not None, log.read_text()[-3000:]
            resumed_at.append(resumed)
    assert len(resumed_at) == len(points) and all(r >= p for r, p in zip(resumed_at, points))
    print(f"killed after steps {points}; resumed at {resumed_at}")

    rows = [json.loads(x) for x in fs.cat(f"{BUCKET}/run/train-seed5/history.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows] == list(range(STEPS))  # each step once
    for want, got in zip(expected, rows):
        assert got["phase"] == want["phase"]
        for k in ("reward", "accuracy", "cost_per_query", "items"):
            assert got[k] == pytest.approx(want[k], rel=1e-6), (want["step"], k)
        if "loss" in want:
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-6), want["step"]
    assert fs.exists(f"{BUCKET}/run/router/grpo-seed5/allocator/config.json")
    kept = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/run/train-seed5/checkpoints"))
    assert kept == [f"step-{STEPS - 1:08d}", f"step-{STEPS:08d}"]  # pruned at the URI too (keep_checkpoints: 2)
