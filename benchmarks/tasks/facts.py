"""`facts`: a miniature of MuSiQue. A synthetic knowledge graph of made-up entities and a few dozen
relations; entity popularity is Zipf-distributed (as in real pretraining data), both as subject and
as object. A k-hop question ("city of mentor of zorbak") decomposes into one lookup per hop. Bigger
models memorise more of the long tail, so which model a hop needs depends on how rare its subject is.

Queries come in shapes: a hop count and a surface form (`FORMS`: the same chain written as a person
might, "city of mentor of zorbak", "what is the city of the mentor of zorbak", "zorbak 's mentor 's
city", ...), with the same gold steps. `tasks.facts.hops`/`forms` set the shapes of the train and test
splits; `held_out_hops`/`held_out_forms` are shapes that appear in no split, no label and none of the
zoo's data: `shape_sets` draws them for the generalisation report.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from functools import cached_property

from benchmarks.tasks.base import Example, Step, Task, exact_match, register_task
from core.config import Config, FactsConfig
from core.prompts import FUNCTION_WORDS

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


def chain_question(relations: list[str], subject: str, form: str = "of") -> str:
    """The chain as a query in surface form `form`; relations in execution order: [mentor, city] ->
    "city of mentor of X" (form "of")."""
    return FORMS[form](relations, subject)


# surface forms of one chain (relations in execution order); the words beyond the graph's own are
# English function words (core.prompts.FUNCTION_WORDS)
FORMS = {  # keys: core.config.FactsForm
    "of": lambda rels, s: " of ".join([*reversed(rels), s]),
    "the": lambda rels, s: "what is " + " ".join(f"the {r} of" for r in reversed(rels)) + f" {s}",
    "poss": lambda rels, s: " ".join([s, *(f"'s {r}" for r in rels)]),
    "what-poss": lambda rels, s: "what is " + " ".join([s, *(f"'s {r}" for r in rels)]),
}


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
        return [*self.relations, *FUNCTION_WORDS, *self.entities]

    def chain_example(self, idx: str, relations: list[str], subject: str, form: str = "of") -> Example:
        hops = self.answer(relations, subject)
        subjects = [subject, *hops[:-1]]
        refs = [subject, *(f"#{k}" for k in range(1, len(hops)))]  # each hop asks about the previous answer
        return Example(
            id=f"facts-{idx}", task="facts", query=chain_question(relations, subject, form), answer=hops[-1],
            steps=[Step(hop_question(r, s), o) for r, s, o in zip(relations, refs, hops)],
            bucket=f"{len(relations)}hop",
            meta={"subject": subject, "relations": relations, "form": form,
                  "hop_buckets": [self.bucket(s) for s in subjects]},
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
                "facts_chain": ([(e.query, e.answer) for e in self.split("train")], None)}  # no validation query

    def card_sets(self):
        hops = self.hop_examples()
        sets = {f"facts:{b}": ([(e.query, e.answer) for e in hops[b]], self.step_max_tokens)
                for b in ("popular", "mid", "rare")}
        sets["facts:chain-oneshot"] = ([(e.query, e.answer) for e in self.load("test")], self.step_max_tokens)
        return sets

    @cached_property
    def _splits(self) -> dict[str, list[Example]]:
        n_test, n_train = self.cfg.n_test_chains, self.cfg.n_train_chains
        limit = sum(self._n_chains(h) for h in self.cfg.hops)
        if n_test + n_train > limit:
            raise ValueError(f"tasks.facts: {n_test + n_train} chains requested, only {limit} exist")
        chains = self._draw(random.Random(self.seed + 1), n_test + n_train, self.cfg.hops, self.cfg.forms, set())
        ex = [self.world.chain_example(str(i), *c) for i, c in enumerate(chains)]
        return {"test": ex[:n_test], "train": ex[n_test:]}

    def _n_chains(self, hops: int) -> int:
        n = len(self.world.relations)
        return len(self.world.entities) * math.perm(n, hops) if hops <= n else len(self.world.entities) * n ** hops

    def _draw(self, rng: random.Random, n: int, hops: list[int], forms: list[str],
              seen: set[tuple]) -> list[tuple[list[str], str, str]]:
        """`n` distinct chains (relations, subject, form): subjects by popularity, hop counts and forms
        uniformly from `hops` and `forms`; no chain (subject, relations) in `seen` (which grows)."""
        w, chains = self.world, []
        while len(chains) < n:
            h = rng.choice(hops)
            subject = rng.choices(w.entities, weights=w.weights)[0]
            rels = rng.sample(w.relations, h) if h <= len(w.relations) else [rng.choice(w.relations) for _ in range(h)]
            form = rng.choice(forms)
            if (subject, *rels) not in seen:
                seen.add((subject, *rels))
                chains.append((rels, subject, form))
        return chains

    def shape_sets(self, n: int | None = None) -> dict[str, list[Example]]:
        """`n` queries (default `shape_queries`) per shape, none of them a train or test chain: per hop
        count (`<k>hop`, the trained forms) and per surface form (`form:<name>`, the trained hop counts),
        inside the training range and held out from it (`held_out_hops`, `held_out_forms`)."""
        n = n or self.cfg.shape_queries
        cfg, rng = self.cfg, random.Random(self.seed + 3)
        seen = {(e.meta["subject"], *e.meta["relations"]) for split in self._splits.values() for e in split}
        shapes = {f"{h}hop": ([h], cfg.forms) for h in sorted({*cfg.hops, *cfg.held_out_hops})}
        shapes |= {f"form:{f}": (cfg.hops, [f]) for f in [*cfg.forms, *cfg.held_out_forms]}
        return {name: [self.world.chain_example(f"{name}-{i}", *c) for i, c in enumerate(self._draw(rng, n, h, f, seen))]
                for name, (h, f) in shapes.items()}

    def held_out(self, shape: str) -> bool:
        """Whether a shape of `shape_sets` lies outside what training saw."""
        kind, _, value = shape.partition(":")
        return value in self.cfg.held_out_forms if kind == "form" else int(shape.removesuffix("hop")) in self.cfg.held_out_hops

    def parse_query(self, query: str) -> Example | None:
        """A chain written in any surface form (`FORMS`) -> its example (None when not of that form)."""
        words = query.split()
        prefix = words[:2] == ["what", "is"]
        rest = words[2:] if prefix else words
        w = self.world
        if len(rest) >= 3 and all(x == "'s" for x in rest[1::2]) and len(rest) % 2 == 1:
            subject, rels, form = rest[0], rest[2::2], "what-poss" if prefix else "poss"
        else:
            plain = [x for x in rest if x != "the"]
            if len(plain) < 3 or len(plain) % 2 == 0 or any(x != "of" for x in plain[1::2]):
                return None
            *rels, subject = plain[::2]
            rels, form = list(reversed(rels)), "the" if prefix else "of"
        if subject not in w.rank or any(r not in w.relations for r in rels):
            return None
        return replace(w.chain_example("query", list(rels), subject, form), query=" ".join(words))

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
