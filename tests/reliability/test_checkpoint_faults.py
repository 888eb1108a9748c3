"""The checkpoint folder becomes unwritable mid-run, by faults root cannot bypass: the next checkpoint's
path taken by a regular file, then a full disk (a size-limited tmpfs, where mounting is allowed). Each
is a clear error; the previous checkpoint stays byte for byte as it was, and a resumed run continues
from it exactly as the interrupted run went on."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from rich.console import Console
from tests_support import SMALL

from core.checkpoints import MANIFEST, CheckpointError, check, step_dir
from core.config import load_config

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
PAGE = 4096


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def pages(folder: Path) -> int:
    """Bytes `folder`'s files take on a tmpfs (whole pages)."""
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in folder.rglob("*") if p.is_file())


@pytest.fixture
def mount_tmpfs():
    """mount(path, size) -> whether a size-limited tmpfs could be mounted there; unmounted afterwards."""
    mounted = []

    def mount(path: Path, size: int) -> bool:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
        if done.returncode == 0:
            mounted.append(path)
        return done.returncode == 0

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], check=True)


def test_an_unwritable_checkpoint_folder_is_a_clear_error_and_the_last_checkpoint_resumes(zoo_config, zoo_pool,
                                                                                          tmp_path, capsys,
                                                                                          mount_tmpfs):
    from pipelines.runs import router_dir
    from pipelines.train import Trainer

    cfg = load_config(ROOT / "configs" / "test.yaml", [
        f"run_dir={tmp_path / 'run'}", f"zoo.dir={zoo_config.zoo_dir}", *SMALL, "train.queries_per_step=4",
        "train.cost_ref_queries=4", "train.rollout_workers=1", "train.checkpoint_every=1", "train.keep_checkpoints=1", "train.grpo_steps=3"])
    sft = router_dir(cfg, "sft")  # both policies start from the smallest zoo model (no label search)
    for policy in ("decomposer", "allocator"):
        shutil.copytree(zoo_config.zoo_dir / zoo_config.zoo.models[0].name, sft / policy)

    trainer = Trainer(cfg, Console(quiet=True), pool=zoo_pool)
    mounted = False
    try:
        trainer.fit(steps=1)
        first = step_dir(trainer.ckpt_root, 1)
        assert check(first) is None
        kept = digest(first)

        # fault 1: the next checkpoint's path is a regular file
        blocker = step_dir(trainer.ckpt_root, 2)
        blocker.write_text("not a checkpoint")
        with pytest.raises(CheckpointError) as err:
            trainer.fit(steps=2)
        message = str(err.value)
        assert "\n" not in message and str(blocker) in message and "FileExistsError" in message, message
        assert "step-00000001, unchanged" in message, message
        assert blocker.read_text() == "not a checkpoint" and digest(first) == kept and check(first) is None
        blocker.unlink()

        # fault 2: the disk fills up while the checkpoint is written (room for one and a half)
        saved = tmp_path / "saved"
        shutil.move(str(trainer.ckpt_root), saved)
        trainer.ckpt_root.mkdir()
        size = pages(saved / first.name) * 3 // 2 // PAGE * PAGE
        mounted = mount_tmpfs(trainer.ckpt_root, size)
        if mounted:
            shutil.copytree(saved / first.name, first)
            with pytest.raises(CheckpointError) as err:
                trainer.checkpoint()
            message = str(err.value)
            assert "\n" not in message and "step-00000002" in message and "step-00000001, unchanged" in message
            assert "MiB free there" in message  # a full disk shows as such, whatever the writer's own error says
            assert not (blocker / MANIFEST).exists()  # the partial one is not taken for complete
        else:
            shutil.rmtree(trainer.ckpt_root)
            shutil.move(str(saved), trainer.ckpt_root)
        assert digest(first) == kept and check(first) is None
    finally:
        trainer.close()
    went_on = [json.loads(x) for x in trainer.history_path.read_text().splitlines()]
    assert [h["step"] for h in went_on] == [0, 1]

    capsys.readouterr()
    resumed = Trainer(cfg, Console(), resume=True, pool=zoo_pool)
    try:
        assert resumed.state["step"] == 1
        again = resumed.step()
    finally:
        resumed.close()
    out = capsys.readouterr().out
    assert "resumed from" in out and "step-00000001" in out
    if mounted:
        assert "step-00000002 is incomplete" in out
    want = went_on[1]
    for k in ("reward", "accuracy", "cost_per_query", "items", "trajectories"):
        assert again[k] == pytest.approx(want[k], rel=1e-6), k
    for k in ("loss", "kl"):
        assert (k in again) == (k in want)
        if k in want:
            assert again[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
    if not mounted:
        pytest.skip("mounting a tmpfs is not allowed here: the full-disk fault was not injected (the rest passed)")
