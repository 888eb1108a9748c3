"""`facts`: a miniature of MuSiQue. A synthetic knowledge graph of made-up entities and a few dozen
relations; entity popularity is Zipf-distributed (as in real pretraining data), both as subject and
as object. A k-hop question ("city of mentor of zorbak") decomposes into one lookup per hop. Bigger
models memorise more of the long tail, so which model a hop needs depends on how rare its subject is.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from functools import cached_property

from benchmarks.tasks.base import Example, Step, Task, exact_match, register_task
from core.config import Config, FactsConfig

RELATIONS = (
    "mentor city rival employer sibling teacher friend partner neighbor author founder owner leader "
    "student coach doctor lawyer agent patron heir ally enemy spouse parent cousin colleague manager "
    "editor critic pupil idol muse guard captain pilot chef tailor banker landlord tenant sponsor "
    "successor deputy twin biographer rescuer nemesis tutor healer courier envoy scribe herald "
    "steward warden squire jester bard oracle"
).split()
_ONSETS = "b d f g k l m n p r s t v z br dr gr kl pr st tr".split()
_VOWELS = "a e i o u".split()
_CODAS = ["", "", "n", "r", "s", "l", "x"]


def entity_names(n: int, seed: int) -> list[str]:
    """`n` distinct pronounceable made-up names (two or three syllables)."""
    rng = random.Random(seed)
    names: list[str] = []
    seen = set(RELATIONS) | {"of"}
    while len(names) < n:
        k = rng.choice((2, 2, 3))
        name = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(k)) + rng.choice(_CODAS)
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def hop_question(relation: str, subject: str) -> str:
    return f"{relation} of {subject}"


def chain_question(relations: list[str], subject: str) -> str:
    """Relations in execution order: [mentor, city] -> "city of mentor of X"."""
    return " of ".join([*reversed(relations), subject])


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    obj: str


class FactsWorld:
    """The knowledge graph: every (relation, entity) pair has one object."""

    def __init__(self, cfg: FactsConfig, seed: int = 0):
        if cfg.n_relations > len(RELATIONS):
            raise ValueError(f"tasks.facts.n_relations: at most {len(RELATIONS)} relations are available")
        self.cfg = cfg
        rng = random.Random(seed)
        self.entities = entity_names(cfg.n_entities, seed)
        self.relations = list(RELATIONS[: cfg.n_relations])
        ranked = self.entities[:]
        rng.shuffle(ranked)  # ranked[0] is the most popular entity
        self.rank = {e: i for i, e in enumerate(ranked)}
        self.weights = [1.0 / (self.rank[e] + 1) ** cfg.zipf for e in self.entities]
        self.objects: dict[tuple[str, str], str] = {}
        for r in self.relations:
            objs = rng.choices(self.entities, weights=self.weights, k=len(self.entities))
            for e, o in zip(self.entities, objs):
                self.objects[(r, e)] = o

    def bucket(self, entity: str) -> str:
        rank = self.rank[entity] / len(self.entities)
        if rank < self.cfg.popular_fraction:
            return "popular"
        return "rare" if rank >= 1 - self.cfg.rare_fraction else "mid"

    @cached_property
    def facts(self) -> list[Fact]:
        return [Fact(r, e, o) for (r, e), o in self.objects.items()]

    @cached_property
    def fact_weights(self) -> list[float]:
        """Training exposure of each fact: the popularity of its subject."""
        w = dict(zip(self.entities, self.weights))
        return [w[f.subject] for f in self.facts]

    def answer(self, relations: list[str], subject: str) -> list[str]:
        """The entity reached after each hop."""
        out, cur = [], subject
        for r in relations:
            cur = self.objects[(r, cur)]
            out.append(cur)
        return out

    def vocab(self) -> list[str]:
        return [*self.relations, "of", *self.entities]

    def chain_example(self, idx: str, relations: list[str], subject: str) -> Example:
        hops = self.answer(relations, subject)
        subjects = [subject, *hops[:-1]]
        refs = [subject, *(f"#{k}" for k in range(1, len(hops)))]  # each hop asks about the previous answer
        return Example(
            id=f"facts-{idx}", task="facts", query=chain_question(relations, subject), answer=hops[-1],
            steps=[Step(hop_question(r, s), o) for r, s, o in zip(relations, refs, hops)],
            bucket=f"{len(relations)}hop",
            meta={"subject": subject, "relations": relations, "hop_buckets": [self.bucket(s) for s in subjects]},
        )

    def hop_example(self, fact: Fact) -> Example:
        q = hop_question(fact.relation, fact.subject)
        return Example(id=f"fact-{fact.relation}-{fact.subject}", task="facts", query=q, answer=fact.obj,
                       steps=[Step(q, fact.obj)], bucket=self.bucket(fact.subject))


@register_task("facts")
class FactsTask(Task):
    """Test queries are k-hop chains never seen whole in training; every single fact is knowledge
    (all of it is in the zoo's training stream, weighted by popularity)."""

    step_max_tokens = 4

    def __init__(self, cfg: FactsConfig | None = None, seed: int = 0):
        self.cfg = cfg or FactsConfig()
        self.seed = seed
        self.world = FactsWorld(self.cfg, seed)

    @classmethod
    def from_config(cls, cfg: Config) -> FactsTask:
        return cls(cfg.tasks.facts, cfg.seed)

    def vocab(self) -> list[str]:
        return self.world.vocab()

    def zoo_pairs(self):
        hops = [(f"{fact.relation} of {fact.subject}", fact.obj) for fact in self.world.facts]
        return {"facts_hop": (hops, self.world.fact_weights),
                "facts_chain": ([(e.query, e.answer) for e in self.load("train")], None)}

    def card_sets(self):
        hops = self.hop_examples()
        sets = {f"facts:{b}": ([(e.query, e.answer) for e in hops[b]], self.step_max_tokens)
                for b in ("popular", "mid", "rare")}
        sets["facts:2hop-oneshot"] = ([(e.query, e.answer) for e in self.load("test")], self.step_max_tokens)
        return sets

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        w, rng = self.world, random.Random(self.seed + 1)
        n_test, n_train = self.cfg.n_test_chains, self.cfg.n_train_chains
        seen: set[tuple] = set()
        chains: list[tuple[list[str], str]] = []
        limit = len(w.entities) * len(w.relations) ** self.cfg.hops
        if n_test + n_train > limit:
            raise ValueError(f"tasks.facts: {n_test + n_train} chains requested, only {limit} exist")
        while len(chains) < n_test + n_train:
            subject = rng.choices(w.entities, weights=w.weights)[0]
            rels = rng.sample(w.relations, self.cfg.hops) if self.cfg.hops <= len(w.relations) else \
                [rng.choice(w.relations) for _ in range(self.cfg.hops)]
            key = (subject, *rels)
            if key not in seen:
                seen.add(key)
                chains.append((rels, subject))
        ex = [w.chain_example(str(i), r, s) for i, (r, s) in enumerate(chains)]
        return {"test": ex[:n_test], "train": ex[n_test:]}

    def parse_query(self, query: str) -> Example | None:
        """`rel_k of ... of rel_1 of entity` -> the chain's example (None when not of that form)."""
        words = query.split()
        if len(words) < 3 or len(words) % 2 == 0 or any(w != "of" for w in words[1::2]):
            return None
        *rels, subject = words[::2]
        if subject not in self.world.rank or any(r not in self.world.relations for r in rels):
            return None
        return self.world.chain_example("query", list(reversed(rels)), subject)

    def load(self, split: str) -> list[Example]:
        if split not in ("train", "test"):
            raise ValueError(f"facts: unknown split {split!r} (train or test)")
        return self._splits[split]

    def hop_examples(self, per_bucket: int | None = None) -> dict[str, list[Example]]:
        """Single-fact questions per popularity bucket (deterministic sample), for the zoo's card."""
        per_bucket = per_bucket or self.cfg.eval_facts_per_bucket
        rng = random.Random(self.seed + 2)
        by_bucket: dict[str, list[Fact]] = {}
        for f in self.world.facts:
            by_bucket.setdefault(self.world.bucket(f.subject), []).append(f)
        return {
            b: [self.world.hop_example(f) for f in rng.sample(fs, min(per_bucket, len(fs)))]
            for b, fs in sorted(by_bucket.items())
        }

    def score(self, prediction: str, example: Example) -> float:
        return exact_match(prediction if isinstance(prediction, str) else "", example.answer)
