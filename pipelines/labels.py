"""SFT labels, constructed as R2 does, on the real pool.

    python -m pipelines.labels --config configs/tiny.yaml

- Decomposition: candidates per query (tiny world: the whole query as one step, and the gold parse
  into hops / clauses) are scored by a weighted sum of conciseness (fewer steps), practicality
  (solved by the reference model, at few tokens) and coherence (adjacent steps linked by `#k`); the
  best candidate the reference model solves becomes the target. With `labels.whole_query: fallback`
  the whole query is the target only when no decomposition is solved: conciseness makes it win
  whenever the reference happens to know the whole answer, which the decomposer cannot see in the
  query, so those labels teach it to decompose a shape one time and not the next.
- Allocation: each step's difficulty is the alpha-quantile confidence of the base (cheapest) model on
  it; thresholds map difficulty to an initial tier. A correct chain then moves steps *down* a tier
  while it stays correct; a wrong chain moves its least confident step *up* until it is correct. The
  cheapest correct allocation found is the label.

With `labels.given_decompositions`, GPT-4-turbo's decompositions (`benchmarks.tasks.decompositions`, at most
`reason.max_steps` steps) are the decomposition labels of the queries that have one, taken as given; those
queries are labelled first.

Label search costs pool calls, as at scale: allocation labels cover `labels.fraction` of the training
queries, decomposition labels (two reference calls per candidate) `labels.decomposition_fraction`.
Writes `<run_dir>/labels/labels.jsonl`, one labelled query per line.
"""
from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, defaultdict

from rich.progress import Progress

from actors.runtime import pool_session
from benchmarks.tasks import build_world
from benchmarks.tasks.base import Example, Task
from benchmarks.tasks.decompositions import TASKS as DECOMPOSED_TASKS
from benchmarks.tasks.decompositions import join_decompositions
from core.config import Config, config_from_args, config_parser
from core.console import console as make_console
from core.prompts import SEP
from pipelines.runs import labels_path, synced
from policies.parsers import Decomposition
from policies.reason import Trajectory, areason_batch
from policies.router import AllocateDecision, BaseRouter, DecomposeDecision


class PlannedRouter(BaseRouter):
    """A given decomposition and tier per step for each example (one chain run of the search)."""

    name = "label-search"
    decomposer_name = "label-search"

    def __init__(self, steps: dict[str, list[str]], tiers: dict[str, list[int]]):
        self.steps, self.tiers = steps, tiers
        self.cursor: dict[str, int] = defaultdict(int)

    def decompose(self, examples, task):
        return [DecomposeDecision(Decomposition(self.steps[ex.id], True)) for ex in examples]

    def allocate(self, step_texts, examples, n_tiers):
        out = []
        for ex in examples:
            out.append(AllocateDecision(min(self.tiers[ex.id][self.cursor[ex.id]], n_tiers - 1)))
            self.cursor[ex.id] += 1
        return out


def candidates(example: Example) -> list[list[str]]:
    gold = [s.prompt for s in example.steps]
    return [[example.query], gold] if gold and gold != [example.query] else [[example.query]]


def coherence(steps: list[str]) -> float:
    if len(steps) < 2:
        return 1.0
    return sum(f"#{i}" in steps[i] for i in range(1, len(steps))) / (len(steps) - 1)


class LabelSearch:
    def __init__(self, cfg: Config, pool, model_ids: list[str], task: Task):
        self.cfg, self.pool, self.model_ids, self.task = cfg, pool, model_ids, task
        self.calls = 0

    async def run(self, example: Example, steps: list[str], tiers: list[int]) -> Trajectory:
        router = PlannedRouter({example.id: steps}, {example.id: tiers})
        [t] = await areason_batch([example], router, self.pool, self.task, self.cfg.reason, self.model_ids,
                                  review=False)
        self.calls += len(t.calls)
        return t

    async def decomposition(self, example: Example) -> tuple[list[str], float] | None:
        w, top = self.cfg.labels, len(self.model_ids) - 1
        fallback = w.whole_query == "fallback"
        best = None
        # with `fallback`, the decompositions are tried first and the first one solved is the label
        for steps in sorted(candidates(example), key=lambda c: fallback and c == [example.query]):
            t = await self.run(example, steps, [top] * len(steps))
            tokens = sum(c.prompt_tokens + c.completion_tokens for c in t.calls)
            score = (w.w_concise / len(steps) + w.w_practical * (t.correct - tokens / w.token_norm)
                     + w.w_coherent * coherence(steps))
            if t.correct >= 1 and (best is None or score > best[1]):
                best = (steps, score)
            if fallback and best:
                break
        return best

    def initial_tiers(self, t: Trajectory) -> list[int]:
        thresholds = self.cfg.labels.difficulty_thresholds
        top = len(self.model_ids) - 1
        return [min(next((k for k, th in enumerate(thresholds) if s.confidence >= th), len(thresholds)), top)
                for s in t.steps]

    async def allocation(self, example: Example, steps: list[str]) -> tuple[list[int], Trajectory] | None:
        top = len(self.model_ids) - 1
        base = await self.run(example, steps, [0] * len(steps))
        tiers = self.initial_tiers(base)
        t = await self.run(example, steps, tiers)
        for _ in range(self.cfg.labels.max_search_rounds):  # upward: lift the least confident step
            if t.correct >= 1:
                break
            movable = [k for k in range(len(steps)) if tiers[k] < top]
            if not movable:
                return None
            k = min(movable, key=lambda k: t.steps[k].confidence)
            tiers = tiers[:k] + [tiers[k] + 1] + tiers[k + 1:]
            t = await self.run(example, steps, tiers)
        if t.correct < 1:
            return None
        for k in sorted(range(len(steps)), key=lambda k: -tiers[k]):  # downward, priciest steps first
            while tiers[k] > 0:
                trial = tiers[:k] + [tiers[k] - 1] + tiers[k + 1:]
                tt = await self.run(example, steps, trial)
                if tt.correct < 1:
                    break
                tiers, t = trial, tt
        return tiers, t

    async def label(self, example: Example, allocate: bool, given: list[str] | None = None) -> dict | None:
        """The query's decomposition label (`given`, else searched), and its allocation label when `allocate`."""
        dec = (given, None) if given else await self.decomposition(example)
        if dec is None:
            return None
        row = {"task": self.task.name, "id": example.id, "query": example.query, "steps": dec[0],
               "source": "given" if given else "search"}
        found = await self.allocation(example, dec[0]) if allocate else None
        if found is not None:
            tiers, t = found
            row.update(tiers=tiers, models=[self.model_ids[k] for k in tiers],
                       rendered=[_rendered(s) for s in t.steps], cost_usd=t.cost_usd)
        return row


def _rendered(step) -> str:
    p = step.prompt.strip()
    return p[: -len(SEP)].strip() if p.endswith(SEP) else p


def select_queries(cfg: Config, train: list[Example], preferred: frozenset[str] | set[str] = frozenset()) -> tuple[list[Example], int]:
    """Queries to label (decomposition), the first `n_alloc` of them also get an allocation label. Queries
    whose ids are `preferred` (those with a given decomposition) are drawn first; then the rare lengths are
    topped up (`top_up`, decomposition labels only)."""
    cap = lambda f: min(cfg.labels.max_per_task, len(train), max(1, round(f * len(train))))  # noqa: E731
    n_dec, n_alloc = cap(cfg.labels.decomposition_fraction), cap(cfg.labels.fraction)
    k = max(n_dec, n_alloc)
    given = [ex for ex in train if ex.id in preferred]
    chosen = random.Random(cfg.seed + 7).sample(given, min(k, len(given)))
    rest = [ex for ex in train if ex.id not in preferred]  # without preferred ids: the draw as it always was
    drawn = chosen + random.Random(cfg.seed + 7).sample(rest, k - len(chosen))
    return drawn + top_up(cfg, train, drawn), n_alloc


def decomposition_length(example: Example) -> int:
    """Steps of the query's longest candidate decomposition (1: the query is one step)."""
    return max(len(c) for c in candidates(example))


def top_up(cfg: Config, train: list[Example], drawn: list[Example]) -> list[Example]:
    """More queries of every decomposition length that the uniform draw holds fewer than
    `labels.min_per_length` of (all the split has, when fewer): a task's rare shapes (SCAN's one-clause
    commands, 0.5% of its train split) are otherwise too few for the decomposer to learn."""
    need = cfg.labels.min_per_length
    if not need:
        return []
    have = Counter(decomposition_length(ex) for ex in drawn)
    ids = {ex.id for ex in drawn}
    by_length: dict[int, list[Example]] = {}
    for ex in train:
        if ex.id not in ids:
            by_length.setdefault(decomposition_length(ex), []).append(ex)
    rng = random.Random(cfg.seed + 8)
    return [ex for n, pool in sorted(by_length.items()) for ex in rng.sample(pool, min(len(pool), max(0, need - have[n])))]


def given_decompositions(cfg: Config, task: Task, train: list[Example]) -> tuple[dict[str, list[str]], int]:
    """GPT-4-turbo's decompositions of the train queries that have one (`labels.given_decompositions`; none
    for a task without a decompositions file) with at most `reason.max_steps` steps, and how many were left
    out as longer."""
    if not cfg.labels.given_decompositions or task.name not in DECOMPOSED_TASKS:
        return {}, 0
    joined = join_decompositions(task.name, train)
    kept = {i: steps for i, steps in joined.items() if len(steps) <= cfg.reason.max_steps}
    return kept, len(joined) - len(kept)


async def build_labels(cfg: Config, pool, model_ids: list[str], tasks: dict[str, Task], progress=None) -> tuple[list[dict], dict]:
    rows, stats = [], {}
    for name, task in tasks.items():
        search = LabelSearch(cfg, pool, model_ids, task)
        train = task.split("train")  # never a validation query
        given, too_long = given_decompositions(cfg, task, train)
        queries, n_alloc = select_queries(cfg, train, set(given))
        bar = progress.add_task(f"labels {name}", total=len(queries)) if progress else None

        async def one(i, ex, search=search, n_alloc=n_alloc, bar=bar, given=given):
            out = await search.label(ex, allocate=i < n_alloc, given=given.get(ex.id))
            if progress:
                progress.advance(bar)
            return out

        found = await asyncio.gather(*(one(i, ex) for i, ex in enumerate(queries)))
        kept = [r for r in found if r]
        rows += kept
        stats[name] = {"queries": len(queries), "decomposition_labels": len(kept),
                       "given_decompositions": sum(r["source"] == "given" for r in kept),
                       "given_longer_than_max_steps": too_long,
                       "allocation_labels": sum("tiers" in r for r in kept), "pool_calls": search.calls,
                       "tier_histogram": dict(sorted(Counter(m for r in kept for m in r.get("models", [])).items()))}
    return rows, stats


def write_labels(cfg: Config, pool, model_ids: list[str], console, progress=None) -> list[dict]:
    """Search labels for the world's tasks and write them (and their stats) under run_dir."""
    world = build_world(cfg)
    start = time.perf_counter()
    rows, stats = asyncio.run(build_labels(cfg, pool, model_ids, world.tasks, progress))
    path = labels_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (path.parent / "stats.json").write_text(json.dumps(stats, indent=2))
    console.print(f"labels: {len(rows)} queries in {time.perf_counter() - start:.0f}s -> {path}")
    console.print(stats)
    return rows


def read_labels(cfg: Config) -> list[dict]:
    """The run's labels; an error when any is a validation query (labels searched before the validation
    carve, or under a larger `eval.val_queries`: SFT on them would leak validation into training)."""
    rows = [json.loads(line) for line in labels_path(cfg).read_text().splitlines()]
    tasks = build_world(cfg, sorted({r["task"] for r in rows})).tasks
    val = {(name, ex.id) for name, t in tasks.items() for ex in t.split("val")}
    leaked = sum((r["task"], r["id"]) in val for r in rows)
    if leaked:
        raise ValueError(f"{labels_path(cfg)}: {leaked} of {len(rows)} labelled queries are validation queries "
                         f"(eval.val_queries={cfg.eval.val_queries}); delete {labels_path(cfg).parent} to search "
                         "labels on the train split again")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    cfg = config_from_args(config_parser(__doc__).parse_args(argv))
    console = make_console()
    with synced(cfg), pool_session(cfg) as (pool, model_ids), Progress(console=console) as progress:
        return write_labels(cfg, pool, model_ids, console, progress)


if __name__ == "__main__":
    main()
