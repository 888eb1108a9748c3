"""The OpenAI-style HTTP surface every endpoint in pipelines.serve shares: the OpenAI error format and
`harden(app, cfg)`, which makes a FastAPI app safe to expose.

A hardened app
- answers every error in the OpenAI format, `{"error": {"message", "type", "param", "code"}}`:
  400 for a body that is not valid JSON or does not fit the schema (the message names the field),
  401 for a missing or wrong API key, 404/405 for an unknown route or method, 413 for a body over
  `serve.max_body_bytes` (refused from its Content-Length before it is read, or once it grows past the
  limit), and whatever status a handler raises as `APIError` (e.g. 404 for an unknown model, or 400
  from `check_max_tokens` for `max_tokens` over `serve.max_tokens_limit`);
- requires `Authorization: Bearer KEY` on every request when `serve.api_key_env` names an environment
  variable; the key is read from it when `harden` runs (when the app is built, before Serve ships it
  to its replicas); a named variable that is unset or empty is an error, never an open endpoint;
- never echoes internals in a 5xx: the client gets a generic message with the request id (Serve's
  `x-request-id`, else one made here and returned in that header), and the detail (exception,
  traceback, internal URLs) goes to the server log under that id (Serve's replica log);
- warns (log warning, at build time) when `serve.host` is not a loopback address.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import ServeConfig

log = logging.getLogger(__name__)
# Serve's logger: in a replica its records go to the replica's log file, tagged with the request id
replica_log = logging.getLogger("ray.serve")
REQUEST_ID_HEADER = "x-request-id"


class APIError(Exception):
    """An error a handler wants the client to see, as status + OpenAI error fields. For a 5xx, `message`
    must be safe to show; raise it `from` the internal cause, which is logged and not sent."""

    def __init__(self, status: int, message: str, type_: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or ("server_error" if status >= 500 else "invalid_request_error")


def openai_error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": type_, "param": param, "code": code}})


def request_id(request: Request) -> str:
    """The id this request's log records and error messages carry."""
    return str(getattr(request.state, "request_id", None) or "unknown")


def check_max_tokens(max_tokens: int | None, cfg: ServeConfig) -> None:
    """A 400 (APIError) when a request asks for more new tokens than `cfg.max_tokens_limit`."""
    if max_tokens is not None and max_tokens > cfg.max_tokens_limit:
        raise APIError(400, f"max_tokens={max_tokens} is over this endpoint's limit of {cfg.max_tokens_limit}",
                       param="max_tokens")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: only "localhost" is known to stay on this machine
        return False


def api_key(cfg: ServeConfig) -> str | None:
    """The key requests must carry (None: no auth), from the environment variable `cfg.api_key_env`."""
    if not cfg.api_key_env:
        return None
    key = os.environ.get(cfg.api_key_env, "")
    if not key:
        raise ValueError(f"serve.api_key_env names {cfg.api_key_env!r}, which is unset or empty: set it to "
                         f"the API key clients must send, or drop serve.api_key_env to serve without a key")
    return key


def harden(app: FastAPI, cfg: ServeConfig) -> FastAPI:
    """Install the error handlers and the guard (request id, API key, body limit) on `app`, before it
    starts; see the module docstring. Returns `app`."""
    key = api_key(cfg)
    if not is_loopback(cfg.host):
        log.warning("serving on %s:%d, reachable from other machines%s", cfg.host, cfg.port,
                    "" if key else "; no API key is required (set serve.api_key_env)")
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(APIError, _api_error)
    app.add_middleware(Guard, max_body_bytes=cfg.max_body_bytes, api_key=key)
    return app


# -- error handlers --------------------------------------------------------------------------------------
def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    parts, first_param = [], None
    for e in err.errors():
        if e.get("type") == "json_invalid":
            pos = e.get("loc", ("body", "?"))[-1]
            return f"the request body is not valid JSON (at character {pos}: {e.get('ctx', {}).get('error')})", None
        loc = [str(p) for p in e.get("loc", ()) if p != "body"]
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        where = ".".join(loc)
        first_param = first_param or (loc[0] if loc else None)
        parts.append(f"{where}: {msg}" if where else msg)
    return "invalid request: " + "; ".join(parts), first_param


async def _invalid_request(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, RequestValidationError)
    message, param = _validation_message(err)
    return openai_error(400, message, param=param)


async def _http_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, HTTPException)
    if err.status_code >= 500:
        return await _api_error(request, APIError(err.status_code, "internal error"))
    return openai_error(err.status_code, str(err.detail), headers=err.headers)


async def _api_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, APIError)
    message = err.message
    if err.status >= 500:
        rid = request_id(request)
        cause = err.__cause__ or err
        replica_log.error("request %s: %s: %s: %s", rid, err.status, err.message, cause,
                  exc_info=(type(cause), cause, cause.__traceback__))
        message = f"{message} (request id {rid}; details in the server log)"
    return openai_error(err.status, message, type_=err.type, param=err.param, code=err.code)


# -- the guard -------------------------------------------------------------------------------------------
class Guard:
    """ASGI middleware: gives each request an id, checks the API key, limits the body size, and turns
    any exception no handler took into a generic 500 (detail logged under the request id)."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, api_key: str | None):
        self.app, self.max_body_bytes, self.api_key = app, max_body_bytes, api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        rid = headers.get(REQUEST_ID_HEADER)  # Serve's proxy sets one and returns it to the client
        echo_id = rid is None
        rid = rid or f"req-{uuid.uuid4().hex}"
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if echo_id:
                    message["headers"] = [*message.get("headers", []), (REQUEST_ID_HEADER.encode(), rid.encode())]
            await send(message)

        refusal = self._refusal(headers)
        if refusal is not None:
            await refusal(scope, receive, send_tracked)
            return
        try:
            await self.app(scope, self._limited(receive), send_tracked)
        except Exception as err:  # nothing handled it: log the detail, send no internals
            replica_log.error("request %s: unhandled %s: %s", rid, type(err).__name__, err, exc_info=err)
            if not started:
                await openai_error(500, f"internal server error (request id {rid}; details in the server log)",
                                   type_="server_error")(scope, receive, send_tracked)

    def _refusal(self, headers: Headers) -> JSONResponse | None:
        """The response refusing a request before its body is read: wrong key, or a declared size over the limit."""
        if self.api_key is not None:
            scheme, _, given = headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.api_key.encode()):
                return openai_error(401, "invalid or missing API key: send it as 'Authorization: Bearer <key>'",
                                    code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return openai_error(413, self._too_large(int(declared)))
        return None

    def _too_large(self, size: int | None = None) -> str:
        got = f" ({size} bytes)" if size is not None else ""
        return f"request body too large{got}: this endpoint takes at most {self.max_body_bytes} bytes"

    def _limited(self, receive: Receive) -> Receive:
        """`receive`, raising a 413 once the body grows past the limit (a body sent without Content-Length)."""
        total = 0

        async def receive_limited() -> Message:
            nonlocal total
            message: Any = await receive()
            if message["type"] == "http.request":
                total += len(message.get("body", b""))
                if total > self.max_body_bytes:
                    raise HTTPException(413, self._too_large())
            return message

        return receive_limited
