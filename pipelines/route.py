"""Route one query through the R2 chain and show every decision.

    r2r route --config configs/tiny.yaml "city of mentor of zorbak"

Prints the decomposition, the allocation, each step's model, answer, confidence and cost, the final
answer and the total cost. Uses the trained router in `router.path` when there is one; otherwise an
untrained router initialised from a zoo checkpoint, and says so.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.config import Config, config_from_args, config_parser


def trained_router(cfg: Config, path: str | Path, model_ids: list[str], label: str, temperature: float = 0.0):
    """A trained router folder (`allocator/`, and `decomposer/` when one was trained) as a `PolicyRouter`."""
    from policies.policy_lm import PolicyLM
    from policies.router import PolicyRouter

    path = Path(path)
    dec = PolicyLM.from_pretrained(path / "decomposer") if (path / "decomposer").exists() else None
    return PolicyRouter(dec, PolicyLM.from_pretrained(path / "allocator"), model_ids,
                        templates=cfg.router.templates, temperature=temperature, max_steps=cfg.reason.max_steps,
                        max_tokens=cfg.reason.decompose_max_tokens, seed=cfg.seed, label=label)


def load_router(cfg: Config, model_ids: list[str]):
    """(router, description) for the config's router settings."""
    from policies.policy_lm import PolicyLM
    from policies.router import PolicyRouter

    r = cfg.router
    if r.path and (Path(r.path) / "allocator").exists():
        return (trained_router(cfg, r.path, model_ids, f"trained:{r.path}", r.temperature),
                f"trained router from {r.path}")
    common = dict(templates=r.templates, temperature=r.temperature, max_steps=cfg.reason.max_steps,
                  max_tokens=cfg.reason.decompose_max_tokens, seed=cfg.seed)
    init = r.init or cfg.zoo.models[0].name
    path = cfg.zoo_dir / init if (cfg.zoo_dir / init).exists() else Path(init)
    lm = PolicyLM.from_pretrained(path)
    dec = lm if r.decomposer == "policy" else None
    return (PolicyRouter(dec, lm, model_ids, label=f"untrained:{init}", **common),
            f"UNTRAINED router (policies initialised from {init}; decomposition: {r.decomposer})")


def main(argv: list[str] | None = None):
    import ray
    from rich.table import Table

    from actors.pool import start_pool
    from actors.runtime import init_ray
    from pipelines.reason import reason
    from pipelines.zoo import build_world
    from pipelines.zoo import console as make_console

    parser = config_parser(__doc__)
    parser.add_argument("query")
    parser.add_argument("--task", help="task of the query (default: the tiny-world task that parses it)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    console = make_console()
    world = build_world(cfg)
    tasks = world.tasks
    candidates = [args.task] if args.task else list(tasks)
    if args.task and args.task not in tasks:
        raise SystemExit(f"unknown task {args.task!r}; tiny-world tasks: {sorted(tasks)}")
    found = [(n, tasks[n].parse_query(args.query)) for n in candidates]
    found = [(n, ex) for n, ex in found if ex is not None]
    if not found:
        raise SystemExit(f"not a query of {', '.join(candidates)}: {args.query!r} "
                         "(e.g. 'city of mentor of <entity>' or a SCAN command such as 'jump twice after walk left')")
    task_name, example = found[0]
    init_ray()
    pool = start_pool(cfg)
    model_ids = ray.get(pool.model_ids.remote())
    router, description = load_router(cfg, model_ids)
    console.print(f"router: {description}")
    t = reason(example, router, pool, tasks[task_name], cfg.reason, model_ids)
    d = t.decomposition.decomposition
    console.print(f"task: {task_name}   decomposition ({t.decomposer}, format_ok={d.format_ok}): {d.steps}")
    table = Table(title=f"query: {example.query}")
    for col in ["step", "text", "allocated", "answered by", "answer", "confidence", "cost $"]:
        table.add_column(col)
    for i, s in enumerate(t.steps, 1):
        table.add_row(str(i), s.text, model_ids[s.allocation.tier], " -> ".join(c.model_id for c in s.calls),
                      s.answer, f"{s.confidence:.3f}", f"{sum(c.cost_usd for c in s.calls):.3g}")
    console.print(table)
    verdict = "correct" if t.correct >= 1 else f"wrong (gold: {t.gold})"
    console.print(f"final answer: {t.answer}   [{verdict}]   total cost: ${t.cost_usd:.3g} "
                  f"({len(t.calls)} calls, paper-pool prices)")
    ray.kill(pool)
    return t


if __name__ == "__main__":
    main()
