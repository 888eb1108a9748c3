"""Train the tiny model zoo: a ladder of small Llama LMs trained on the tiny world's single steps
(fact hops, SCAN clauses) and a share of whole queries, with equal training tokens for every rung.

    python -m pipelines.zoo --config configs/tiny.yaml

Writes one HF folder per model under `<run_dir>/zoo/` and `card.json` with each model's size,
training time, tokens and test accuracy per bucket. Models whose config is unchanged are reused.
"""
from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import random
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import Config, ZooModelConfig, config_from_args, config_parser

CARD = "card.json"
META = "zoo_meta.json"
KINDS = ("facts_hop", "facts_chain", "scan_clause", "scan_command")
ANSWER_TOKENS = {"facts": 4, "scan:clause": 26, "scan:command": 50}


@dataclass
class World:
    facts: FactsTask  # noqa: F821
    scan: ScanTask  # noqa: F821

    @property
    def tasks(self) -> dict:
        """The tiny world's tasks by name."""
        return {"facts": self.facts, "scan": self.scan}

    def words(self) -> list[str]:
        """The shared vocabulary: both tasks' words plus the router's (so router policies can start
        from a zoo checkpoint)."""
        from benchmarks.tasks import scan
        from policies.tiny_lm import MODEL_SLOTS, ROUTER_WORDS

        return [*self.facts.world.vocab(), *scan.vocab(), *ROUTER_WORDS, *MODEL_SLOTS]


def build_world(cfg: Config) -> World:
    from benchmarks.tasks.facts import FactsTask
    from benchmarks.tasks.scan import ScanTask

    return World(FactsTask(cfg.tasks.facts, cfg.seed), ScanTask(cfg.tasks.scan, cfg.seed))


def training_pairs(world: World) -> dict[str, tuple[list[tuple[str, str]], list[float] | None]]:
    """(question, answer) pairs of each training kind, with sampling weights (None = uniform)."""
    from benchmarks.tasks import scan

    f = world.facts
    hops = [(f"{fact.relation} of {fact.subject}", fact.obj) for fact in f.world.facts]
    return {
        "facts_hop": (hops, f.world.fact_weights),
        "facts_chain": ([(e.query, e.answer) for e in f.load("train")], None),
        "scan_clause": ([(c, scan.interpret(c)) for c in scan.all_clauses()], None),
        "scan_command": ([(e.query, e.answer) for e in world.scan.load("train")], None),
    }


def eval_sets(world: World) -> dict[str, list[tuple[str, str]]]:
    """Test questions per card bucket."""
    hops = world.facts.hop_examples()
    sets = {f"facts:{b}": [(e.query, e.answer) for e in hops[b]] for b in ("popular", "mid", "rare")}
    sets["facts:2hop-oneshot"] = [(e.query, e.answer) for e in world.facts.load("test")]
    sets["scan:clause"] = [(e.query, e.answer) for e in world.scan.clause_examples()]
    sets["scan:command"] = [(e.query, e.answer) for e in world.scan.load("test")]
    return sets


class TokenStream:
    """Deterministic batches of token ids: each step draws one kind (by the mix) and `batch_size`
    pairs of it; the loss covers only the answer and [EOS]."""

    def __init__(self, cfg: Config, tokenizer, pairs):
        self.cfg, self.tok = cfg, tokenizer
        mix = cfg.zoo.mix.model_dump()
        self.kinds = [k for k in KINDS if mix[k] > 0 and pairs[k][0]]
        self.mix = [mix[k] for k in self.kinds]
        self.encoded = {}
        for k in self.kinds:
            qa, weights = pairs[k]
            enc = [(tokenizer.encode(q + " ="), tokenizer.encode(a, add_special_tokens=False)
                    + [tokenizer.eos_token_id]) for q, a in qa]
            self.encoded[k] = (enc, weights)
        mean_len = sum(
            share * sum(len(p) + len(a) for p, a in self.encoded[k][0]) / len(self.encoded[k][0])
            for k, share in zip(self.kinds, self.mix)
        ) / sum(self.mix)
        self.steps = max(1, math.ceil(cfg.zoo.train_tokens / (cfg.zoo.batch_size * mean_len)))

    def batches(self):
        import torch

        rng = random.Random(self.cfg.seed)
        pad = self.tok.pad_token_id
        for _ in range(self.steps):
            kind = rng.choices(self.kinds, weights=self.mix)[0]
            enc, weights = self.encoded[kind]
            rows = rng.choices(enc, weights=weights, k=self.cfg.zoo.batch_size)
            width = max(len(p) + len(a) for p, a in rows)
            ids = torch.full((len(rows), width), pad, dtype=torch.long)
            labels = torch.full_like(ids, -100)
            for i, (p, a) in enumerate(rows):
                ids[i, : len(p) + len(a)] = torch.tensor(p + a)
                labels[i, len(p): len(p) + len(a)] = torch.tensor(a)
            yield ids, labels, int((labels != -100).sum()) + sum(len(p) for p, _ in rows)


def model_key(cfg: Config, m: ZooModelConfig) -> str:
    """Everything that changes a trained model; a match means the checkpoint is reused."""
    from policies.tiny_lm import MODEL_SLOTS, ROUTER_WORDS

    blob = json.dumps({
        "model": m.model_dump(exclude={"price"}), "seed": cfg.seed, "tasks": cfg.tasks.model_dump(),
        "zoo": cfg.zoo.model_dump(exclude={"models", "workers", "eval_batch_size", "dir"}),
        "router_vocab": [*ROUTER_WORDS, *MODEL_SLOTS],  # the rest of the vocabulary follows from tasks + seed
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def accuracy(path: Path, sets: dict[str, list[tuple[str, str]]], batch_size: int) -> dict[str, float]:
    """Exact-match accuracy of greedy answers, through the same `hf` backend the pool serves with."""
    from actors.backends import SamplingParams, make_backend
    from benchmarks.tasks.base import exact_match
    from policies.tiny_lm import format_prompt

    backend = make_backend("hf", path.name, {"path": str(path)})
    acc = {}
    for name, qa in sets.items():
        params = SamplingParams(max_new_tokens=ANSWER_TOKENS[name if name.startswith("scan") else "facts"])
        hits = 0
        for i in range(0, len(qa), batch_size):
            chunk = qa[i: i + batch_size]
            outs = backend.generate([format_prompt(q) for q, _ in chunk], params)
            hits += sum(exact_match(o.text, a) for o, (_, a) in zip(outs, chunk))
        acc[name] = hits / len(qa)
    return acc


def train_one(cfg: Config, m: ZooModelConfig, events) -> dict:
    """Train, save and evaluate one zoo model (runs in its own process, one thread)."""
    import torch

    from policies.tiny_lm import build_model, build_tokenizer, count_params, save

    torch.set_num_threads(1)
    world = build_world(cfg)
    tok = build_tokenizer(world.words())
    stream = TokenStream(cfg, tok, training_pairs(world))
    model = build_model(tok, m.hidden, m.layers, m.heads, m.intermediate, seed=cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=m.lr, weight_decay=cfg.zoo.weight_decay, betas=(0.9, 0.98))
    warm = max(1, int(cfg.zoo.warmup_frac * stream.steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / stream.steps))))
    events.put(("start", m.name, stream.steps))
    start, tokens = time.perf_counter(), 0
    model.train()
    for step, (ids, labels, n_tok) in enumerate(stream.batches(), 1):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += n_tok
        if step % 20 == 0 or step == stream.steps:
            events.put(("step", m.name, step, loss.item()))
    train_seconds = time.perf_counter() - start
    path = cfg.zoo_dir / m.name
    model.eval()
    save(model, tok, path)
    events.put(("eval", m.name))
    entry = {
        "name": m.name, "params": count_params(model), "train_seconds": round(train_seconds, 1),
        "tokens": tokens, "steps": stream.steps, "lr": m.lr,
        "accuracy": accuracy(path, eval_sets(world), cfg.zoo.eval_batch_size),
    }
    (path / META).write_text(json.dumps({"key": model_key(cfg, m), "entry": entry}, indent=2))
    return entry


def _worker(cfg_json: str, name: str, events) -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    cfg = Config.model_validate_json(cfg_json)
    m = next(x for x in cfg.zoo.models if x.name == name)
    try:
        events.put(("done", name, train_one(cfg, m, events)))
    except BaseException as err:  # report, never hang the parent
        events.put(("error", name, f"{type(err).__name__}: {err}"))


def cached_entry(cfg: Config, m: ZooModelConfig) -> dict | None:
    meta = cfg.zoo_dir / m.name / META
    if not meta.exists():
        return None
    data = json.loads(meta.read_text())
    return data["entry"] if data.get("key") == model_key(cfg, m) else None


def run_zoo(cfg: Config, out=None) -> dict:
    """Train what is missing (largest first, `zoo.workers` at a time), then write and return the card."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
                    running[m.name] = ctx.Process(target=_worker, args=(cfg_json, m.name, events), daemon=True)
                    running[m.name].start()
                kind, name, *rest = events.get()
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


def card_table(card: dict):
    from rich.table import Table

    from actors.cost import rate_for
    from pipelines.config import PriceConfig

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


def console():
    """A rich console that stays readable (wide tables, no live redraw) in logs and CI."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=200)


def main(argv: list[str] | None = None) -> dict:
    cfg = config_from_args(config_parser(__doc__).parse_args(argv))
    out = console()
    card = run_zoo(cfg, out)
    out.print(card_table(card))
    out.print(f"card: {cfg.zoo_dir / CARD}")
    return card


if __name__ == "__main__":
    main()
