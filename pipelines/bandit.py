"""The `rllib-ppo` baseline: a classic-RL allocator trained by RLlib PPO on the subtask table
(`pipelines.subtask_table`), asking whether the LM allocator beats a small RL policy on the same signal.

    observation  the step's bag of words over the tasks' vocabulary (`Task.vocab()`; a task without one:
                 the words of its train steps), a fixed-length 0/1 vector
    action       the tier (Discrete(n_models), cheapest first)
    reward       correct - lam * cost / cost_ref[task]   (lam = reward.lam; cost_ref = reward.cost_ref or
                 `pipelines.runs.cost_ref`, the reference's mean cost per query on train: R2's own reward,
                 per step, so a query's steps add up to its cost term)

Episodes are one step long, so this is a contextual bandit. Bag of words, not the allocator LM's hidden
state: the tiny world's step texts are exactly their words (a relation and an entity, or a SCAN clause),
and the baseline then needs neither a trained allocator nor an LM forward pass per step.

`fit_subtask_allocator` (called by pipelines.evaluate when `rllib-ppo` is evaluated) collects the train and
test tables, trains PPO on the train table, and scores on the test table, beside it: the table's oracle
(per step, the cheapest model that solves it; the cheapest model when none does), a supervised logistic
regression on the same features trained on the oracle's tiers, and every step on the largest model.
"""
from __future__ import annotations

import random
import time

import gymnasium as gym
import numpy as np
import torch

from benchmarks.tasks.base import Task
from core.config import Config, RllibConfig
from pipelines.subtask_table import TRAIN_SAMPLE_SEED, load_or_collect
from policies.baselines import FeatureAllocator
from policies.features import BagOfWords, fit_logreg


class SubtaskBandit(gym.Env):
    """One-step episodes replaying a table: each episode draws a row, the action is a tier and the reward
    that tier's. `config`: `features` [rows, words] (0/1) and `rewards` [rows, tiers]."""

    def __init__(self, config: dict):
        self.features = np.asarray(config["features"], dtype=np.float32)
        self.rewards = np.asarray(config["rewards"], dtype=np.float32)
        if self.features.ndim != 2 or self.rewards.ndim != 2 or len(self.features) != len(self.rewards):
            raise ValueError(f"features {self.features.shape} and rewards {self.rewards.shape}: "
                             "want [rows, words] and [rows, tiers]")
        if not len(self.features):
            raise ValueError("an empty table")
        self.observation_space = gym.spaces.Box(0.0, 1.0, (self.features.shape[1],), np.float32)
        self.action_space = gym.spaces.Discrete(self.rewards.shape[1])
        self.row = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.row = int(self.np_random.integers(len(self.features)))
        return self.features[self.row], {"row": self.row}

    def step(self, action):
        reward = float(self.rewards[self.row, int(action)])
        return self.features[self.row], reward, True, False, {"row": self.row}


def rewards(rows: list[dict], lam: float, cost_ref: dict[str, float]) -> np.ndarray:
    """[rows, tiers]: correct - lam * cost / cost_ref of the row's task."""
    return np.array([[c - lam * usd / cost_ref[r["task"]] for c, usd in zip(r["correct"], r["cost_usd"])]
                     for r in rows], dtype=np.float32)


def oracle_tiers(rows: list[dict]) -> list[int]:
    """Per row, the cheapest tier that answers correctly (tier 0 when none does)."""
    return [next((k for k, c in enumerate(r["correct"]) if c >= 1), 0) for r in rows]


def score(rows: list[dict], tiers: list[int], lam: float, cost_ref: dict[str, float]) -> dict:
    """A tier per row, scored on the table: per step accuracy, cost and reward, and how often each tier."""
    n, r = len(rows), rewards(rows, lam, cost_ref)
    return {"accuracy": sum(row["correct"][t] for row, t in zip(rows, tiers)) / n,
            "cost_per_step": sum(row["cost_usd"][t] for row, t in zip(rows, tiers)) / n,
            "reward": float(np.mean([r[i, t] for i, t in enumerate(tiers)])),
            "tiers": np.bincount(tiers, minlength=r.shape[1]).tolist(), "n": n}


def actor_of(module) -> torch.nn.Sequential:
    """The policy part of RLlib's default PPO module (MLP encoder, then the pi head) as plain torch layers:
    features -> logits, with no RLlib at inference."""
    enc = module.encoder
    actor = enc.actor_encoder if hasattr(enc, "actor_encoder") else enc.encoder  # separate or shared vf layers
    return torch.nn.Sequential(*actor.net.mlp, *module.pi.net.mlp)


def _greedy_reward(policy: torch.nn.Module, x: torch.Tensor, r: np.ndarray) -> float:
    with torch.no_grad():
        tiers = policy(x).argmax(-1).numpy()
    return float(r[np.arange(len(r)), tiers].mean())


def train_ppo(x: torch.Tensor, r: np.ndarray, rl: RllibConfig, seed: int) -> tuple[torch.nn.Sequential, dict]:
    """RLlib PPO (new API stack) on the bandit, Ray already up; returns the exported actor and the run's
    numbers (per iteration: mean sampled episode return and the greedy policy's mean train reward)."""
    # RLlib is imported here: importing it takes seconds, and only this baseline needs it
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.columns import Columns
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    start = time.perf_counter()
    config = (
        PPOConfig()
        .environment(SubtaskBandit, env_config={"features": x.numpy(), "rewards": r})
        .env_runners(num_env_runners=rl.env_runners, num_envs_per_env_runner=rl.envs_per_runner,
                     num_cpus_per_env_runner=rl.cpus_per_env_runner, gym_env_vectorize_mode="sync")
        .training(train_batch_size_per_learner=rl.batch, minibatch_size=rl.minibatch, num_epochs=rl.epochs,
                  lr=rl.lr, entropy_coeff=rl.entropy_coeff)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=rl.hidden))
        .debugging(seed=seed)
    )
    algo = config.build_algo()
    built = time.perf_counter() - start
    curve, greedy, steps = [], [], 0
    try:
        for _ in range(rl.iterations):
            result = algo.train()
            curve.append(float(result["env_runners"]["episode_return_mean"]))
            steps = int(result["num_env_steps_sampled_lifetime"])
            greedy.append(_greedy_reward(actor_of(algo.get_module()), x, r))
        module = algo.get_module()
        actor = actor_of(module)
        with torch.no_grad():  # the export must compute RLlib's own action logits
            want = module.forward_inference({Columns.OBS: x})[Columns.ACTION_DIST_INPUTS]
            if not torch.allclose(actor(x), want, atol=1e-5):
                raise RuntimeError("the exported PPO actor disagrees with RLlib's forward_inference")
    finally:
        algo.stop()
    return actor, {"train_reward_curve": curve, "greedy_train_reward_curve": greedy, "steps": steps,
                   "iterations": rl.iterations, "build_s": round(built, 2),
                   "wall_s": round(time.perf_counter() - start, 2)}


def features_for(tasks: dict[str, Task], train_rows: list[dict]) -> BagOfWords:
    """The tasks' vocabularies, in order (a task without one: the words of its train steps)."""
    words = []
    for name, task in tasks.items():
        words += task.vocab() or [w for r in train_rows if r["task"] == name for w in r["text"].split()]
    return BagOfWords(words)


def fit_subtask_allocator(cfg: Config, pool, model_ids: list[str], tasks: dict[str, Task],
                          tests: dict, cost_ref: dict[str, float]) -> tuple[FeatureAllocator, dict]:
    """Tables, PPO, and the comparison on the test table; returns the `rllib-ppo` router and the report."""
    start = time.perf_counter()
    rl, lam = cfg.eval.rllib, cfg.reward.lam
    ref = {t: cfg.reward.cost_ref or cost_ref[t] for t in tasks}
    pools = {name: task.split("train") for name, task in tasks.items()}  # without the validation queries
    train = {name: random.Random(cfg.seed + TRAIN_SAMPLE_SEED).sample(exs, min(rl.train_queries, len(exs)))
             for name, exs in pools.items()}
    train_rows, train_stats = load_or_collect(cfg, pool, model_ids, tasks, train, "table", "train")
    test_rows, test_stats = load_or_collect(cfg, pool, model_ids, tasks, tests, "test_table", "test")
    bow = features_for(tasks, train_rows)
    x, r = bow([row["text"] for row in train_rows]), rewards(train_rows, lam, ref)

    actor, ppo = train_ppo(x, r, rl, cfg.seed)
    ppo_router = FeatureAllocator("rllib-ppo", bow, actor)
    clf_start = time.perf_counter()
    clf = fit_logreg(x, torch.tensor(oracle_tiers(train_rows)), len(model_ids), cfg.seed)
    clf_s = time.perf_counter() - clf_start
    test_texts = [row["text"] for row in test_rows]
    top = len(model_ids) - 1
    report = {
        "features": f"bag of words ({bow.dim} words)",
        "reward": {"lam": lam, "cost_ref": ref},
        "tables": {"train": train_stats, "test": test_stats},
        "oracle": score(test_rows, oracle_tiers(test_rows), lam, ref),
        "classifier": {**score(test_rows, FeatureAllocator("clf", bow, clf).tiers(test_texts), lam, ref),
                       "fit_s": round(clf_s, 2)},
        "ppo": {**score(test_rows, ppo_router.tiers(test_texts), lam, ref), **ppo},
        f"all:{model_ids[top]}": score(test_rows, [top] * len(test_rows), lam, ref),
        "train_oracle_reward": score(train_rows, oracle_tiers(train_rows), lam, ref)["reward"],
        "wall_s": round(time.perf_counter() - start, 2),  # tables, PPO, classifier and scoring
    }
    return ppo_router, report
