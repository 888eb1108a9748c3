"""The validation split (`Task.split`): carved from train, never from test, kept out of what training sees;
and the rule that picks a knob's setting on it (`report.choose_setting`, `pipelines.evaluate`)."""
import json
import math
from pathlib import Path

import pytest

from benchmarks.report import choose_setting, markdown_table
from benchmarks.tasks import build_world
from benchmarks.tasks.base import ValCarve
from core.config import ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def world(*overrides, tasks=("facts",)):
    return build_world(load_config(CONFIGS / "test.yaml", list(overrides)), list(tasks))


def ids(examples):
    return [ex.id for ex in examples]


@pytest.mark.parametrize("name", ["facts", "scan"])
def test_val_is_carved_from_train_and_never_from_test(name):
    task = world("eval.val_queries=20", tasks=[name]).tasks[name]
    raw, train, val, test = task.load("train"), task.split("train"), task.split("val"), task.split("test")
    assert len(val) == 20 and len(train) == len(raw) - 20
    assert ids(test) == ids(task.load("test"))  # test untouched
    assert not set(ids(val)) & set(ids(train)) and not set(ids(val)) & set(ids(test))
    assert sorted(ids(train) + ids(val)) == sorted(ids(raw))  # a partition of the raw train split
    # both keep the raw train order
    pos = {i: k for k, i in enumerate(ids(raw))}
    assert [pos[i] for i in ids(val)] == sorted(pos[i] for i in ids(val))
    assert [pos[i] for i in ids(train)] == sorted(pos[i] for i in ids(train))


def test_the_carve_is_deterministic_nested_and_seeded():
    a = world("eval.val_queries=40").tasks["facts"]
    b = world("eval.val_queries=40").tasks["facts"]
    assert ids(a.split("val")) == ids(b.split("val")) and ids(a.split("train")) == ids(b.split("train"))
    # a smaller carve is inside a larger one: a router trained with 40 held out never saw the 10
    small = world("eval.val_queries=10").tasks["facts"]
    assert len(small.split("val")) == 10 and set(ids(small.split("val"))) < set(ids(a.split("val")))
    # another carve seed, another carve (the raw splits are the world's and stay as they are)
    other = a.split("val")
    a.val_carve = ValCarve(40, seed=1)
    assert ids(a.split("val")) != ids(other) and ids(a.load("test")) == ids(b.load("test"))


def test_the_carve_takes_at_most_half_of_train_and_a_task_built_alone_has_none():
    task = world("eval.val_queries=100000").tasks["facts"]
    n = len(task.load("train"))
    assert len(task.split("val")) == n // 2 and len(task.split("train")) == n - n // 2
    alone = type(task)(task.cfg, task.seed)  # not through build_world: no validation split
    assert alone.split("val") == [] and ids(alone.split("train")) == ids(alone.load("train"))
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        task.split("dev")


def test_config_rejects_an_empty_validation_split_and_a_tolerance_outside_0_1():
    with pytest.raises(ConfigError, match=r"^eval.val_queries:"):
        load_config(CONFIGS / "test.yaml", ["eval.val_queries=0"])
    with pytest.raises(ConfigError, match=r"^eval.val_tolerance:"):
        load_config(CONFIGS / "test.yaml", ["eval.val_tolerance=1.5"])
    assert load_config(CONFIGS / "tiny.yaml").train.demo_seeds == [0, 1, 2]


def test_sft_refuses_labels_of_validation_queries(tmp_path):
    """Labels searched before the carve (or under a larger one) would leak validation into SFT."""
    from pipelines.labels import read_labels
    from pipelines.runs import labels_path

    cfg = load_config(CONFIGS / "test.yaml", [f"run_dir={tmp_path}", "eval.val_queries=20"])
    facts = build_world(cfg).tasks["facts"]
    train, val = facts.split("train"), facts.split("val")
    path = labels_path(cfg)
    path.parent.mkdir(parents=True)
    rows = [{"task": "facts", "id": ex.id, "query": ex.query, "steps": []} for ex in train[:3]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_labels(cfg) == rows
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, {**rows[0], "id": val[0].id}]))
    with pytest.raises(ValueError, match="1 of 4 labelled queries are validation queries"):
        read_labels(cfg)


def test_the_cheapest_setting_within_the_target_is_chosen():
    # (cost, accuracy) per setting; target 0.90
    assert choose_setting([(3.0, 0.95), (1.0, 0.91), (2.0, 0.97)], 0.90) == 1
    # equal costs: the more accurate; a cheaper setting below the target is passed over
    assert choose_setting([(0.5, 0.80), (1.0, 0.91), (1.0, 0.93)], 0.90) == 2
    # none reaches the target: the most accurate, the cheaper on ties
    assert choose_setting([(1.0, 0.60), (3.0, 0.85), (2.0, 0.85)], 0.90) == 2
    # exactly at the target counts
    assert choose_setting([(2.0, 0.9), (1.0, 0.89999)], 0.9) == 0
    with pytest.raises(ValueError, match="no settings"):
        choose_setting([], 0.5)


def test_choose_knob_records_the_choice_on_a_synthetic_validation_curve():
    from pipelines.evaluate import choose_knob

    validation = {"target_accuracy": 0.94}
    points = [{"value": v, "cost_per_query": c, "accuracy": a} for v, c, a in
              [(0.3, 1.0, 0.90), (0.7, 2.0, 0.95), (0.95, 4.0, 0.97)]]
    i, knob = choose_knob("tau", points, validation)
    assert i == 1 and knob["chosen"] == 0.7 and knob["candidates"] == [0.3, 0.7, 0.95]
    assert knob["validation_curve"] == points and knob["meets_target"] and knob["target_accuracy"] == 0.94
    i, knob = choose_knob("tau", points, {"target_accuracy": 0.99})
    assert i == 2 and knob["chosen"] == 0.95 and not knob["meets_target"]


def test_seed_spread_covers_every_seed_of_the_router_and_nothing_else():
    from pipelines.evaluate import seed_spread

    ref = {"correct": [1.0, 1.0, 0.0, 1.0], "cost": [4.0] * 4, "total": [5.0] * 4, "reward": [0.5] * 4}

    def router(correct, cost):
        return {"correct": correct, "cost": [cost] * 4, "total": [cost + 1.0] * 4, "reward": [0.6] * 4}

    vectors = {"r2": router([1.0, 1.0, 0.0, 1.0], 1.0), "r2-seed1": router([1.0, 0.0, 0.0, 1.0], 2.0),
               "r2-seed2": router([1.0, 1.0, 1.0, 1.0], 3.0), "r2-sft": router([0.0] * 4, 1.0),
               "all:t-4@r2-seed1": ref, "all:t-4@r2": ref}
    out = seed_spread("r2", "all:t-4@r2", vectors, seed=0)
    assert out["routers"] == ["r2", "r2-seed1", "r2-seed2"]
    cuts = [0.75, 0.5, 0.25]
    assert [out["per_seed"][n]["cost_cut"]["value"] for n in out["routers"]] == pytest.approx(cuts)
    assert out["mean"]["cost_cut"] == pytest.approx(0.5) and out["sd"]["cost_cut"] == pytest.approx(0.25)
    assert out["mean"]["accuracy_diff"] == pytest.approx(0.0) and out["max"]["accuracy_diff"] == pytest.approx(0.25)
    assert out["min"]["cost_cut_with_router"] == pytest.approx(1 - 4.0 / 5.0)
    assert all(not math.isnan(v) for v in out["sd"].values())


def test_the_table_shows_each_methods_setting():
    row = {"decomposer": "gold", "accuracy": 0.9, "cost_per_query": 1.0, "reward": 0.5, "latency_per_query": 0.1,
           "calls_per_query": 2.0}
    results = {"reference": "all:t-4@gold", "aiq": {},
               "methods": {"all:t-4@gold": row, "cascade@gold": {**row, "knob": {"name": "tau", "chosen": 0.7}},
                           "random@gold": {**row, "knob": {"name": "mix", "chosen": None}}}}
    table = markdown_table(results)
    assert "| cascade@gold | gold | tau=0.7 |" in table and "| random@gold | gold | mix=default |" in table
    assert "| all:t-4@gold (ref) | gold | - |" in table
