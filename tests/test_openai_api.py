"""pipelines.openai_api: its configuration-time checks, and the guard's catch-all 500 on a small app served
by uvicorn on 127.0.0.1 (the rest of the request-time behaviour is tested on the live pool endpoint in
tests/integration/test_serve_pool.py)."""
from __future__ import annotations

import logging
import socket
import threading
import time

import httpx
import pytest
from fastapi import FastAPI

from core.config import ServeConfig
from pipelines.openai_api import APIError, api_key, check_max_tokens, harden, is_loopback


def test_loopback_hosts() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "pool.internal"))


def test_non_loopback_host_warns(caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pipelines.openai_api"):
        harden(FastAPI(), ServeConfig(host="127.0.0.1"))
        assert not caplog.records
        harden(FastAPI(), ServeConfig(host="0.0.0.0", port=9000))
    [record] = caplog.records
    assert "0.0.0.0:9000" in record.getMessage() and "no API key" in record.getMessage()


def test_api_key_from_named_variable(monkeypatch) -> None:
    assert api_key(ServeConfig()) is None
    monkeypatch.setenv("R2R_TEST_SERVE_KEY", "sk-1")
    assert api_key(ServeConfig(api_key_env="R2R_TEST_SERVE_KEY")) == "sk-1"
    monkeypatch.setenv("R2R_TEST_SERVE_KEY", "")
    with pytest.raises(ValueError, match="R2R_TEST_SERVE_KEY.*unset or empty"):  # never silently open
        harden(FastAPI(), ServeConfig(api_key_env="R2R_TEST_SERVE_KEY"))


def test_max_tokens_limit() -> None:
    cfg = ServeConfig(max_tokens_limit=8)
    check_max_tokens(8, cfg)
    check_max_tokens(None, cfg)
    with pytest.raises(APIError, match="max_tokens=9 is over this endpoint's limit of 8") as info:
        check_max_tokens(9, cfg)
    assert (info.value.status, info.value.type, info.value.param) == (400, "invalid_request_error", "max_tokens")


def test_unhandled_exception_gives_generic_500(caplog) -> None:
    import uvicorn

    app = harden(FastAPI(), ServeConfig())

    @app.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("cannot reach http://10.1.2.3:9000/internal")

    @app.get("/ok")
    async def ok() -> dict:
        return {"ok": True}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    replica_log = logging.getLogger("ray.serve")
    replica_log.addHandler(caplog.handler)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        r = httpx.get(f"{url}/boom")
        assert r.status_code == 500
        rid = r.headers["x-request-id"]
        assert r.json()["error"] == {"message": f"internal server error (request id {rid}; details in the server log)",
                                     "type": "server_error", "param": None, "code": None}
        assert "10.1.2.3" not in r.text and "RuntimeError" not in r.text
        logged = [rec for rec in caplog.records if rid in rec.getMessage()]
        assert logged and "http://10.1.2.3:9000/internal" in logged[0].getMessage() and logged[0].exc_info
        assert httpx.get(f"{url}/ok").json() == {"ok": True}  # still serving
    finally:
        replica_log.removeHandler(caplog.handler)
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
