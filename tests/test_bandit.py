"""The rllib-ppo baseline's pieces without Ray: the bandit environment over a small table, its rewards,
the table's oracle and scores, and the bag-of-words allocator."""
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from pipelines.bandit import SubtaskBandit, features_for, oracle_tiers, rewards, score
from policies.baselines import FeatureAllocator
from policies.features import BagOfWords, fit_logreg

# two tasks, three tiers; cost_ref per task: the reward's cost term is lam * cost / cost_ref[task]
ROWS = [
    {"task": "a", "id": "a-0/0", "text": "walk twice", "correct": [0.0, 1.0, 1.0], "cost_usd": [1.0, 2.0, 4.0]},
    {"task": "a", "id": "a-1/0", "text": "jump", "correct": [1.0, 1.0, 1.0], "cost_usd": [1.0, 2.0, 4.0]},
    {"task": "b", "id": "b-0/0", "text": "mother of ann", "correct": [0.0, 0.0, 0.0], "cost_usd": [2.0, 4.0, 8.0]},
    {"task": "b", "id": "b-1/1", "text": "father of bob", "correct": [1.0, 0.0, 1.0], "cost_usd": [2.0, 4.0, 8.0]},
]
COST_REF = {"a": 8.0, "b": 16.0}
LAM = 0.5


def test_rewards_are_correct_minus_lam_times_normalised_cost():
    r = rewards(ROWS, LAM, COST_REF)
    assert r.shape == (4, 3) and r.dtype == np.float32
    np.testing.assert_allclose(r[0], [0 - 0.5 * 1 / 8, 1 - 0.5 * 2 / 8, 1 - 0.5 * 4 / 8])
    np.testing.assert_allclose(r[2], [-0.5 * 2 / 16, -0.5 * 4 / 16, -0.5 * 8 / 16])


def test_oracle_is_the_cheapest_correct_tier_else_the_cheapest():
    assert oracle_tiers(ROWS) == [1, 0, 0, 0]
    s = score(ROWS, oracle_tiers(ROWS), LAM, COST_REF)
    assert s["accuracy"] == 0.75 and s["cost_per_step"] == (2 + 1 + 2 + 2) / 4 and s["tiers"] == [3, 1, 0]
    r = rewards(ROWS, LAM, COST_REF)
    assert s["reward"] == pytest.approx((r[0, 1] + r[1, 0] + r[2, 0] + r[3, 0]) / 4)
    top = score(ROWS, [2] * 4, LAM, COST_REF)
    assert top["accuracy"] == 0.75 and top["reward"] < s["reward"] and top["tiers"] == [0, 0, 4]


def test_env_replays_the_table_in_one_step_episodes():
    bow = BagOfWords(["walk", "twice", "jump", "mother", "father", "of", "ann", "bob"])
    x, r = bow([row["text"] for row in ROWS]).numpy(), rewards(ROWS, LAM, COST_REF)
    env = SubtaskBandit({"features": x, "rewards": r})
    assert env.observation_space.shape == (8,) and env.action_space.n == 3
    check_env(env, skip_render_check=True)
    seen = set()
    obs, info = env.reset(seed=0)
    for _ in range(60):
        row = info["row"]
        np.testing.assert_array_equal(obs, x[row])
        action = int(env.action_space.sample())
        _, reward, terminated, truncated, _ = env.step(action)
        assert terminated and not truncated and reward == pytest.approx(r[row, action])
        seen.add(row)
        obs, info = env.reset()
    assert seen == {0, 1, 2, 3}  # every row is drawn
    with pytest.raises(ValueError, match="rows"):
        SubtaskBandit({"features": x, "rewards": r[:2]})


def test_features_and_allocator():
    class Scan:  # a task with a vocabulary, and one without (its train steps' words are used)
        def vocab(self):
            return ["walk", "twice", "jump"]

    class Free:
        def vocab(self):
            return []

    bow = features_for({"a": Scan(), "b": Free()}, ROWS)
    assert list(bow.index) == ["walk", "twice", "jump", "mother", "of", "ann", "father", "bob"]
    np.testing.assert_array_equal(bow(["jump twice unknown"]).numpy(), [[0, 1, 1, 0, 0, 0, 0, 0]])
    x = bow([row["text"] for row in ROWS])
    clf = fit_logreg(x, torch.tensor(oracle_tiers(ROWS)), 3, seed=0)
    router = FeatureAllocator("clf", bow, clf)
    assert router.tiers([row["text"] for row in ROWS]) == oracle_tiers(ROWS)  # it fits its four labels
    assert [a.tier for a in router.allocate(["walk twice"], [None], 3)] == [1]
    assert [a.tier for a in router.allocate(["walk twice"], [None], 1)] == [0]  # clipped to the pool
    with pytest.raises(ValueError, match="at least one word"):
        BagOfWords([])
