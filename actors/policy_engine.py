"""vLLM engines for the router policies (`train.sampler: vllm`).

`VLLMPolicyEngine` is one policy's vLLM engine (the `vllm` backend's `AsyncLLMEngine`, its head padding
and CPU defaults included); `PolicyEngine` is it as a Ray actor. `VLLMPolicy` is the sampler's handle on
such an actor: it offers what `policies.router.ActionSpace` and `PolicyRouter` call on a `PolicyLM`
(`tokenizer`, `sample`, `token_logprobs`), so the router samples through either without knowing which,
plus `load_state` for the learner's published weights.

Logprobs. vLLM's default logprobs are the raw model's (temperature 1, no mask). The engine runs with
`logprobs_mode="processed_logprobs"` instead: the logprob reported for a sampled token is then
log_softmax((logits with every id outside `allowed_token_ids` at -inf) / T), computed in float32 after
vLLM's own mask and temperature — the distribution the token was drawn from, and exactly what
`ActionSpace.decomposition_logprobs` (the learner) computes. So the sampler's logprobs are the GRPO
ratio's old logprobs; nothing is recomputed. The engine's weights are float32 by default (`dtype`;
engine_args may override it): bf16 weights put the sampler-learner gap well above 1e-3, and such a
setup should recompute the old logprobs with the learner instead (not implemented here). Greedy
requests (T = 0) report the masked temperature-1 logprobs, as `PolicyLM.sample` does. Sampling is seeded
per request (vLLM's per-request generators): `sample` takes one seed and gives prompt i `seed + i`.

The allocator samples no tokens: it scores each pool tier's candidate continuation and samples a tier
from the softmax over those scores. `token_logprobs` computes the scores with vLLM's prompt logprobs of
prompt + candidate (raw, temperature 1, no mask; what `ActionSpace.tier_logprobs` asks a `PolicyLM` for).

Weights. `load_state(state, version)` takes a published state dict (Hugging Face names), pads its
attention heads when the engine serves a head-padded copy, writes it as one safetensors file into a
fresh folder and has the engine's worker(s) reload from it in place (vLLM's `Worker.reload_weights`
through `collective_rpc`, by method name: no pickled callables, no tensors over the RPC, which arrive
mangled), then resets the prefix cache, whose KV entries the old weights computed. The reported checksum
is `state_checksum` of the state dict as received, the learner's checksum of the same tensors; whether
the engine computes with them is what the tests check (its samples and logprobs against a `PolicyLM`
holding the same state). A tied `lm_head.weight` is left out (vLLM ties it to the embedding itself).

Where it runs. The engine actor's interpreter is `train.vllm.python`, given to Ray as the actor's
runtime_env `py_executable`: Ray starts that actor's worker process with this interpreter, so vLLM may
live in a virtual environment of its own (e.g. the CPU `.venv-vllm` of `make test-vllm`, which then
needs the same Python and Ray versions as the cluster and this project importable). Unset, the actor
runs on the rollout worker's interpreter (a GPU image with the `gpu` extra). The path must exist on every
node the actor may land on. Each rollout worker owns its engines (one per policy): they start and die
with it, so a restarted worker starts fresh ones and loads the published weights before it samples.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
import torch

from actors.backends.vllm import VLLMBackend, WeightReloadExtension, pad_state
from actors.weight_sync import state_checksum
from policies import positions
from policies.policy_lm import Sample, decode_sample, summed_logprobs

LOGPROBS_MODE = "processed_logprobs"
EXTENSION = f"{WeightReloadExtension.__module__}.{WeightReloadExtension.__qualname__}"


class VLLMPolicyEngine(VLLMBackend):
    """One policy's vLLM engine; see the module docstring. Runs where `vllm` is importable."""

    def __init__(self, name: str, path: str | Path, engine_args: dict[str, Any] | None = None):
        engine_args = dict(engine_args or {})
        if engine_args.get("logprobs_mode", LOGPROBS_MODE) != LOGPROBS_MODE:
            raise ValueError(f"a policy engine reports {LOGPROBS_MODE}, not {engine_args['logprobs_mode']!r}")
        spec = {"path": str(path), "dtype": "float32",
                "engine_args": {**engine_args, "logprobs_mode": LOGPROBS_MODE, "worker_extension_cls": EXTENSION}}
        super().__init__(name, spec)
        from vllm.inputs import TokensPrompt  # lazy: vllm is importable only where the engine runs

        self._tokens_prompt = TokensPrompt
        config = json.loads((Path(path) / "config.json").read_text())
        self._tied = bool(config.get("tie_word_embeddings", False))
        self._scratch = tempfile.mkdtemp(prefix=f"vllm-policy-{name}-")
        self._scratch_cleanup = weakref.finalize(self, shutil.rmtree, self._scratch, True)
        self._weights_dir: str | None = None
        self.version, self.checksum = 0, self._folder_checksum(Path(path))

    @staticmethod
    def _folder_checksum(path: Path) -> str:
        from safetensors.torch import load_file  # lazy: the engine side only

        state: dict[str, torch.Tensor] = {}
        for f in sorted(path.glob("*.safetensors")):
            state.update(load_file(str(f)))
        return state_checksum(state)

    # -- sampling and scoring ----------------------------------------------------------------------------
    def _prompt(self, text: str, extra: Sequence[int] = ()):
        """A prompt as token ids: the tokenizer's encoding of `text` (with BOS, as `PolicyLM.encode`) + extra."""
        return self._tokens_prompt(prompt_token_ids=[*self.tokenizer.encode(text), *extra])

    def sample(self, prompts: list[str], max_new_tokens: int, temperature: float,
               allowed: list[list[int]] | None = None, seed: int | None = None) -> list[Sample]:
        """One completion per prompt with each token's processed logprob; `allowed[i]` restricts prompt
        i's tokens (include EOS to let it stop); temperature 0 decodes greedily."""
        if allowed is not None and len(allowed) != len(prompts):
            raise ValueError(f"allowed has {len(allowed)} rows for {len(prompts)} prompts")

        def params(i: int):
            return self._VSamplingParams(
                max_tokens=max_new_tokens, temperature=float(temperature), logprobs=0, detokenize=False,
                seed=None if seed is None else seed + i, output_kind=self._final_only,
                allowed_token_ids=None if allowed is None else list(allowed[i]))

        async def run():
            return await self._all(self._request(self._prompt(p), params(i)) for i, p in enumerate(prompts))

        return [decode_sample(self.tokenizer, *self._token_logprobs(out.outputs[0])) for out in self._run(run())]

    def score(self, prompts: list[str], completions: list[list[int]]) -> list[list[float]]:
        """The model's raw (temperature-1, unmasked) logprobs of each completion's tokens after its prompt."""
        sp = self._VSamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
                                   output_kind=self._final_only)

        async def run():
            return await self._all(self._request(self._prompt(p, c), sp) for p, c in zip(prompts, completions))

        outs = self._run(run())
        return [[float(step[t].logprob) for t, step in zip(c, out.prompt_logprobs[-len(c):])] if c else []
                for c, out in zip(completions, outs)]

    # -- weights -----------------------------------------------------------------------------------------
    def load_state(self, state: dict[str, torch.Tensor], version: int) -> tuple[int, str]:
        """Reload the engine's weights in place from a published state dict; (version, checksum)."""
        checksum = state_checksum(state)
        tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()
                   if not (self._tied and k == "lm_head.weight")}
        if self.head_pad:
            tensors = pad_state(tensors, *self.head_pad)
        from safetensors.torch import save_file  # lazy: the engine side only

        folder = tempfile.mkdtemp(prefix=f"v{version}-", dir=self._scratch)
        save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})

        async def reload():
            await self._engine.collective_rpc("reload_weights_from", args=(folder,))
            await self._engine.reset_prefix_cache()

        self._run(reload())
        if self._weights_dir:
            shutil.rmtree(self._weights_dir, ignore_errors=True)
        self._weights_dir = folder
        self.version, self.checksum = version, checksum
        return self.weights()

    def weights(self) -> tuple[int, str]:
        """(version, checksum) of the weights the engine samples with."""
        return self.version, self.checksum

    def close(self) -> None:
        super().close()
        self._scratch_cleanup()


PolicyEngine = ray.remote(max_restarts=0)(VLLMPolicyEngine)


class VLLMPolicy:
    """The sampler's handle on one policy's engine actor, with `PolicyLM`'s sampling interface."""

    def __init__(self, name: str, path: str | Path, options: dict[str, Any], python: str | None = None,
                 engine_args: dict[str, Any] | None = None):
        """Starts the engine actor (without waiting for it): Ray `options` (resources), `python` its
        interpreter (default: this process's), `engine_args` for vLLM."""
        from transformers import AutoTokenizer  # lazy: heavy, only to load

        if positions.recorded(path):
            raise ValueError(f"{name}: {path} extrapolates RoPE per sequence (policies.positions), which vLLM does "
                             "not; sample it with the hf backend, or train it with train.length_extrapolation: 1")
        self.name = name
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        opts = dict(options)
        if python:  # abspath, not resolve: a venv's python is a symlink to its base interpreter
            opts["runtime_env"] = {**opts.get("runtime_env", {}), "py_executable": os.path.abspath(python)}
        self.engine = PolicyEngine.options(**opts).remote(name, str(path), engine_args)

    def sample(self, prompts: list[str], max_new_tokens: int, temperature: float = 1.0,
               allowed: list[list[int]] | None = None, generator: torch.Generator | None = None) -> list[Sample]:
        """As `PolicyLM.sample`; the request seeds are drawn from `generator` (reproducible per router)."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else None
        return ray.get(self.engine.sample.remote(list(prompts), max_new_tokens, temperature, allowed, seed))

    def token_logprobs(self, prompts: list[str], completions: list[list[int]],
                       temperature: float = 1.0, allowed: list[list[int]] | None = None) -> list[torch.Tensor]:
        """As `PolicyLM.token_logprobs` (not differentiable) for what the sampler scores: temperature 1,
        no vocabulary mask (the allocator's candidates)."""
        if temperature != 1.0 or allowed is not None:
            raise ValueError("a vLLM policy engine scores completions at temperature 1 without a vocabulary mask; "
                             "masked or tempered scores are the learner's (PolicyLM)")
        scores = ray.get(self.engine.score.remote(list(prompts), [list(c) for c in completions]))
        return [torch.tensor(s, dtype=torch.float32) for s in scores]

    def candidate_logprobs(self, prompts: list[str], candidates: list[list[int]]) -> torch.Tensor:
        """As `PolicyLM.candidate_logprobs` (not differentiable): the engine scores each prompt + candidate."""
        return summed_logprobs(self, prompts, candidates)

    def prompt_lengths(self, prompts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(prompts)).input_ids]

    def load_state(self, state: dict[str, torch.Tensor], version: int) -> tuple[int, str]:
        return tuple(ray.get(self.engine.load_state.remote(state, version)))

    def weights(self) -> tuple[int, str]:
        """(version, checksum) the engine holds; waits for the engine to have started."""
        return tuple(ray.get(self.engine.weights.remote()))

    def close(self) -> None:
        ray.kill(self.engine)
