"""Bag-of-words features of texts over a fixed word list, and a seeded logistic regression on them: what
the small classifier baselines (`task-router`, and the subtask allocators `rllib-ppo` and its
supervised twin) see and how the supervised ones are fitted."""
from __future__ import annotations

from collections.abc import Iterable

import torch


class BagOfWords:
    """Text -> a fixed-length 0/1 vector: word i of the list present or not (unknown words are dropped)."""

    def __init__(self, words: Iterable[str]):
        self.index: dict[str, int] = {}
        for w in words:
            self.index.setdefault(w, len(self.index))
        if not self.index:
            raise ValueError("a bag of words needs at least one word")

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> BagOfWords:
        """The words of `texts`, in order of first appearance."""
        return cls(w for t in texts for w in t.split())

    @property
    def dim(self) -> int:
        return len(self.index)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        x = torch.zeros(len(texts), self.dim)
        for i, text in enumerate(texts):
            for w in text.split():
                if w in self.index:
                    x[i, self.index[w]] = 1.0
        return x


def fit_logreg(x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int, steps: int = 300,
               lr: float = 0.05) -> torch.nn.Linear:
    """A multinomial logistic regression (full-batch Adam, light weight decay), seeded on its own: the
    same classifier whatever ran before in the process."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        clf = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.Adam(clf.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(clf(x), y).backward()
        opt.step()
    return clf
