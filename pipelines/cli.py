"""`r2r`: one command for the project's entry points (`r2r zoo ...` = `python -m pipelines.zoo ...`)."""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "zoo": ("pipelines.zoo", "train the tiny model zoo and print its card"),
    "labels": ("pipelines.labels", "search SFT labels (decompositions, allocations) on the pool"),
    "sft": ("pipelines.sft", "SFT of the decomposer and allocator on the labels"),
    "train": ("pipelines.train", "alternating GRPO of decomposer and allocator on Ray (--resume)"),
    "evaluate": ("pipelines.evaluate", "routing methods on the test split: results.json, pareto.png"),
    "route": ("pipelines.route", "route one query through the chain and show every decision"),
    "serve": ("pipelines.serve", "OpenAI-compatible endpoints (`r2r serve pool`)"),
    "demo": ("pipelines.demo", "the main job on the embedded tiny world"),
}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:<8}{help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: r2r COMMAND [options]\n\ncommands:\n" + "\n".join(lines))
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    module = importlib.import_module(COMMANDS[argv[0]][0])
    module.main(argv[1:])


if __name__ == "__main__":
    main()
