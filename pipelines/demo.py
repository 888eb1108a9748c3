"""The main job on the embedded tiny world, end to end:

1. the tiny model zoo (trained, or reused when cached) and its card;
2. SFT labels by search on the real pool, then SFT of the decomposer and allocator (`r2-sft`);
3. alternating GRPO of both policies on Ray with a DeepSpeed learner (`r2`);
4. evaluation of R2 and every baseline over the Ray pool: results.json, pareto.png and the table.

    python -m pipelines.demo --config configs/tiny.yaml [--limit N]

Each stage's outputs live under `run_dir`; the zoo is reused when its config is unchanged.
"""
from __future__ import annotations

import json
import time

from rich.progress import Progress

from actors.runtime import pool_session
from benchmarks.report import markdown_table, shape_table
from core.config import Config, config_from_args, config_parser
from core.console import console as make_console
from core.storage import delete_staged
from pipelines.evaluate import evaluate
from pipelines.runs import COST_REF, labels_path, router_dir, synced
from pipelines.sft import run_sft_stage
from pipelines.train import Trainer
from pipelines.zoo import CARD, card_table, run_zoo


def main(argv: list[str] | None = None) -> dict:
    parser = config_parser(__doc__)
    parser.add_argument("--limit", type=int, help="test queries per task (default: eval.limit)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    with synced(cfg):
        return run_demo(cfg, args.limit, make_console())


def run_demo(cfg: Config, limit: int | None, console) -> dict:
    run_dir = cfg.run_path
    timings: dict[str, float] = {}

    def stage(name: str, title: str):
        console.rule(title)
        timings[name] = time.perf_counter()

    def done(name: str):
        timings[name] = time.perf_counter() - timings[name]

    stage("zoo", "1. tiny model zoo")
    card = run_zoo(cfg, console)
    console.print(card_table(card))
    console.print(f"card: {cfg.zoo_dir / CARD}")
    done("zoo")

    with pool_session(cfg) as (pool, _):  # one pool for labels, SFT, every GRPO seed and the evaluation
        stage("labels+sft", "2. SFT labels on the pool, then SFT of decomposer and allocator")
        for stale in (labels_path(cfg).parent, run_dir / "router", run_dir / "train", run_dir / COST_REF):
            delete_staged(stale)  # each run of the main job trains afresh
        sft_dir = run_sft_stage(cfg, console, pool)
        done("labels+sft")

        stage("grpo", "3. alternating GRPO (Ray rollout workers, DeepSpeed learner)")
        routers = {"r2-sft": str(sft_dir)}
        for seed in cfg.train.demo_seeds:
            seeded = cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": seed})})
            trainer = Trainer(seeded, console, pool=pool)
            with Progress(console=console) as progress:
                trainer.fit(progress=progress)
            trainer.close()
            routers["r2" + seeded.train.suffix] = str(router_dir(cfg, "grpo" + seeded.train.suffix))
        done("grpo")

        stage("evaluate", "4. evaluation: R2 (after SFT and after GRPO) and every baseline")
        out = run_dir / "eval"
        results = evaluate(cfg, cfg.eval.methods, limit or cfg.eval.limit, out, console, routers, pool)
        done("evaluate")
    console.print(markdown_table(results), markup=False)
    if results.get("generalisation"):
        console.print(shape_table(results["generalisation"]), markup=False)
    console.print(f"results: {out / 'results.json'}  plot: {out / 'pareto.png'}  "
                  f"learning curves: {run_dir / 'train' / 'learning_curves.png'}")
    ref = results["reference"]
    for name in routers:
        m = results["methods"][name]
        knob = m.get("knob") or {}
        at = f" at {knob['name']}={knob['chosen']:g} (chosen on validation)" if knob.get("chosen") is not None else ""
        line = (f"{name}{at} vs {ref}: accuracy {-m['accuracy_loss_vs_reference'] * 100:+.1f} pt, "
                f"pool cost {-m['cost_cut_vs_reference']:+.1%} "
                f"(with the router's own cost {-m['cost_cut_vs_reference_with_router']:+.1%})")
        own = m.get("own_decomposition_reference")
        if own:
            line += (f"; vs {own['method']} (its own decomposition): accuracy {-own['accuracy_loss'] * 100:+.1f} pt, "
                     f"pool cost {-own['cost_cut']:+.1%} (with router {-own['cost_cut_with_router']:+.1%})")
        console.print(line)
    for line in seed_lines(results):
        console.print(line)
    console.print("wall time: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    (run_dir / WALL).write_text(json.dumps(phase_seconds(timings, sft_dir), indent=2))
    return results


WALL = "demo_wall.json"  # the last run's seconds per phase (benchmarks.perf reports them)


def phase_seconds(timings: dict[str, float], sft_dir) -> dict[str, float]:
    """Seconds per phase, the label search apart from SFT (the SFT stage records its share)."""
    labels = json.loads((sft_dir / "sft_history.json").read_text())["label_seconds"]
    out = {"zoo": timings["zoo"], "labels": labels, "sft": timings["labels+sft"] - labels,
           "grpo": timings["grpo"], "evaluate": timings["evaluate"]}
    return {**{k: round(v, 1) for k, v in out.items()}, "total": round(sum(out.values()), 1)}


def seed_lines(results: dict) -> list[str]:
    """The GRPO seeds of the headline router against the reference, each at its validation-chosen setting:
    mean ± sample standard deviation over the seeds, and GRPO's reward against SFT's."""
    seeds = results.get("headline", {}).get("seeds")
    if not seeds or len(seeds["routers"]) < 2:
        return []
    mean, sd, n = seeds["mean"], seeds["sd"], len(seeds["routers"])
    rewards = {m: results["methods"][m]["reward"] for m in seeds["routers"]}
    lines = [f"{n} seeds ({', '.join(seeds['routers'])}) vs {results['reference']}: "
             f"accuracy {mean['accuracy_diff'] * 100:+.1f} ± {sd['accuracy_diff'] * 100:.1f} pt, "
             f"pool cost {-mean['cost_cut']:+.1%} ± {sd['cost_cut']:.1%}, "
             f"with the router's own cost {-mean['cost_cut_with_router']:+.1%} ± {sd['cost_cut_with_router']:.1%}"]
    if "r2-sft" in results["methods"]:
        lines.append(f"GRPO vs SFT: reward {', '.join(f'{m} {r:.4f}' for m, r in rewards.items())} "
                     f"vs r2-sft {results['methods']['r2-sft']['reward']:.4f}; "
                     f"seed spread {max(rewards.values()) - min(rewards.values()):.4f}")
        lines += curve_lines(results, seeds["routers"], "r2-sft")
    return lines


def curve_lines(results: dict, routers: list[str], base: str) -> list[str]:
    """Each router against `base` at every value of their shared knob (test split): accuracy in points and
    pool cost in percent, from the methods' `curve`s."""
    methods = results["methods"]
    values = methods[base].get("knob", {}).get("candidates") or []
    if not values:
        return []
    out = []
    for name in routers:
        deltas = [f"{methods[name]['knob']['name']} {v:g}: accuracy {(acc - b_acc) * 100:+.1f} pt, "
                  f"pool cost {cost / b_cost - 1:+.1%}"
                  for v, (cost, acc), (b_cost, b_acc) in zip(values, methods[name]["curve"], methods[base]["curve"])]
        out.append(f"{name} vs {base} per setting: " + "; ".join(deltas))
    return out


if __name__ == "__main__":
    main()
