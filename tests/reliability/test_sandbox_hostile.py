"""Hostile code in the P3 sandbox: an infinite loop, memory hogs, fork bombs, writes outside its
directory, sockets, reading the host's secrets, killing its parent. Each ends with a verdict within its
time limit and the host is unharmed: its files, its servers, its secrets and its life.

The programs run in a disposable host process (the sandbox's parent), so a program that did kill its
parent would take down that host, not the test runner; the host reports one verdict per program."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 2.0
MARK = "31.4159"  # argv of every process a fork bomb would leave behind


def fork_exec(argv: list[str], setsid: bool = True) -> str:
    """Source that forks and execs `argv` from C (`_posixsubprocess`), where no audit hook looks."""
    args = [a.encode() for a in argv]
    return ("import _posixsubprocess, os\nr, w = os.pipe()\n"
            f"pid = _posixsubprocess.fork_exec({args!r}, [{args[0]!r}], True, (), None, None, -1, -1, -1, -1, "
            f"-1, -1, r, w, True, {setsid}, -1, None, None, None, -1, None, False)\nos.waitpid(pid, 0)\n")


def programs(tmp: Path, tcp_port: int, unix_path: str) -> dict[str, tuple[str, dict]]:
    """name -> (hostile source, run_python keyword arguments)."""
    out = tmp / "escaped"
    secret_file = tmp / "secret.txt"
    scan = ("import os\nfound, pids = [], ['self', str(os.getppid()), '1']\n"
            "try:\n    pids += os.listdir('/proc')\nexcept Exception as e:\n    found.append(type(e).__name__)\n"
            "for pid in pids:\n"
            "    try:\n        found.append(open(f'/proc/{pid}/environ', 'rb').read().decode(errors='replace'))\n"
            "    except Exception as e:\n        found.append(type(e).__name__)\n"
            f"try:\n    found.append(open({str(secret_file)!r}).read())\nexcept Exception as e:\n"
            "    found.append(type(e).__name__)\nprint(dict(os.environ), found)\n")
    return {
        "infinite loop": ("while True:\n    pass", {}),
        "sleep forever": ("import time\ntime.sleep(600)", {}),
        "memory hog": ("x = []\nwhile True:\n    x.append(bytearray(10**7))", {"memory_mb": 256}),
        "memory hog, one allocation": ("x = bytearray(10**12)", {"memory_mb": 256}),
        "fork bomb (os.fork)": ("import os\nwhile True:\n    os.fork()", {}),
        "fork bomb (multiprocessing)": (
            "import multiprocessing as mp\nwhile True:\n    mp.Process(target=print).start()", {}),
        "fork bomb (C fork+exec, new sessions)": (
            "while True:\n" + "".join("    " + ln + "\n" for ln in fork_exec(["/bin/sleep", MARK]).splitlines()), {}),
        "thread bomb": ("import threading, time\nwhile True:\n"
                        "    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()", {}),
        "write outside (open)": (f"open({str(out / 'open')!r}, 'w').write('x')", {}),
        "write outside (os.open)": (f"import os\nos.open({str(out / 'osopen')!r}, os.O_CREAT | os.O_WRONLY)", {}),
        "write outside (sqlite3)": (
            f"import sqlite3\nsqlite3.connect({str(out / 'db')!r}).execute('create table t(x)')", {}),
        "write outside (readline, C)": (
            f"import readline\nreadline.add_history('x')\nreadline.write_history_file({str(out / 'hist')!r})", {}),
        "write outside (mkfifo)": (f"import os\nos.mkfifo({str(out / 'fifo')!r})", {}),
        "write outside (shared memory)": (
            f"import _posixshmem, os\n_posixshmem.shm_open('/r2r-{out.parent.name}', os.O_CREAT | os.O_RDWR, 0o600)",
            {}),
        "write outside (a shell)": (fork_exec(["/bin/sh", "-c", f"echo x > {out / 'shell'}"]), {}),
        "socket (TCP to a host server)": (
            f"import socket\nsocket.create_connection(('127.0.0.1', {tcp_port}), timeout=1).sendall(b'x')", {}),
        "socket (unix to a host server)": (
            f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({unix_path!r})\ns.sendall(b'x')", {}),
        "environment secrets (parent's /proc environ)": (
            "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())", {}),
        "environment secrets (every /proc environ, a secret file)": (scan, {}),
        "kill parent (os.kill)": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)", {}),
        "kill parent (process group)": ("import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)", {}),
        "kill parent (pidfd)": (
            "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)", {}),
        "kill parent (a shell)": (fork_exec(["/bin/sh", "-c", "kill -9 $PPID; kill -9 " + "{ppid}"]), {}),
        "signal every process (probe)": ("import os\nos.kill(-1, 0)", {}),
    }


HOST = r"""
import json, os, sys
from benchmarks.tasks.sandbox import run_python
for name, (code, kw) in json.loads(sys.stdin.read()).items():
    r = run_python(code.replace("{ppid}", str(os.getpid())), timeout_s=float(sys.argv[1]), **kw)
    print(json.dumps({"name": name, "status": r.status, "reason": r.reason, "wall_s": r.wall_s,
                      "stdout": r.stdout[-4000:], "stderr": r.stderr[-4000:], "landlock": r.landlock_abi,
                      "seccomp": r.syscalls_filtered, "netns": r.network_isolated}), flush=True)
"""


class Listener:
    """A real server on the host that records every connection it accepts."""

    def __init__(self, family: int, address):
        self.sock = socket.socket(family)
        self.sock.bind(address)
        self.sock.listen()
        self.sock.settimeout(0.2)
        self.accepted = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


def leftover_processes(where: Path) -> list[str]:
    """Processes that a fork bomb left, or that still run from a sandbox folder under `where`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if MARK in cmd or str(where) in cmd:
            found.append(f"{pid}: {cmd}")
    return found


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    (tmp / "escaped").mkdir()
    secret = f"r2r-secret-{uuid.uuid4().hex}"
    (tmp / "secret.txt").write_text(secret)
    tcp = Listener(socket.AF_INET, ("127.0.0.1", 0))
    unix_path = str(tmp / "host.sock")
    unix = Listener(socket.AF_UNIX, unix_path)
    progs = programs(tmp, tcp.sock.getsockname()[1], unix_path)
    (tmp / "sandboxes").mkdir()  # the sandboxes' own folders, under the host's TMPDIR
    env = {**os.environ, "PYTHONPATH": str(ROOT), "R2R_HOST_SECRET": secret, "TMPDIR": str(tmp / "sandboxes")}
    try:
        host = subprocess.run([sys.executable, "-c", HOST, str(TIMEOUT_S)], input=json.dumps(progs), env=env,
                              capture_output=True, text=True, timeout=300, cwd=ROOT)
    finally:
        tcp.close()
        unix.close()
    results = {r["name"]: r for r in map(json.loads, host.stdout.splitlines())}
    return {"results": results, "host": host, "programs": progs, "secret": secret, "escaped": tmp / "escaped",
            "accepted": tcp.accepted + unix.accepted, "leftovers": leftover_processes(tmp)}


def test_the_host_is_unharmed(verdicts):
    host = verdicts["host"]
    assert host.returncode == 0, f"the sandbox's parent died ({host.returncode}): {host.stderr[-2000:]}"
    assert set(verdicts["results"]) == set(verdicts["programs"])  # a verdict for every program
    assert list(verdicts["escaped"].iterdir()) == []  # nothing written outside
    assert verdicts["accepted"] == 0  # no connection reached the host's servers
    assert verdicts["leftovers"] == []  # no process outlived its sandbox
    for r in verdicts["results"].values():
        assert verdicts["secret"] not in r["stdout"] + r["stderr"], r["name"]
        assert r["wall_s"] < TIMEOUT_S + 2, r  # within the time limit
    assert not Path("/dev/shm", f"r2r-{verdicts['escaped'].parent.name}").exists()


EXPECTED = {  # name -> (verdict, words in its reason)
    "infinite loop": ("timeout", "limit"),
    "sleep forever": ("timeout", "wall-clock"),
    "memory hog": ("crash", "memory"),
    "memory hog, one allocation": ("crash", "memory"),
    "fork bomb (os.fork)": ("error", "sandbox: os.fork"),
    "fork bomb (multiprocessing)": ("error", "sandbox"),
    "fork bomb (C fork+exec, new sessions)": ("error", "Operation not permitted"),
    "write outside (open)": ("error", "sandbox: writing outside"),
    "write outside (os.open)": ("error", "sandbox: writing outside"),
    "write outside (sqlite3)": ("error", "sandbox: sqlite3.connect outside"),
    "write outside (readline, C)": ("error", "Permission denied"),
    "write outside (mkfifo)": ("error", "Operation not permitted"),
    "write outside (shared memory)": ("error", "Permission denied"),
    "write outside (a shell)": ("error", "Operation not permitted"),
    "socket (TCP to a host server)": ("error", "sandbox: socket"),
    "socket (unix to a host server)": ("error", "sandbox: socket"),
    "environment secrets (parent's /proc environ)": ("error", "Permission"),
    "environment secrets (every /proc environ, a secret file)": ("ok", ""),
    "kill parent (os.kill)": ("error", "sandbox: signalling other processes"),
    "kill parent (process group)": ("error", "sandbox: os.killpg"),
    "kill parent (pidfd)": ("error", "Operation not permitted"),
    "kill parent (a shell)": ("error", "Operation not permitted"),
    "signal every process (probe)": ("error", "sandbox: signalling other processes"),
}
KERNEL_LAYER = {"landlock": ["write outside (readline, C)", "write outside (shared memory)"],
                "seccomp": ["fork bomb (C fork+exec, new sessions)", "write outside (mkfifo)",
                            "write outside (a shell)", "kill parent (pidfd)", "kill parent (a shell)"]}


@pytest.mark.parametrize("name", [*EXPECTED, "thread bomb"])
def test_each_program_gets_a_verdict(verdicts, name):
    r = verdicts["results"].get(name)
    assert r is not None, f"no verdict for {name!r}: {verdicts['host'].stderr[-2000:]}"
    for layer, names in KERNEL_LAYER.items():
        if name in names and not r[layer]:
            pytest.skip(f"this kernel has no {layer}: C code can do what {name!r} does")
    if name == "thread bomb":  # threads are allowed; their number is bounded by memory, then by time
        assert r["status"] in ("error", "timeout", "crash"), r
        return
    status, words = EXPECTED[name]
    assert r["status"] == status and words in r["reason"], r
