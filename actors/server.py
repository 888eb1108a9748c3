"""`ModelServer`: an async Ray actor holding one pool model, or several small ones. A backend that batches
continuously (vLLM) gets every call straight away; for the others the server micro-batches concurrent
requests."""
from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass, field

import ray

from actors.backends import completions_or_raise, make_backend
from actors.placement import actor_device, where
from core.storage import ensure_local
from core.types import Completion, SamplingParams

PROBE_S = 0.001  # how long a lone request waits for a second one before it runs alone


@dataclass
class _Request:
    prompt: str
    params: SamplingParams
    future: asyncio.Future = field(repr=False)


class HostedModel:
    """One model in a server: its backend, and (for a backend that does not batch continuously) the
    micro-batching queue in front of it."""

    def __init__(self, model_id: str, backend: str, spec: dict, batch_window_ms: float, max_batch: int):
        self.model_id = model_id
        if backend == "hf":  # the GPU Ray gave this actor, if any
            spec = {**spec, "device": spec.get("device") or actor_device()}
        if spec.get("path"):  # a staged zoo model this node lacks comes from its URI
            ensure_local(spec["path"])
        self.backend = make_backend(backend, model_id, spec)
        self.window_s = batch_window_ms / 1000.0
        self.max_batch = max_batch
        self.queue: list[_Request] = []
        self.batches_run = 0
        self._wake: asyncio.Event | None = None
        self._loop_task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    def _ensure_loop(self) -> None:
        if self._loop_task is None or self._loop_task.done():
            self._wake = asyncio.Event()
            self._loop_task = asyncio.get_running_loop().create_task(self._batch_loop())

    async def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        if self.backend.continuous_batching:
            try:
                return await self.backend.agenerate(prompts, params)
            except Exception as err:
                self._exit_if_dead(err)
                raise
            finally:
                self.batches_run += 1
        self._ensure_loop()
        loop = asyncio.get_running_loop()
        reqs = [_Request(p, params, loop.create_future()) for p in prompts]
        self.queue.extend(reqs)
        self._wake.set()
        return completions_or_raise(list(await asyncio.gather(*(r.future for r in reqs), return_exceptions=True)))

    async def _batch_loop(self) -> None:
        # local backends run one batch at a time; remote ones may declare more batches in flight
        slots = asyncio.Semaphore(getattr(self.backend, "concurrent_batches", 1))
        while True:
            await self._wake.wait()
            if self.window_s:
                await self._fill()
            while self.queue:
                await slots.acquire()
                params = self.queue[0].params
                batch = [r for r in self.queue if r.params == params][: self.max_batch]
                taken = set(map(id, batch))
                self.queue = [r for r in self.queue if id(r) not in taken]
                task = asyncio.get_running_loop().create_task(self._run(batch, params, slots))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
            self._wake.clear()

    async def _fill(self) -> None:
        """Wait for company before a batch: the batch window, except that a lone request waits only
        `PROBE_S` and runs at once when nothing joined it meanwhile (a chain's sequential calls)."""
        if len(self.queue) == 1:
            await asyncio.sleep(min(PROBE_S, self.window_s))
            if len(self.queue) == 1:
                return
        await asyncio.sleep(self.window_s)

    async def _run(self, batch: list[_Request], params: SamplingParams, slots: asyncio.Semaphore) -> None:
        try:
            outs = await asyncio.to_thread(self.backend.generate, [r.prompt for r in batch], params)
            for r, out in zip(batch, outs):
                r.future.set_result(out)
        except Exception as err:  # the callers see the failure; the server keeps serving
            self._exit_if_dead(err)
            outcomes = getattr(err, "outcomes", None) or [err] * len(batch)
            for r, out in zip(batch, outcomes):
                if r.future.done():
                    continue
                if isinstance(out, BaseException):
                    r.future.set_exception(out)
                else:
                    r.future.set_result(out)
        finally:
            self.batches_run += 1
            slots.release()

    def _exit_if_dead(self, err: Exception) -> None:
        """A backend that can never serve again (`Backend.dead`: e.g. a vLLM engine process that died)
        takes its server down with it, as a SIGKILL would: Ray starts a fresh server (`max_restarts`) and
        retries every call that was in flight (`max_task_retries`)."""
        if self.backend.dead():
            print(f"ModelServer {self.model_id!r}: its backend is dead ({type(err).__name__}: {err}); "
                  "exiting so that Ray restarts the server", file=sys.stderr, flush=True)
            os._exit(1)

    def stats(self) -> dict:
        return {"model_id": self.model_id, "queue": len(self.queue), "batches_run": self.batches_run,
                "pid": os.getpid()}


class ModelServerImpl:
    """An async Ray actor serving one pool model, or several small ones that share its process
    (`pool.colocate`: one torch import and one process for all of them). Continuous batching
    (`backend.continuous_batching`, vLLM): each call goes to the backend's `agenerate` as it arrives,
    however many are in flight; the engine schedules new requests into its running batch at every step.
    Micro-batching (hf and the others): requests for one model arriving within `batch_window_ms` of each
    other (same sampling params; see `_fill`) share one batched `generate` call of at most `max_batch`
    prompts, one batch at a time (or `backend.concurrent_batches`); the backend runs in a thread so the
    actor keeps accepting requests meanwhile. When some prompts of a batch fail for good (an
    `EndpointError` with per-prompt `outcomes`), each caller gets back its own prompts' outcomes: its
    completions, or an `EndpointError` that keeps the ones that did complete. `batches_run` counts
    backend calls. `models`: (model id, backend name, backend spec) of each model it serves."""

    def __init__(self, models: list[tuple[str, str, dict]], batch_window_ms: float = 5.0, max_batch: int = 64):
        self.models = {m: HostedModel(m, backend, spec, batch_window_ms, max_batch) for m, backend, spec in models}

    def placement(self) -> dict:
        return {"model_ids": list(self.models), **where()}

    async def generate(self, model_id: str, prompts: list[str], params: SamplingParams) -> list[Completion]:
        return await self.models[model_id].generate(prompts, params)

    def queue_length(self) -> int:
        return sum(len(m.queue) for m in self.models.values())

    def stats(self, model_id: str) -> dict:
        return self.models[model_id].stats()


ModelServer = ray.remote(max_restarts=2, max_task_retries=2)(ModelServerImpl)
