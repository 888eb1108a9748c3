"""Train the tiny model zoo (`actors.zoo`): a ladder of small Llama LMs trained on the world's single
steps and a share of whole queries, with equal training tokens for every rung.

    python -m pipelines.zoo --config configs/tiny.yaml

Writes one HF folder per model under `<run_dir>/zoo/` and `card.json` with each model's size,
training time, tokens and test accuracy per bucket. Models whose config is unchanged are reused.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import queue

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from actors.cost import rate_for
from actors.zoo import CARD, cached_entry, train_worker
from core.config import Config, PriceConfig, config_from_args, config_parser
from core.console import console
from pipelines.runs import synced


def run_zoo(cfg: Config, out=None) -> dict:
    """Train what is missing (largest first, `zoo.workers` at a time), then write and return the card."""
    out = out or console()
    cfg.zoo_dir.mkdir(parents=True, exist_ok=True)
    entries = {m.name: cached_entry(cfg, m) for m in cfg.zoo.models}
    todo = [m for m in cfg.zoo.models if entries[m.name] is None]
    for name, e in entries.items():
        if e is not None:
            out.print(f"[dim]zoo: reusing {name} ({e['params']:,} params)[/dim]")
    todo.sort(key=lambda m: -(m.hidden ** 2 * m.layers))
    if todo:
        ctx = mp.get_context("spawn")
        events = ctx.Queue()
        cfg_json = cfg.model_dump_json()
        pending, running, errors = list(todo), {}, []
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn()]
        with Progress(*columns, console=out) as progress:
            bars = {m.name: progress.add_task(f"zoo {m.name}", total=None, status="queued") for m in todo}
            while pending or running:
                while pending and len(running) < cfg.zoo.workers:
                    m = pending.pop(0)
                    running[m.name] = ctx.Process(target=train_worker, args=(cfg_json, m.name, events), daemon=True)
                    running[m.name].start()
                kind, name, *rest = next_event(events, running)
                if kind == "start":
                    progress.update(bars[name], total=rest[0], status="training")
                elif kind == "step":
                    progress.update(bars[name], completed=rest[0], status=f"loss {rest[1]:.3f}")
                elif kind == "eval":
                    progress.update(bars[name], status="evaluating")
                else:
                    running.pop(name).join()
                    if kind == "error":
                        errors.append(f"{name}: {rest[0]}")
                        progress.update(bars[name], status="[red]failed")
                    else:
                        entries[name] = rest[0]
                        progress.update(bars[name], status="done")
        if errors:
            raise RuntimeError("zoo training failed: " + "; ".join(errors))
    card = {"models": [{**entries[m.name], "price": m.price.model_dump(exclude_none=True)}
                       for m in cfg.zoo.models]}
    (cfg.zoo_dir / CARD).write_text(json.dumps(card, indent=2))
    return card


def next_event(events, running: dict) -> tuple:
    """The next event of the training processes in `running` (name -> process); one that ended without
    reporting (killed, or out of memory) becomes an error event instead of a wait without end."""
    while True:
        try:
            return events.get(timeout=1.0)
        except queue.Empty:
            dead = [name for name, proc in running.items() if proc.exitcode is not None]
            if dead:
                try:
                    return events.get(timeout=1.0)  # what it sent just before it ended
                except queue.Empty:
                    return ("error", dead[0], f"its process ended (exit code {running[dead[0]].exitcode}) "
                                              "without a result")


def card_table(card: dict):
    buckets = list(card["models"][0]["accuracy"])
    tokens = {m["tokens"] for m in card["models"]}
    table = Table(title=f"tiny model zoo: exact-match test accuracy ({'/'.join(f'{t:,}' for t in tokens)} "
                        "training tokens each; prices of the paper rung, $/1M tokens in/out)")
    for col in ["model", "params", "train s", "paper rung", "$ in/out", *buckets]:
        table.add_column(col, justify="left" if col in ("model", "paper rung") else "right")
    for m in card["models"]:
        price = PriceConfig(**m["price"])
        rate = rate_for(price)
        table.add_row(m["name"], f"{m['params']:,}", f"{m['train_seconds']:.0f}", price.paper_model or "-",
                      f"{rate.input_per_m:g}/{rate.output_per_m:g}", *(f"{m['accuracy'][b]:.3f}" for b in buckets))
    return table


def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_args(config_parser(__doc__).parse_args(argv))
    out = console()
    with synced(cfg):
        card = run_zoo(cfg, out)
    out.print(card_table(card))
    out.print(f"card: {cfg.zoo_dir / CARD}")
    return card


if __name__ == "__main__":
    main()
