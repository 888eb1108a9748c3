"""SCAN generator, interpreter, gold decompositions, split and scoring."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.tasks import TASKS
from benchmarks.tasks.base import data_dir
from benchmarks.tasks.scan import (
    ScanTask,
    all_clauses,
    all_commands,
    clauses,
    compose,
    interpret,
    vocab,
)
from core.config import ScanConfig

SCAN_FILES = ("tasks_train_simple.txt", "tasks_test_simple.txt")


def _read_scan_file(name: str) -> list[tuple[str, str]]:
    path = data_dir() / "scan" / name
    if not path.is_file():
        pytest.skip(f"SCAN reference data not found at {path} (set R2R_DATA to the shared data directory)")
    pairs = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        assert line.startswith("IN: ") and " OUT: " in line, line
        command, actions = line[len("IN: ") :].split(" OUT: ")
        pairs.append((command.strip(), actions.strip()))
    return pairs


def test_generator_reproduces_reference_files() -> None:
    commands = set(all_commands())
    seen: set[str] = set()
    for name in SCAN_FILES:
        pairs = _read_scan_file(name)
        assert pairs, name
        for command, actions in pairs:
            assert command in commands, command
            assert interpret(command) == actions, command
            seen.add(command)
    assert seen == commands
    assert len(seen) == 20_910


def test_language_sizes_and_order() -> None:
    commands, cls = all_commands(), all_clauses()
    assert len(commands) == len(set(commands)) == 20_910
    assert len(cls) == len(set(cls)) == 102
    assert commands == sorted(commands) == all_commands()
    assert cls == sorted(cls) and set(cls) <= set(commands)


def test_known_interpretations() -> None:
    assert interpret("walk") == "I_WALK"
    assert interpret("turn left") == "I_TURN_LEFT"
    assert interpret("turn opposite right") == "I_TURN_RIGHT I_TURN_RIGHT"
    assert interpret("turn around left") == " ".join(["I_TURN_LEFT"] * 4)
    assert interpret("jump opposite left") == "I_TURN_LEFT I_TURN_LEFT I_JUMP"
    assert interpret("look around right twice") == " ".join(["I_TURN_RIGHT I_LOOK"] * 8)
    assert interpret("walk and run thrice") == "I_WALK I_RUN I_RUN I_RUN"
    assert interpret("walk after run left") == "I_TURN_LEFT I_RUN I_WALK"
    # longer chains: `after` binds loosest, its and-chains run right to left
    assert interpret("walk and run and jump") == "I_WALK I_RUN I_JUMP"
    assert interpret("walk and run after jump after look") == "I_LOOK I_JUMP I_WALK I_RUN"


@pytest.mark.parametrize(
    "bad", ["", "turn", "walk twice twice", "fly", "walk and", "walk and and run", "after walk", "left walk"]
)
def test_interpret_rejects_invalid(bad: str) -> None:
    with pytest.raises(ValueError):
        interpret(bad)


def test_clauses_order_and_composition() -> None:
    assert clauses("walk after run left") == ["run left", "walk"]
    assert clauses("walk and run left") == ["walk", "run left"]
    assert clauses("jump twice") == ["jump twice"]
    cls = set(all_clauses())
    for command in all_commands():
        parts = clauses(command)
        assert 1 <= len(parts) <= 2 and set(parts) <= cls
        assert compose([interpret(p) for p in parts]) == interpret(command), command


def test_vocab_covers_language() -> None:
    v = vocab()
    assert len(v) == len(set(v))
    words = {w for c in all_commands() for w in c.split()}
    actions = {a for c in all_clauses() for a in interpret(c).split()}
    assert set(v) == words | actions


def test_registered() -> None:
    assert TASKS["scan"] is ScanTask and ScanTask.name == "scan"


def test_split_disjoint_deterministic_sized() -> None:
    cfg = ScanConfig(n_test_commands=10**6)  # no subsampling: the whole test split
    task = ScanTask(cfg, seed=0)
    train, test = task.load("train"), task.load("test")
    n_test = round(20_910 * cfg.test_fraction)
    assert len(test) == n_test and len(train) == 20_910 - n_test
    train_q, test_q = {e.query for e in train}, {e.query for e in test}
    assert not train_q & test_q and train_q | test_q == set(all_commands())
    assert len({e.id for e in train + test}) == 20_910

    again = ScanTask(cfg, seed=0)
    assert [e.id for e in again.load("train")] == [e.id for e in train]
    assert [e.id for e in again.load("test")] == [e.id for e in test]
    assert {e.id for e in ScanTask(cfg, seed=1).load("test")} != {e.id for e in test}

    sub = ScanTask(ScanConfig(n_test_commands=500), seed=0).load("test")
    assert len(sub) == 500 and {e.id for e in sub} <= {e.id for e in test}
    assert [e.id for e in sub] == [e.id for e in ScanTask(ScanConfig(n_test_commands=500), seed=0).load("test")]
    with pytest.raises(ValueError):
        task.load("dev")


def test_example_fields() -> None:
    task = ScanTask()
    for e in task.load("test"):
        assert e.id.startswith("scan-") and e.task == "scan" and e.bucket == "command"
        assert e.answer == interpret(e.query)
        assert [s.prompt for s in e.steps] == clauses(e.query)
        assert all(s.answer == interpret(s.prompt) for s in e.steps)
        assert compose([s.answer for s in e.steps]) == e.answer
        assert e.meta == {"n_clauses": len(e.steps)}
    ce = task.clause_examples()
    assert len(ce) == 102 and {e.query for e in ce} == set(all_clauses())
    assert all(e.bucket == "clause" and len(e.steps) == 1 and e.steps[0].answer == e.answer for e in ce)


def test_score() -> None:
    task = ScanTask()
    e = task.load("test")[0]
    assert task.score(e.answer, e) == 1.0
    assert task.score(f"  {e.answer.replace(' ', '  ')}\n", e) == 1.0  # whitespace-normalised
    actions = e.answer.split()
    assert task.score(" ".join(actions[:-1]), e) == 0.0
    assert task.score(e.answer + " I_WALK", e) == 0.0
    assert task.score(e.answer.lower(), e) == 0.0
    assert task.score("", e) == 0.0


@settings(max_examples=200, deadline=None)
@given(st.text())
def test_score_never_raises(garbage: str) -> None:
    task = ScanTask()
    e = task.clause_examples()[0]
    assert task.score(garbage, e) in (0.0, 1.0)


def test_longer_chains_are_an_option_split_and_shaped() -> None:
    """`clauses` adds drawn 3-clause commands to both splits (disjoint, decomposing and composing like SCAN's);
    held-out counts appear only in the shape sets; the default world is SCAN's 20,910 commands as before."""
    assert [e.id for e in ScanTask().load("train")] == [e.id for e in ScanTask(ScanConfig(clauses=[1, 2])).load("train")]
    task = ScanTask(ScanConfig(clauses=[2, 3], held_out_clauses=[4], long_commands=300, shape_queries=50,
                               n_test_commands=10**6), seed=0)
    train, test = task.load("train"), task.load("test")
    assert {e.meta["n_clauses"] for e in train} == {2, 3} == {e.meta["n_clauses"] for e in task.load("test")}
    assert not {e.query for e in train} & {e.query for e in test}
    assert sum(e.meta["n_clauses"] == 3 for e in train + test) == 300
    for e in [x for x in train if x.meta["n_clauses"] == 3][:50]:
        assert compose([s.answer for s in e.steps]) == e.answer == interpret(e.query)
        assert task.parse_query(e.query).steps == e.steps
    shapes = task.shape_sets()
    assert list(shapes) == ["2clause", "3clause", "4clause"] and all(len(v) == 50 for v in shapes.values())
    assert [task.held_out(s) for s in shapes] == [False, False, True]
    assert not {e.query for e in shapes["4clause"]} & {e.query for e in train + test}
    assert all(len(e.steps) == 4 for e in shapes["4clause"])
    with pytest.raises(ValueError, match="held_out_clauses"):
        ScanConfig(clauses=[1, 2], held_out_clauses=[2])
