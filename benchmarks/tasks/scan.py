"""SCAN (Lake & Baroni 2018), generated in code: commands -> action sequences.

Grammar:  C -> S | S and S | S after S;  S -> V | V twice | V thrice;
          V -> U | D | D[1] opposite D[2] | D[1] around D[2];  D -> U left | U right | turn left | turn right;
          U -> walk | look | run | jump.
34 atoms (V) x 3 repetitions = 102 clauses (S); 102 + 2 * 102**2 = 20,910 commands.
The gold decomposition of a command is its clauses in execution order ("X after Y" runs Y first).
"""
from __future__ import annotations

import random
from functools import cache

from benchmarks.tasks.base import Example, Step, Task, exact_match, register_task
from core.config import Config, ScanConfig

PRIMITIVES = {"walk": "I_WALK", "look": "I_LOOK", "run": "I_RUN", "jump": "I_JUMP"}
TURNS = {"left": "I_TURN_LEFT", "right": "I_TURN_RIGHT"}
REPEATS = {"twice": 2, "thrice": 3}
CONJUNCTIONS = ("and", "after")
N_COMMANDS = 20_910
N_CLAUSES = 102
COMMAND_MAX_TOKENS = 50  # the longest command has 48 actions


def _atom(words: list[str]) -> list[str]:
    """Actions of an atom V (no repetition word)."""
    verb, rest = words[0], words[1:]
    if verb != "turn" and verb not in PRIMITIVES:
        raise ValueError(f"unknown verb {verb!r}")
    act = [] if verb == "turn" else [PRIMITIVES[verb]]
    if not rest:
        if verb == "turn":
            raise ValueError("'turn' needs a direction")
        return act
    if len(rest) == 1 and rest[0] in TURNS:
        return [TURNS[rest[0]], *act]
    if len(rest) == 2 and rest[1] in TURNS:
        turn = TURNS[rest[1]]
        if rest[0] == "opposite":
            return [turn, turn, *act]
        if rest[0] == "around":
            return [turn, *act] * 4
    raise ValueError(f"malformed atom {' '.join(words)!r}")


def _clause(words: list[str]) -> list[str]:
    """Actions of a clause S: an atom, optionally followed by twice/thrice."""
    if not words:
        raise ValueError("empty clause")
    if words[-1] in REPEATS:
        return _atom(words[:-1]) * REPEATS[words[-1]]
    return _atom(words)


def clauses(command: str) -> list[str]:
    """The command's clauses in execution order: "X and Y" -> [X, Y], "X after Y" -> [Y, X]."""
    words = command.split()
    for conj in CONJUNCTIONS:
        if conj in words:
            i = words.index(conj)
            first, second = " ".join(words[:i]), " ".join(words[i + 1 :])
            return [first, second] if conj == "and" else [second, first]
    return [" ".join(words)]


def interpret(command: str) -> str:
    """The space-separated action sequence of a command; ValueError if it is not in the language."""
    return " ".join(a for part in clauses(command) for a in _clause(part.split()))


def compose(step_answers: list[str]) -> str:
    """The whole command's actions from its clauses' actions (in execution order)."""
    return " ".join(" ".join(a.split()) for a in step_answers if a.strip())


@cache
def _all_clauses() -> tuple[str, ...]:
    dirs = [f"{u} {t}" for u in [*PRIMITIVES, "turn"] for t in TURNS]
    atoms = [*PRIMITIVES, *dirs]
    atoms += [f"{u} {m} {t}" for m in ("opposite", "around") for u in [*PRIMITIVES, "turn"] for t in TURNS]
    out = sorted({a if r == "" else f"{a} {r}" for a in atoms for r in ("", *REPEATS)})
    assert len(out) == N_CLAUSES
    return tuple(out)


@cache
def _all_commands() -> tuple[str, ...]:
    cs = _all_clauses()
    out = set(cs) | {f"{a} {c} {b}" for a in cs for c in CONJUNCTIONS for b in cs}
    assert len(out) == N_COMMANDS
    return tuple(sorted(out))


def all_clauses() -> list[str]:
    """The 102 distinct clauses, sorted."""
    return list(_all_clauses())


def all_commands() -> list[str]:
    """The 20,910 distinct commands, sorted."""
    return list(_all_commands())


def vocab() -> list[str]:
    """Command words then action tokens, for a word-level tokenizer."""
    words = [*PRIMITIVES, "turn", *TURNS, "opposite", "around", *REPEATS, *CONJUNCTIONS]
    return words + [*PRIMITIVES.values(), *TURNS.values()]


@register_task("scan")
class ScanTask(Task):
    step_max_tokens = 26  # the longest clause has 24 actions

    def __init__(self, cfg: ScanConfig | None = None, seed: int = 0) -> None:
        self.cfg = cfg or ScanConfig()
        self.seed = seed
        order = list(range(N_COMMANDS))
        random.Random(seed).shuffle(order)
        n_test = round(N_COMMANDS * self.cfg.test_fraction)
        self._test, self._train = order[:n_test], order[n_test:]

    @classmethod
    def from_config(cls, cfg: Config) -> ScanTask:
        return cls(cfg.tasks.scan, cfg.seed)

    def vocab(self) -> list[str]:
        return vocab()

    def zoo_pairs(self):
        return {"scan_clause": ([(c, interpret(c)) for c in all_clauses()], None),
                "scan_command": ([(e.query, e.answer) for e in self.split("train")], None)}  # no validation query

    def card_sets(self):
        return {"scan:clause": ([(e.query, e.answer) for e in self.clause_examples()], self.step_max_tokens),
                "scan:command": ([(e.query, e.answer) for e in self.load("test")], COMMAND_MAX_TOKENS)}

    def _example(self, idx: int) -> Example:
        command = _all_commands()[idx]
        parts = clauses(command)
        return Example(
            id=f"scan-{idx}",
            task="scan",
            query=command,
            answer=interpret(command),
            steps=[Step(prompt=p, answer=interpret(p)) for p in parts],
            bucket="command",
            meta={"n_clauses": len(parts)},
        )

    def parse_query(self, query: str) -> Example | None:
        command = " ".join(query.split())
        try:
            return self._example(_all_commands().index(command))
        except ValueError:
            return None

    def load(self, split: str) -> list[Example]:
        if split == "train":
            idxs = self._train
        elif split == "test":
            idxs = self._test[: self.cfg.n_test_commands]  # already shuffled: a seeded subsample
        else:
            raise ValueError(f"unknown split {split!r} (train/test)")
        return [self._example(i) for i in idxs]

    def clause_examples(self) -> list[Example]:
        """Every distinct clause as a one-step example."""
        return [
            Example(
                id=f"scan-clause-{i}",
                task="scan",
                query=c,
                answer=interpret(c),
                steps=[Step(prompt=c, answer=interpret(c))],
                bucket="clause",
                meta={"n_clauses": 1},
            )
            for i, c in enumerate(_all_clauses())
        ]

    def score(self, prediction: str, example: Example) -> float:
        return exact_match(str(prediction), example.answer)

    def final_answer(self, example: Example, step_answers: list[str]) -> str:
        return compose(step_answers)
