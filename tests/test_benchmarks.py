"""The file-backed benchmarks (math, champ, p3, csqa, musique), the decompositions, and the sandbox.

Tests that read the shared data skip (with the reason) when it is not there; the sandbox, MuSiQue
(which writes its own JSONL) and the scorers' robustness tests need no data."""
from __future__ import annotations

import json
import random
import re
import sys
import threading
import time
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.tasks import TASKS
from benchmarks.tasks.base import Example, data_dir
from benchmarks.tasks.champ import ChampTask, answer_key
from benchmarks.tasks.csqa import CsqaTask, extract_choice
from benchmarks.tasks.decompositions import join_decompositions, load_decompositions, load_records
from benchmarks.tasks.hendrycks_math import MathTask
from benchmarks.tasks.mathcheck import final_answer_text, last_boxed, math_equal
from benchmarks.tasks.musique import MusiqueTask, em_score, f1_score
from benchmarks.tasks.p3 import P3Task, check_solution, solution_source
from benchmarks.tasks.sandbox import run_python

FILES = {
    "math": "math/math200.json", "champ": "champ/champ116.json", "p3": "p3/puzzles.json",
    "csqa": "csqa/train_rand_split.jsonl",
}
HYPO = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _need(name: str) -> None:
    p = data_dir() / FILES[name]
    if not p.is_file():
        pytest.skip(f"shared benchmark data not found: {p} (set R2R_DATA to the shared data folder)")


@pytest.fixture(scope="module")
def math_task() -> MathTask:
    _need("math")
    return MathTask()


@pytest.fixture(scope="module")
def champ_task() -> ChampTask:
    _need("champ")
    return ChampTask()


@pytest.fixture(scope="module")
def p3_task() -> P3Task:
    _need("p3")
    return P3Task()


@pytest.fixture(scope="module")
def csqa_task() -> CsqaTask:
    _need("csqa")
    return CsqaTask()


# --- shared behaviour of the file-backed tasks -----------------------------------------------------

def test_registered():
    assert {"math", "champ", "p3", "csqa", "musique"} <= set(TASKS)
    assert TASKS["math"] is MathTask and TASKS["p3"] is P3Task


@pytest.mark.parametrize("cls", [MathTask, ChampTask, P3Task, CsqaTask, MusiqueTask])
def test_missing_data_file_is_a_clear_error(cls, tmp_path, monkeypatch):
    monkeypatch.setenv("R2R_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="R2R_DATA") as e:
        cls()
    assert str(tmp_path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        cls(path=tmp_path / "nope.json")


@pytest.mark.parametrize("name,n", [("math", 200), ("champ", 116), ("p3", 1715), ("csqa", 9741)])
def test_loader_and_split(name, n):
    _need(name)
    task = TASKS[name]()
    every = task.load("all")
    assert len(every) == n and len({e.id for e in every}) == n
    assert all(e.task == name and e.query.strip() for e in every)
    test, train = task.load("test"), task.load("train")
    assert len(test) == round(n * 0.5) and len(test) + len(train) == n
    assert not {e.id for e in test} & {e.id for e in train}
    assert [e.id for e in test] == [e.id for e in TASKS[name]().load("test")]  # deterministic
    other = TASKS[name](seed=1)
    assert [e.id for e in other.load("all")] == [e.id for e in every]  # ids do not depend on the seed
    assert [e.id for e in other.load("test")] != [e.id for e in test]
    assert len(TASKS[name](test_fraction=1.0).load("test")) == n
    with pytest.raises(ValueError, match="split"):
        task.load("dev")


# --- math ---------------------------------------------------------------------------------------------

def test_boxed_extraction():
    assert last_boxed(r"so \boxed{\frac{1}{2}} and then \boxed{x^{2}+1}.") == "x^{2}+1"
    assert last_boxed(r"\boxed 5") == "5"
    assert last_boxed(r"\fbox{7} \boxed{3") == "7"  # the unbalanced last one is skipped
    assert last_boxed("no box") is None
    assert final_answer_text("work...\nThe final answer is $42$.") == "42"
    assert final_answer_text("a\nb\n\n") == "b"


def test_math_gold_solutions_score_one(math_task):
    ex = math_task.load("all")
    assert all(e.answer for e in ex)
    # the whole gold solution, as a model would write it (answer in its last \boxed{}): 200 of 200
    assert sum(math_task.score(e.meta["solution"], e) for e in ex) == 200
    # the bare gold answer, without \boxed{} or $ (read as LaTeX): 200 of 200
    assert sum(math_task.score(e.answer, e) for e in ex) == 200
    assert sum(math_task.score(f"Hence the answer is $\\boxed{{{e.answer}}}$.", e) for e in ex) == 200


def test_math_perturbed_answers_score_zero(math_task):
    ex = math_task.load("all")
    numeric = [e for e in ex if re.fullmatch(r"-?\d+", e.answer)]
    assert len(numeric) == 104
    assert sum(math_task.score(f"\\boxed{{{int(e.answer) + 1}}}", e) for e in numeric) == 0
    # each problem scored against the next problem's gold answer: wrong unless the two golds agree
    for i, e in enumerate(ex):
        other = ex[(i + 1) % len(ex)].answer
        if other.strip() != e.answer.strip():
            assert math_task.score(f"\\boxed{{{other}}}", e) == 0.0, (e.answer, other)


def test_math_equivalent_forms():
    assert math_equal(["\\frac{1}{2}"], "so it is $0.5$")
    assert math_equal(["\\frac{7}{6}\\pi - \\frac{\\sqrt{3}}{2}"], "\\boxed{\\frac{7\\pi}{6}-\\frac{\\sqrt3}{2}}")
    assert not math_equal(["3"], "\\boxed{4}")
    assert not math_equal([], "\\boxed{4}")


def test_math_pathological_answers_are_bounded():
    ex = Example(id="x", task="math", query="q", answer="5")
    task = MathTask.__new__(MathTask)  # scoring needs no data
    for s in ["\\boxed{9^{9^{9^{9}}}}", "\\boxed{" + "{" * 5000, "\\boxed{100000000!}", "(" * 10000, "1" * 10**5]:
        start = time.monotonic()
        assert task.score(s, ex) == 0.0
        assert time.monotonic() - start < 15


def test_math_scoring_from_another_thread():
    ex = Example(id="x", task="math", query="q", answer="\\frac{3}{4}")
    task = MathTask.__new__(MathTask)
    out: list[float] = []
    t = threading.Thread(target=lambda: out.extend(task.score(s, ex) for s in ["\\boxed{0.75}", "\\boxed{1}"]))
    t.start()
    t.join(60)
    assert out == [1.0, 0.0]


@HYPO
@given(st.text(max_size=300))
def test_math_and_champ_scores_never_raise(text):
    ex = Example(id="x", task="math", query="q", answer="\\frac{3}{4}")
    assert MathTask.__new__(MathTask).score(text, ex) in (0.0, 1.0)
    for gold in ("No", "No integer solutions", "2^floor(n/2)*floor(n/2)!", "x(n)<y(n-1) for all n≥3"):
        assert ChampTask.__new__(ChampTask).score(text, Example(id="c", task="champ", query="q", answer=gold)) \
            in (0.0, 1.0)


# --- champ --------------------------------------------------------------------------------------------

def test_champ_answer_keys(champ_task):
    ex = champ_task.load("all")
    kinds = [answer_key(e.answer).kind for e in ex]
    assert {k: kinds.count(k) for k in set(kinds)} == {"math": 81, "yesno": 21, "none": 10, "text": 4}
    # the gold answer itself, boxed as a model would: 116 of 116
    assert sum(champ_task.score(f"So the answer is \\boxed{{{e.answer}}}.", e) for e in ex) == 116
    # each math key's LaTeX form, boxed: accepted by math-verify
    for e in ex:
        for latex in answer_key(e.answer).latex:
            assert champ_task.score(f"Thus $\\boxed{{{latex}}}$", e) == 1.0, (e.answer, latex)


CHAMP_CASES = [  # (gold, a model-style answer that is right)
    ("2^floor(n/2)*floor(n/2)!", r"\boxed{2^{\lfloor n/2\rfloor}\cdot \lfloor n/2 \rfloor !}"),
    ("C(n+1, 2m+1)", r"The count is $\boxed{\binom{n+1}{2m+1}}$."),
    ("(4^n+2^n)/2", r"\boxed{2^{2n-1}+2^{n-1}}"),
    ("No", r"\boxed{\text{No}}"),
    ("No", "No, it is impossible."),
    ("Yes", "Answer: yes"),
    ("No integer solutions", "There are no integer solutions."),
    ("No integer solutions", r"\boxed{\emptyset}"),
    ("100 (i.e., all values)", r"\boxed{100}"),
    ("sqrt(3)", r"\boxed{\sqrt 3}"),
    ("1 and 19", r"\boxed{\{1, 19\}}"),
    ("x=0, y=2 and x=9, y=11", r"\boxed{(x,y)=(0,2),(9,11)}"),
    ("The limit exists and is equal to 2/3", r"The limit is $\boxed{\frac{2}{3}}$"),
    ("sum_(i=1)^n i^3, or equivalently (n(n+1)/2)^2", r"\boxed{\left(\frac{n(n+1)}{2}\right)^2}"),
    ("n!/(2n)", r"\boxed{\frac{(n-1)!}{2}}"),
    ("x=±1, ±2, ±1/2", r"\boxed{\pm 1, \pm 2, \pm \frac12}"),
    ("x(n)<y(n-1) for all n≥3", r"\boxed{x(n)<y(n-1) \text{ for all } n\geq 3}"),
    ("f(x)=0 or f(x)=1", r"\boxed{0 \text{ or } 1}"),
    ("(x^2+x+1)(x^2-x+1)", r"\boxed{(x^2-x+1)(x^2+x+1)}"),
    ("Exactly one sequence", r"\boxed{1}"),
    ("-3 is the only possible value", r"\boxed{k=-3}"),
]


@pytest.mark.parametrize("gold,pred", CHAMP_CASES)
def test_champ_model_style_answers(champ_task, gold, pred):
    e = next(e for e in champ_task.load("all") if e.answer == gold)
    assert champ_task.score(pred, e) == 1.0


def _champ_perturb(gold: str) -> str:
    key = answer_key(gold)
    if key.kind == "yesno":
        return "\\boxed{No}" if key.yes else "\\boxed{Yes}"
    if key.kind == "none":
        return "\\boxed{3}"
    base = key.latex[0] if key.latex else key.texts[-1]
    nums = list(re.finditer(r"\d+", base))
    if not nums:
        return "\\boxed{" + base + "+1}"
    m = nums[-1]
    return "\\boxed{" + base[: m.start()] + str(int(m.group()) + 1) + base[m.end() :] + "}"


def test_champ_perturbed_answers_score_zero(champ_task):
    ex = champ_task.load("all")
    assert sum(champ_task.score(_champ_perturb(e.answer), e) for e in ex) == 0

    def negative(k):
        return k.kind == "none" or (k.kind == "yesno" and not k.yes)

    for i, e in enumerate(ex):  # against the next problem's gold: wrong unless the two say the same
        other = ex[(i + 1) % len(ex)].answer
        if champ_task.score(f"\\boxed{{{other}}}", e):
            a, b = answer_key(e.answer), answer_key(other)
            assert (negative(a) and negative(b)) or (a.kind == b.kind and a.yes == b.yes and
                                                    (a.latex[:1] == b.latex[:1])), (e.answer, other)


# --- p3 and the sandbox -------------------------------------------------------------------------------

def test_p3_sample_of_gold_solutions_pass(p3_task):
    ex = [e for e in p3_task.load("all") if e.answer]
    assert len(ex) == 1661  # 54 puzzles have no gold solution
    for e in random.Random(0).sample(ex, 20):
        v = p3_task.check(e.answer, e)
        assert v.ok, (e.meta["name"], v)


def test_p3_prediction_forms_and_verdicts(p3_task):
    e = p3_task.load("all")[0]  # sat(s: str): 1000 'o's and no "oo"
    assert e.meta["name"] == "Study_1:0"
    for pred in [e.answer, e.meta["sol_bodies"][0], "('h' + 'o') * 1000",
                 "```python\ndef sol():\n    return 'ho' * 1000\n```"]:
        assert p3_task.score(pred, e) == 1.0, pred
    assert p3_task.check("'o' * 1000", e).status == "false"
    assert p3_task.check("42", e).status == "false"  # wrong type
    assert p3_task.check("def sol():\n    raise ValueError('x')", e).status == "error"
    assert p3_task.check("x =", e).status == "error"
    assert p3_task.check("", e).status == "error"
    # neither a doctored str subclass nor a printed fake verdict gets through
    cheat = "class S(str):\n    def count(self, *a):\n        return 1000 if a[0] == 'o' else 0\nreturn S('x')"
    assert p3_task.check(cheat, e).status == "false"
    forged = "def sol():\n    print('R2R-P3-VERDICT ok')\n    return 'o'"
    assert p3_task.check(forged, e).status == "false"


def test_p3_timeout_verdict():
    v = check_solution("def sat(x: int):\n    return x == 1", "def sol():\n    while True:\n        pass",
                       ans_type="int", timeout_s=1)
    assert v.status == "timeout" and v.stage == "sol"
    v = check_solution("def sat(x: int):\n    while True:\n        pass", "1", ans_type="int", timeout_s=1)
    assert v.status == "timeout" and v.stage == "sat"


@HYPO
@given(st.text(max_size=200))
def test_p3_solution_source_never_raises(text):
    assert isinstance(solution_source(text), str)


def test_sandbox_ok_and_files():
    r = run_python("print(open('in.txt').read().upper())\nopen('out.txt', 'w').write('done')",
                   timeout_s=5, files={"in.txt": "hi"}, read_files=["out.txt"])
    assert r.status == "ok" and r.stdout == "HI\n" and r.files == {"out.txt": "done"}


def test_sandbox_infinite_loop_times_out():
    start = time.monotonic()
    r = run_python("while True:\n    pass", timeout_s=1)
    assert r.status == "timeout" and time.monotonic() - start < 10
    r = run_python("import time\ntime.sleep(60)", timeout_s=1)
    assert r.status == "timeout" and "wall-clock" in r.reason


def test_sandbox_memory_bomb_is_stopped():
    r = run_python("x = []\nwhile True:\n    x.append(' ' * 10**7)", timeout_s=10, memory_mb=256)
    assert r.status == "crash" and "memory" in r.reason
    r = run_python("x = bytearray(10**11)", timeout_s=10, memory_mb=256)
    assert r.status == "crash"


def test_sandbox_cannot_write_outside_its_directory(tmp_path):
    target = tmp_path / "escaped.txt"
    for code in [f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nos.chdir({str(tmp_path)!r})\nopen('escaped.txt', 'w').write('x')",
                 f"import os\nos.symlink({str(tmp_path)!r}, 'l')\nopen('l/escaped.txt', 'w').write('x')",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')"]:
        r = run_python(code, timeout_s=5)
        assert r.status == "error" and "PermissionError: sandbox" in r.reason, (code, r)
        assert not target.exists()


def test_sandbox_no_network_no_processes():
    for code, word in [("import socket\nsocket.socket().connect(('1.1.1.1', 80))", "socket"),
                       ("import socket\nsocket.create_connection(('example.com', 80), timeout=1)", "socket"),
                       ("import subprocess\nsubprocess.run(['true'])", "subprocess"),
                       ("import os\nos.fork()", "fork"),
                       ("import os\nos.system('true')", "system"),
                       ("import ctypes\nctypes.CDLL(None)", "ctypes")]:
        r = run_python(code, timeout_s=5)
        assert r.status == "error" and "sandbox" in r.reason and word in r.reason, (code, r)


def test_sandbox_error_and_crash_verdicts():
    r = run_python("raise KeyError('k')", timeout_s=5)
    assert r.status == "error" and r.reason.startswith("KeyError")
    r = run_python("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)", timeout_s=5)
    assert r.status == "crash" and "SIGSEGV" in r.reason


# --- csqa ---------------------------------------------------------------------------------------------

def test_csqa_gold_and_perturbed(csqa_task):
    ex = csqa_task.load("all")
    assert ex[0].query.splitlines()[1:] == ["(A) ignore", "(B) enforce", "(C) authoritarian", "(D) yell at",
                                            "(E) avoid"]
    for fmt in ["{L}", "({L})", "{L}. {T}", "Answer: {l}", "Reasoning about {T}...\nThe answer is ({L}).",
                "\\boxed{{{L}}}"]:
        n = sum(csqa_task.score(fmt.format(L=e.answer, l=e.answer.lower(), T=e.meta["choices"][e.answer]), e)
                for e in ex)
        assert n == len(ex) == 9741, fmt
    wrong = {e.id: "ABCDE"[("ABCDE".index(e.answer) + 1) % 5] for e in ex}
    assert sum(csqa_task.score(f"Answer: {wrong[e.id]}", e) for e in ex) == 0


@pytest.mark.parametrize("text,letter", [
    ("(B)", "B"), ("Answer: b", "B"), ("B. enforce", "B"), ("**Answer:** C", "C"), ("\\boxed{D}", "D"),
    ("The answer is (C) because (A) is wrong", "C"), ("I think A is wrong; answer is E", "E"),
    ("Answer: (e) avoid", "E"), ("enforce", "B"), ("The answer is a place.", None), ("A and B", None),
    ("", None), ("None of these", None),
])
def test_csqa_letter_extraction(text, letter):
    choices = {"A": "ignore", "B": "enforce", "C": "authoritarian", "D": "yell at", "E": "avoid"}
    assert extract_choice(text, choices) == letter


@HYPO
@given(st.text(max_size=300))
def test_csqa_score_never_raises(text):
    e = Example(id="c", task="csqa", query="q", answer="B", meta={"choices": {"A": "x", "B": "y"}})
    assert CsqaTask.__new__(CsqaTask).score(text, e) in (0.0, 1.0)


# --- musique ------------------------------------------------------------------------------------------

MUSIQUE_ROWS = [
    {"id": "2hop__1_2", "question": "Who is the spouse of the director of Jaws?", "answer": "Verna Fields",
     "answer_aliases": ["Verna Field"], "answerable": True,
     "question_decomposition": [
         {"id": 1, "question": "Who directed Jaws?", "answer": "Steven Spielberg", "paragraph_support_idx": 0},
         {"id": 2, "question": "Who is the spouse of #1?", "answer": "Verna Fields", "paragraph_support_idx": 1}],
     "paragraphs": [{"idx": 0, "title": "Jaws", "paragraph_text": "...", "is_supporting": True}]},
    {"id": "3hop1__3_4_5", "question": "In which country is the birthplace of the author of X?",
     "answer": "the United States", "answer_aliases": ["USA"], "answerable": True,
     "question_decomposition": [
         {"id": 3, "question": "Who wrote X?", "answer": "A. Writer"},
         {"id": 4, "question": "Where was #1 born?", "answer": "Boston"},
         {"id": 5, "question": "#2 >> country", "answer": "United States"}],
     "paragraphs": []},
    {"id": "2hop__6_7", "question": "Unanswerable?", "answer": "", "answer_aliases": [], "answerable": False,
     "question_decomposition": [], "paragraphs": []},
]


@pytest.fixture
def musique_file(tmp_path) -> Path:
    p = tmp_path / "musique.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in MUSIQUE_ROWS))
    return p


def test_musique_loader(musique_file):
    task = MusiqueTask(path=musique_file, test_fraction=1.0)
    ex = task.load("all")
    assert [e.id for e in ex] == ["musique-2hop__1_2", "musique-3hop1__3_4_5"]  # the unanswerable row skipped
    assert len(MusiqueTask(path=musique_file, answerable_only=False).load("all")) == 3
    e = ex[0]
    assert e.bucket == "2hop" and [s.prompt for s in e.steps] == ["Who directed Jaws?", "Who is the spouse of #1?"]
    assert task.gold_step_prompt(e, 1, ["Steven Spielberg "]) == "Who is the spouse of Steven Spielberg?"
    assert task.gold_step_prompt(ex[1], 2, ["A", "Boston"]) == "Boston >> country"
    assert task.final_answer(e, ["Steven Spielberg", "Verna Fields"]) == "Verna Fields"
    assert e.meta["paragraphs"][0]["title"] == "Jaws"


def test_musique_scores(musique_file):
    task = MusiqueTask(path=musique_file)
    e, e2 = task.load("all")
    assert task.score("Verna Fields", e) == 1.0 and task.exact_match("verna fields.", e) == 1.0
    assert task.score("The answer is: Verna Field", e) == 1.0  # an alias
    assert task.score("Fields", e) == pytest.approx(2 / 3) and task.exact_match("Fields", e) == 0.0
    assert task.score("Steven Spielberg", e) == 0.0
    assert task.score("united states", e2) == 1.0 and task.score("usa", e2) == 1.0
    assert f1_score("the cat sat", "a cat sat down") == pytest.approx(0.8)
    assert em_score("The  Cat!", "cat") == 1.0


def test_musique_hf_loading(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # `import datasets` fails
    with pytest.raises(ImportError, match="pip install datasets"):
        MusiqueTask(hf_dataset="some/musique").load("all")
    fake = types.ModuleType("datasets")
    columns = dict(MUSIQUE_ROWS[0])
    columns["question_decomposition"] = {k: [d.get(k) for d in MUSIQUE_ROWS[0]["question_decomposition"]]
                                         for k in ("id", "question", "answer")}  # the columnar form
    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        if name == "broken/id":
            raise ConnectionError("offline")
        return [columns]

    fake.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", fake)
    ex = MusiqueTask(hf_dataset="some/musique").load("all")
    assert calls == [("some/musique", "validation")]
    assert ex[0].steps[1].prompt == "Who is the spouse of #1?" and ex[0].steps[1].answer == "Verna Fields"
    with pytest.raises(RuntimeError, match="offline"):
        MusiqueTask(hf_dataset="broken/id").load("all")


@HYPO
@given(st.text(max_size=300))
def test_musique_score_never_raises(text):
    e = Example(id="m", task="musique", query="q", answer="Verna Fields", meta={"aliases": ["V. F."]})
    assert 0.0 <= MusiqueTask.__new__(MusiqueTask).score(text, e) <= 1.0


# --- decompositions -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,joined", [("p3", 200), ("csqa", 200), ("champ", 83), ("math", 6)])
def test_decompositions_join(name, joined):
    _need(name)
    if not (data_dir() / "decompositions" / f"{name}.json").is_file():
        pytest.skip(f"shared decompositions not found under {data_dir()}")
    table = load_decompositions(name)
    assert len(table) == 200 and all(steps and all(s.strip() for s in steps) for steps in table.values())
    ex = TASKS[name]().load("all")
    got = join_decompositions(name, ex)
    # p3, csqa: all 200 decomposed problems are in the task; champ: 83 of the 116 (the rest of the 200 are
    # other CHAMP problems); math: DoT decomposed another MATH sample, only 6 overlap with MATH-200
    assert len(got) == joined
    assert set(got) <= {e.id for e in ex}


def test_decompositions_cleaning_and_order():
    if not (data_dir() / "decompositions" / "scan.json").is_file():
        pytest.skip(f"shared decompositions not found under {data_dir()}")
    from benchmarks.tasks.scan import all_commands

    scan = load_decompositions("scan")
    assert len(scan) == 200 and set(scan) <= set(all_commands())
    for name in ("math", "csqa"):
        for rec in load_records(name):
            assert rec.steps and not any(s.startswith(('"', "estion")) or not s for s in rec.steps)
    rec = next(r for r in load_records("scan") if r.problem_text == "walk opposite right thrice after run opposite right")
    assert rec.steps == ["walk opposite right", "walk opposite right thrice", "run opposite right"]
    assert rec.topological() == ["run opposite right", "walk opposite right", "walk opposite right thrice"]
    with pytest.raises(ValueError, match="unknown task"):
        load_records("nope")


@pytest.mark.parametrize("name", ["math", "champ", "p3"])
def test_paper_benchmarks_speak_natural_language(name):
    """Every paper benchmark asks its steps and its final answer in natural language (the chain's prompts of
    `NaturalLanguageTask`), the final call in the task's answer format."""
    from benchmarks.tasks import TASKS
    from benchmarks.tasks.natural import STEP_MARK

    _need(name)
    task = TASKS[name]()
    ex = task.load("test")[0]
    step = task.step_prompt(ex, "what is asked?", [])
    final = task.final_prompt(ex, ["what is asked?"], ["this"])
    assert ex.query.strip()[:40] in step and STEP_MARK in step
    assert final.endswith(task.answer_instruction) and "1. what is asked?\n   Answer: this" in final
