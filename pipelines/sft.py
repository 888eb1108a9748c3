"""Supervised fine-tuning of the router's decomposer and allocator on the constructed labels.

    python -m pipelines.sft --config configs/tiny.yaml

Both policies start from a zoo checkpoint or fresh weights of a zoo shape (`train.init`,
`train.init_<policy>`, `scratch:<model>`) and train in the `Learner`'s DeepSpeed engines, the learning
rate warming up for `train.sft_warmup_steps` and then decaying to 0 on a cosine (copying a query's words
exactly needs that final low-rate phase). The decomposer's folder records the longest prompt it trained
on, beyond which it extrapolates (`train.length_extrapolation`, `policies.positions`). Runs the label
search first when `<run_dir>/labels/labels.jsonl` is missing. Writes `<run_dir>/router/sft/`.
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

from rich.progress import Progress
from transformers import AutoTokenizer

from actors.learner import LearnerGroup
from actors.runtime import pool_session
from core.config import Config, config_from_args, config_parser
from core.console import console as make_console
from pipelines.labels import read_labels, write_labels
from pipelines.runs import init_dirs, labels_path, router_dir, save_router_meta, synced
from policies import positions
from policies.router import TEMPLATES


def sft_data(rows: list[dict], tokenizer, templates: str) -> dict[str, list[tuple[str, list[int]]]]:
    tpl = TEMPLATES.lookup(templates)()
    calls = [c for r in rows for c in tpl.decomposition_calls(r["query"], r["steps"], tokenizer) or []]
    dec = [(p, tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id]) for p, t in calls]
    alloc = [(tpl.allocate_prompt(text, [], tokenizer), [tier])
             for r in rows if r.get("tiers") for text, tier in zip(r["rendered"], r["tiers"])]
    return {"decomposer": dec, "allocator": alloc}


def longest_prompt(items: list[tuple[str, list[int]]], tokenizer) -> int:
    """Tokens of the longest prompt, as the policy reads it."""
    return max(len(tokenizer(p).input_ids) for p, _ in items)


def epochs(cfg: Config, name: str) -> int:
    return cfg.train.sft_epochs_decomposer if name == "decomposer" else cfg.train.sft_epochs


def total_steps(cfg: Config, data: dict[str, list]) -> dict[str, int]:
    """Optimizer steps per policy (the length of its learning-rate schedule)."""
    return {name: epochs(cfg, name) * -(-len(items) // cfg.train.sft_batch) for name, items in data.items()}


def run_sft(cfg: Config, learner, data: dict[str, list], console, progress=None, order_seed: int | None = None) -> dict:
    """Each policy's epochs over its examples, shuffled each epoch (by `order_seed`, default the run's
    seed); returns the per-epoch loss and accuracy of each."""
    rng = random.Random(cfg.seed if order_seed is None else order_seed)
    history: dict[str, list] = {}
    steps = total_steps(cfg, data)
    for name, items in data.items():
        if not items:  # e.g. no allocation label found: the policy stays as it starts
            console.print(f"sft {name}: no labels, left as initialised")
            continue
        bar = progress.add_task(f"sft {name}", total=steps[name]) if progress else None
        for epoch in range(epochs(cfg, name)):
            rng.shuffle(items)
            stats = []
            for i in range(0, len(items), cfg.train.sft_batch):
                chunk = items[i: i + cfg.train.sft_batch]
                stats.append(learner.sft_step(name, [p for p, _ in chunk], [t for _, t in chunk]))
                if progress:
                    progress.advance(bar)
            history.setdefault(name, []).append({
                "epoch": epoch, "loss": sum(s["loss"] for s in stats) / len(stats),
                "acc": sum(s["acc"] for s in stats) / len(stats)})
        console.print(f"sft {name}: {len(items)} examples, last epoch {history[name][-1]}")
    return history


def fit(cfg: Config, init: dict[str, str], model_ids: list[str], data: dict[str, list], tokenizer, out: Path,
        console, progress=None, order_seed: int | None = None) -> dict:
    """SFT of the policies in `data` (each from its `init` checkpoint) in a learner group, saved to `out`; the
    decomposer's folder records its longest prompt, beyond which it extrapolates (`policies.positions`).
    Returns the per-epoch history (`run_sft`)."""
    learner = LearnerGroup(cfg, init, model_ids, cfg.train.sft_lr, total_steps(cfg, data))
    try:
        history = run_sft(cfg, learner, data, console, progress, order_seed)
        learner.save_pretrained(str(out))
    finally:
        learner.kill()
    if data.get("decomposer"):
        positions.mark(out / "decomposer", longest_prompt(data["decomposer"], tokenizer), cfg.train.length_extrapolation)
    return history


def run_sft_stage(cfg: Config, console, pool=None) -> Path:
    """Labels (searched when `<run_dir>/labels/labels.jsonl` is missing), then SFT of both policies;
    returns the SFT router folder. `pool`: a running pool of the config's models to use (else one is
    started for the stage)."""
    with pool_session(cfg, pool) as (pool, model_ids), Progress(console=console) as progress:
        start = time.perf_counter()
        if not labels_path(cfg).exists():
            write_labels(cfg, pool, model_ids, console, progress)
        rows = read_labels(cfg)
        t_labels = time.perf_counter() - start
        init = {policy: str(path) for policy, path in init_dirs(cfg).items()}
        # the policies share one vocabulary (every zoo model has the tiny world's)
        tokenizer = AutoTokenizer.from_pretrained(init["decomposer"])
        data = sft_data(rows, tokenizer, cfg.router.templates)
        out = router_dir(cfg, "sft")
        history = fit(cfg, init, model_ids, data, tokenizer, out, console, progress)
        save_router_meta(cfg, out, model_ids, "sft")
    (out / "sft_history.json").write_text(json.dumps(
        {"history": history, "labels": len(rows), "label_seconds": round(t_labels, 1),
         "seconds": round(time.perf_counter() - start, 1), "init": init}, indent=2))
    console.print(f"sft router: {out} ({time.perf_counter() - start:.0f}s)")
    return out


def main(argv: list[str] | None = None) -> Path:
    cfg = config_from_args(config_parser(__doc__).parse_args(argv))
    with synced(cfg):
        return run_sft_stage(cfg, make_console())


if __name__ == "__main__":
    main()
