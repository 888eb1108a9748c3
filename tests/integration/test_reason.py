"""The R2 chain and the baselines on a real Ray pool of test-zoo models."""
import asyncio
import json
import re

import pytest

from policies.baselines import Context, expand, make_method
from policies.reason import reason_batch
from policies.router import PolicyRouter

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def setup(zoo_config, zoo_pool, ray_local):
    from benchmarks.tasks import build_world

    return zoo_config, zoo_pool, ray_local.get(zoo_pool.model_ids.remote()), build_world(zoo_config)


def run(method, examples, task, ctx):
    return asyncio.run(method.run(examples, task, ctx))


def all_on_largest(setup, task_name: str, n: int):
    """(examples, trajectories) of `all:<largest>` on the first n test queries of a task."""
    cfg, pool, ids, world = setup
    ctx = Context(pool, ids, cfg.reason)
    task = world.tasks[task_name]
    examples = task.load("test")[:n]
    return examples, run(make_method(f"all:{ids[-1]}", ctx), examples, task, ctx)


def test_chain_records_every_call_and_scores(setup):
    cfg, pool, ids, world = setup
    examples, trajs = all_on_largest(setup, "facts", 16)
    for ex, t in zip(examples, trajs):
        assert len(t.steps) == len(ex.steps) == 2 and all(len(s.calls) == 1 for s in t.steps)
        assert all(s.model_id == ids[-1] for s in t.steps)
        # the second hop asks about the first hop's own answer
        assert t.steps[1].prompt == f"{ex.meta['relations'][1]} of {t.steps[0].answer} ="
        assert t.correct == world.tasks["facts"].score(t.answer, ex) and t.answer == t.steps[-1].answer
        assert t.cost_usd == pytest.approx(sum(c.cost_usd for c in t.calls)) and t.cost_usd > 0
        assert 0 <= t.steps[0].confidence <= 1
    assert sum(t.correct for t in trajs) >= 10  # the largest test model knows these facts


def test_scan_composes_clause_answers(setup):
    examples, trajs = all_on_largest(setup, "scan", 12)
    for ex, t in zip(examples, trajs):
        assert [s.text for s in t.steps] == [s.prompt for s in ex.steps]
        assert t.answer == " ".join(s.answer for s in t.steps if s.answer)


def test_procedural_review_escalates_low_confidence_steps(setup):
    cfg, pool, ids, world = setup
    examples = world.tasks["facts"].load("test")[:8]
    always = cfg.reason.model_copy(update={"tau": 1.01, "max_escalations": 2})
    from policies.baselines import FixedRouter
    from policies.router import GoldDecomposition

    router = FixedRouter("t0", GoldDecomposition(), lambda *_: 0)
    trajs = reason_batch(examples, router, pool, world.tasks["facts"], always, ids)
    for t in trajs:
        for s in t.steps:  # tier 0 -> 1 -> 2: three calls, each one tier up
            assert [c.model_id for c in s.calls] == ids[:3]
    to_top = always.model_copy(update={"escalation": "top", "max_escalations": 1})
    for t in reason_batch(examples, router, pool, world.tasks["facts"], to_top, ids):
        assert all([c.model_id for c in s.calls] == [ids[0], ids[-1]] for s in t.steps)
    never = cfg.reason.model_copy(update={"tau": 0.0})
    for t in reason_batch(examples, router, pool, world.tasks["facts"], never, ids):
        assert all(len(s.calls) == 1 for s in t.steps)


def test_every_baseline_runs(setup):
    cfg, pool, ids, world = setup
    ctx = Context(pool, ids, cfg.reason)
    examples = world.tasks["facts"].load("test")[:10]
    for name in expand(["single:*", "all:*", "random", "cascade", "two-tier", "task-router"], ids):
        method = make_method(name, ctx)
        if name.startswith("task-router"):
            method.train = {"facts": world.tasks["facts"].load("train")[:30]}
        trajs = run(method, examples, world.tasks["facts"], ctx)
        assert len(trajs) == len(examples) and all(t.cost_usd > 0 for t in trajs), name
        if name.startswith("single:"):
            assert all(len(t.steps) == 1 and t.decomposer == "none" for t in trajs)


def test_untrained_policy_router_runs_the_chain(setup, zoo_model_dir):
    """A router built from a zoo checkpoint (untrained as a router): the chain never breaks on
    whatever it writes, and its allocations stay inside the pool."""
    from policies.policy_lm import PolicyLM

    cfg, pool, ids, world = setup
    lm = PolicyLM.from_pretrained(zoo_model_dir)
    router = PolicyRouter(lm, lm, ids, temperature=1.0, seed=3)
    examples = world.tasks["facts"].load("test")[:8] + world.tasks["scan"].load("test")[:0]
    trajs = reason_batch(examples, router, pool, world.tasks["facts"], cfg.reason, ids)
    assert len(trajs) == 8
    for t in trajs:
        assert t.decomposition.sample is not None and isinstance(t.format_ok, bool)
        assert 1 <= len(t.steps) <= cfg.reason.max_steps
        assert all(s.model_id in ids and 0 <= s.allocation.tier < len(ids) for s in t.steps)


def test_evaluate_writes_results_and_plot(zoo_config, ray_local, tmp_path):
    from pipelines.evaluate import main

    results = main(["--config", "configs/test.yaml", "--set", f"run_dir={zoo_config.run_dir}",
                    "--set", "eval.task_router_train=30", "--set", "eval.sweep_tau=[0.5]",
                    "--limit", "12", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    # no trained router: the baselines run on the gold decomposition only, labelled as such
    assert saved["reference"] == results["reference"] == f"all:{zoo_config.zoo.models[-1].name}@gold"
    assert all("@gold" in n for n in saved["methods"] if not n.startswith("single:"))
    for name, m in saved["methods"].items():
        assert {"accuracy", "cost_per_query", "reward", "latency_per_query", "calls_per_query", "n"} <= set(m)
        assert m["n"] == 24 and name in saved["aiq"]
    # knobs chosen on the validation split (test.yaml: 20 queries per task, carved from train)
    assert {k: v["val"] for k, v in saved["splits"].items()} == {"facts": 20, "scan": 20}
    assert saved["validation"]["queries"] == {"facts": 20, "scan": 20}
    for name in ("random@gold", "task-router@gold", "cascade@gold", "two-tier@gold"):
        knob = saved["methods"][name]["knob"]
        assert knob["chosen"] in knob["candidates"] and len(knob["validation_curve"]) == len(knob["candidates"])
    assert (tmp_path / "pareto.png").stat().st_size > 10_000


def test_route_cli_shows_every_decision(zoo_config, ray_local, capsys, tmp_path):
    from pipelines.route import main

    world_query = "jump twice after walk left"
    # a run without a trained router (the test zoo's own run may hold one)
    t = main(["--config", "configs/test.yaml", "--set", f"run_dir={tmp_path}", "--set", f"zoo.dir={zoo_config.zoo_dir}",
              world_query])
    out = capsys.readouterr().out
    assert "UNTRAINED router" in out and "final answer:" in out and "total cost:" in out
    assert re.search(r"\[(correct|wrong \(gold: [A-Z_ ]+\))\]", out)  # the verdict, not eaten as markup
    assert [s.text for s in t.steps] == ["walk left", "jump twice"]  # gold decomposition until trained
    with pytest.raises(SystemExit, match="unknown task"):
        main(["--config", "configs/test.yaml", "--set", f"run_dir={zoo_config.run_dir}", "--task", "nope", "walk"])
