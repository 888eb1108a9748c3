"""Training on Ray: label search + SFT, GRPO steps with 2 rollout workers and a real DeepSpeed engine per
policy on CPU; checkpoint -> resume (also across SIGKILLs of the driver), weight sync, worker restarts."""
import pytest
from tests_support import SMALL, TEST_POOL, drive

from benchmarks.tasks import build_world

pytestmark = pytest.mark.integration

def test_a_trained_router_folder_routes_on_its_own(sft_config, zoo_pool):
    from pipelines.controller import Router
    from pipelines.runs import router_dir

    with Router.from_run(router_dir(sft_config, "sft"), pool=zoo_pool) as router:  # the config stored beside it
        assert router.cfg == sft_config and router.description.startswith("trained router")
        t = router.route("walk twice and look")
    assert t.task == "scan" and t.decomposer.startswith("trained:") and t.steps


def test_evaluation_prices_the_routers_own_tokens(sft_config, zoo_pool, tmp_path):
    """A trained router's own tokens are priced by its policies' size on the zoo's price ladder (the
    policies start from the largest zoo model, so at the largest rung's price); the reference on its
    decomposition pays for the decomposer alone; rule baselines run no LM."""
    import ray
    from rich.console import Console

    from actors.cost import rate_for
    from pipelines.evaluate import _evaluate
    from pipelines.runs import router_dir

    top = sft_config.zoo.models[-1]
    cfg = sft_config.model_copy(update={"eval": sft_config.eval.model_copy(update={
        "sweep_tau": [0.5], "sweep_mix": [0.0, 1.0], "task_router_train": 20})})
    ids = ray.get(zoo_pool.model_ids.remote())
    res = _evaluate(cfg, zoo_pool, ids, ["all:" + top.name, "cascade", "random", "task-router", "single:" + top.name],
                    6, tmp_path, Console(quiet=True), {"r2": str(router_dir(sft_config, "sft"))})
    # every knob method has a curve on test (one point per setting); the headline has paired-bootstrap
    # intervals; the best single model too
    assert len(res["methods"]["random@r2"]["curve"]) == 2 and len(res["methods"]["task-router@gold"]["curve"]) == 3
    for key in ("accuracy_diff", "cost_cut", "cost_cut_with_router", "reward_diff"):
        lo, hi = res["headline"][key]["ci95"]
        assert lo <= res["headline"][key]["value"] <= hi, key
    assert f"single:{top.name}" in res["best_single"]["methods"] and f"all:{top.name}@r2" in res["best_single"]["methods"]
    # the baselines ran on the router's decomposer too, and the reference is the router's own decomposition's
    assert res["reference"] == f"all:{top.name}@r2" and {"cascade@gold", "cascade@r2"} <= set(res["methods"])
    assert res["methods"]["cascade@r2"]["decomposer"] == res["methods"]["r2"]["decomposer"] != "gold"
    r2, own_ref, rule = (res["methods"][k] for k in ("r2", f"all:{top.name}@r2", f"all:{top.name}@gold"))
    assert r2["router_tokens_per_query"] > own_ref["router_tokens_per_query"] > 0 == rule["router_tokens_per_query"]
    assert rule["router_cost_per_query"] == 0 and rule["total_cost_per_query"] == rule["cost_per_query"]
    # priced at the largest rung: between its input and its output price per token
    rate = rate_for(top.price)
    lo, hi = sorted([rate.input_per_m / 1e6, rate.output_per_m / 1e6])
    tokens, own = r2["router_tokens_per_query"], r2["router_cost_per_query"]
    assert lo * tokens * (1 - 1e-9) <= own <= hi * tokens * (1 + 1e-9)
    assert r2["total_cost_per_query"] == pytest.approx(r2["cost_per_query"] + own)
    assert "cost_cut_vs_reference_with_router" in r2


def test_evaluation_chooses_each_knob_on_validation_and_runs_it_once_on_test(sft_config, tmp_path):
    """Every knob method's setting is chosen on the validation queries (carved from train) for the target
    (within eval.val_tolerance of the reference's validation accuracy); its row is that setting on test."""
    from rich.console import Console

    from benchmarks.report import choose_setting
    from benchmarks.tasks import build_world
    from pipelines.evaluate import evaluate
    from pipelines.runs import router_dir

    top = sft_config.zoo.models[-1].name
    cfg = sft_config.model_copy(update={"eval": sft_config.eval.model_copy(update={
        "sweep_tau": [0.3, 0.95], "sweep_mix": [0.0, 1.0], "sweep_threshold": [0.5, 0.95], "task_router_train": 20,
        "val_queries": 6})})
    res = evaluate(cfg, ["random", "cascade", "task-router"], 6, tmp_path, Console(quiet=True),
                   {"r2": str(router_dir(sft_config, "sft"))})
    tasks = build_world(cfg).tasks
    assert res["splits"] == {n: {"train": len(t.load("train")) - 6, "val": 6, "test": 6} for n, t in tasks.items()}
    val = res["validation"]
    assert val["reference"] == res["reference"] == f"all:{top}@r2" and val["queries"] == {"facts": 6, "scan": 6}
    assert val["target_accuracy"] == pytest.approx(val["reference_accuracy"] - cfg.eval.val_tolerance)
    knob_methods = {"r2", "random@r2", "random@gold", "cascade@r2", "cascade@gold", "task-router@r2",
                    "task-router@gold"}
    assert {n for n, m in res["methods"].items() if "knob" in m} == knob_methods
    for name in knob_methods:
        m, knob = res["methods"][name], res["methods"][name]["knob"]
        curve = knob["validation_curve"]
        assert [p["value"] for p in curve] == knob["candidates"] == getattr(cfg.eval, f"sweep_{knob['name']}")
        assert all(p["n"] == 12 for p in curve)  # 6 validation queries per task
        i = choose_setting([(p["cost_per_query"], p["accuracy"]) for p in curve], val["target_accuracy"])
        assert knob["chosen"] == knob["candidates"][i]
        # the headline row is the chosen setting's test run, one point of the test curve
        assert tuple(m["curve"][i]) == (m["cost_per_query"], m["accuracy"]) and m["n"] == 12
    assert res["headline"]["setting"] == res["methods"]["r2"]["knob"]
    assert res["headline"]["seeds"]["routers"] == ["r2"]


def test_route_uses_the_runs_trained_router_without_flags(sft_config, tmp_path, capsys):
    import shutil

    from pipelines.route import main
    from pipelines.runs import router_dir

    shutil.copytree(router_dir(sft_config, "sft"), tmp_path / "router" / "grpo")  # as training leaves it
    main(["--config", "configs/test.yaml", "--set", f"run_dir={tmp_path}", "--set", f"zoo.dir={sft_config.zoo_dir}",
          "walk twice and look"])
    assert f"trained router from {tmp_path / 'router' / 'grpo'}" in capsys.readouterr().out


def test_labels_cover_both_policies(sft_config):
    import json

    rows = [json.loads(x) for x in (sft_config.zoo_dir.parent / "labels" / "labels.jsonl").read_text().splitlines()]
    assert {r["task"] for r in rows} == {"facts", "scan"}
    alloc = [r for r in rows if "tiers" in r]
    assert alloc and all(len(r["tiers"]) == len(r["steps"]) == len(r["rendered"]) for r in alloc)
    # labelled on the train split without its validation queries
    tasks = build_world(sft_config).tasks
    train = {(n, ex.id) for n, t in tasks.items() for ex in t.split("train")}
    assert all((r["task"], r["id"]) in train for r in rows)


def with_train(cfg, **update):
    return cfg.model_copy(update={"train": cfg.train.model_copy(update=update)})


def test_two_grpo_steps_then_resume_reproduces(sft_config, zoo_pool):
    import ray
    from rich.console import Console

    from pipelines.train import Trainer

    cfg = with_train(sft_config, checkpoint_every=2)
    first = Trainer(cfg, Console(quiet=True), pool=zoo_pool)
    for name, task in first.tasks.items():  # GRPO samples the train split without its validation queries
        assert [ex.id for ex in first.train_sets[name]] == [ex.id for ex in task.split("train")]
        assert not {ex.id for ex in first.train_sets[name]} & {ex.id for ex in task.split("val")}
    history = first.fit(steps=2)  # 2 steps: one per policy (alternate_every=1), checkpoint after step 2
    assert [h["phase"] for h in history] == ["decomposer", "allocator"]
    for h in history:
        assert {"reward", "accuracy", "cost_per_query", "format_ok", "time_rollout_s"} <= set(h)
    digest = ray.get(first.learner.rank0.optimizer_state_digest.remote())
    third = first.step()  # the step after the checkpoint, from the live run
    first.close()

    resumed = Trainer(cfg, Console(quiet=True), resume=True, pool=zoo_pool)
    assert resumed.state["step"] == 2
    assert ray.get(resumed.learner.rank0.optimizer_state_digest.remote()) == pytest.approx(digest)
    again = resumed.step()
    resumed.close()
    assert again["phase"] == third["phase"]
    for k in ("reward", "accuracy", "cost_per_query", "items"):
        assert again[k] == pytest.approx(third[k], rel=1e-6), k
    for k in ("loss", "kl", "sampler_gap"):
        if k in third:
            assert again[k] == pytest.approx(third[k], rel=1e-4, abs=1e-6), k


def assert_workers_hold_the_published_weights(trainer):
    import ray

    want = {name: (ref.version, ref.checksum) for name, ref in trainer.published.items()}
    for report in ray.get([w.weights_report.remote() for w in trainer.workers]):
        assert report == want


def test_collective_weight_sync_matches_the_learner(sft_config, zoo_pool):
    """The broadcast path (NCCL on GPU; gloo here) delivers the learner's weights to every worker."""
    from rich.console import Console

    from pipelines.train import Trainer

    trainer = Trainer(with_train(sft_config, weight_sync="collective", sync_backend="gloo"), Console(quiet=True),
                      pool=zoo_pool)
    try:
        m = trainer.step()  # pushes the weights, rolls out, updates the decomposer
        assert m["sampler_gap"] < 1e-4 if "sampler_gap" in m else m["items"] == 0
        trainer.sync.push(trainer.published, ["decomposer", "allocator"])  # the updated decomposer goes out
        assert_workers_hold_the_published_weights(trainer)
    finally:
        trainer.close()


def test_a_restarted_rollout_worker_loads_the_learners_weights_before_sampling(sft_config, zoo_pool):
    """Kill a worker mid-step (Ray restarts it and re-runs its rollout): the step still returns every
    trajectory, and the replacement holds both policies' published versions, not its SFT start-up."""
    import threading
    import time

    import ray
    from rich.console import Console

    from pipelines.train import Trainer

    trainer = Trainer(with_train(sft_config, rollout_workers=2, queries_per_step=16), Console(quiet=True), pool=zoo_pool)
    try:
        while min(ref.version for ref in trainer.published.values()) == 0:  # both policies updated
            trainer.step()
        expected = sum(len(exs) for _, exs in trainer.queries(trainer.state["step"])) * sft_config.train.group_size
        trainer.sync.push(trainer.published, sorted(trainer.stale))
        trainer.stale = set()
        published = {name: (ref.version, ref.checksum) for name, ref in trainer.published.items()}
        assert min(v for v, _ in published.values()) >= 1
        calls = ray.get(trainer.pool.ledger_snapshot.remote())["calls"]
        result = {}
        runner = threading.Thread(target=lambda: result.update(m=trainer.step()))
        runner.start()
        while ray.get(trainer.pool.ledger_snapshot.remote())["calls"] == calls:  # until rollouts call the pool
            time.sleep(0.01)
        ray.kill(trainer.workers[0], no_restart=False)
        runner.join(timeout=300)
        m = result["m"]
        assert m["trajectories"] == expected
        assert m["worker_reloads"] >= 1  # the replacement started from SFT weights and had to load
        for report in ray.get([w.weights_report.remote() for w in trainer.workers]):
            assert report == published  # the replacement too: the learner's versions and checksums
    finally:
        trainer.close()


def test_sampler_and_learner_agree_at_a_training_temperature_other_than_1(sft_config, zoo_pool):
    """Both policies' sampled actions, scored by the learner at `train.temperature`, match the
    sampler's logprobs (the allocator was scored at temperature 1 before)."""
    import ray
    from rich.console import Console

    from pipelines.train import Trainer
    from policies.grpo import training_items

    # one rollout worker: the test samples on workers[0] only
    trainer = Trainer(with_train(sft_config, temperature=0.7, rollout_workers=1), Console(quiet=True), pool=zoo_pool)
    try:
        examples = trainer.train_sets["facts"][:4] + trainer.train_sets["scan"][:4]
        for phase in ("decomposer", "allocator"):
            trajs = []
            for task in ("facts", "scan"):
                exs = [e for e in examples if e.task == task]
                res = ray.get(trainer.workers[0].rollout.remote(task, exs, 2, phase, 0, trainer.published))
                trajs += res.trajectories
            rewards = [float(i % 2) for i in range(len(trajs))]  # every group has spread
            items = training_items(trajs, rewards, 2, phase)
            assert len(items) >= len(trajs) // 2
            learner = trainer.learner.logprobs(phase, items)
            gap = max(abs(a - b) for it, lps in zip(items, learner) for a, b in zip(it.old_logprobs, lps))
            assert gap < 1e-5, (phase, gap)
            assert any(abs(lp) > 1e-3 for it in items for lp in it.old_logprobs)  # not all certain
    finally:
        trainer.close()


def test_resume_passes_over_a_partial_checkpoint(sft_config, zoo_pool, capsys):
    from rich.console import Console

    from core.checkpoints import step_dir
    from pipelines.train import Trainer

    cfg = with_train(sft_config, checkpoint_every=1, seed=3, rollout_workers=1)  # which checkpoint resumes: 1 worker will do
    first = Trainer(cfg, Console(), pool=zoo_pool)
    first.fit(steps=2)
    first.close()
    newest = step_dir(first.ckpt_root, 2)
    victim = max((p for p in newest.rglob("*") if p.is_file() and p.name != "manifest.json"),
                 key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    resumed = Trainer(cfg, Console(), resume=True, pool=zoo_pool)
    resumed.close()
    out = capsys.readouterr().out
    assert resumed.state["step"] == 1
    assert "step-00000002 is incomplete" in out and "resumed from" in out and "step-00000001" in out


def router_with_certain_decomposer(sft_config, run_dir):
    """A run folder whose SFT router has a decomposer that samples one decomposition only (its final norm,
    and so its logits, scaled up 10^4x: a token 0.01 below the best gets probability 0 in float32) and an
    allocator that samples every tier alike (its logits zeroed).
    A decomposer step then sees no reward spread in any group (its allocator decodes greedily): it updates
    nothing; an allocator step almost surely does (two samples of a query differ in some subtask's tier,
    and so in cost, with probability >= 3/4)."""
    import shutil

    import torch

    from pipelines.runs import COST_REF, router_dir
    from policies.policy_lm import PolicyLM

    sft = router_dir(sft_config.model_copy(update={"run_dir": str(run_dir)}), "sft")
    shutil.copytree(router_dir(sft_config, "sft"), sft)
    for policy, scale in (("decomposer", 1e4), ("allocator", 0.0)):
        lm = PolicyLM.from_pretrained(sft / policy, device="cpu")
        with torch.no_grad():
            lm.model.model.norm.weight.mul_(scale)
        lm.save(sft / policy)
    if (sft_config.run_path / COST_REF).exists():  # measured once for the test world
        shutil.copy(sft_config.run_path / COST_REF, run_dir / COST_REF)


def test_resume_after_sigkill_matches_an_uninterrupted_run_step_for_step(sft_config, zoo_pool, ray_local, tmp_path):
    """The driver is SIGKILLed twice: right after a step that did not update the learner (no group had
    reward spread; the checkpoint at step 2 is taken right after it), and right after a phase boundary
    (step 4, which the checkpoint at step 4 precedes); each `--resume` continues from the newest complete
    checkpoint. History then holds every step once, equal to an uninterrupted run's."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from rich.console import Console

    from pipelines.train import Trainer

    # the decomposer phase (steps 0, 1, 4, 5) skips by construction, the allocator phase (2, 3, 6, 7) learns
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    router_with_certain_decomposer(sft_config, run_dir)
    run = {"temperature": 1.0, "queries_per_step": 2, "alternate_every": 2, "checkpoint_every": 2, "grpo_steps": 8}
    zoo = sft_config.zoo.model_copy(update={"dir": str(sft_config.zoo_dir)})
    cfg = with_train(sft_config.model_copy(update={"run_dir": str(run_dir), "zoo": zoo}), **run)
    reference = Trainer(cfg, Console(quiet=True), pool=zoo_pool)
    expected = reference.fit()
    reference.close()
    assert [h["items"] == 0 for h in expected if h["phase"] == "decomposer"] == [True] * 4, expected
    assert any(h["items"] for h in expected)  # and the learner does update in the run
    settings = {**dict(s.split("=", 1) for s in SMALL), **{f"train.{k}": str(v) for k, v in run.items()}}
    kill_after = [1, 4]  # right after the second skipped step (a checkpoint follows it); right after step 4
    history = Path(cfg.run_dir) / "train" / "history.jsonl"
    args = [sys.executable, "-m", "pipelines.train", "--config", "configs/test.yaml", "--set", f"run_dir={run_dir}",
            "--set", f"seed={sft_config.seed}", "--set", f"zoo.dir={sft_config.zoo_dir}", "--set", f"pool.name={TEST_POOL}",
            *(x for k, v in settings.items() for x in ("--set", f"{k}={v}"))]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}

    def steps_logged() -> list[int]:
        return [json.loads(x)["step"] for x in history.read_text().splitlines()] if history.exists() else []

    def checkpointed() -> bool:  # a complete checkpoint to resume from
        return any((d / "manifest.json").exists() for d in (history.parent / "checkpoints").glob("step-*"))

    resumed_at = []
    for i, step in enumerate([*kill_after, None]):
        logged = steps_logged()
        out = tmp_path / f"driver{i}.log"
        with out.open("w") as sink:
            proc = subprocess.Popen(args + (["--resume"] if i else []), env=env, stdout=sink, stderr=subprocess.STDOUT)
            resumed = drive(proc, out, None if step is None else  # this driver's row of `step`
                            lambda logged=logged, step=step: steps_logged() != logged and step in steps_logged()
                            and checkpointed())
        if i:
            assert resumed is not None, out.read_text()[-3000:]
            resumed_at.append(resumed)
    assert resumed_at[0] == 2 and resumed_at[-1] <= 4  # resumed after the skips; the second replays step 4
    rows = [json.loads(x) for x in history.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(8))  # each step exactly once
    for want, got in zip(expected, rows):
        assert got["phase"] == want["phase"]
        for k in ("reward", "accuracy", "cost_per_query", "items", "trajectories"):
            assert got[k] == pytest.approx(want[k], rel=1e-6), (want["step"], k)
        for k in ("loss", "kl"):
            assert (k in got) == (k in want)
            if k in want:
                assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), (want["step"], k)


def test_pipelined_training_samples_one_version_behind_and_resumes_step_for_step(sft_config, zoo_pool):
    """train.pipelined: step t+1's rollouts run during step t's update, with the weights published before
    it; the run's records show every sampler at most one version behind the learner (exactly one on the
    policy the previous step updated), the learner's ratios taken against the sampler's logprobs, and no
    overlap into a checkpoint: a run resumed from one replays the uninterrupted run."""
    import shutil

    from rich.console import Console

    from core.checkpoints import step_dir
    from pipelines.train import Trainer, phase_of

    cfg = with_train(sft_config, pipelined=True, alternate_every=2, checkpoint_every=3, seed=4, rollout_workers=1)
    first = Trainer(cfg, Console(quiet=True), pool=zoo_pool)
    history = first.fit(steps=5)  # checkpoints after steps 3 and 5; steps 1, 2 and 4 were launched early
    first.close()
    assert [h["step"] for h in history] == list(range(5))
    overlapped = {1, 2, 4}  # step 3 follows a checkpoint, step 0 has no predecessor
    for h in history:
        t = h["step"]
        lag = {p: h["learner_versions"][p] - h["sampled_versions"][p] for p in h["learner_versions"]}
        prev = history[t - 1] if t else None
        want = {p: int(t in overlapped and p == prev["phase"] and prev["items"] > 0) for p in lag}
        assert lag == want, (t, lag, want)
        assert all(0 <= v <= 1 for v in lag.values())
        if h["items"]:  # importance ratios against the sampler: off by the update it missed, else ~1
            assert (h["sampler_gap"] > 1e-5) if lag[phase_of(t, 2)] else (h["sampler_gap"] < 1e-4), (t, h)
    assert any(sum(h["learner_versions"][p] - h["sampled_versions"][p] for p in h["learner_versions"])
               for h in history), "no step sampled with stale weights: nothing overlapped"

    shutil.rmtree(step_dir(first.ckpt_root, 5))  # as if the driver died during step 4, its rollouts launched
    resumed = Trainer(cfg, Console(quiet=True), resume=True, pool=zoo_pool)
    assert resumed.state["step"] == 3
    again = resumed.fit(steps=5)
    resumed.close()
    assert [h["step"] for h in again] == [3, 4]
    for want, got in zip(history[3:], again):
        assert (got["sampled_versions"], got["learner_versions"]) == (want["sampled_versions"], want["learner_versions"])
        for k in ("reward", "accuracy", "cost_per_query", "items"):
            assert got[k] == pytest.approx(want[k], rel=1e-6), (want["step"], k)
        for k in ("loss", "kl", "sampler_gap"):
            assert (k in got) == (k in want)
            if k in want:
                assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), (want["step"], k)


def test_dynamic_sampling_keeps_only_groups_with_signal_within_its_budget(sft_config, zoo_pool):
    """train.dynamic_sampling: a step samples further rounds of fresh queries until it holds a batch's worth
    of groups with reward spread or its rounds run out; it trains on those groups alone."""
    from rich.console import Console

    from core.config import DynamicSamplingConfig
    from pipelines.train import Trainer

    rounds = 3
    cfg = with_train(sft_config, dynamic_sampling=DynamicSamplingConfig(enabled=True, max_rounds=rounds),
                     rollout_workers=1, seed=6)
    g = cfg.train.group_size
    trainer = Trainer(cfg, Console(quiet=True), pool=zoo_pool)
    try:
        first = trainer.queries(0)
        used = {(name, ex.id) for name, exs in first for ex in exs}
        more = trainer.queries(0, 1, used)  # a further round: fresh queries, the same ones each time
        assert more == trainer.queries(0, 1, used) and not used & {(n, ex.id) for n, exs in more for ex in exs}
        batch = sum(len(exs) for _, exs in first)  # groups of one round
        history = trainer.fit(steps=2)
    finally:
        trainer.close()
    assert any(h["sampling_rounds"] > 1 for h in history), "no step needed a further round: change the seed"
    for h in history:
        assert 1 <= h["sampling_rounds"] <= rounds
        assert h["groups_sampled"] == h["sampling_rounds"] * batch and h["trajectories"] == h["groups_sampled"] * g
        with_signal = round(h["groups_with_signal"] * h["groups_sampled"])
        assert h["groups_kept"] == min(batch, with_signal)  # every group with spread up to a batch, no other
        if h["groups_kept"] < batch:  # the budget ran out
            assert h["sampling_rounds"] == rounds
        assert (h["items"] > 0) == (h["groups_kept"] > 0)
