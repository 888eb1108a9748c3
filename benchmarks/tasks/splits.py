"""Shared helpers of the file-backed benchmarks (math, champ, p3, csqa, musique): the data file's path
and the deterministic train/test split.

Split policy: these benchmarks are small, so each task shuffles its examples with `random.Random(seed)`
and takes the first `round(n * test_fraction)` as "test", the rest as "train" (default fraction 0.5:
the router needs training queries that are not its test queries). `load("all")` returns every example
in file order. Example ids come from the data (a row index or the data's own id), never from the
split, so they are stable across seeds and fractions.
"""
from __future__ import annotations

import random
from pathlib import Path

from benchmarks.tasks.base import Example, data_dir

SPLITS = ("train", "test", "all")
DEFAULT_TEST_FRACTION = 0.5


def data_file(path: str | Path | None, relative: str, task: str) -> Path:
    """`path`, or `relative` under the shared data dir; FileNotFoundError saying where it looked."""
    p = Path(path) if path is not None else data_dir() / relative
    if not p.is_file():
        how = "the path given" if path is not None else \
            f"{relative} under the data dir {data_dir()} (set R2R_DATA to the shared data folder)"
        raise FileNotFoundError(f"{task}: data file {p} not found ({how})")
    return p


def split_examples(examples: list[Example], split: str, seed: int, test_fraction: float,
                   task: str) -> list[Example]:
    if split not in SPLITS:
        raise ValueError(f"{task}: unknown split {split!r} (train, test or all)")
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"{task}: test_fraction must be in [0, 1], got {test_fraction}")
    if split == "all":
        return list(examples)
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_test = round(len(examples) * test_fraction)
    chosen = order[:n_test] if split == "test" else order[n_test:]
    return [examples[i] for i in sorted(chosen)]
