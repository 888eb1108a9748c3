"""Math answer checking shared by `math` and `champ`: final-answer extraction from free-form model
output, and equivalence by math-verify (https://github.com/huggingface/Math-Verify) run in a worker
process.

Why a worker process: math-verify bounds its own work with `signal.alarm`, which only works in the main
thread (Ray actors, thread pools and async servers call scorers from other threads), and a Python-level
alarm cannot interrupt a long C call. The worker runs math-verify in its own main thread with its
timeouts on, under an address-space limit, and the caller additionally enforces a hard wall deadline:
on expiry the worker is killed (and restarted on the next call) and the answer scores 0. One worker per
calling process, shared by all threads (requests are serialised by a lock).

Run as a script (`python mathcheck.py --worker`) it is that worker: JSON lines in, JSON lines out.
"""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading
import time

MAX_ANSWER_CHARS = 1000  # an extracted final answer longer than this is not an answer
MAX_TAIL_CHARS = 1500  # without a \boxed{}, math-verify looks at this much of the output's end
PARSE_TIMEOUT_S = 1  # math-verify's own (signal) timeouts inside the worker, whole seconds
VERIFY_TIMEOUT_S = 1
HARD_TIMEOUT_S = 10.0  # wall deadline per request, enforced by killing the worker
WORKER_MEMORY_MB = 4096

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (balanced braces; `\\boxed 5` form too), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        if start < len(text) and text[start] == "{":
            depth = 0
            for k in range(start, len(text)):
                if text[k] == "{":
                    depth += 1
                elif text[k] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[start + 1 : k]
            continue  # unbalanced: try an earlier one
        m = re.match(r"([^\s$]+)", text[start:])
        if m:
            return m.group(1)
    return None


_ANSWER_IS = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE
)


def final_answer_text(text: str) -> str:
    """The final answer in free-form output: the last \\boxed{}, else what follows the last
    "answer is"/"Answer:" (to the end of its line), else the last non-empty line. Capped in length."""
    if not isinstance(text, str):
        return ""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()[:MAX_ANSWER_CHARS]
    matches = list(_ANSWER_IS.finditer(text))
    if matches:
        ans = matches[-1].group(1).strip()
    else:
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        ans = lines[-1] if lines else ""
    ans = re.sub(r"[.\s]+$", "", ans).strip("$").strip()
    return ans[:MAX_ANSWER_CHARS]


def verify_inputs(text: str) -> list[str]:
    """What of a model's output goes to math-verify, in order: its last \\boxed{} alone; else its tail
    (math-verify finds "final answer is $x$", the last $...$, the last number), then its final answer
    text (`final_answer_text`) read as LaTeX, for bare answers such as `\\frac{7}{6}\\pi`."""
    if not isinstance(text, str):
        return []
    boxed = last_boxed(text)
    if boxed is not None:
        return ["\\boxed{" + boxed[:MAX_ANSWER_CHARS] + "}"] if boxed.strip() else []
    out = [text[-MAX_TAIL_CHARS:]] if text.strip() else []
    final = final_answer_text(text)
    if final:
        out.append(f"${final}$")
    return out


class _Worker:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.pid_owner = -1
        self.lock = threading.Lock()
        self.buf = b""

    def _start(self) -> subprocess.Popen:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-B", os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )
        self.pid_owner = os.getpid()
        self.buf = b""
        return self.proc

    def _kill(self) -> None:
        if self.proc is not None and self.pid_owner == os.getpid():
            try:
                self.proc.kill()
                self.proc.wait(timeout=5)
            except Exception:
                pass
        self.proc = None

    def _readline(self, deadline: float) -> bytes | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None  # worker died
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def request(self, payload: dict, timeout_s: float) -> dict | None:
        with self.lock:
            if self.proc is None or self.pid_owner != os.getpid() or self.proc.poll() is not None:
                self.proc = None  # (a forked child must not reuse its parent's worker)
                self._start()
            assert self.proc is not None and self.proc.stdin is not None
            try:
                self.proc.stdin.write((json.dumps(payload) + "\n").encode())
                self.proc.stdin.flush()
            except OSError:
                self._kill()
                return None
            line = self._readline(time.monotonic() + timeout_s)
            if line is None:
                self._kill()
                return None
            try:
                return json.loads(line)
            except ValueError:
                self._kill()
                return None


_WORKER = _Worker()


def math_equal(golds: list[str], prediction: str, timeout_s: float = HARD_TIMEOUT_S) -> bool:
    """Whether math-verify finds `prediction` (free-form model output) equal to any of `golds` (LaTeX,
    without `$`). Never raises; False on any failure or timeout."""
    if not isinstance(prediction, str) or not golds:
        return False
    preds = verify_inputs(prediction)
    if not preds:
        return False
    try:
        out = _WORKER.request({"golds": [str(g) for g in golds], "preds": preds}, timeout_s)
    except Exception:  # noqa: BLE001
        return False
    return bool(out and out.get("ok"))


def _worker_main() -> None:  # pragma: no cover - runs in the worker process
    import resource

    limit = WORKER_MEMORY_MB * 2**20
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass
    import logging

    logging.disable(logging.CRITICAL)  # math-verify logs every timeout
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    gold_cfg = [LatexExtractionConfig(), ExprExtractionConfig()]
    pred_cfg = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    gold_cache: dict[str, list] = {}
    for raw in sys.stdin:
        ok, err = False, None
        try:
            req = json.loads(raw)
            for g in req["golds"]:
                if g not in gold_cache:
                    if len(gold_cache) > 4096:
                        gold_cache.clear()
                    gold_cache[g] = parse(f"${g}$", extraction_config=gold_cfg, parsing_timeout=PARSE_TIMEOUT_S)
            golds = [gold_cache[g] for g in req["golds"] if gold_cache[g]]
            for text in req["preds"]:
                pred = parse(text, extraction_config=pred_cfg, parsing_timeout=PARSE_TIMEOUT_S)
                if pred and any(verify(g, pred, timeout_seconds=VERIFY_TIMEOUT_S) for g in golds):
                    ok = True
                    break
        except BaseException as e:  # MemoryError, RecursionError, timeouts, parse errors
            err = f"{type(e).__name__}: {e}"[:200]
        sys.stdout.write(json.dumps({"ok": ok, "err": err}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker_main()
