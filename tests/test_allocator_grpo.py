"""One-step allocation GRPO (`pipelines.allocator_grpo`): its problems (distinct one-step subtasks, the
tasks taking turns); a learner rank of the allocator alone; and, with real Ray actors on the test zoo's
pool, rollouts of one call each on the sampled tier (no review) and steps whose new weights the rollout
workers load before they sample again."""
import math

import pytest

from benchmarks.tasks import build_world
from pipelines.allocator_grpo import one_step_problems


def test_problems_are_distinct_one_step_subtasks_the_tasks_taking_turns(zoo_config):
    tasks = build_world(zoo_config).tasks
    probs = one_step_problems(tasks, "train", 12, zoo_config.seed)
    assert len(probs) == 12 and [t for t, _ in probs[:4]] == [*tasks, *tasks]
    assert len({(t, ex.query) for t, ex in probs}) == 12
    for _, ex in probs:
        assert [s.prompt for s in ex.steps] == [ex.query] and ex.answer == ex.steps[0].answer
    test_ids = [ex.id for ex in tasks["facts"].split("test")]
    assert one_step_problems(tasks, "train", 12, zoo_config.seed) == probs  # seeded
    one_step_problems(tasks, "test", 12, zoo_config.seed)
    assert [ex.id for ex in tasks["facts"].split("test")] == test_ids  # the task's (cached) split left as it was
    with pytest.raises(ValueError, match="at least one"):
        one_step_problems(tasks, "train", 0, zoo_config.seed)


def test_a_learner_trains_only_router_policies(zoo_config):
    from actors.learner import LearnerImpl

    with pytest.raises(ValueError, match="learner policies"):
        LearnerImpl(zoo_config.model_dump_json(), {"planner": "somewhere"}, ["a", "b"], 1e-3)


@pytest.fixture(scope="module")
def grpo(zoo_config, zoo_pool, ray_local):
    """The allocator's one-step GRPO from the zoo's second model (G = 2, 2 rollout workers)."""
    from pipelines.allocator_grpo import AllocatorGRPO

    cfg = zoo_config.model_copy(update={"train": zoo_config.train.model_copy(
        update={"group_size": 2, "rollout_workers": 2})})
    init = str(cfg.zoo_dir / cfg.zoo.models[1].name)
    ids = ray_local.get(zoo_pool.model_ids.remote())
    g = AllocatorGRPO(cfg, zoo_pool, ids, init, dict.fromkeys(build_world(cfg).tasks, 1e-4))
    yield g, init, one_step_problems(build_world(cfg).tasks, "train", 12, cfg.seed)
    g.close()


@pytest.mark.integration
def test_rollouts_are_one_call_each_on_the_sampled_tier(grpo):
    g, _, probs = grpo
    batch = probs[:4]
    trajs = g.rollouts(batch)
    assert len(trajs) == 2 * len(batch)
    for k, t in enumerate(trajs):
        task, ex = batch[k // 2]
        assert (t.task, t.example_id, t.query) == (task, ex.id, ex.query) and t.format_ok
        [step] = t.steps
        assert step.text == ex.query and step.allocation.prompt  # the allocator chose, the gold step ran
        [call] = step.calls  # no review: never escalated
        assert call.model_id == g.model_ids[step.allocation.tier] and t.cost_usd == call.cost_usd > 0


@pytest.mark.integration
def test_steps_update_the_allocator_and_the_workers_load_it(grpo):
    import ray
    import torch

    from policies.policy_lm import PolicyLM

    g, init, probs = grpo
    updates = 0
    for k in range(2):
        stats = g.step(probs[4 + 4 * k: 8 + 4 * k])
        assert sum(stats["tiers"]) == 8 and ("skipped" in stats) == (stats["items"] == 0)
        updates += stats["items"] > 0
    assert g.published["allocator"].version == updates
    g.rollouts(probs[:2])  # the workers load the published weights before they sample
    want = (g.published["allocator"].version, g.published["allocator"].checksum)
    assert [ray.get(w.weights_report.remote())["allocator"] for w in g.workers] == [want, want]
    start = PolicyLM.from_pretrained(init, device="cpu").model.state_dict()
    now = g.allocator(init).model.state_dict()
    assert any(not torch.equal(start[k], now[k]) for k in start) == (updates > 0)


@pytest.mark.integration
def test_pipelined_steps_sample_with_the_weights_one_update_old(grpo):
    """train.pipelined: batch k+1's rollouts start before update k, so they carry the version before it."""
    g, _, probs = grpo
    sync, g.cfg = g.cfg, g.cfg.model_copy(update={"train": g.cfg.train.model_copy(update={"pipelined": True})})
    start = g.published["allocator"].version
    try:
        history = list(g.train([probs[0:4], probs[4:8], probs[8:12]]))
    finally:
        g.cfg = sync
    updates = [h["items"] > 0 for h in history]
    assert history[0]["sampled_version"] == start
    assert [h["sampled_version"] for h in history[1:]] == [start + sum(updates[:k]) for k in range(2)]
    assert g.published["allocator"].version == start + sum(updates)


@pytest.mark.integration
def test_held_out_rewards_score_an_allocator_as_the_chain_runs_it(zoo_config, zoo_pool, ray_local):
    """The table of every tier's reward gives an allocator's greedy reward equal to a chain run with the
    allocator choosing greedily, and its expected reward from its tier probabilities at the temperature."""
    import asyncio

    import torch

    from pipelines.allocator_grpo import HeldOutRewards, one_step_config, trajectory_reward
    from policies.policy_lm import PolicyLM
    from policies.reason import areason_batch
    from policies.router import ActionSpace, PolicyRouter

    cfg, tasks = zoo_config, build_world(zoo_config).tasks
    ids = ray_local.get(zoo_pool.model_ids.remote())
    probs, ref = one_step_problems(tasks, "test", 8, cfg.seed), dict.fromkeys(tasks, 1e-4)
    held = HeldOutRewards(cfg, zoo_pool, ids, tasks, probs, ref)
    assert held.table.shape == (8, len(ids)) and len(set(held.table.flatten().tolist())) > 1
    lm = PolicyLM.from_pretrained(str(cfg.zoo_dir / cfg.zoo.models[1].name), device="cpu")
    score = held.score(lm)

    one_step = one_step_config(cfg)
    router = PolicyRouter(None, lm, ids, templates=cfg.router.templates, temperature=0.0)

    async def chain():
        return await asyncio.gather(*(areason_batch([ex for t, ex in probs if t == name], router, zoo_pool,
                                                    tasks[name], one_step.reason, ids) for name in tasks))
    trajs = [t for run in asyncio.run(chain()) for t in run]
    assert len(trajs) == 8
    assert score["greedy"] == pytest.approx(sum(trajectory_reward(one_step, t, ref) for t in trajs) / 8)

    actions = ActionSpace(cfg.router.templates, ids)
    prompts = [actions.templates.allocate_prompt(ex.query, ids, lm.tokenizer) for _, ex in probs]
    with torch.no_grad():
        logp = actions.tier_logprobs(lm, prompts, len(ids), cfg.train.temperature).tolist()
    want = sum(sum(math.exp(lp) * r for lp, r in zip(row_lp, row)) for row_lp, row in zip(logp, held.table.tolist())) / 8
    assert score["expected"] == pytest.approx(want)
