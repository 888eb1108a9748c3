"""The rllib-ppo baseline on the test zoo: subtask tables from the real pool, RLlib PPO on a CPU env runner
inside the evaluation (results.json gets the method and its table-level comparison), and a subtask
allocator routing each gold step through the chain."""
import asyncio
import json
import random

import pytest
import ray
import torch
from rich.console import Console

from benchmarks.tasks import build_world
from benchmarks.tasks.base import render_step
from core.config import load_config
from core.prompts import format_prompt
from core.types import SamplingParams
from pipelines.bandit import features_for, oracle_tiers, rewards
from pipelines.evaluate import _evaluate
from pipelines.subtask_table import TRAIN_SAMPLE_SEED, load_or_collect, subtasks, table_path
from policies.baselines import Context, FeatureAllocator, make_method
from policies.features import fit_logreg

pytestmark = pytest.mark.integration

SMALL_RL = ["eval.rllib.train_queries=40", "eval.rllib.iterations=3", "eval.rllib.batch=256",
            "eval.rllib.minibatch=128", "eval.rllib.envs_per_runner=32", "train.cost_ref_queries=8",
            "wandb.mode=disabled"]
LIMIT = 6  # test queries per task


@pytest.fixture(scope="module")
def setup(zoo_config, zoo_pool, ray_local, tmp_path_factory):
    """A run of its own (its cost_ref and tables) over the shared test zoo and its pool."""
    run = tmp_path_factory.mktemp("rllib")
    cfg = load_config("configs/test.yaml", [f"run_dir={run}", f"zoo.dir={zoo_config.zoo_dir}", *SMALL_RL])
    return cfg, zoo_pool, ray_local.get(zoo_pool.model_ids.remote()), build_world(cfg).tasks


def test_evaluation_trains_and_reports_rllib_ppo(setup, tmp_path):
    cfg, pool, ids, tasks = setup
    results = _evaluate(cfg, pool, ids, ["rllib-ppo"], LIMIT, tmp_path, Console(quiet=True), None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["methods"]) == {"rllib-ppo@gold", f"all:{ids[-1]}@gold"}
    m = saved["methods"]["rllib-ppo@gold"]
    assert m["n"] == 2 * LIMIT and m["decomposer"] == "gold" and m["cost_per_query"] > 0
    rl = saved["rllib"]
    assert rl == json.loads(json.dumps(results["rllib"]))
    n_test = rl["tables"]["test"]["subtasks"]
    assert n_test == len(table_path(cfg, "test_table").read_text().splitlines()) - 1
    policies = ["oracle", "classifier", "ppo", f"all:{ids[-1]}"]
    for name in policies:
        assert rl[name]["n"] == n_test and sum(rl[name]["tiers"]) == n_test
    # the oracle takes a correct model for every step some model solves: no policy is more accurate
    assert all(rl["oracle"]["accuracy"] >= rl[name]["accuracy"] for name in policies)
    assert rl[f"all:{ids[-1]}"]["tiers"] == [0] * (len(ids) - 1) + [n_test]
    ppo = rl["ppo"]
    assert len(ppo["train_reward_curve"]) == len(ppo["greedy_train_reward_curve"]) == 3
    assert ppo["steps"] >= 3 * 256 and ppo["wall_s"] > 0
    # PPO learned: its greedy policy beats picking a tier at random on the train table
    train = [json.loads(line) for line in table_path(cfg, "table").read_text().splitlines()[1:]]
    r = rewards(train, cfg.reward.lam, rl["reward"]["cost_ref"])
    assert ppo["greedy_train_reward_curve"][-1] > float(r.mean())


def test_table_records_real_pool_outcomes_and_is_reused(setup):
    cfg, pool, ids, tasks = setup
    task = tasks["facts"]
    train = {"facts": random.Random(cfg.seed + TRAIN_SAMPLE_SEED).sample(task.load("train"), 10)}
    rows, stats = load_or_collect(cfg, pool, ids, tasks, train, "probe", "train")
    subs = subtasks(train["facts"], task)
    assert not stats["cached"] and stats["pool_calls"] == len(ids) * len(rows)
    assert [r["id"] for r in rows] == [s.id for s in subs] and len(rows) == 20  # two hops per chain
    ex = train["facts"][0]  # the second hop asks about the first hop's gold answer
    assert rows[1]["text"] == render_step(ex.steps[1].prompt, [ex.steps[0].answer])
    params = SamplingParams(max_new_tokens=task.step_max_tokens)
    for row, sub in zip(rows[:3], subs):
        for tier, model in enumerate(ids):
            [out] = ray.get(pool.generate.remote(model, [format_prompt(row["text"])], params))
            assert row["correct"][tier] == task.score(out.text, sub)
            assert row["cost_usd"][tier] == pytest.approx(out.cost_usd)
    again, stats = load_or_collect(cfg, pool, ids, tasks, train, "probe", "train")
    assert stats["cached"] and again == rows


def test_subtask_allocator_routes_each_step_by_its_policy(setup):
    """A subtask allocator (here a classifier on the cached train table) picks each gold step's model."""
    cfg, pool, ids, tasks = setup
    train = {name: random.Random(cfg.seed + TRAIN_SAMPLE_SEED).sample(t.load("train"), 40) for name, t in tasks.items()}
    rows, _ = load_or_collect(cfg, pool, ids, tasks, train, "table", "train")
    bow = features_for(tasks, rows)
    clf = fit_logreg(bow([r["text"] for r in rows]), torch.tensor(oracle_tiers(rows)), len(ids), 0)
    ctx = Context(pool, ids, cfg.reason, cfg.seed)
    method = make_method("rllib-ppo", ctx)
    with pytest.raises(RuntimeError, match="no trained policy"):
        asyncio.run(method.run(tasks["facts"].load("test")[:1], tasks["facts"], ctx))
    method.router = FeatureAllocator(method.name, bow, clf)
    chosen = set()
    for task in tasks.values():
        examples = task.load("test")[:LIMIT]
        for ex, t in zip(examples, asyncio.run(method.run(examples, task, ctx))):
            assert [s.text for s in t.steps] == [s.prompt for s in ex.steps] and t.router == "rllib-ppo@gold"
            earlier = []
            for s in t.steps:
                [tier] = method.router.tiers([render_step(s.text, earlier)])
                assert len(s.calls) == 1 and s.model_id == ids[tier]  # no review: the policy's tier
                chosen.add(tier)
                earlier.append(s.answer)
    assert len(chosen) > 1  # the tier is the step's, not the query's
