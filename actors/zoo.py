"""The pool's tiny models: a ladder of small Llama LMs trained on the world's single steps (fact hops,
SCAN clauses) and a share of whole queries, with equal training tokens for every rung. Their training
stream, trainer (one process per model), cache key and test accuracy through the `hf` backend; the
`zoo` entry point runs them."""
from __future__ import annotations

import hashlib
import json
import math
import random
import time
from pathlib import Path

import torch
import transformers

from actors.backends import make_backend
from benchmarks.tasks import World, build_world
from benchmarks.tasks.base import exact_match
from core.config import Config, ZooModelConfig
from core.prompts import format_prompt
from core.types import SamplingParams
from policies.tiny_lm import MODEL_SLOTS, ROUTER_WORDS, build_model, build_tokenizer, count_params, save

CARD = "card.json"
META = "zoo_meta.json"


def zoo_tokenizer(world: World):
    """The zoo's word-level tokenizer: the world's words plus the router's (so router policies can start
    from a zoo checkpoint)."""
    return build_tokenizer([*world.words(), *ROUTER_WORDS, *MODEL_SLOTS])


class TokenStream:
    """Deterministic batches of token ids: each step draws one kind (by the mix) and `batch_size`
    pairs of it; the loss covers only the answer and [EOS]."""

    def __init__(self, cfg: Config, tokenizer, pairs):
        self.cfg, self.tok = cfg, tokenizer
        mix = cfg.zoo.mix.model_dump()
        unknown = sorted(set(pairs) - set(mix))
        if unknown:
            raise ValueError(f"zoo.mix: no share for the world's training kinds {unknown}")
        self.kinds = [k for k in pairs if mix[k] > 0 and pairs[k][0]]
        self.mix = [mix[k] for k in self.kinds]
        self.encoded = {}
        for k in self.kinds:
            qa, weights = pairs[k]
            enc = [(tokenizer.encode(format_prompt(q)), tokenizer.encode(a, add_special_tokens=False)
                    + [tokenizer.eos_token_id]) for q, a in qa]
            self.encoded[k] = (enc, weights)
        mean_len = sum(
            share * sum(len(p) + len(a) for p, a in self.encoded[k][0]) / len(self.encoded[k][0])
            for k, share in zip(self.kinds, self.mix)
        ) / sum(self.mix)
        self.steps = max(1, math.ceil(cfg.zoo.train_tokens / (cfg.zoo.batch_size * mean_len)))

    def batches(self):
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


def _task_settings(cfg: Config) -> dict:
    """The task settings in the cache key: those of the tasks the zoo trains on (a section of a task that
    is not enabled, or a task added to the schema, leaves trained zoos valid)."""
    dump = cfg.tasks.model_dump()
    return {"enabled": cfg.tasks.enabled, **{name: dump[name] for name in cfg.tasks.enabled if name in dump}}


def model_key(cfg: Config, m: ZooModelConfig) -> str:
    """Everything that changes a trained model; a match means the checkpoint is reused."""
    blob = json.dumps({
        "model": m.model_dump(exclude={"price"}), "seed": cfg.seed, "tasks": _task_settings(cfg),
        "val_queries": cfg.eval.val_queries,  # whole train queries in the zoo's data leave the validation carve out
        "zoo": cfg.zoo.model_dump(exclude={"models", "workers", "eval_batch_size", "dir"}),
        "router_vocab": [*ROUTER_WORDS, *MODEL_SLOTS],  # the rest of the vocabulary follows from tasks + seed
    }, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def accuracy(path: Path, sets: dict[str, tuple[list[tuple[str, str]], int]], batch_size: int) -> dict[str, float]:
    """Exact-match accuracy of greedy answers, through the same `hf` backend the pool serves with."""
    backend = make_backend("hf", path.name, {"path": str(path)})
    acc = {}
    for name, (qa, max_tokens) in sets.items():
        params = SamplingParams(max_new_tokens=max_tokens)
        hits = 0
        for i in range(0, len(qa), batch_size):
            chunk = qa[i: i + batch_size]
            outs = backend.generate([format_prompt(q) for q, _ in chunk], params)
            hits += sum(exact_match(o.text, a) for o, (_, a) in zip(outs, chunk))
        acc[name] = hits / len(qa)
    return acc


def train_one(cfg: Config, m: ZooModelConfig, events) -> dict:
    """Train, save and evaluate one zoo model (runs in its own process, one thread)."""
    torch.set_num_threads(1)
    world = build_world(cfg)
    tok = zoo_tokenizer(world)
    stream = TokenStream(cfg, tok, world.zoo_pairs())
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
        "accuracy": accuracy(path, world.card_sets(), cfg.zoo.eval_batch_size),
    }
    (path / META).write_text(json.dumps({"key": model_key(cfg, m), "entry": entry}, indent=2))
    return entry


def train_worker(cfg_json: str, name: str, events) -> None:
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


