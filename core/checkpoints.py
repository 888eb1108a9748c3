"""Checkpoint folders that are valid only once complete: a manifest written last lists every file with
its size. Resume takes the newest valid one and says which partial ones it passed over. (No temp-dir
rename, which object stores do not have.)"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

MANIFEST = "manifest.json"
PREFIX = "step-"


class CheckpointError(RuntimeError):
    """A checkpoint that could not be written (its message is one line); older ones are untouched."""


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:08d}"


def list_files(ckpt: str | Path) -> dict[str, int]:
    """Every file under `ckpt` (but the manifest) with its size."""
    ckpt = Path(ckpt)
    return {str(p.relative_to(ckpt)): p.stat().st_size for p in sorted(ckpt.rglob("*"))
            if p.is_file() and p.name != MANIFEST}


def write_manifest(ckpt: str | Path, meta: dict | None = None, files: dict[str, int] | None = None) -> Path:
    """List every file under `ckpt` with its size (or `files`, when the writers' disks are elsewhere),
    last (after everything else is written)."""
    ckpt = Path(ckpt)
    files = list_files(ckpt) if files is None else files
    path = ckpt / MANIFEST
    path.write_text(json.dumps({"files": files, **(meta or {})}, indent=1))
    return path


def check(ckpt: str | Path) -> str | None:
    """None when `ckpt` is complete, else why not."""
    ckpt = Path(ckpt)
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest (the save did not finish)"
    except (OSError, ValueError) as err:
        return f"unreadable manifest ({err})"
    for rel, size in manifest.get("files", {}).items():
        p = ckpt / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != size:
            return f"{rel} has {p.stat().st_size} bytes, the manifest says {size}"
    return None


def latest_valid(root: str | Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest complete checkpoint under `root` or None, [(newer partial checkpoint, why)])."""
    skipped = []
    for ckpt in sorted(Path(root).glob(f"{PREFIX}*"), reverse=True):
        why = check(ckpt)
        if why is None:
            return ckpt, skipped
        skipped.append((ckpt, why))
    return None, skipped


def prune(root: str | Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` complete checkpoints (and every partial one older than them);
    returns the removed ones."""
    ckpts = sorted(Path(root).glob(f"{PREFIX}*"), reverse=True)
    complete = [c for c in ckpts if check(c) is None]
    if len(complete) <= keep:
        return []
    oldest_kept = complete[keep - 1]
    removed = [c for c in ckpts if c < oldest_kept]
    for c in removed:
        shutil.rmtree(c, ignore_errors=True)
    return removed
