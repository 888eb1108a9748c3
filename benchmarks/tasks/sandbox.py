"""Run untrusted Python (model-written code) in a subprocess: `run_python(code, timeout_s, memory_mb)`.

Layers, each cheap, none alone a security boundary:

- a fresh interpreter, `sys.executable -I -B` (no PYTHON* variables, no user site, no cwd on the path,
  no bytecode writes), with an empty environment and stdin from /dev/null, in its own session (process
  group) and its own temporary working directory;
- resource limits set by the child on itself before any untrusted line runs: CPU seconds, address space
  (memory), file size, open files, no core dumps, and RLIMIT_NPROC 0 (no new processes; the kernel does
  not apply this one to root, which the audit hook below covers);
- a network namespace of its own (`unshare(CLONE_NEWUSER | CLONE_NEWNET)`, or `CLONE_NEWNET` alone)
  where the kernel allows it: no interfaces but a down loopback, so no network at all;
- Landlock where the kernel has it (Linux 5.13+): files are written only beneath the working
  directory and read only beneath it, the interpreter's own folders and the system libraries (so no
  /proc/<pid>/environ of another process, no secrets on disk); TCP and signals to processes outside the
  sandbox are refused where the ABI allows;
- a seccomp filter (x86_64, aarch64): no fork, clone of a process, exec, signals to other processes,
  device or fifo nodes, sockets, ptrace, mounts or namespace changes. The kernel enforces these for
  root too, and they hold for C code the audit hook never sees (`_posixsubprocess.fork_exec`,
  `signal.pidfd_send_signal`, `os.mkfifo`);
- a PEP 578 audit hook (cannot be removed once added) that refuses: opening for writing, creating,
  deleting, renaming, linking or changing the mode/owner/times of anything outside the working
  directory; every socket operation; fork/exec/spawn/system/subprocess; signalling other processes;
  sqlite databases outside the working directory; and ctypes (which could undo the rest);
- a wall-clock deadline enforced by the parent, which kills the whole process group.

Python's limit on int <-> decimal string conversion (3.11+) is lifted in the child: programs such
as P3 puzzles use huge integer literals, and the CPU limit bounds the cost.

Output goes to files outside the working directory (bounded by the file-size limit) and at most
`max_output_bytes` of each is read back. The verdict is a `SandboxResult`:

- `ok`: exit status 0;
- `error`: a Python exception or a non-zero exit (`reason` is the exception's last traceback line;
  sandbox refusals are `PermissionError: sandbox: ...`);
- `timeout`: the wall-clock deadline or the CPU-time limit;
- `crash`: out of memory (MemoryError, or killed) or killed by a signal.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

EXIT_MEMORY = 86  # the child's exit status after a MemoryError

_BOOT = r"""
import json, os, resource, struct, sys


def _boot(main_path, work, cfg):
    # Everything lives in this function's scope, so the script's `import __main__` finds nothing here.
    work = os.path.realpath(work)

    def limit(res, soft, hard=None):
        hard = soft if hard is None else hard
        try:
            cur_hard = resource.getrlimit(res)[1]
            if cur_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, cur_hard), min(hard, cur_hard)
            resource.setrlimit(res, (soft, hard))
        except (ValueError, OSError):
            pass

    def unshare_network(libc):
        for flags in (0x10000000 | 0x40000000, 0x40000000):  # CLONE_NEWUSER | CLONE_NEWNET; CLONE_NEWNET
            if libc.unshare(flags) == 0:
                return True
        return False

    def landlock(libc, ctypes, readable):
        # Landlock (Linux 5.13+, any user): files may be written only beneath `work` (and /dev/null) and
        # read only beneath `readable`; from ABI 4 no TCP, from ABI 6 no signals or abstract unix
        # sockets outside the sandbox. Returns the ABI applied (0: none).
        create, add_rule, restrict = 444, 445, 446  # the same syscall numbers on every architecture
        long = ctypes.c_long
        abi = libc.syscall(long(create), None, long(0), long(1))  # LANDLOCK_CREATE_RULESET_VERSION
        if abi < 1:
            return 0
        read_file, read_dir = 1 << 2, 1 << 3
        write_file, truncate = 1 << 1, (1 << 14 if abi >= 3 else 0)
        file_access = read_file | write_file | truncate
        # remove dir/file, make char/dir/reg/sock/fifo/block/sym; refer (cross-directory links/renames)
        write = write_file | truncate | sum(1 << b for b in range(4, 13)) | (1 << 13 if abi >= 2 else 0)
        read = read_file | read_dir
        size = 8 if abi < 4 else 16 if abi < 6 else 24
        attr = ctypes.create_string_buffer(struct.pack("=QQQ", read | write, 3, 3)[:size], size)
        rules = libc.syscall(long(create), attr, long(size), long(0))
        if rules < 0:
            return 0

        def allow(path, access):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                return
            if not os.path.isdir(path):
                access &= file_access
            rule = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
            libc.syscall(long(add_rule), long(rules), long(1), rule, long(0))  # LANDLOCK_RULE_PATH_BENEATH
            os.close(fd)

        allow(work, read | write)
        allow("/dev/null", read_file | write_file | truncate)
        for path in readable:
            allow(path, read)
        ok = libc.syscall(long(restrict), long(rules), long(0)) == 0
        os.close(rules)
        return abi if ok else 0

    def seccomp(libc, ctypes):
        # A seccomp filter (kernel-enforced, root included, where RLIMIT_NPROC is not): no new processes
        # (threads are fine), no exec, no signals to other processes, no device or fifo nodes, no
        # sockets, no ptrace, no namespace or mount changes. Returns whether it is in force.
        machine = os.uname().machine
        if machine == "x86_64":
            arch, deny, clone, clone3, self_only = 0xC000003E, [
                59, 322, 57, 58, 101, 310, 311, 424, 200, 133, 259, 41, 425, 165, 166, 155, 161, 272, 308, 321
            ], 56, 435, [62, 234, 129, 297]  # kill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo
        elif machine == "aarch64":
            arch, deny, clone, clone3, self_only = 0xC00000B7, [
                221, 281, 117, 270, 271, 424, 130, 33, 198, 425, 40, 39, 41, 51, 97, 268, 280
            ], 220, 435, [129, 131, 138, 240]
        else:
            return False
        # deny: execve, execveat, (fork, vfork,) ptrace, process_vm_readv/writev, pidfd_send_signal, tkill,
        # (mknod,) mknodat, socket, io_uring_setup, mount, umount2, pivot_root, chroot, unshare, setns, bpf
        ld, jeq, jset, jge, ret = 0x20, 0x15, 0x45, 0x35, 0x06
        allow_, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
        prog = [(ld, 0, 0, 4), (jeq, "nr", 0, arch), (ret, 0, 0, 0x80000000), ("nr", ld, 0, 0, 0)]
        if machine == "x86_64":
            prog.append((jge, "deny", 0, 0x40000000))  # the x32 ABI
        prog += [(jeq, "deny", 0, n) for n in deny]
        prog += [(jeq, "enosys", 0, clone3), (jeq, "clone", 0, clone)]
        prog += [(jeq, "self", 0, n) for n in self_only]
        prog += [(ret, 0, 0, allow_), ("deny", ret, 0, 0, eperm), ("enosys", ret, 0, 0, enosys),
                 ("clone", ld, 0, 0, 16), (jset, "allow", 0, 0x00010000), (ret, 0, 0, eperm),  # CLONE_THREAD
                 ("self", ld, 0, 0, 16), (jeq, "allow", 0, os.getpid()), (jeq, "allow", 0, 0), (ret, 0, 0, eperm),
                 ("allow", ret, 0, 0, allow_)]
        labels = {ins[0]: i for i, ins in enumerate(prog) if isinstance(ins[0], str)}
        prog = [ins[1:] if isinstance(ins[0], str) else ins for ins in prog]
        code = b"".join(struct.pack("=HBBI", op, labels[jt] - i - 1 if isinstance(jt, str) else jt, jf, k)
                        for i, (op, jt, jf, k) in enumerate(prog))

        class Prog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

        fprog = Prog(len(prog), code)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
        return libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER

    with open(main_path, encoding="utf-8") as f:
        source = f.read()
    info = open(cfg["info_path"], "w")
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_CPU, cfg["cpu_s"], cfg["cpu_s"] + 1)  # SIGXCPU, then SIGKILL a second later
    limit(resource.RLIMIT_AS, cfg["memory_bytes"])
    limit(resource.RLIMIT_FSIZE, cfg["file_size_bytes"])
    limit(resource.RLIMIT_NOFILE, 64)
    limit(resource.RLIMIT_NPROC, 0)
    readable = [os.path.dirname(main_path), *sys.path, sys.prefix, sys.base_prefix, sys.exec_prefix,
                sys.base_exec_prefix, "/usr", "/lib", "/lib64", "/etc/ld.so.cache", "/etc/localtime",
                "/dev/urandom", "/dev/zero"]
    netns, landlock_abi, filtered = False, 0, False
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        netns = unshare_network(libc)
        landlock_abi = landlock(libc, ctypes, readable)
        filtered = seccomp(libc, ctypes)
    except Exception:
        pass
    for name in [m for m in sys.modules if m == "ctypes" or m.startswith(("ctypes.", "_ctypes"))]:
        del sys.modules[name]
    json.dump({"netns": netns, "landlock": landlock_abi, "seccomp": filtered}, info)
    info.close()

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    allowed = frozenset({"/dev/null"})
    deny_prefixes = ("socket.", "ctypes.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "pty.")
    deny = frozenset({"os.fork", "os.forkpty", "os.system", "os.startfile", "os.killpg", "webbrowser.open"})
    path_args = {  # event -> indices of its path arguments, which must lie inside the working directory
        "os.remove": (0,), "os.rmdir": (0,), "os.mkdir": (0,), "os.rename": (0, 1), "os.link": (0, 1),
        "os.symlink": (1,), "os.truncate": (0,), "os.chmod": (0,), "os.chown": (0,), "os.utime": (0,),
        "os.chflags": (0,), "os.lchflags": (0,), "os.setxattr": (0,), "os.removexattr": (0,),
        "shutil.rmtree": (0,), "shutil.copyfile": (1,), "shutil.copytree": (1,), "shutil.move": (1,),
        "sqlite3.connect": (0,),
    }
    realpath, fsdecode, sep, getpid = os.path.realpath, os.fsdecode, os.sep, os.getpid

    def inside(path):
        if isinstance(path, int):
            return True  # an already open descriptor
        try:
            p = realpath(fsdecode(path))
        except Exception:
            return False
        return p == work or p.startswith(work + sep) or p in allowed

    def refuse(what):
        raise PermissionError("sandbox: " + what)

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                (isinstance(flags, int) and flags & write_flags)
            if writing and not inside(path):
                refuse("writing outside the working directory is not allowed: " + repr(path))
        elif event in path_args:
            for i in path_args[event]:
                if i < len(args) and not inside(args[i]):
                    refuse(event + " outside the working directory is not allowed: " + repr(args[i]))
            if event.startswith("os.") and isinstance(args[-1], int) and args[-1] != -1 and \
                    not isinstance(args[0], int):
                refuse(event + " with dir_fd is not allowed")
        elif event in deny or event.startswith(deny_prefixes):
            refuse(event + " is not allowed")
        elif event == "os.kill" and args and args[0] not in (0, getpid()):
            refuse("signalling other processes is not allowed")

    sys.addaudithook(hook)
    sys.dont_write_bytecode = True
    if hasattr(sys, "set_int_max_str_digits"):  # big literals are fine here: the CPU limit bounds the cost
        sys.set_int_max_str_digits(0)
    sys.argv = ["main.py"]
    code = compile(source, "main.py", "exec")
    try:
        exec(code, {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__})
    except MemoryError:
        try:
            os.write(2, b"MemoryError\n")
        finally:
            os._exit(EXIT_MEMORY)
    except SystemExit:
        raise
    except BaseException:
        import traceback
        traceback.print_exc()
        sys.exit(1)


_boot(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))
""".replace("EXIT_MEMORY", str(EXIT_MEMORY))


@dataclass
class SandboxResult:
    status: str  # "ok" | "error" | "timeout" | "crash"
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    files: dict[str, str] = field(default_factory=dict)  # `read_files` found in the working directory
    network_isolated: bool = False  # whether the child ran in a network namespace of its own
    landlock_abi: int = 0  # the Landlock ABI that confined its file system access (0: none)
    syscalls_filtered: bool = False  # whether the seccomp filter was in force

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _read(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:500] if lines else ""


def run_python(code: str, timeout_s: float = 10.0, memory_mb: int = 1024, *,
               files: dict[str, str] | None = None, read_files: Iterable[str] = (),
               file_size_mb: int = 16, max_output_bytes: int = 1 << 20) -> SandboxResult:
    """Run `code` as a script in the sandbox (see the module docstring). `files` are written into the
    working directory first; `read_files` (names relative to it) are read back into `result.files`
    (whole: they are bounded by the file-size limit, `file_size_mb`); stdout and stderr are read back up
    to `max_output_bytes` each."""
    base = Path(tempfile.mkdtemp(prefix="r2r-sandbox-"))
    try:
        work = base / "work"
        work.mkdir(mode=0o700)
        for name, content in (files or {}).items():
            target = (work / name).resolve()
            if work.resolve() not in target.parents:
                raise ValueError(f"sandbox: file {name!r} would lie outside the working directory")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content, encoding="utf-8")
        (base / "main.py").write_text(code, encoding="utf-8")
        (base / "boot.py").write_text(_BOOT, encoding="utf-8")
        cpu_s = max(1, math.ceil(timeout_s))
        cfg = {"cpu_s": cpu_s, "memory_bytes": int(memory_mb) * 2**20,
               "file_size_bytes": int(file_size_mb) * 2**20, "info_path": str(base / "info.json")}
        cmd = [sys.executable, "-I", "-B", str(base / "boot.py"), str(base / "main.py"), str(work), json.dumps(cfg)]
        killed = False
        start = time.monotonic()
        with open(base / "stdout", "wb") as out, open(base / "stderr", "wb") as err:
            proc = subprocess.Popen(cmd, cwd=work, env={}, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, close_fds=True)
            try:
                rc = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                killed = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    proc.kill()
                rc = proc.wait()
        wall = time.monotonic() - start
        stdout, stderr = _read(base / "stdout", max_output_bytes), _read(base / "stderr", max_output_bytes)
        try:
            info = json.loads((base / "info.json").read_text())
        except (OSError, ValueError):
            info = {}
        read_back = {}
        for name in read_files:
            p = work / name
            if p.is_file():
                read_back[name] = _read(p, cfg["file_size_bytes"])
        if killed:
            status, reason = "timeout", f"wall-clock limit of {timeout_s:g}s"
        elif rc == 0:
            status, reason = "ok", ""
        elif rc == -signal.SIGXCPU or (rc == -signal.SIGKILL and wall >= cpu_s):
            status, reason = "timeout", f"CPU time limit of {cpu_s}s"
        elif rc == EXIT_MEMORY:
            status, reason = "crash", f"memory limit of {memory_mb} MB (MemoryError)"
        elif rc < 0:
            status, reason = "crash", f"killed by {signal.Signals(-rc).name}"
        else:
            status, reason = "error", _last_line(stderr) or f"exit status {rc}"
        return SandboxResult(status, reason, rc, stdout, stderr, wall, read_back, bool(info.get("netns")),
                             int(info.get("landlock", 0)), bool(info.get("seccomp")))
    finally:
        shutil.rmtree(base, ignore_errors=True)
