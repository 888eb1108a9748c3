"""`champ`: CHAMP-116 (competition-level problems, Mao et al. 2024, as sampled by DoT).

Rows are `problem_identifier, problem_text, problem_answer`. The gold answers are short free text in
plain-text math notation ("2^floor(n/2)*floor(n/2)!", "No", "No integer solutions",
"100 (i.e., all values)", "The limit exists and is equal to 2/3"), so scoring first turns each gold into
an answer key (`answer_key`):

- `yesno` (gold "Yes"/"No", possibly followed by ", ..."): the first yes/no word of the prediction's
  final answer must agree;
- `none` ("No integer solutions", "No such values", "Such a sequence is not possible"): the final answer
  must say there is none (no / none / not possible / does not exist / the empty set);
- `math`: the gold, stripped of its explanation ("(i.e., ...)", "is the only possible value", "The limit
  exists and is equal to ..."), converted to LaTeX (floor -> \\lfloor\\rfloor, sqrt -> \\sqrt{}, C(a, b) ->
  \\binom{a}{b}, sum_(i=1)^n -> \\sum_{i=1}^{n}); compared by math-verify (see `mathcheck`);
- `text` (a few answers that are a choice among stated options): normalised text equality.

Every kind also accepts the final answer equal to the gold text itself (normalised). `_OVERRIDES`
spells out the keys of the few answers the rules cannot read (solution pairs, an ellipsis product,
the comparison options). Ids are `champ-<problem_identifier>`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from benchmarks.tasks.base import Example, register_task
from benchmarks.tasks.mathcheck import final_answer_text, math_equal
from benchmarks.tasks.natural import NaturalLanguageTask
from benchmarks.tasks.splits import DEFAULT_TEST_FRACTION, data_file, split_examples

DATA_FILE = "champ/champ116.json"


@dataclass(frozen=True)
class AnswerKey:
    kind: str  # "yesno" | "none" | "math" | "text"
    latex: tuple[str, ...] = ()  # math-verify golds (any one matching is enough)
    texts: tuple[str, ...] = ()  # accepted final answers, compared after `normalize_text`
    yes: bool | None = None  # for "yesno"


_OVERRIDES: dict[str, AnswerKey] = {
    "x(n)<y(n-1) for all n≥3": AnswerKey(
        "text", texts=("x(n)<y(n-1) for all n≥3", "x(n)<y(n-1)", "x_n<y_{n-1}", "x(n)<y(n-1) for all n\\geq 3")),
    "x(n)>y(n-1) for all n≥2": AnswerKey(
        "text", texts=("x(n)>y(n-1) for all n≥2", "x(n)>y(n-1)", "x_n>y_{n-1}", "x(n)>y(n-1) for all n\\geq 2")),
    "Always greater than 20": AnswerKey(
        "text", texts=("always greater than 20", "always greater", "w_200>20 always", "always >20")),
    "Exactly one sequence": AnswerKey("math", latex=("1",), texts=("exactly one sequence", "exactly one", "one")),
    "The function is periodic, with a period of 8": AnswerKey(
        "math", latex=("8",), texts=("the function is periodic, with a period of 8", "periodic with period 8")),
    "x(x-1)(x-2)...(x-2022)": AnswerKey(
        "text", texts=("x(x-1)(x-2)...(x-2022)", "x(x-1)(x-2)\\cdots(x-2022)", "x(x-1)\\cdots(x-2022)",
                       "x(x-1)(x-2)\\ldots(x-2022)", "\\prod_{k=0}^{2022}(x-k)", "\\prod_{i=0}^{2022}(x-i)")),
    # math-verify reads "\\pm" only in "x = \\pm 1"-like answers, so the four roots are spelled out
    "a(1±sqrt(2)), a(1±sqrt(5))/2": AnswerKey(
        "math", latex=("a(1+\\sqrt{2}), a(1-\\sqrt{2}), \\frac{a(1+\\sqrt{5})}{2}, \\frac{a(1-\\sqrt{5})}{2}",),
        texts=("a(1±sqrt(2)), a(1±sqrt(5))/2", "a(1\\pm\\sqrt{2}), \\frac{a(1\\pm\\sqrt{5})}{2}")),
    "x=0, y=2 and x=9, y=11": AnswerKey("math", latex=("(0, 2), (9, 11)", "x=0, y=2, x=9, y=11")),
    "x=1, y=1 and x=3, y=2": AnswerKey("math", latex=("(1, 1), (3, 2)", "x=1, y=1, x=3, y=2")),
    "(x=8, y=2), (x=2, y=8)": AnswerKey("math", latex=("(8, 2), (2, 8)", "(x=8, y=2), (x=2, y=8)")),
    "f(x)=0 or f(x)=1": AnswerKey("math", latex=("0, 1", "f(x)=0, f(x)=1")),
}

_FUNCS = {"floor", "sqrt", "sum", "C"}  # plain-text function names `to_latex` understands
_NONE = re.compile(
    r"\b(?:no|none|not possible|impossible|cannot exist|does not exist|do not exist|doesn't exist|"
    r"don't exist|no such|empty set|there are no|there is no)\b|\\emptyset|\\varnothing|∅|^\{\s*\}$",
    re.IGNORECASE,
)


def normalize_text(s: str) -> str:
    """Lower case, LaTeX text wrappers and math delimiters dropped, whitespace and final punctuation gone."""
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\geq", "≥").replace("\\ge", "≥").replace("\\leq", "≤").replace("\\le", "≤")
    s = s.replace("−", "-").replace("$", "").replace("\\,", "").replace("\\!", "")
    s = re.sub(r"\s+", "", s.lower())
    return s.rstrip(".;:")


def _close(s: str, i: int) -> int:
    """Index of the parenthesis closing the one at s[i]."""
    depth = 0
    for k in range(i, len(s)):
        depth += {"(": 1, ")": -1}.get(s[k], 0)
        if depth == 0:
            return k
    raise ValueError("unbalanced parentheses")


def to_latex(expr: str) -> str:
    """Plain-text math as CHAMP writes it -> LaTeX math-verify reads."""
    s = expr.replace("−", "-").replace("±", "\\pm ").replace("≥", "\\geq ").replace("≤", "\\leq ")
    s = re.sub(r"sum_\(([^()]*)\)\^(\w+)", r"\\sum_{\1}^{\2}", s)
    for name, (op, cl) in {"floor": ("{\\lfloor ", " \\rfloor}"), "sqrt": ("{\\sqrt{", "}}")}.items():
        while (i := s.find(name + "(")) >= 0:
            j = _close(s, i + len(name))
            s = s[:i] + op + s[i + len(name) + 1 : j] + cl + s[j + 1 :]
    while (m := re.search(r"(?<![A-Za-z\\])C\(", s)) is not None:
        j = _close(s, m.end() - 1)
        a, b = s[m.end() : j].split(",", 1)
        s = s[: m.start()] + "{\\binom{" + a.strip() + "}{" + b.strip() + "}}" + s[j + 1 :]
    return s


def answer_key(gold: str) -> AnswerKey:
    """How a CHAMP gold answer is checked (see the module docstring)."""
    g = gold.replace("−", "-").strip()
    if gold in _OVERRIDES:
        key = _OVERRIDES[gold]
        return key if gold in key.texts else AnswerKey(key.kind, key.latex, (gold, *key.texts), key.yes)
    m = re.match(r"(yes|no)\b\s*(?:[,.;]|$)", g, re.IGNORECASE)
    if m:
        return AnswerKey("yesno", texts=(g,), yes=m.group(1).lower() == "yes")
    if re.match(r"(?:no (?:\w+ )*(?:solutions?|values?)|such a \w+ is not possible)$", g, re.IGNORECASE):
        return AnswerKey("none", texts=(g,))
    core = re.sub(r"\s*\((?:i\.e\.|no such).*\)$", "", g)
    core = re.sub(r"^at most (\S+) .*$", r"\1", core, flags=re.IGNORECASE)
    core = re.sub(r"^(.+?) is the only possible value$", r"\1", core)
    core = re.sub(r"^(?:the limit exists and is equal to|the only possible value for the limit is) (.+)$",
                  r"\1", core, flags=re.IGNORECASE)
    core = re.sub(r"^(\S+) (?:pairs|times)$", r"\1", core)
    alts = [a.strip() for a in core.split(", or equivalently ")]
    alts = [re.sub(r" (?:and|or) ", ", ", a) for a in alts]
    words = {w for a in alts for w in re.findall(r"[A-Za-z]{2,}", a)} - _FUNCS
    if words or "..." in core:
        return AnswerKey("text", texts=(g, *alts))
    return AnswerKey("math", latex=tuple(to_latex(a) for a in alts), texts=(g, *alts))


def _first_yes_no(text: str) -> bool | None:
    m = re.search(r"\b(yes|no)\b", text, re.IGNORECASE)
    return None if m is None else m.group(1).lower() == "yes"


def check(prediction: str, key: AnswerKey) -> bool:
    """Whether free-form `prediction` answers correctly under `key`; never raises."""
    if not isinstance(prediction, str) or not prediction.strip():
        return False
    final = final_answer_text(prediction)
    plain = re.sub(r"\\(?:text|textbf|mathrm|mbox)\s*\{([^{}]*)\}", r"\1", final)
    if key.kind == "yesno":
        return _first_yes_no(plain) is key.yes
    if key.kind == "none":
        return bool(_NONE.search(plain))
    if normalize_text(final) in {normalize_text(t) for t in key.texts}:
        return True
    return bool(key.latex) and math_equal(list(key.latex), prediction)


@register_task("champ")
class ChampTask(NaturalLanguageTask):
    answer_instruction = "Give the final answer only, in \\boxed{} if it is a number or a formula."

    def __init__(self, path: str | Path | None = None, seed: int = 0,
                 test_fraction: float = DEFAULT_TEST_FRACTION) -> None:
        self.path = data_file(path, DATA_FILE, "champ")
        self.seed = seed
        self.test_fraction = test_fraction

    @cached_property
    def examples(self) -> list[Example]:
        rows = json.loads(self.path.read_text(encoding="utf-8"))
        return [
            Example(
                id=f"champ-{row['problem_identifier']}", task="champ", query=row["problem_text"],
                answer=row["problem_answer"], bucket=row["problem_identifier"].split("_")[1],
                meta={"problem_text": row["problem_text"], "identifier": row["problem_identifier"]},
            )
            for row in rows
        ]

    def load(self, split: str) -> list[Example]:
        return split_examples(self.examples, split, self.seed, self.test_fraction, "champ")

    def score(self, prediction: str, example: Example) -> float:
        try:
            return float(check(prediction, answer_key(example.answer)))
        except Exception:
            return 0.0
