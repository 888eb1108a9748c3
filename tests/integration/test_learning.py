"""GRPO learns: the allocator phase alone, against the real pool's answers.

Every single-fact question of the test world is asked once of every pool model (through the Ray
`ModelPool`, at its real prices): that table is the environment. Training samples allocations with the
real sampler (`PolicyRouter`, temperature 1), turns rewards (correct - lam * cost / cost_ref) into group
advantages and updates the SFT allocator in the real DeepSpeed `Learner`, publishing weights back to the
sampler every step. Two arms of three seeds each: GRPO, and the same runs at learning rate 0 (one learner
per arm, reset to its SFT-start checkpoint before each run: weights, optimizer, RNG). The greedy test
reward is measured on 200 questions training never samples, paired by question: GRPO must beat lr 0 on
every seed, and its gain averaged over the seeds must stand above the noise of the 200 questions (the
lower end of its paired 95% interval over the questions above 0)."""
import random

import pytest
import torch

pytestmark = pytest.mark.integration

STEPS, QUERIES, G, SEEDS, N_TEST = 20, 32, 4, (0, 1, 2), 200


@pytest.fixture(scope="module")
def bandit(sft_config, zoo_pool):
    """(hop questions, correctness [n, tiers], cost [n, tiers], model ids, train idx, test idx)."""
    import ray

    from benchmarks.tasks import build_world
    from core.prompts import format_prompt
    from core.types import SamplingParams

    facts = build_world(sft_config).tasks["facts"]
    hops = [facts.world.hop_example(f) for f in facts.world.facts]
    ids = ray.get(zoo_pool.model_ids.remote())
    params = SamplingParams(max_new_tokens=facts.step_max_tokens)
    outs = ray.get([zoo_pool.generate.remote(m, [format_prompt(h.query) for h in hops], params) for m in ids])
    correct = torch.tensor([[facts.score(o[i].text, h) for o in outs] for i, h in enumerate(hops)])
    cost = torch.tensor([[o[i].cost_usd for o in outs] for i in range(len(hops))])
    order = list(range(len(hops)))
    random.Random(0).shuffle(order)
    return hops, correct, cost, ids, order[N_TEST:], order[:N_TEST]


def rewards(correct, cost, rows, tiers, lam):
    cost_ref = cost[:, -1].mean()
    return correct[rows, tiers] - lam * cost[rows, tiers] / cost_ref


def run_arm(cfg, bandit, learner, start: str, seed: int) -> torch.Tensor:
    """Train the allocator for STEPS GRPO steps from the learner's checkpoint `start`; the greedy reward
    of each test question afterwards."""
    import ray

    from core.types import TrainItem
    from pipelines.runs import router_dir
    from policies.grpo import group_advantages
    from policies.load import trained_router

    hops, correct, cost, ids, train, test = bandit
    ray.get(learner.load_checkpoint.remote(start))
    sampler = trained_router(cfg, router_dir(cfg, "sft"), ids, "policy", temperature=cfg.train.temperature)
    sampler.generator.manual_seed(seed)
    rng = random.Random(seed)
    lam = cfg.reward.lam
    for _ in range(STEPS):
        rows = [r for r in rng.sample(train, QUERIES) for _ in range(G)]
        decisions = sampler.allocate([hops[r].query for r in rows], [hops[r] for r in rows], len(ids))
        tiers = torch.tensor([d.tier for d in decisions])
        adv = group_advantages(rewards(correct, cost, rows, tiers, lam).view(-1, G)).view(-1)
        items = [TrainItem("allocator", d.prompt, tier=d.tier, old_logprobs=[d.logprob], advantage=float(a))
                 for d, a in zip(decisions, adv) if abs(a) > 1e-6]
        if items:
            ray.get(learner.grpo_step.remote("allocator", items))
            state, _ = learner.publish.options(num_returns=2).remote("allocator")
            sampler.allocator.model.load_state_dict(ray.get(state))
    sampler.temperature = 0.0  # greedy, as deployed
    decisions = sampler.allocate([hops[r].query for r in test], [hops[r] for r in test], len(ids))
    return rewards(correct, cost, test, torch.tensor([d.tier for d in decisions]), lam)


def run_seeds(cfg, bandit, lr: float, tmp_path) -> torch.Tensor:
    """The greedy test rewards [seed, question] of each seed's run, all on one learner at `lr` reset
    between runs."""
    import ray

    from actors.learner import Learner
    from pipelines.runs import router_dir

    sft, ids = router_dir(cfg, "sft"), bandit[3]
    learner = Learner.remote(cfg.model_dump_json(), {p: str(sft / p) for p in ("decomposer", "allocator")}, ids, lr)
    start = str(tmp_path / f"start-lr{lr}")
    try:
        ray.get(learner.save_checkpoint.remote(start))
        return torch.stack([run_arm(cfg, bandit, learner, start, seed) for seed in SEEDS])
    finally:
        ray.kill(learner)


def paired_gain(grpo: torch.Tensor, base: torch.Tensor) -> tuple[list[float], float, float]:
    """Each seed's mean gain, and the seed-averaged gain with the lower end of its 95% interval over the
    questions (normal approximation of the paired differences' mean; the questions are the sample)."""
    diff = grpo - base  # [seed, question]: the same questions in every run
    per_question = diff.mean(0)
    gain = float(per_question.mean())
    return diff.mean(1).tolist(), gain, gain - 1.96 * float(per_question.std()) / len(per_question) ** 0.5


def test_the_gain_must_stand_above_the_question_noise():
    """The bar on made-up rewards: no gain fails it; a gain on every seed that 200 questions swinging by
    +-1 cannot tell from noise (interval half-width 0.14) fails it; a clear one passes."""
    base = torch.zeros(len(SEEDS), N_TEST)
    swing = torch.tensor([1.0, -1.0]).repeat(N_TEST // 2).expand(len(SEEDS), -1)
    assert paired_gain(base, base) == ([0.0] * len(SEEDS), 0.0, 0.0)
    seeds, _, lo = paired_gain(base + swing + 0.05, base)
    assert min(seeds) > 0 > lo
    seeds, _, lo = paired_gain(base + swing + 0.2, base)
    assert min(seeds) > 0 and lo > 0


def test_grpo_beats_the_same_runs_at_learning_rate_zero(sft_config, bandit, tmp_path):
    cfg = sft_config.model_copy(update={"train": sft_config.train.model_copy(update={"temperature": 1.0})})
    arms = {lr: run_seeds(cfg, bandit, lr, tmp_path) for lr in (cfg.train.grpo_lr, 0.0)}
    seeds, gain, lo = paired_gain(arms[cfg.train.grpo_lr], arms[0.0])
    print(f"greedy test reward: GRPO {arms[cfg.train.grpo_lr].mean(1).tolist()}, lr 0 {arms[0.0].mean(1).tolist()}; "
          f"gain per seed {seeds}, mean {gain:.4f}, 95% lower end {lo:.4f}")
    assert min(seeds) > 0 and lo > 0, (seeds, gain, lo)
