"""`peer_trl_ratio`: the same GRPO problem trained by our pipeline and by TRL's `GRPOTrainer` (PyPI `trl`,
CPU); wall seconds per optimiser step, ours over TRL's (target <= 1.0 at an equal or better reward), and
`peer_trl_ratio_pipelined`: the same with our trainer's `train.pipelined` (each step's rollouts overlap the
previous update; TRL's trainer is synchronous).

The problem is one-step allocation, the RLlib baseline's environment: each train subtask alone
(`pipelines.subtask_table.subtasks`), the allocator (the run's SFT allocator, an HF Llama folder) picks a
pool model, the subtask runs on it through the chain without review (real calls to the pool), and the
reward is R2's: correct - lam * cost / cost_ref + beta * format. Both sides get the same prompts per step
(`batch` subtasks, G samples each), the same steps, learning rate, temperature, clip, KL coefficient,
weight decay and gradient clipping, and start from the same weights.

Ours: `pipelines.allocator_grpo.AllocatorGRPO` (rollout workers sample the allocator's tier and call the
pool; the DeepSpeed learner steps; the workers load the published weights). TRL's: `GRPOTrainer` in this
process, generating the model id's tokens, its reward function parsing them and calling the same pool.
A step's seconds run from its sampling to its optimiser step (set-up apart); the reported seconds per
step are the median over the steps. The reward after the run is the same test for both trained
allocators (`HeldOutRewards`): on held-out (test split) subtasks, each run once on every pool model, the
expected reward of sampling the allocator's tier softmax at the training temperature, and the reward of its
greedy pool model.
`DIFFERENCES` (with the run's numbers filled in) says exactly what differs between the two setups."""
from __future__ import annotations

import shutil
import statistics
import time

from benchmarks.perf.common import PerfContext, router_dirs, shared_pool, summary
from benchmarks.tasks import Example, build_world
from core.config import Config
from pipelines.allocator_grpo import (
    AllocatorGRPO,
    HeldOutRewards,
    one_step_problems,
    planned_rewards,
)
from pipelines.runs import cost_ref
from policies.policy_lm import PolicyLM
from policies.reward import reward
from policies.router import ActionSpace

# our rollout workers: one, as TRL's one process; on 2 cores a second worker adds CPU per trajectory (more,
# smaller pool calls and policy forwards) and lowers throughput (the suite's `rollout_2w_speedup`)
WORKERS = 1
QUICK = {"steps": 2, "batch": 2, "eval": 8}
FULL = {"steps": 24, "batch": 16, "eval": 480}

DIFFERENCES = [
    "action: ours samples a pool model from the softmax over the pool models' candidate continuations (it can "
    "only name a pool model); TRL generates {max_tokens} token(s) (model.generate, top_k 0, top_p 1) with every "
    "token no candidate uses suppressed ({suppressed} of {vocab}: unrestricted, the SFT allocator's next token "
    "is almost never a model id, since SFT fits the softmax over the candidates only), and its reward function "
    "parses the model id; a completion naming no pool model would score 0 (no pool call, no format bonus): "
    "{trl_invalid:.1%} of TRL's completions did",
    "format term: ours adds beta={beta} to every sample (the gold one-step decomposition is well formed); TRL adds "
    "it when the completion names a pool model",
    "log-probabilities (ratio and KL): ours over the tier softmax (each candidate's log-probability, "
    "renormalised over the {tiers} tiers, at the temperature), the distribution it samples from; TRL per token "
    "over the whole vocabulary at the temperature (its sampling restriction is not in its loss); both use the "
    "k3 KL estimator against the frozen start, coefficient {kl}",
    "advantages: ours (r - mean) / (population std + 1e-4) per group; TRL (r - mean) / (sample std, Bessel-"
    "corrected, + 1e-4) per group (scale_rewards='group')",
    "groups without reward spread: ours leaves them out of the batch and takes no optimiser step when no group "
    "has spread ({ours_skipped} of {steps} steps skipped); TRL keeps them (advantage 0: they still add the KL term "
    "and count in the token mean) and always steps",
    "loss: both token-mean of -(min(rho A, clip(rho, 1 +- {clip}) A) - beta KL) over the step's completions "
    "(TRL loss_type 'dapo'); one token per completion for both here",
    "old log-probabilities: ours the sampler's (rollout workers' copy, ratio exp(learner - sampler)); TRL the "
    "learner's own, detached (num_iterations 1: ratio exactly 1)",
    "optimiser: both torch AdamW (betas 0.9/0.999, eps 1e-8, weight decay {wd}), lr {lr} constant, gradient "
    "clipping 1.0, fp32; ours inside a DeepSpeed engine (ZeRO stage {zero}, 1 rank), TRL inside the HF Trainer "
    "(optim adamw_torch, no warm-up, gradient checkpointing off, bf16 off)",
    "processes: ours {workers} rollout worker(s) (Ray actors, 1 torch thread each) sample and call the pool, a "
    "learner actor steps, and the new weights go through the object store to the workers every step; TRL does "
    "all in this driver process ({threads} torch threads), with no weight sync",
    "sampling cost: ours scores the {tiers} candidates in one forward per distinct prompt (no generation); TRL runs "
    "model.generate per completion and a reference-model forward at generation (ours computes the reference's "
    "log-probabilities in the learner's step)",
    "pool calls: the same chain (policies.reason.areason_batch, no review) on the same pool; ours from the rollout "
    "workers, one batched chain run per worker and task; TRL's reward function, one batched run per task",
    "reward after training: both trained allocators scored the same way on {n_eval} held-out test subtasks, each "
    "run once on every pool model: the expected reward of sampling the tier softmax at the training temperature "
    "(what both trainers raise; exact over the tiers, TRL's sampling restricted to the candidates is the same "
    "softmax) and, beside it, the reward of the greedy pool model (TRL's is not scored on its free generation)",
]


def trl_reward_fn(cfg: Config, pool, model_ids: list[str], tasks: dict, problems: list[tuple[str, Example]],
                  candidates: list[list[int]], cost_ref_: dict[str, float], counts: dict):
    """TRL's reward function: each completion's model id parsed from its tokens, its subtask run on that
    pool model (the same chain as ours), R2's reward; a completion naming no pool model scores 0."""

    def parse(ids: list[int]) -> int | None:
        return next((k for k, c in enumerate(candidates) if list(ids[: len(c)]) == c), None)

    def reward_fn(prompts, completions, completion_ids, pid, **_):
        tiers = [parse(ids) for ids in completion_ids]
        counts["completions"] += len(tiers)
        counts["invalid"] += sum(t is None for t in tiers)
        valid = [(i, (problems[p], t)) for i, (p, t) in enumerate(zip(pid, tiers)) if t is not None]
        scores = planned_rewards(cfg, pool, model_ids, tasks, [c for _, c in valid], cost_ref_) if valid else []
        out = [reward(0.0, 0.0, False, cfg.reward.lam, cfg.reward.beta, 1.0)] * len(tiers)
        for (i, _), s in zip(valid, scores):
            out[i] = s
        return out

    return reward_fn


def run_trl(cfg: Config, pool, model_ids: list[str], tasks: dict, allocator_dir: str, problems: list,
            sizes: dict, cost_ref_: dict[str, float], out_dir: str) -> dict:
    """TRL's GRPOTrainer on the problems: per-step seconds and rewards, set-up seconds, the trained model."""
    start = time.perf_counter()  # set-up includes importing TRL (seconds)
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    tok = AutoTokenizer.from_pretrained(allocator_dir)
    model = AutoModelForCausalLM.from_pretrained(allocator_dir, dtype=torch.float32)
    actions = ActionSpace(cfg.router.templates, model_ids)
    candidates = actions.templates.candidates(model_ids, tok)
    allowed = {t for c in candidates for t in c}
    suppressed = [t for t in range(len(tok)) if t not in allowed]
    data = Dataset.from_dict({
        "prompt": [actions.templates.allocate_prompt(ex.query, model_ids, tok) for _, ex in problems],
        "pid": list(range(len(problems)))})
    g, train = cfg.train.group_size, cfg.train
    args = GRPOConfig(
        output_dir=out_dir, max_steps=sizes["steps"], per_device_train_batch_size=sizes["batch"] * g,
        num_generations=g, max_completion_length=max(len(c) for c in candidates), temperature=train.temperature,
        top_k=0, top_p=1.0, learning_rate=train.grpo_lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=train.weight_decay, max_grad_norm=1.0, optim="adamw_torch", beta=train.kl_coef,
        epsilon=train.clip, loss_type="dapo", scale_rewards="group", num_iterations=1, shuffle_dataset=False,
        use_cpu=True, bf16=False, gradient_checkpointing=False, seed=train.seed, report_to="none",
        save_strategy="no", logging_steps=1, disable_tqdm=True, generation_kwargs={"suppress_tokens": suppressed})
    counts = {"completions": 0, "invalid": 0}
    step_s: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            self.t = time.perf_counter()

        def on_step_end(self, *_, **__):
            step_s.append(time.perf_counter() - self.t)

    trainer = GRPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[StepTimer()],
                          reward_funcs=trl_reward_fn(cfg, pool, model_ids, tasks, problems, candidates, cost_ref_,
                                                     counts))
    trainer.remove_callback(PrinterCallback)
    setup_s = time.perf_counter() - start
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {"step_s": step_s, "rewards": rewards, "setup_s": setup_s, "counts": counts,
            "lm": PolicyLM(trainer.model.eval(), tok), "threads": torch.get_num_threads(), "vocab": len(tok),
            "suppressed": len(suppressed)}


def run_ours(cfg: Config, pool, model_ids: list[str], allocator_dir: str, problems: list, sizes: dict,
             cost_ref_: dict[str, float], pipelined: bool = False) -> dict:
    """Our `AllocatorGRPO` on the problems (`pipelined`: each step's update overlaps the next step's
    rollouts, `train.pipelined`): per-step seconds (from one step's end to the next's), history, set-up."""
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"pipelined": pipelined,
                                                                       "rollout_workers": WORKERS})})
    start = time.perf_counter()
    grpo = AllocatorGRPO(cfg, pool, model_ids, allocator_dir, cost_ref_)
    try:
        setup_s = time.perf_counter() - start
        batches = [problems[k * sizes["batch"]: (k + 1) * sizes["batch"]] for k in range(sizes["steps"])]
        step_s, history, t = [], [], time.perf_counter()
        for stats in grpo.train(batches):
            history.append(stats)
            step_s.append(time.perf_counter() - t)
            t = time.perf_counter()
        return {"step_s": step_s, "history": history, "setup_s": setup_s, "lm": grpo.allocator(allocator_dir)}
    finally:
        grpo.close()


def measure(ctx: PerfContext) -> dict:
    from actors.runtime import pool_session

    cfg, sizes = ctx.cfg, QUICK if ctx.quick else FULL
    sft = router_dirs(cfg)[0]["allocator"]  # the SFT allocator, else the one training starts from
    # both sides start from this copy, whatever a concurrent run writes to its SFT router meanwhile
    allocator_dir = str(ctx.out / "peer_trl" / "allocator")
    shutil.rmtree(allocator_dir, ignore_errors=True)
    shutil.copytree(sft, allocator_dir)
    ctx.release_workers()  # this module's trainer starts workers of its own
    with pool_session(cfg, shared_pool(ctx)[0]) as (pool, model_ids):
        tasks = build_world(cfg).tasks
        ref = cost_ref(cfg, pool, model_ids, tasks)
        problems = one_step_problems(tasks, "train", sizes["steps"] * sizes["batch"], cfg.seed)
        held_out = HeldOutRewards(cfg, pool, model_ids, tasks, one_step_problems(tasks, "test", sizes["eval"], cfg.seed),
                                  ref)  # also warms the pool up
        before = held_out.score(PolicyLM.from_pretrained(allocator_dir, device="cpu"))
        ctx.console.print(f"peer_trl: {sizes['steps']} steps of {sizes['batch']} subtasks x G={cfg.train.group_size}; "
                          f"held-out reward before training {before['expected']:.4f} (greedy {before['greedy']:.4f})")
        ours = run_ours(cfg, pool, model_ids, allocator_dir, problems, sizes, ref)
        ours_reward = held_out.score(ours["lm"])
        piped = run_ours(cfg, pool, model_ids, allocator_dir, problems, sizes, ref, pipelined=True)
        piped_reward = held_out.score(piped["lm"])
        trl = run_trl(cfg, pool, model_ids, tasks, allocator_dir, problems, sizes, ref, str(ctx.out / "peer_trl"))
        trl_reward = held_out.score(trl["lm"])
    ours_s, trl_s = statistics.median(ours["step_s"]), statistics.median(trl["step_s"])
    piped_s = statistics.median(piped["step_s"])
    train = cfg.train
    facts = {"max_tokens": max(len(c) for c in ActionSpace(cfg.router.templates, model_ids).templates.candidates(
                 model_ids, trl["lm"].tokenizer)),
             "vocab": trl["vocab"], "suppressed": trl["suppressed"], "trl_invalid": trl["counts"]["invalid"] / max(1, trl["counts"]["completions"]),
             "beta": cfg.reward.beta, "tiers": len(model_ids), "kl": train.kl_coef,
             "ours_skipped": sum("skipped" in h for h in ours["history"]), "steps": sizes["steps"],
             "clip": train.clip, "wd": train.weight_decay, "lr": train.grpo_lr, "zero": train.zero_stage,
             "workers": WORKERS, "threads": trl["threads"], "n_eval": len(held_out.problems)}
    return {
        "peer_trl_ratio": ours_s / trl_s,
        # the same, our trainer with train.pipelined (one step off-policy; TRL's trainer is synchronous)
        "peer_trl_ratio_pipelined": piped_s / trl_s,
        "peer_trl": {
            "pipelined_s_per_step": piped_s, "pipelined_reward": piped_reward["expected"],
            "pipelined_train_reward": [h["reward"] for h in piped["history"]],
            "ours_s_per_step": ours_s, "trl_s_per_step": trl_s,
            # held-out reward: expected under each allocator's tier sampling; greedy: of its argmax tier
            "ours_reward": ours_reward["expected"], "trl_reward": trl_reward["expected"],
            "reward_before": before["expected"],
            "greedy_reward": {"before": before["greedy"], "ours": ours_reward["greedy"],
                              "pipelined": piped_reward["greedy"], "trl": trl_reward["greedy"]},
            "steps": sizes["steps"], "G": train.group_size, "batch": sizes["batch"], "n_eval": facts["n_eval"],
            "ours_step_s": summary(ours["step_s"]), "trl_step_s": summary(trl["step_s"]),
            "ours_setup_s": ours["setup_s"], "trl_setup_s": trl["setup_s"],
            "ours_train_reward": [h["reward"] for h in ours["history"]], "trl_train_reward": trl["rewards"],
            "ours_tiers": [h["tiers"] for h in ours["history"]],
            "differences": [d.format(**facts) for d in DIFFERENCES],
        },
    }
