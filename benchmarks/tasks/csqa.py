"""`csqa`: CommonsenseQA (Talmor et al. 2019), the train split's 9,741 questions as DoT ships them.

Rows are `id, question.stem, question.choices[{label, text}], answerKey`. The query is the stem
followed by one lettered choice per line ("(A) ignore"); the gold answer is the letter. Ids are
`csqa-<the data's id>`.

Scoring reads the chosen letter out of free-form output (`extract_choice`), in order of evidence:
an explicit "answer is (B)" / "Answer: b" (the last one), a `\\boxed{B}`, a reply that starts with the
letter ("B", "(B)", "B. enforce", "B) ..."), a lone "(B)" among the options' letters, and last the
text of exactly one choice in the final line. A lower-case letter counts only where it cannot be
an article ("answer: b", "(b)", "b."). No letter found scores 0.

In the chain (`NaturalLanguageTask`'s prompts) each step sees the question with its choices; a final
call asks for the letter of the correct choice.
"""
from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path

from benchmarks.tasks.base import Example, register_task
from benchmarks.tasks.mathcheck import last_boxed
from benchmarks.tasks.natural import NaturalLanguageTask
from benchmarks.tasks.splits import DEFAULT_TEST_FRACTION, data_file, split_examples

DATA_FILE = "csqa/train_rand_split.jsonl"
LETTERS = "ABCDE"

_L = f"[{LETTERS}{LETTERS.lower()}]"
_ANSWER = re.compile(
    rf"answer[\s*]*(?:is|:|=|-)?[\s*]*(?:option|choice)?[\s*:\-]*\(?({_L})(?:\)|(?=[\s.,:;*]|$))",
    re.IGNORECASE,
)
_LEADING = re.compile(rf"^\s*(?:\*\*)?\(?({_L})(?:\)|\.|:|\*\*|\s*$)")
_PAREN = re.compile(rf"\(({_L})\)")


def _letter(raw: str, span_end: int, text: str) -> str | None:
    """An upper-case letter always counts; a lower-case one only if nothing word-like follows it."""
    if raw.isupper():
        return raw
    rest = text[span_end:]
    return raw.upper() if re.match(r"\s*(?:$|[).:;,*\n])", rest) else None


def extract_choice(text: str, choices: dict[str, str] | None = None) -> str | None:
    """The option letter a free-form reply picks, or None (see the module docstring). Never raises."""
    if not isinstance(text, str) or not text.strip():
        return None
    for m in reversed(list(_ANSWER.finditer(text))):
        letter = _letter(m.group(1), m.end(1), text)
        if letter:
            return letter
    boxed = last_boxed(text)
    if boxed is not None:
        inner = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", boxed).strip().strip("()").strip()
        if len(inner) == 1 and inner.upper() in LETTERS:
            return inner.upper()
    m = _LEADING.match(text)
    if m:
        letter = _letter(m.group(1), m.end(1), text)
        if letter:
            return letter
    parens = {p.upper() for p in _PAREN.findall(text)}
    if len(parens) == 1:
        return parens.pop()
    if choices:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        last = lines[-1].lower() if lines else ""
        hits = [k for k, v in choices.items() if v and re.search(rf"\b{re.escape(v.lower())}\b", last)]
        if len(hits) == 1:
            return hits[0]
    return None


def format_query(stem: str, choices: list[dict]) -> str:
    return stem.strip() + "\n" + "\n".join(f"({c['label']}) {c['text']}" for c in choices)


@register_task("csqa")
class CsqaTask(NaturalLanguageTask):
    answer_instruction = "Answer with the letter (A, B, C, D or E) of the correct choice."

    def __init__(self, path: str | Path | None = None, seed: int = 0,
                 test_fraction: float = DEFAULT_TEST_FRACTION) -> None:
        self.path = data_file(path, DATA_FILE, "csqa")
        self.seed = seed
        self.test_fraction = test_fraction

    @cached_property
    def examples(self) -> list[Example]:
        out = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                row = json.loads(line)
                q = row["question"]
                out.append(Example(
                    id=f"csqa-{row['id']}", task="csqa", query=format_query(q["stem"], q["choices"]),
                    answer=row["answerKey"], bucket=q.get("question_concept", ""),
                    meta={"problem_text": q["stem"], "choices": {c["label"]: c["text"] for c in q["choices"]}},
                ))
        return out

    def load(self, split: str) -> list[Example]:
        return split_examples(self.examples, split, self.seed, self.test_fraction, "csqa")

    def score(self, prediction: str, example: Example) -> float:
        try:
            return float(extract_choice(prediction, example.meta.get("choices")) == example.answer)
        except Exception:
            return 0.0
