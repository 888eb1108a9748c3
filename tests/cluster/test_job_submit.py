"""`ray job submit` with `cluster/runtime_env.yaml`, against a real head started here on 127.0.0.1.

The head runs a Python of its own, like a cluster image's: a virtual environment with the project's
dependencies (this interpreter's site-packages on its path) but not the project itself, first on the
head's PATH, and no PYTHONPATH. Jobs go through the Jobs SDK with the runtime env read from the file.
A probe job shows what a job gets: the uploaded working dir (no `runs/`, no `.git`, the code imported from
there) and the cluster's `python`, not the submitter's. Then the SFT stage and a 2-step GRPO run go in
as jobs whose `run_dir` and `zoo.dir` are `file://` URIs, and their outputs are read back from the URIs.
The cluster is its own (free ports, a temp dir of its own) and only its processes are stopped. Runs in
a pytest invocation of its own (tests/cluster): the suite's session-wide Ray would clash."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
JOB_TIMEOUT_S = 600


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_python(root: Path) -> Path:
    """A venv whose site-packages holds one path line: this interpreter's site-packages (Ray, torch, ...).
    A plain path line processes none of that folder's .pth files, so the project's editable install is not
    seen: as on a cluster image, the project comes only with the job's working dir."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    paths = dict.fromkeys([sysconfig.get_path("purelib"), sysconfig.get_path("platlib")])
    (site / "cluster_deps.pth").write_text("".join(p + "\n" for p in paths))
    return root / "bin" / "python"


def _ours(temp: Path) -> list[int]:
    """Live processes started by this test's head: they inherit its RAY_TMPDIR (workers and job drivers,
    which Ray puts in sessions of their own, included)."""
    marker = f"RAY_TMPDIR={temp}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker in (proc / "environ").read_bytes().split(b"\0"):
                    pids.append(int(proc.name))
            except OSError:  # gone, or not ours to read
                pass
    return pids


def _stop(head: subprocess.Popen, temp: Path) -> list[int]:
    """SIGTERM to `ray start --block`, as Kubernetes stops a pod: it drains the node and stops the processes
    it started; then SIGKILL to any process of this cluster still alive after 30 s (its process group
    first). Returns those still alive after that."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    deadline = time.time() + 30
    while _ours(temp) and time.time() < deadline:
        time.sleep(0.5)
    for pid in _ours(temp):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(1)
    return _ours(temp)


@pytest.fixture(scope="module")
def cluster():
    """A Ray head on 127.0.0.1 with the cluster python, and a Jobs SDK client for it."""
    from ray.job_submission import JobSubmissionClient

    # Ray's unix sockets live under the temp dir and their paths must stay under ~107 characters:
    # a short folder in the system temp dir, not pytest's long tmp_path
    temp = Path(tempfile.mkdtemp(prefix="r2r-ray-"))
    python = _cluster_python(temp / "python")
    dashboard = _free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env.update({
        "PATH": f"{python.parent}{os.pathsep}{env.get('PATH', '')}",  # the job's `python`
        # Ray 2.60 turns token auth on when ~/.ray/auth_token exists. This head listens on 127.0.0.1 only
        # and lives for this module, so it runs without it rather than touching the user's token file
        "RAY_AUTH_MODE": "disabled",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "RAY_TMPDIR": str(temp),  # also marks every process of this cluster (see _ours)
        "R2R_STAGE_DIR": str(temp / "stage"),  # the node's staging disk for URI run dirs
    })
    # every port a head binds by default (6379, 8265, 52365, 10001) is free-picked: other clusters may run here
    cmd = [str(python), "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           f"--port={_free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
           f"--dashboard-agent-listen-port={_free_port()}", f"--ray-client-server-port={_free_port()}",
           "--num-cpus=4", f"--temp-dir={temp}", "--disable-usage-stats"]
    log = temp / "head.log"
    with log.open("w") as out:
        head = subprocess.Popen(cmd, env=env, cwd=temp, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    client = None
    try:
        deadline = time.time() + 180
        while client is None:
            assert head.poll() is None, f"the head exited:\n{log.read_text()[-3000:]}"
            assert time.time() < deadline, f"no dashboard after 180 s:\n{log.read_text()[-3000:]}"
            try:
                client = JobSubmissionClient(f"http://127.0.0.1:{dashboard}")
            except (ConnectionError, RuntimeError):
                time.sleep(1)
        assert head.pid in _ours(temp)  # the marker finds this cluster's processes
        yield client, python
    finally:
        left = _stop(head, temp)  # a job still running goes with it: its driver carries the marker
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes of the test cluster outlived it: {left}"


def runtime_env() -> dict:
    """cluster/runtime_env.yaml as the job's runtime env, with the test's changes (commented)."""
    env = yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text())
    # the test cluster's python already has the dependencies, as a cluster image would; installing them
    # per job here would pull a multi-GB CUDA build of torch
    del env["pip"]
    # "." is the repository root, where `ray job submit` runs; the SDK would resolve it against the cwd
    env["working_dir"] = str(ROOT / env["working_dir"])
    # env_vars stay as they are: configs/test.yaml generates its tasks in code, so R2R_DATA is not read
    return env


def run_job(client, entrypoint: str) -> str:
    """Submit, wait for SUCCEEDED (logs on any other end) and return the job's logs."""
    from ray.job_submission import JobStatus

    job = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env())
    deadline = time.time() + JOB_TIMEOUT_S
    while not (status := client.get_job_status(job)).is_terminal():
        if time.time() > deadline:
            client.stop_job(job)
            pytest.fail(f"{entrypoint}: still {status} after {JOB_TIMEOUT_S} s:\n{client.get_job_logs(job)[-5000:]}")
        time.sleep(1)
    logs = client.get_job_logs(job)
    print(logs)  # shown when a later assertion fails
    assert status == JobStatus.SUCCEEDED, f"{entrypoint}: {status}\n{client.get_job_info(job).message}\n{logs[-5000:]}"
    return logs


PROBE = """import json, os, sys, pipelines
print("PROBE", json.dumps({"cwd": os.getcwd(), "python": sys.executable, "pipelines": pipelines.__file__,
      "runs": os.path.exists("runs"), "git": os.path.exists(".git"), "config": os.path.exists("configs/test.yaml"),
      "R2R_DATA": os.environ.get("R2R_DATA")}))"""


def test_a_job_runs_the_uploaded_tree_with_the_clusters_python(cluster):
    client, python = cluster
    logs = run_job(client, f"python -c {shlex.quote(PROBE)}")
    probe = json.loads(next(line for line in logs.splitlines() if line.startswith("PROBE "))[6:])
    assert probe["python"] == str(python) != sys.executable  # the cluster's python, not the submitter's
    cwd = Path(probe["cwd"])
    assert cwd != ROOT and probe["config"]  # a copy of the repository
    assert Path(probe["pipelines"]).is_relative_to(cwd)  # the project's code comes from that copy
    assert not probe["runs"] and not probe["git"]  # ignored and excluded files stay behind
    assert probe["R2R_DATA"] == runtime_env()["env_vars"]["R2R_DATA"]


def test_sft_and_grpo_jobs_write_their_run_to_a_uri(cluster, zoo_config, tmp_path):
    import fsspec
    from tests_support import SMALL

    client, _ = cluster
    remote = tmp_path / "remote"
    shutil.copytree(zoo_config.zoo_dir, remote / "zoo")  # a zoo already at the URI, as on a cluster
    run, zoo = f"file://{remote / 'run'}", f"file://{remote / 'zoo'}"
    sets = " ".join(f"--set {shlex.quote(s)}" for s in [f"run_dir={run}", f"zoo.dir={zoo}", *SMALL,
                                                         "train.grpo_steps=2"])
    started = time.perf_counter()
    logs = run_job(client, f"python -m pipelines.sft --config configs/test.yaml {sets}")
    assert "sft router:" in logs
    sft_s = time.perf_counter() - started
    logs = run_job(client, f"python -m pipelines.train --config configs/test.yaml {sets}")
    assert "grpo router:" in logs
    print(f"sft job {sft_s:.0f}s, train job {time.perf_counter() - started - sft_s:.0f}s")

    fs, root = fsspec.core.url_to_fs(run)
    rows = [json.loads(x) for x in fs.cat(f"{root}/train/history.jsonl").decode().splitlines()]
    assert [r["step"] for r in rows] == [0, 1]
    assert fs.exists(f"{root}/train/checkpoints/step-00000002/manifest.json")
    assert fs.exists(f"{root}/router/grpo/allocator/config.json")
    assert fs.exists(f"{root}/router/sft/decomposer/config.json") and fs.exists(f"{root}/cost_ref.json")
