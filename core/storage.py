"""Run directories on any filesystem fsspec knows (`file://`, `s3://`, `gs://`, ...), staged locally.

On a cluster the driver, the learner ranks and the workers share no disk, and DeepSpeed and
`from_pretrained` read and write local files. So a directory given as a URI has a local staging copy, and
the code works on that copy: `pull` brings the URI's files down, `push` uploads what changed, `delete`
removes a subtree on both sides. The staging copy's path spells the URI
(`s3://bucket/runs/x` -> `$R2R_STAGE_DIR/s3/bucket/runs/x`; default root: `r2r-stage` in the system temp
dir), so it is the same on every node, and any process can turn a staged path back into its URI:
`ensure_local(path)` pulls a staged folder an actor needs when its node lacks it.

Sync uses rsync's quick check: a file is copied when the other side lacks it, its size differs, or its
modification time does (a push copies only newer local files); a copied file takes its source's
modification time; within the object store's one-second resolution the content decides. A plain path is its own staging copy and
every sync is a no-op.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path


def is_uri(target: str | os.PathLike) -> bool:
    return "://" in str(target)


def stage_root() -> Path:
    return Path(os.environ.get("R2R_STAGE_DIR") or Path(tempfile.gettempdir()) / "r2r-stage")


def _mtime(info: dict) -> float:
    """A file's modification time from an fsspec info dict (local: mtime; S3: LastModified; GCS: updated)."""
    for key in ("mtime", "LastModified", "updated", "last_modified"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return 0.0


def _join(root: str, rel: str) -> str:
    return f"{root}/{rel}" if rel else root


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _differs(remote: dict | None, local: Path, local_info: dict | None, upload: bool) -> bool:
    """Whether a sync copies: one side lacks the file, the sizes differ, or the source is newer. Object
    stores keep whole seconds, so within 2 s of each other the content decides where the store gives a
    hash (S3's ETag is the MD5 of a single-part upload), else the exact stamp a copy leaves on both sides."""
    if remote is None or local_info is None or remote.get("size") != local_info["size"]:
        return True
    gap = local_info["mtime"] - _mtime(remote)
    if abs(gap) >= 2:
        return gap > 0 if upload else True
    etag = str(remote.get("ETag") or remote.get("etag") or "").strip('"')
    if etag and "-" not in etag:
        return etag != _md5(local)
    return gap != 0  # no content hash: equal stamps (set by the last copy) mean the same file


class Storage:
    """One directory: `target` (a URI or a local path) and its local copy `local`."""

    def __init__(self, target: str | os.PathLike):
        self.target = str(target).rstrip("/")
        self.remote = is_uri(self.target)
        if self.remote:
            scheme, rest = self.target.split("://", 1)
            self.local = stage_root() / scheme / rest.lstrip("/")
        else:
            self.local = Path(self.target)

    def __repr__(self) -> str:
        return f"Storage({self.target!r})"

    def _fs(self):
        import fsspec  # lazy: only runs on URIs need it

        fs, root = fsspec.core.url_to_fs(self.target)
        return fs, root.rstrip("/")

    def _remote_files(self, fs, root: str, rel: str) -> dict[str, dict]:
        base = _join(root, rel)
        if not fs.exists(base):
            return {}
        if fs.isfile(base):
            return {rel: fs.info(base)}
        return {_join(rel, p[len(base) + 1:]).lstrip("/"): info
                for p, info in fs.find(base, detail=True).items() if info.get("type") != "directory"}

    def _local_files(self, rel: str) -> dict[str, dict]:
        base = self.local / rel if rel else self.local
        files = [base] if base.is_file() else [p for p in base.rglob("*") if p.is_file()] if base.is_dir() else []
        return {("" if p == self.local else p.relative_to(self.local).as_posix()): {"size": p.stat().st_size, "mtime": p.stat().st_mtime}
                for p in files}

    def pull(self, rel: str = "", mirror: bool = False) -> int:
        """Download `rel` (a file or folder; default all) where the URI's copy is newer; with `mirror`,
        also remove local files the URI does not have. Returns the number of files copied."""
        if not self.remote:
            return 0
        fs, root = self._fs()
        remote, local = self._remote_files(fs, root, rel), self._local_files(rel)
        copied = 0
        for name, info in remote.items():
            if _differs(info, self.local / name if name else self.local, local.get(name), upload=False):
                dst = self.local / name if name else self.local
                dst.parent.mkdir(parents=True, exist_ok=True)
                tmp = dst.with_name(f".{dst.name}.part")
                fs.get_file(_join(root, name), str(tmp))
                os.replace(tmp, dst)
                stamp = _mtime(info)
                os.utime(dst, (stamp, stamp))
                copied += 1
        if mirror:
            for name in set(local) - set(remote):
                (self.local / name if name else self.local).unlink()
        return copied

    def push(self, rel: str = "") -> int:
        """Upload `rel` (a file or folder; default all) where the local copy is newer (never deletes).
        Returns the number of files copied."""
        if not self.remote:
            return 0
        fs, root = self._fs()
        local, remote = self._local_files(rel), self._remote_files(fs, root, rel)
        copied = 0
        for name, info in local.items():
            src = self.local / name if name else self.local
            if _differs(remote.get(name), src, info, upload=True):
                dst = _join(root, name)
                fs.makedirs(dst.rsplit("/", 1)[0], exist_ok=True)
                fs.put_file(str(src), dst)
                stamp = _mtime(fs.info(dst))  # the copies now agree: neither side is newer
                os.utime(src, (stamp, stamp))
                copied += 1
        return copied

    def delete(self, rel: str) -> None:
        """Remove `rel` locally and at the URI."""
        path = self.local / rel
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        if self.remote:
            fs, root = self._fs()
            if fs.exists(_join(root, rel)):
                fs.rm(_join(root, rel), recursive=True)


def uri_of_staged(path: str | os.PathLike) -> str | None:
    """The URI whose staging copy `path` is (the inverse of `Storage.local`), or None for a plain path."""
    try:
        parts = Path(path).resolve().relative_to(stage_root().resolve()).parts
    except ValueError:
        return None
    if len(parts) < 2:
        return None
    scheme, rest = parts[0], "/".join(parts[1:])
    return f"{scheme}://{'/' if scheme == 'file' else ''}{rest}"


def staged(path: str | os.PathLike) -> Storage | None:
    """The Storage of the URI whose staging copy `path` is, or None for a plain path."""
    uri = uri_of_staged(path)
    return Storage(uri) if uri else None


def local_copy(target: str | os.PathLike) -> Path:
    """A local path for `target`: a URI's staging copy, brought up to date, or the path itself."""
    store = Storage(target)
    store.pull()
    return store.local


def ensure_local(path: str | os.PathLike) -> Path:
    """`path`, pulled from its URI first when it is a staged path this node lacks."""
    path = Path(path)
    if not path.exists() and (store := staged(path)):
        store.pull()
    return path


def pull_staged(path: str | os.PathLike) -> None:
    """Bring a staged file or folder up to date with its URI (no-op for a plain path)."""
    if store := staged(path):
        store.pull()


def push_staged(path: str | os.PathLike) -> None:
    """Upload a staged file or folder to its URI (no-op for a plain path)."""
    if store := staged(path):
        store.push()


def delete_staged(path: str | os.PathLike) -> None:
    """Remove a file or folder, and its URI's copy when it is staged."""
    if store := staged(path):
        store.delete("")
    elif Path(path).is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        Path(path).unlink(missing_ok=True)
