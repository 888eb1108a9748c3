"""Run directories on an object store (core.storage) against a real S3-compatible server (moto in server
mode on 127.0.0.1) and `file://`: sync semantics, and a training run on S3 that is SIGKILLed after its
step-2 checkpoint reached the bucket and resumed with `--resume` on a fresh staging directory (so all it
resumes from comes from the bucket), equal step for step to an uninterrupted run on local disk."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests_support import SMALL

BUCKET = "r2r-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with one bucket; the env vars that point boto at it (set here for the module)."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fs, _ = fsspec.core.url_to_fs(f"s3://{BUCKET}")
    fs.mkdir(BUCKET)
    yield fs, env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def stage(tmp_path, monkeypatch):
    monkeypatch.setenv("R2R_STAGE_DIR", str(tmp_path / "stage"))
    return tmp_path / "stage"


@pytest.mark.parametrize("scheme", ["s3", "file"])
def test_push_pull_delete_round_trip(s3, stage, tmp_path, monkeypatch, scheme):
    from core.storage import Storage, ensure_local, uri_of_staged

    target = f"s3://{BUCKET}/unit" if scheme == "s3" else f"file://{tmp_path / 'remote'}"
    a = Storage(target)
    assert a.local.is_relative_to(stage) and uri_of_staged(a.local / "x") == f"{target}/x"
    (a.local / "sub").mkdir(parents=True)
    (a.local / "sub" / "w.bin").write_bytes(b"\0" * 1000)
    (a.local / "meta.json").write_text("{}")
    assert a.push() == 2 and a.push() == 0  # nothing changed: nothing copied

    monkeypatch.setenv("R2R_STAGE_DIR", str(tmp_path / "other-node"))
    b = Storage(target)
    assert not b.local.exists() and b.pull() == 2 and b.pull() == 0
    (b.local / "meta.json").write_text("[]")  # same size, same second as the upload: the content decides
    assert b.push() == 1
    monkeypatch.setenv("R2R_STAGE_DIR", str(stage))
    assert a.pull() == 1 and (a.local / "meta.json").read_text() == "[]"

    (a.local / "stray.txt").write_text("not at the URI")
    a.pull(mirror=True)
    assert not (a.local / "stray.txt").exists()  # the URI is the truth
    a.delete("sub")
    assert not (a.local / "sub").exists()
    monkeypatch.setenv("R2R_STAGE_DIR", str(tmp_path / "third-node"))
    c = Storage(target)
    assert ensure_local(c.local / "meta.json").read_text() == "[]" and not (c.local / "sub").exists()


@pytest.mark.integration
def test_training_on_s3_resumes_after_sigkill(sft_config, s3, tmp_path):
    from rich.console import Console

    from pipelines.train import Trainer

    fs, s3_env = s3
    settings = {**dict(s.split("=", 1) for s in SMALL), "train.seed": "5", "train.queries_per_step": "4",
                "train.checkpoint_every": "1", "train.grpo_steps": "4"}
    cfg = sft_config.model_copy(update={"train": sft_config.train.model_copy(update={
        "seed": 5, "queries_per_step": 4, "checkpoint_every": 1, "grpo_steps": 4})})
    reference = Trainer(cfg, Console(quiet=True))  # uninterrupted, on local disk
    expected = reference.fit()
    reference.close()

    run, zoo = f"s3://{BUCKET}/run", f"s3://{BUCKET}/zoo"
    local_run = Path(sft_config.run_dir)
    for part in ("labels", "router/sft", "cost_ref.json"):
        fs.put(str(local_run / part), f"{run[5:]}/{part}", recursive=True)
    fs.put(str(sft_config.zoo_dir), zoo[5:], recursive=True)
    args = [sys.executable, "-m", "pipelines.train", "--config", "configs/test.yaml",
            "--set", f"run_dir={run}", "--set", f"zoo.dir={zoo}",
            *(x for k, v in settings.items() for x in ("--set", f"{k}={v}"))]
    manifest = f"{BUCKET}/run/train-seed5/checkpoints/step-00000002/manifest.json"

    def driver(i: int) -> tuple[subprocess.Popen, Path]:
        env = {**os.environ, **s3_env, "R2R_STAGE_DIR": str(tmp_path / f"stage{i}")}  # a fresh machine each time
        env.pop("RAY_ADDRESS", None)
        log = tmp_path / f"driver{i}.log"
        return subprocess.Popen(args + (["--resume"] if i else []), env=env, stdout=log.open("w"),
                                stderr=subprocess.STDOUT), log

    first, log = driver(0)
    deadline = time.time() + 600
    while not fs.exists(manifest):
        assert first.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second, log = driver(1)
    assert second.wait(timeout=600) == 0, log.read_text()[-3000:]
    found = re.search(r"resumed from \S+ at step (\d+)", log.read_text())
    assert found and int(found.group(1)) >= 2, log.read_text()[-3000:]

    rows = [json.loads(x) for x in fs.cat(f"{BUCKET}/run/train-seed5/history.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows] == list(range(4))  # each step once
    for want, got in zip(expected, rows):
        for k in ("reward", "accuracy", "cost_per_query", "items"):
            assert got[k] == pytest.approx(want[k], rel=1e-6), (want["step"], k)
        if "loss" in want:
            assert got["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-6), want["step"]
    assert fs.exists(f"{BUCKET}/run/router/grpo-seed5/allocator/config.json")
    kept = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/run/train-seed5/checkpoints"))
    assert kept == ["step-00000003", "step-00000004"]  # pruned at the URI too (keep_checkpoints: 2)
