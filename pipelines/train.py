"""The main training job: alternating GRPO of the router's decomposer and allocator on Ray.

    python -m pipelines.train --config configs/tiny.yaml [--resume]

A single controller (this driver) creates the pool, N `RolloutWorker`s and one `Learner`
(a DeepSpeed engine per policy), then loops: broadcast weights -> rollouts (G samples per query) ->
rewards and group advantages -> learner step on the phase's policy -> metrics -> checkpoint.
Phases alternate every `train.alternate_every` steps (decomposer first, the allocator frozen; then the
allocator, the decomposer frozen). Starts from the SFT router (`pipelines.sft`); writes
`<run_dir>/router/grpo/`, `<run_dir>/train/history.jsonl` and `learning_curves.png`.
"""
from __future__ import annotations

import json
import math
import random
import shutil
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from rich.progress import Progress

from actors.learner import POLICIES, LearnerGroup
from actors.plan import check_on_cluster, plan_groups
from actors.rollout import RolloutWorker
from actors.runtime import pool_session
from actors.weight_sync import CollectiveSync, ObjectStoreSync, WeightRef, check_loaded, make_sync
from benchmarks.tasks import TASKS, build_world
from core.checkpoints import CheckpointError, latest_valid, prune, step_dir, write_manifest
from core.config import Config, config_from_args, config_parser
from core.console import console as make_console
from core.storage import delete_staged, push_staged
from pipelines.runs import cost_ref, router_dir, save_router_meta, synced
from policies.grpo import training_items
from policies.reward import reward


def phase_of(step: int, every: int) -> str:
    return POLICIES[(step // every) % 2]


@dataclass
class Batch:
    """Rollouts launched for one step (and sampling round): the calls in flight and the published weights
    they carry."""
    step: int
    phase: str
    jobs: list[tuple[str, list]]
    workers: list[int]
    refs: list
    published: dict[str, WeightRef]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def plot_curves(history: list[dict], path: Path, window: int = 10) -> None:
    import matplotlib  # lazy: only plotting needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("reward", "reward"), ("accuracy", "accuracy"), ("cost_per_query", "cost / query (USD)"),
            ("kl", "KL to reference"), ("sampler_gap", "|learner - sampler| logprob"), ("format_ok", "format ok")]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    steps = [h["step"] for h in history]
    for ax, (k, label) in zip(axes.flat, keys):
        for phase, color in (("decomposer", "tab:blue"), ("allocator", "tab:orange")):
            xs = [s for s, h in zip(steps, history) if h["phase"] == phase]
            ys = [h.get(k, float("nan")) for h in history if h["phase"] == phase]
            ax.plot(xs, ys, ".", color=color, label=phase, alpha=0.8)
        ys = [h.get(k, float("nan")) for h in history]
        smooth = [_mean([y for y in ys[max(0, i - window + 1): i + 1] if not math.isnan(y)]) for i in range(len(ys))]
        ax.plot(steps, smooth, "-", color="black", alpha=0.7, lw=1.2, label=f"mean of last {window}")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("GRPO on the tiny world (blue: decomposer phase, orange: allocator phase)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


class Trainer:
    def __init__(self, cfg: Config, console, resume: bool = False, pool=None):
        """`pool`: a running pool of the config's models to use (left running on `close`); by default the
        trainer starts its own."""
        self.cfg, self.console = cfg, console
        self.out = cfg.run_path / f"train{cfg.train.suffix}"
        self.ckpt_root = self.out / "checkpoints"
        self.history_path = self.out / "history.jsonl"
        sft = router_dir(cfg, "sft")
        if not (sft / "allocator").exists():
            raise SystemExit(f"no SFT router at {sft}: run `python -m pipelines.sft --config ...` first")
        self._session = ExitStack()
        self.pool, self.model_ids = self._session.enter_context(pool_session(cfg, pool))
        self.tasks = build_world(cfg).tasks
        self.train_sets = {n: t.split("train") for n, t in self.tasks.items()}  # without the validation queries
        dirs = {p: str(sft / p) for p in POLICIES}
        cfg_json = cfg.model_dump_json()
        lr = {"decomposer": cfg.train.grpo_lr_decomposer or cfg.train.grpo_lr, "allocator": cfg.train.grpo_lr}
        self.learner = LearnerGroup(cfg, dirs, self.model_ids, lr)
        self.workers = [RolloutWorker.options(**cfg.train.rollout.options()).remote(
                            cfg_json, dirs, self.pool, self.model_ids, 1000 * cfg.train.seed + i)
                        for i in range(cfg.train.rollout_workers)]
        self.sync = make_sync(cfg.train.weight_sync, self.learner.rank0, self.workers, POLICIES,
                              cfg.train.sync_timeout_s, cfg.train.sync_backend)
        self.instances: list[str | None] = [None] * len(self.workers)  # each worker's incarnation
        self.state: dict = {"step": 0}
        if resume:
            self._resume()
        else:  # a fresh run starts afresh
            delete_staged(self.history_path)
            delete_staged(self.ckpt_root)
        self.published = {name: self._publish(name) for name in POLICIES}
        self.stale = set(POLICIES)  # policies the workers do not hold yet (all at start, e.g. after resume)
        self._inflight: Batch | None = None  # the next step's rollouts (train.pipelined)
        if "cost_ref" not in self.state:
            self.state["cost_ref"] = cost_ref(cfg, self.pool, self.model_ids, self.tasks)
        self.run = self._wandb()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "placement.json").write_text(json.dumps(self.placement(), indent=2))

    def placement(self) -> dict:
        """Where every actor group runs (node ids, GPU ids, device), as the actors themselves report it."""
        return {"driver": ray.get_runtime_context().get_node_id(), "learner": self.learner.placement(),
                "rollout_workers": ray.get([w.placement.remote() for w in self.workers]),
                "pool": ray.get(self.pool.placement.remote())}

    def _resume(self) -> None:
        """Continue from the newest complete checkpoint (partial ones are passed over, and said so); the
        history keeps exactly the steps before it."""
        ckpt, skipped = latest_valid(self.ckpt_root)
        for path, why in skipped:
            self.console.print(f"[yellow]checkpoint {path.name} is incomplete ({why}); not resuming from it")
        if ckpt is None:
            self.console.print(f"no complete checkpoint in {self.ckpt_root}: starting from step 0")
            self.history_path.unlink(missing_ok=True)
            return
        meta = self.learner.load_checkpoint(str(ckpt))
        self.state = meta["state"]
        kept = [line for line in read_lines(self.history_path) if json.loads(line)["step"] < self.state["step"]]
        self.history_path.write_text("".join(line + "\n" for line in kept))
        self.console.print(f"resumed from {ckpt} at step {self.state['step']}")

    def _publish(self, name: str) -> WeightRef:
        state, meta = self.learner.publish(name)
        return WeightRef(meta["version"], state, meta["checksum"])

    def _wandb(self):
        if self.cfg.wandb.mode == "disabled":
            return None
        import wandb  # lazy: optional and heavy, only when W&B is on

        self.state.setdefault("wandb_id", uuid.uuid4().hex[:8])
        return wandb.init(project=self.cfg.wandb.project, mode=self.cfg.wandb.mode, dir=str(self.cfg.run_path),
                          id=self.state["wandb_id"], resume="allow", job_type="train",
                          config=self.cfg.model_dump())

    def queries(self, step: int, round: int = 0, exclude: set | None = None) -> list[tuple[str, list]]:
        """The step's queries, split across tasks and workers (deterministic in seed and step); round r > 0
        of dynamic sampling: further ones (deterministic in seed, step and round), none of `exclude`
        ((task, example id) pairs)."""
        rng = random.Random(self.cfg.train.seed * 1_000_003 + step if round == 0
                            else f"{self.cfg.train.seed}/{step}/{round}")
        per_task = self.cfg.train.queries_per_step // len(self.tasks)
        jobs = []
        for name, train in self.train_sets.items():
            pool = [ex for ex in train if (name, ex.id) not in exclude] if exclude else train
            chosen = rng.sample(pool, min(per_task, len(pool)))
            n = len(self.workers)
            jobs += [(name, chosen[i::n]) for i in range(n) if chosen[i::n]]
        return jobs

    def _launch(self, jobs: list[tuple[str, list]], phase: str, step: int, published: dict[str, WeightRef] | None = None,
                key: int | None = None) -> Batch:
        """Start the jobs' rollouts with `published` (default: the current weights); `key` seeds the
        samplers (default: the step)."""
        g = self.cfg.train.group_size
        published = dict(self.published if published is None else published)
        workers = [i % len(self.workers) for i in range(len(jobs))]
        refs = [self.workers[w].rollout.remote(name, exs, g, phase, step if key is None else key, published)
                for w, (name, exs) in zip(workers, jobs)]
        return Batch(step, phase, jobs, workers, refs, published)

    def _collect(self, batch: Batch) -> tuple[list, int]:
        """Every job's trajectories (a job Ray re-ran on a restarted worker included) and how many
        workers had to load stale weights first. A restarted worker leaves the collective weight group,
        so weights then travel through the object store for the rest of the run."""
        g = self.cfg.train.group_size
        results = ray.get(batch.refs)
        reloads = 0
        for w, (_, exs), res in zip(batch.workers, batch.jobs, results):
            if len(res.trajectories) != len(exs) * g:
                raise RuntimeError(f"rollout worker {w}: {len(res.trajectories)} trajectories for {len(exs)} queries")
            check_loaded(batch.published, res.weights, f"rollout worker {w}")
            restarted = self.instances[w] not in (None, res.instance)
            self.instances[w] = res.instance
            reloads += bool(res.reloaded)
            if restarted:
                self.console.print(f"[yellow]rollout worker {w} was restarted; it loaded {res.reloaded or 'nothing'}")
                if isinstance(self.sync, CollectiveSync):
                    self.console.print("[yellow]weights now travel through the object store")
                    self.sync = ObjectStoreSync(self.learner.rank0, self.workers, POLICIES, self.cfg.train.sync_timeout_s)
        return [t for res in results for t in res.trajectories], reloads

    def _push(self) -> float:
        """Send the policies the workers do not hold yet (learner -> rollout workers); the seconds it took."""
        t_sync = self.sync.push(self.published, sorted(self.stale))
        self.stale = set()
        return t_sync

    def _rewards(self, trajs: list) -> list[float]:
        r = self.cfg.reward
        return [reward(t.correct, t.cost_usd, t.format_ok, r.lam, r.beta, r.cost_ref or self.state["cost_ref"][t.task])
                for t in trajs]

    def _top_up(self, batch: Batch, trajs: list, rewards: list[float]) -> tuple[list, list, list[int], int, int]:
        """Dynamic sampling: further rounds of fresh queries, sampled with the batch's weights, until as
        many groups with reward spread as the first round has groups, or `max_rounds` rounds. Returns every
        trajectory, their rewards, the indices of the groups kept (those with spread, up to a batch), the
        rounds run and how many workers had to load weights."""
        g, ds = self.cfg.train.group_size, self.cfg.train.dynamic_sampling
        want = len(trajs) // g
        used = {(name, ex.id) for name, exs in batch.jobs for ex in exs}
        kept = [i for i in range(want) if has_spread(rewards[i * g:(i + 1) * g])]
        rounds, reloads = 1, 0
        while len(kept) < want and rounds < ds.max_rounds:
            jobs = self.queries(batch.step, rounds, used)
            if not jobs:  # the train set is used up
                break
            used |= {(name, ex.id) for name, exs in jobs for ex in exs}
            more, n = self._collect(self._launch(jobs, batch.phase, batch.step, batch.published,
                                                 key=batch.step + rounds * ROUND_KEY))
            first = len(trajs) // g
            trajs, rewards, reloads = trajs + more, rewards + self._rewards(more), reloads + n
            kept += [i for i in range(first, len(trajs) // g) if has_spread(rewards[i * g:(i + 1) * g])]
            rounds += 1
        return trajs, rewards, kept[:want], rounds, reloads

    def step(self, overlap_next: bool = False) -> dict:
        """One GRPO step. `overlap_next` (train.pipelined): launch the next step's rollouts, with the
        weights published so far, before this step's update, and leave them in flight for the next call."""
        cfg, step = self.cfg, self.state["step"]
        phase = phase_of(step, cfg.train.alternate_every)
        batch, self._inflight = self._inflight, None
        if batch is None:
            t_sync = self._push()
            start = time.perf_counter()
            batch = self._launch(self.queries(step), phase, step)
        else:  # launched by the previous step; its weight sync counted there
            if batch.step != step:
                raise RuntimeError(f"rollouts of step {batch.step} in flight at step {step}")
            t_sync, start = 0.0, time.perf_counter()
        trajs, reloads = self._collect(batch)
        rewards = self._rewards(trajs)
        g, sampling = cfg.train.group_size, {}
        kept = list(range(len(trajs) // g))  # the groups trained on
        if cfg.train.dynamic_sampling.enabled:
            trajs, rewards, kept, rounds, more = self._top_up(batch, trajs, rewards)
            reloads += more
            sampling = {"sampling_rounds": rounds, "groups_sampled": len(trajs) // g, "groups_kept": len(kept)}
        t_rollout = time.perf_counter() - start
        pick = [j for i in kept for j in range(i * g, (i + 1) * g)]
        items = training_items([trajs[j] for j in pick], [rewards[j] for j in pick], g, phase)
        if overlap_next:
            t_sync += self._push()
            self._inflight = self._launch(self.queries(step + 1), phase_of(step + 1, cfg.train.alternate_every),
                                          step + 1)
        versions = {name: ref.version for name, ref in self.published.items()}  # the learner's, before this update
        start = time.perf_counter()
        stats = self.learner.grpo_step(phase, items) if items else {"skipped": 1}
        if items:
            self.published[phase] = self._publish(phase)
            self.stale.add(phase)
        t_learner = time.perf_counter() - start
        groups = torch.tensor(rewards).view(-1, cfg.train.group_size)
        metrics = {
            "step": step, "phase": phase, "reward": sum(rewards) / len(rewards),
            "accuracy": sum(t.correct for t in trajs) / len(trajs),
            "cost_per_query": sum(t.cost_usd for t in trajs) / len(trajs),
            "format_ok": sum(t.format_ok for t in trajs) / len(trajs),
            "groups_with_signal": float((groups.std(-1) > 1e-6).float().mean()),
            "items": len(items), "trajectories": len(trajs), "worker_reloads": reloads,
            **{k: v for k, v in stats.items() if k != "version"}, **sampling,
            "time_sync_s": t_sync, "time_rollout_s": t_rollout, "time_learner_s": t_learner,
        }
        if cfg.train.pipelined:  # which weights sampled this step's trajectories, which the learner held
            metrics["sampled_versions"] = {name: ref.version for name, ref in batch.published.items()}
            metrics["learner_versions"] = versions
        self.state["step"] = step + 1
        return metrics

    def close(self) -> None:
        self._inflight = None
        for actor in self.workers:
            ray.kill(actor)
        self.learner.kill()
        self._session.close()
        if self.run:
            self.run.finish()

    def checkpoint(self) -> Path:
        """The learner's state and the driver's (its own step included) in a new step folder, valid once
        its manifest is written; older ones beyond `train.keep_checkpoints` go, once it is. A folder that
        cannot be written (disk full, a file in its place, ...) is a `CheckpointError` naming it and the
        newest complete checkpoint, which stays as it was."""
        if self._inflight is not None:  # its rollouts used older weights than the checkpoint holds
            raise RuntimeError(f"checkpoint at step {self.state['step']} with that step's rollouts in flight")
        ckpt = step_dir(self.ckpt_root, self.state["step"])
        try:
            if ckpt.is_dir():
                delete_staged(ckpt)  # a partial one from a killed run
            ckpt.mkdir(parents=True)
            files = self.learner.save_checkpoint(str(ckpt), self.state)  # each rank uploads its own files
            push_staged(self.history_path)  # the steps this checkpoint follows, before it counts as complete
            push_staged(write_manifest(ckpt, {"step": self.state["step"]}, files))  # the manifest last
        except (OSError, ray.exceptions.RayTaskError) as err:
            cause = getattr(err, "cause", None) or err  # a learner's error comes wrapped by Ray
            why = f"{type(cause).__name__}: {(str(cause).splitlines() or [''])[0]}"
            if self.ckpt_root.is_dir():  # a full disk shows as such, whatever the writer's own error says
                why += f"; {shutil.disk_usage(self.ckpt_root).free / 2**20:.1f} MiB free there"
            newest = latest_valid(self.ckpt_root)[0]
            then = f"{newest.name}, unchanged (--resume continues from it)" if newest else "none"
            raise CheckpointError(f"cannot write checkpoint {ckpt} ({why}); the newest complete one is {then}") from err
        for old in prune(self.ckpt_root, self.cfg.train.keep_checkpoints):
            delete_staged(old)
        return ckpt

    def _checkpoint_due(self, step: int, total: int) -> bool:
        """Whether `fit` checkpoints once `step` steps are done."""
        return step % self.cfg.train.checkpoint_every == 0 or step == total

    def fit(self, steps: int | None = None, progress=None) -> list[dict]:
        total = self.cfg.train.grpo_steps if steps is None else steps
        self.out.mkdir(parents=True, exist_ok=True)
        bar = progress.add_task("grpo", total=total, completed=self.state["step"]) if progress else None
        new = []
        with self.history_path.open("a") as log:
            while self.state["step"] < total:
                nxt = self.state["step"] + 1  # the pipeline drains before a checkpoint and at the end
                m = self.step(overlap_next=self.cfg.train.pipelined and nxt < total and not self._checkpoint_due(nxt, total))
                new.append(m)
                record_step(log, self.run, m)
                if progress:
                    progress.update(bar, advance=1, description=(
                        f"grpo {m['phase'][:5]} r={m['reward']:.3f} acc={m['accuracy']:.2f}"))
                if self._checkpoint_due(self.state["step"], total):
                    self.checkpoint()
        history = [json.loads(line) for line in read_lines(self.history_path)]
        if history:
            plot_curves(history, self.out / "learning_curves.png")
        out = router_dir(self.cfg, "grpo" + self.cfg.train.suffix)
        self.learner.save_pretrained(str(out))
        save_router_meta(self.cfg, out, self.model_ids, "grpo")
        return new


ROUND_KEY = 10_000_000  # dynamic sampling round r of step t seeds its samplers with t + r * ROUND_KEY


def has_spread(rewards: list[float]) -> bool:
    """Whether a group's rewards differ (the group carries a learning signal)."""
    return float(torch.tensor(rewards).std()) > 1e-6


def record_step(log, run, m: dict) -> None:
    """One step's metrics into the history file and W&B. A resumed W&B run already holds the steps up
    to its last one (equal to a replay's: the run is deterministic), which W&B would drop; they are
    not sent again, so each step is logged once."""
    log.write(json.dumps(m) + "\n")
    log.flush()
    if run is not None and m["step"] >= run.step:
        run.log({f"train/{k}": v for k, v in m.items() if isinstance(v, (int, float))}, step=m["step"])


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def benchmark_sources(cfg: Config) -> list[str]:
    """Where each enabled task's data comes from (or why it is missing), without loading it."""
    lines = []
    for name in cfg.tasks.enabled:
        try:
            task = TASKS.lookup(name).from_config(cfg)
        except (FileNotFoundError, ValueError) as err:
            lines.append(f"{name:<8} MISSING: {err}")
            continue
        source = getattr(task, "path", None) or getattr(task, "hf_dataset", None)
        lines.append(f"{name:<8} {source if source else 'generated in code'}")
    return lines


def dry_run(cfg: Config, console, cluster: str | None = None) -> int:
    """The plan (pool models, placement groups, benchmark sources); with `cluster`, whether it fits there."""
    try:
        groups, models = plan_groups(cfg)
    except ValueError as err:
        console.print(f"plan error: {err}", markup=False)
        return 2
    console.print(f"pool ({len(models)} models; memory model: {cfg.plan.gpu}, {cfg.plan.context_tokens} context "
                  f"tokens x {cfg.plan.concurrent_sequences} sequences per engine):", markup=False)
    for line in models:
        console.print("  " + line, markup=False)
    console.print("placement plan:", markup=False)
    for g in groups:
        console.print(f"  {g.name:<22} {len(g.bundles)} x {g.bundles[0]} {g.strategy} {g.note}", markup=False)
    console.print(f"  total: {sum(g.gpus for g in groups):g} GPUs, {sum(g.cpus for g in groups):g} CPUs", markup=False)
    console.print("benchmarks:", markup=False)
    for line in benchmark_sources(cfg):
        console.print("  " + line, markup=False)
    if cluster is None:
        return 0
    ray.init(address=cluster, log_to_driver=False)
    try:
        problem = check_on_cluster(groups)
    finally:
        ray.shutdown()
    console.print(problem or f"fits the cluster at {cluster}", markup=False)
    return 1 if problem else 0


def main(argv: list[str] | None = None) -> list[dict]:
    parser = config_parser(__doc__)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the config and print the placement plan; load nothing, contact nothing")
    parser.add_argument("--cluster", metavar="ADDRESS", help="with --dry-run: check the plan fits this Ray cluster")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    console = make_console()
    if args.dry_run:
        raise SystemExit(dry_run(cfg, console, args.cluster))
    start = time.perf_counter()
    with synced(cfg):
        trainer = Trainer(cfg, console, resume=args.resume)
        try:
            with Progress(console=console) as progress:
                history = trainer.fit(progress=progress)
        except CheckpointError as err:
            raise SystemExit(f"train: {err}") from None
        finally:
            trainer.close()
    if history:
        phases = {p: [h for h in history if h["phase"] == p] for p in POLICIES}
        for p, hs in phases.items():
            if hs:
                console.print(f"{p}: {len(hs)} steps, reward {hs[0]['reward']:.3f} -> {hs[-1]['reward']:.3f}, "
                              f"rollout {sum(h['time_rollout_s'] for h in hs):.0f}s, "
                              f"learner {sum(h['time_learner_s'] for h in hs):.0f}s, "
                              f"sync {sum(h['time_sync_s'] for h in hs):.0f}s")
    console.print(f"grpo router: {router_dir(cfg, 'grpo' + cfg.train.suffix)} "
                  f"({time.perf_counter() - start:.0f}s)")
    return history


if __name__ == "__main__":
    main()
