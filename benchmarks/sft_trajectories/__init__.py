"""How much the decomposer's generalisation depends on SFT's trajectory: the SFT stage's decomposer training,
as the demo runs it (the learner's DeepSpeed engine in a Ray actor, the same labels, initial weights and
schedule), repeated with the training examples shuffled by other seeds, then each result's exact-decomposition
rate on every query shape of the generalisation report, in range and held out.

    python -m benchmarks.sft_trajectories --config configs/tiny.yaml --seeds 0 1 2 3 4 5 [--jobs 2]

Needs the run's zoo and labels (`make demo`, or `r2r zoo` and `r2r labels`). Order seed 0 is the demo's own
order, so its row is the decomposer of `<run_dir>/router/sft` (`pipelines.sft.fit` trains both). Writes
`<run_dir>/sft_trajectories/results.json` (per seed: the SFT history and the rate per shape; per shape: min,
median, max) and prints the table, with the acceptance bars of the generalisation report (in range >= 0.95, held out >= 0.90, one hop >= 0.98).
"""
from __future__ import annotations

import json
import statistics
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from rich.table import Table
from transformers import AutoTokenizer

from actors.runtime import init_ray
from benchmarks.tasks.world import build_world
from core.config import config_from_args, config_parser
from core.console import console as make_console
from pipelines.generalisation import exact_rate
from pipelines.labels import read_labels
from pipelines.runs import init_dirs, labels_path
from pipelines.sft import fit, sft_data
from policies.policy_lm import PolicyLM
from policies.router import PolicyRouter

IN_RANGE, HELD_OUT, ONE_HOP = 0.95, 0.90, 0.98


def bar(shape: str, held_out: bool) -> float:
    return ONE_HOP if shape.endswith(":1hop") else HELD_OUT if held_out else IN_RANGE


def shape_rates(cfg, folder: Path, shapes: dict, model_ids: list[str]) -> dict[str, float]:
    """The decomposer in `folder`'s exact-decomposition rate per shape, greedy, as a router decodes (the
    router's allocator is never asked: it decomposes only)."""
    dec = PolicyLM.from_pretrained(folder)
    router = PolicyRouter(dec, dec, model_ids, templates=cfg.router.templates, max_steps=cfg.reason.max_steps,
                          max_tokens=cfg.reason.decompose_max_tokens, seed=cfg.seed)
    with torch.no_grad():
        return {key: exact_rate(router, examples, task) for key, (task, examples) in shapes.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = config_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5], help="order seeds (0: the demo's)")
    parser.add_argument("--jobs", type=int, default=2, help="trajectories trained at once")
    args = parser.parse_args(argv)
    cfg, console = config_from_args(args), make_console()
    if not labels_path(cfg).exists():
        raise SystemExit(f"no labels at {labels_path(cfg)}: run `r2r labels --config ...` (or `make demo`) first")
    init = str(init_dirs(cfg)["decomposer"])
    tokenizer = AutoTokenizer.from_pretrained(init)
    items = sft_data(read_labels(cfg), tokenizer, cfg.router.templates)["decomposer"]
    model_ids = [m.name for m in cfg.zoo.models]
    tasks = build_world(cfg).tasks
    shapes = {f"{tn}:{s}": (task, ex) for tn, task in tasks.items() for s, ex in task.shape_sets().items()}
    held = {key: task.held_out(key.split(":", 1)[1]) for key, (task, _) in shapes.items()}
    out_dir = cfg.run_path / "sft_trajectories"
    init_ray()

    def one(seed: int) -> dict:
        folder = out_dir / f"seed{seed}"
        history = fit(cfg, {"decomposer": init}, model_ids, {"decomposer": list(items)}, tokenizer, folder, console,
                      order_seed=seed)["decomposer"]
        rates = shape_rates(cfg, folder / "decomposer", shapes, model_ids)
        console.print(f"order seed {seed}: final loss {history[-1]['loss']:.5f}, "
                      f"{sum(r >= bar(k, held[k]) for k, r in rates.items())}/{len(rates)} shapes at their bar")
        return {"seed": seed, "history": history, "exact": rates}

    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(one, args.seeds))
    per_shape = {key: {"held_out": held[key], "n": len(shapes[key][1]), "bar": bar(key, held[key]),
                       "min": min(r["exact"][key] for r in runs), "max": max(r["exact"][key] for r in runs),
                       "median": statistics.median(r["exact"][key] for r in runs)} for key in shapes}
    passing = [r["seed"] for r in runs if all(r["exact"][k] >= per_shape[k]["bar"] for k in shapes)]
    results = {"seeds": args.seeds, "runs": runs, "shapes": per_shape, "seeds_at_every_bar": passing,
               "zero_stage": cfg.train.zero_stage}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))

    table = Table(title=f"decomposer exact per shape over {len(runs)} SFT trajectories (order seeds {args.seeds})")
    for col in ["shape", "held out", "bar", *[f"seed {r['seed']}" for r in runs], "min", "median"]:
        table.add_column(col)
    for key, s in per_shape.items():
        table.add_row(key, "yes" if s["held_out"] else "no", f"{s['bar']:.2f}",
                      *[f"{r['exact'][key]:.3f}" for r in runs], f"{s['min']:.3f}", f"{s['median']:.3f}")
    console.print(table)
    console.print(f"every shape at its bar: {len(passing)} of {len(runs)} trajectories (seeds {passing}); "
                  f"{out_dir / 'results.json'}")
    return results
