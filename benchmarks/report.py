"""Cost-accuracy reporting: AIQ (RouterBench's area under the non-decreasing cost-accuracy hull),
cost cut at matched accuracy versus the reference, the rule that picks a knob's setting on validation,
paired-bootstrap intervals, the Pareto plot and the markdown table."""
from __future__ import annotations

from pathlib import Path


def hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The upper concave hull of the non-decreasing (Pareto) frontier of (cost, accuracy) points."""
    frontier: list[tuple[float, float]] = []
    for c, a in sorted(points, key=lambda p: (p[0], -p[1])):
        if not frontier or a > frontier[-1][1]:
            frontier.append((c, a))
    out: list[tuple[float, float]] = []
    for p in frontier:  # drop points under the chord of their neighbours (concavity)
        while len(out) >= 2:
            (c1, a1), (c2, a2) = out[-2], out[-1]
            if (a2 - a1) * (p[0] - c1) <= (p[1] - a1) * (c2 - c1):
                out.pop()
            else:
                break
        out.append(p)
    return out


def aiq(points: list[tuple[float, float]], c_min: float, c_max: float) -> float:
    """Area under the method's hull over [c_min, c_max], divided by the range: 0 below the cheapest
    point, linear between hull points, flat after the last one."""
    if c_max <= c_min:
        return max(a for _, a in points)
    h = hull(points)
    xs = [min(max(c, c_min), c_max) for c, _ in h] + [c_max]
    ys = [a for _, a in h] + [h[-1][1]]
    area = sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(h) - 1))
    area += (xs[-1] - xs[-2]) * ys[-1]
    return area / (c_max - c_min)


def cost_at_accuracy(points: list[tuple[float, float]], target: float) -> float | None:
    """The cheapest cost at which the method's hull reaches `target` accuracy (None if it never does)."""
    prev = None
    for c, a in hull(points):
        if a >= target:
            if prev is None:
                return c
            c0, a0 = prev  # a > a0 on the hull: interpolate along the segment
            return c0 + (target - a0) * (c - c0) / (a - a0)
        prev = (c, a)
    return None


def accuracy_at_cost(points: list[tuple[float, float]], cost: float) -> float | None:
    """The hull's accuracy at `cost` (linear between hull points, flat after the last one; None below
    the cheapest point)."""
    h = hull(points)
    if cost < h[0][0]:
        return None
    for (c0, a0), (c1, a1) in zip(h, h[1:]):
        if c0 <= cost <= c1:
            return a0 + (a1 - a0) * (cost - c0) / (c1 - c0) if c1 > c0 else max(a0, a1)
    return h[-1][1]


def choose_setting(points: list[tuple[float, float]], target: float) -> int:
    """The index of the setting to use among a knob's (cost, accuracy) points on validation: the cheapest
    whose accuracy reaches `target` (ties: the more accurate); if none does, the most accurate (ties: the
    cheaper)."""
    if not points:
        raise ValueError("choose_setting: no settings to choose from")
    ok = [i for i, (_, a) in enumerate(points) if a >= target]
    if ok:
        return min(ok, key=lambda i: (points[i][0], -points[i][1], i))
    return min(range(len(points)), key=lambda i: (-points[i][1], points[i][0], i))


def paired_bootstrap(a: list[float], b: list[float], statistic, n: int = 2000, seed: int = 0) -> dict:
    """`statistic(a, b)` on the paired per-query values and its 95% percentile interval over `n`
    resamples of the queries (both methods resampled together: the same queries)."""
    import numpy as np

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n, len(x)))
    stats = np.array([statistic(x[i], y[i]) for i in idx])
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return {"value": float(statistic(x, y)), "ci95": [float(lo), float(hi)]}


def pareto_png(methods: dict[str, dict], reference: str, path: Path, title: str) -> None:
    import matplotlib  # lazy: only plotting needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    colors = plt.get_cmap("tab20").colors
    for i, (name, m) in enumerate(sorted(methods.items())):
        curve = sorted(m.get("curve") or [])
        if name == reference:
            style = dict(marker="*", s=180, color="black", zorder=5)
        elif "@" in name:  # the reference on a router's own decomposition: sits by the reference, unlabelled
            style = dict(marker="x", s=40, color=colors[i % len(colors)], zorder=4)
        else:
            style = dict(s=40, color=colors[i % len(colors)], zorder=4)
        ax.scatter([m["cost_per_query"]], [m["accuracy"]], label=name, **style)
        if len(curve) > 1:  # the method's knob sweep
            ax.plot([c for c, _ in curve], [a for _, a in curve], "-", alpha=0.6, lw=1.2, color=style["color"])
        if "@" not in name:
            ax.annotate(name, (m["cost_per_query"], m["accuracy"]), fontsize=7, xytext=(4, 3),
                        textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("cost per query (USD, paper-pool prices; log scale)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def setting(m: dict) -> str:
    """A method's knob setting as its row runs it (`tau=0.7`; `tau=default` when nothing was chosen; `-`
    for a method without a knob)."""
    knob = m.get("knob")
    if not knob:
        return "-"
    return f"{knob['name']}={'default' if knob['chosen'] is None else format(knob['chosen'], 'g')}"


def markdown_table(results: dict) -> str:
    """One row per method (its knob at the setting chosen on validation): pool cost, the router's own cost
    and the total, each against the reference."""
    ref = results["reference"]
    ref_cost = results["methods"][ref]["cost_per_query"]
    ref_total = results["methods"][ref].get("total_cost_per_query", ref_cost)
    rows = ["| method | decomposer | setting | accuracy | pool $ / query | router $ / query | reward | latency s | "
            "calls | pool cost vs ref | total cost vs ref | AIQ |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in sorted(results["methods"].items(), key=lambda kv: kv[1]["cost_per_query"]):
        cut = 1 - m["cost_per_query"] / ref_cost if ref_cost else 0.0
        own = m.get("router_cost_per_query", 0.0)
        total_cut = 1 - m.get("total_cost_per_query", m["cost_per_query"]) / ref_total if ref_total else 0.0
        rows.append(
            f"| {name}{' (ref)' if name == ref else ''} | {m['decomposer']} | {setting(m)} | {m['accuracy']:.3f} | "
            f"{m['cost_per_query']:.3g} | {own:.3g} | {m['reward']:.3f} | {m['latency_per_query']:.4f} | "
            f"{m['calls_per_query']:.2f} | {-cut:+.1%} | {-total_cut:+.1%} | "
            f"{results['aiq'].get(name, float('nan')):.3f} |")
    return "\n".join(rows)


def shape_table(shapes: dict[str, dict]) -> str:
    """The generalisation report as markdown: per shape, the untrained decomposer's exact rate and each
    trained router's exact rate and accuracy."""
    names = sorted({n for row in shapes.values() for n in row["routers"]})
    rows = ["| shape | held out | n | untrained exact | " + " | ".join(f"{n} exact | {n} accuracy" for n in names) + " |",
            "|---|---|---:|---:|" + "---:|---:|" * len(names)]
    for key, row in shapes.items():
        cells = " | ".join(f"{row['routers'][n]['exact']:.3f} | {row['routers'][n]['accuracy']:.3f}" for n in names)
        rows.append(f"| {key} | {'yes' if row['held_out'] else 'no'} | {row['n']} | {row['untrained_exact']:.3f} | {cells} |")
    return "\n".join(rows)
