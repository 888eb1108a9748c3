"""Run directories on an object store (core.storage) against a real S3-compatible server (moto in server
mode on 127.0.0.1, the `s3` fixture) and `file://`: push, pull, mirror, delete, and a staged path back to
its URI. (A training run on S3, SIGKILLed and resumed, is in tests/reliability/test_driver_kill.py.)"""
import pytest

BUCKET = "r2r-test"  # the s3 fixture's (tests/conftest.py)


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
