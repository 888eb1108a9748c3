"""The openai backend's HTTP attempts, seen from the `httpx2` client under the official `openai` client:
each attempt is counted (per thread: one prompt's request, retries included, runs on one thread), and
each response is cut off once its attempt has lasted `deadline_s`. The client's own timeout bounds each
connect, write and read, not a response whose bytes keep trickling in; the cut raises `ReadTimeout`,
which the client retries like any other timeout."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx2


class _DeadlineStream(httpx2.SyncByteStream):
    """A response body that raises `ReadTimeout` at the first chunk arriving after `deadline`."""

    def __init__(self, stream: httpx2.SyncByteStream, deadline: float, request: httpx2.Request, limit_s: float):
        self._stream = stream
        self._deadline = deadline
        self._request = request
        self._limit_s = limit_s

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            if time.monotonic() > self._deadline:
                raise httpx2.ReadTimeout(f"response still arriving after {self._limit_s:g}s", request=self._request)
            yield chunk

    def close(self) -> None:
        self._stream.close()

    @property
    def elapsed(self):  # the client's own stream times the response (httpx2.Response.elapsed)
        return getattr(self._stream, "elapsed", None)


class AttemptTracker:
    """`event_hooks()` for an `httpx2.Client`: counts this thread's attempts since `reset()` and bounds
    each attempt, headers and body, by `deadline_s` (the cut comes with the first chunk past it, so an
    attempt lasts at most `deadline_s` plus one read, itself bounded by the client's read timeout)."""

    def __init__(self, deadline_s: float):
        self.deadline_s = deadline_s
        self._local = threading.local()

    def reset(self) -> None:
        self._local.attempts = 0

    @property
    def attempts(self) -> int:
        return getattr(self._local, "attempts", 0)

    def _on_request(self, request: httpx2.Request) -> None:
        self._local.attempts = self.attempts + 1
        self._local.deadline = time.monotonic() + self.deadline_s

    def _on_response(self, response: httpx2.Response) -> None:
        response.stream = _DeadlineStream(response.stream, self._local.deadline, response.request, self.deadline_s)

    def event_hooks(self) -> dict[str, list]:
        return {"request": [self._on_request], "response": [self._on_response]}
