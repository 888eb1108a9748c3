"""Route one query through the R2 chain and show every decision.

    r2r route --config configs/tiny.yaml "city of mentor of zorbak"
    r2r route --run runs/tiny/router/grpo "jump twice after walk left"

Prints the decomposition, the allocation, each step's model, answer, confidence and cost, the final
answer and the total cost. Uses the trained router in `--run`, or `router.path`, or the run's own
GRPO-trained router (`<run_dir>/router/grpo`, as `make demo` leaves it); otherwise an untrained router
initialised from a zoo checkpoint, and says so. The query's task is
inferred through the task registry; a query without a known gold answer is routed, not scored.
"""
from __future__ import annotations

import math
import sys

from rich.markup import escape
from rich.table import Table

from core.config import config_from_args, config_parser
from core.console import console as make_console
from pipelines.controller import Router
from pipelines.runs import default_router


def main(argv: list[str] | None = None):
    parser = config_parser(__doc__)
    parser.add_argument("query")
    parser.add_argument("--task", help="task of the query (default: inferred through the task registry)")
    parser.add_argument("--run", help="a trained router folder (its stored config is used unless --config is given)")
    args = parser.parse_args(argv)
    console = make_console()
    config_given = "--config" in (sys.argv[1:] if argv is None else argv)
    try:
        router = Router.from_run(args.run, args.config if config_given else None, args.overrides) if args.run \
            else Router(cfg := config_from_args(args), default_router(cfg))
        router.world.infer(args.query, args.task)  # fail on an unknown task before Ray starts
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(str(err)) from None
    with router:
        console.print(f"router: {router.description}")
        t = router.route(args.query, args.task)
    d = t.decomposition.decomposition
    console.print(f"task: {t.task}   decomposition ({t.decomposer}, format_ok={d.format_ok}): {d.steps}")
    table = Table(title=f"query: {t.query}")
    for col in ["step", "text", "allocated", "answered by", "answer", "confidence", "cost $"]:
        table.add_column(col)
    for i, s in enumerate(t.steps, 1):
        table.add_row(str(i), s.text, router.model_ids[s.allocation.tier], " -> ".join(c.model_id for c in s.calls),
                      s.answer, f"{s.confidence:.3f}", f"{sum(c.cost_usd for c in s.calls):.3g}")
    console.print(table)
    verdict = "no gold answer" if math.isnan(t.correct) else "correct" if t.correct >= 1 else f"wrong (gold: {t.gold})"
    console.print(escape(f"final answer: {t.answer}   [{verdict}]   total cost: ${t.cost_usd:.3g} "
                         f"({len(t.calls)} calls, paper-pool prices)"))
    return t


if __name__ == "__main__":
    main()
