"""Checkpoint folders count only once their manifest (written last) matches every file."""
from core.checkpoints import check, latest_valid, prune, step_dir, write_manifest


def make(root, step, files=None, finished=True):
    d = step_dir(root, step)
    for rel, text in (files or {"engine/model.pt": "w" * 100, "rng.pt": "r" * 10}).items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    if finished:
        write_manifest(d, {"step": step})
    return d


def test_newest_complete_checkpoint_wins_and_partial_ones_are_named(tmp_path):
    make(tmp_path, 2)
    good = make(tmp_path, 4)
    make(tmp_path, 6, finished=False)  # killed before its manifest
    truncated = make(tmp_path, 8)
    (truncated / "engine" / "model.pt").write_text("w" * 40)  # a file cut short after the manifest
    ckpt, skipped = latest_valid(tmp_path)
    assert ckpt == good
    assert [(p.name, why.split()[0]) for p, why in skipped] == [("step-00000008", "engine/model.pt"),
                                                                ("step-00000006", "no")]
    assert "40 bytes" in skipped[0][1]


def test_missing_file_and_no_checkpoint(tmp_path):
    d = make(tmp_path, 1)
    (d / "rng.pt").unlink()
    assert check(d) == "rng.pt is missing"
    assert latest_valid(tmp_path)[0] is None
    assert latest_valid(tmp_path / "nothing") == (None, [])


def test_prune_keeps_the_newest_complete_ones(tmp_path):
    for s in (1, 2, 3):
        make(tmp_path, s)
    make(tmp_path, 4, finished=False)
    prune(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000002", "step-00000003", "step-00000004"]
