"""`musique`: MuSiQue (Trivedi et al. 2022), multi-hop questions composed of single-hop ones.

Not in the shared data: load it from a local JSONL file in MuSiQue's official format (one object per
line: `id, question, answer, answer_aliases, question_decomposition[{id, question, answer,
paragraph_support_idx}], answerable, paragraphs`), by default `musique/musique_ans_v1.0_dev.jsonl`
under the data dir, or from the Hugging Face Hub (`hf_dataset="<id>"`, `hf_split`; needs the optional
`datasets` package, imported only then).

The query is the question (the paragraphs stay in `meta["paragraphs"]` for a reading setting); the
steps are the question decomposition as given, "#1"/"#2" references included (the base task's
`gold_step_prompt` fills them with the chain's own earlier answers). Unanswerable rows (MuSiQue-Full) are
skipped unless `answerable_only=False`. Ids are `musique-<the data's id>`; `bucket` is the hop type
("2hop", "3hop1", ...).

Score: SQuAD-style token F1 (lower case, punctuation and articles dropped), the best over the answer
and its aliases; `exact_match` gives EM the same way. If the output says "answer is X" / "Answer: X",
only X is scored.
"""
from __future__ import annotations

import collections
import json
import re
import string
from functools import cached_property
from pathlib import Path
from typing import Any

from benchmarks.tasks.base import Example, Step, data_dir, register_task
from benchmarks.tasks.natural import NaturalLanguageTask
from benchmarks.tasks.splits import DEFAULT_TEST_FRACTION, data_file, split_examples

DATA_FILE = "musique/musique_ans_v1.0_dev.jsonl"


def normalize_answer(s: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def em_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


_ANSWER_IS = re.compile(r"(?:final\s+answer|answer)\s*(?:is|:)\s*:?\s*(.+)", re.IGNORECASE)


def answer_span(prediction: str) -> str:
    """What follows the last "answer is"/"Answer:" (to the end of its line), else the whole output."""
    if not isinstance(prediction, str):
        return ""
    matches = list(_ANSWER_IS.finditer(prediction))
    return matches[-1].group(1).strip() if matches else prediction.strip()


def _rows(obj: Any) -> list[dict]:
    """A list of records from a list of dicts or a dict of columns (how `datasets` may hold them)."""
    if isinstance(obj, dict):
        keys = list(obj)
        return [dict(zip(keys, vals)) for vals in zip(*(obj[k] for k in keys))]
    return list(obj or [])


def to_example(row: dict) -> Example:
    steps = [Step(prompt=d["question"], answer=d["answer"]) for d in _rows(row.get("question_decomposition"))]
    rid = str(row["id"])
    return Example(
        id=f"musique-{rid}", task="musique", query=row["question"], answer=row["answer"], steps=steps,
        bucket=rid.split("__")[0] if "__" in rid else f"{len(steps)}hop",
        meta={"problem_text": row["question"], "aliases": list(row.get("answer_aliases") or []),
              "answerable": bool(row.get("answerable", True)), "paragraphs": _rows(row.get("paragraphs"))},
    )


@register_task("musique")
class MusiqueTask(NaturalLanguageTask):
    def __init__(self, path: str | Path | None = None, seed: int = 0,
                 test_fraction: float = DEFAULT_TEST_FRACTION, hf_dataset: str | None = None,
                 hf_split: str = "validation", answerable_only: bool = True) -> None:
        self.hf_dataset, self.hf_split = hf_dataset, hf_split
        if hf_dataset is None:
            try:
                self.path: Path | None = data_file(path, DATA_FILE, "musique")
            except FileNotFoundError as e:
                raise FileNotFoundError(f"{e}; or pass hf_dataset=<a Hugging Face dataset id>") from None
        else:
            self.path = None
        self.seed = seed
        self.test_fraction = test_fraction
        self.answerable_only = answerable_only

    @classmethod
    def from_config(cls, cfg) -> MusiqueTask:
        return cls(path=cfg.tasks.musique.path, seed=cfg.seed)

    def _raw_rows(self) -> list[dict]:
        if self.path is not None:
            with open(self.path, encoding="utf-8") as f:
                return [json.loads(line) for line in f if line.strip()]
        try:
            import datasets  # lazy: optional, only for the HF dataset path
        except ImportError as e:
            raise ImportError(
                f"musique: loading {self.hf_dataset!r} from the Hugging Face Hub needs the optional `datasets` "
                f"package (pip install datasets); or pass a local JSONL path (default {data_dir() / DATA_FILE})"
            ) from e
        try:
            ds = datasets.load_dataset(self.hf_dataset, split=self.hf_split)
        except Exception as e:
            raise RuntimeError(
                f"musique: could not load {self.hf_dataset!r} (split {self.hf_split!r}) with `datasets`: "
                f"{type(e).__name__}: {e}; pass a local JSONL path instead"
            ) from e
        return [dict(r) for r in ds]

    @cached_property
    def examples(self) -> list[Example]:
        rows = self._raw_rows()
        return [to_example(r) for r in rows if r.get("answerable", True) or not self.answerable_only]

    def load(self, split: str) -> list[Example]:
        return split_examples(self.examples, split, self.seed, self.test_fraction, "musique")

    def _golds(self, example: Example) -> list[str]:
        return [example.answer, *example.meta.get("aliases", [])]

    def score(self, prediction: str, example: Example) -> float:
        """Token F1, best over the answer and its aliases."""
        try:
            span = answer_span(prediction)
            return max(f1_score(span, g) for g in self._golds(example))
        except Exception:
            return 0.0

    def exact_match(self, prediction: str, example: Example) -> float:
        """EM, best over the answer and its aliases."""
        try:
            span = answer_span(prediction)
            return max(em_score(span, g) for g in self._golds(example))
        except Exception:
            return 0.0
