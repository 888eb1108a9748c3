"""Run the vllm backend in the vllm venv and report completions as JSON (driven by
tests/integration/test_vllm_backend.py from the main venv).

usage: python tests/vllm_probe.py REQUEST.json RESULT.json

REQUEST: {"model_id": str, "spec": {...}, "calls": [{"prompts": [str], "params": {SamplingParams fields},
          "mode": "sync" | "async"}]}
  mode "sync" calls `generate`; "async" awaits `agenerate` from a separate event loop, with the call's
  prompts split into two halves awaited concurrently (two overlapping batches), results in prompt order.
RESULT:  {"startup_s": float, "results": [[Completion.to_dict()]], "call_s": [float], "vllm": version,
          "model_path": the folder vLLM serves (a padded copy when heads were padded)}
vLLM logs to stdout/stderr, so the result goes to a file.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time


def main(request_path: str, result_path: str) -> None:
    import vllm

    from actors.backends import make_backend
    from core.types import SamplingParams

    req = json.loads(open(request_path).read())
    t0 = time.perf_counter()
    backend = make_backend("vllm", req["model_id"], req["spec"])
    startup = time.perf_counter() - t0
    results, call_s = [], []
    try:
        for call in req["calls"]:
            params = SamplingParams(**call.get("params", {}))
            prompts = call["prompts"]
            t = time.perf_counter()
            if call.get("mode", "sync") == "async":
                async def both(prompts=prompts, params=params):
                    half = len(prompts) // 2
                    a, b = await asyncio.gather(
                        backend.agenerate(prompts[:half], params), backend.agenerate(prompts[half:], params))
                    return a + b

                outs = asyncio.run(both())
            else:
                outs = backend.generate(prompts, params)
            call_s.append(time.perf_counter() - t)
            results.append([c.to_dict() for c in outs])
        model_path = str(backend.path)
    finally:
        t = time.perf_counter()
        backend.close()
        close_s = time.perf_counter() - t
    with open(result_path, "w") as f:
        json.dump({"startup_s": startup, "close_s": close_s, "results": results, "call_s": call_s,
                   "vllm": vllm.__version__, "model_path": model_path}, f)


if __name__ == "__main__":  # vLLM's CPU engine spawns worker processes that re-import this module
    main(*sys.argv[1:3])
