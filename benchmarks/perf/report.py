"""The README's performance table from a full run's results.json:
`python -m benchmarks.perf.report [runs/perf/results.json]` prints it as markdown."""
from __future__ import annotations

import json
import sys


def spread(d: dict) -> str:
    return f"{d['median']:.3g} [{d['min']:.3g}, {d['max']:.3g}]"


def rows(r: dict) -> list[tuple[str, str, str, str]]:
    """(figure, measured, target, detail) per headline figure of a full (not --quick) run."""
    p, lat, ro = r["pool_batching_speedup"], r["pool_latency"], r["rollout_2w_speedup"]
    ds, ws, t = r["deepspeed_step_ratio"], r["weight_sync"], r["peer_trl"]
    single = p["single_request_latency_s"]
    out = [
        ("`pool_batching_speedup`", spread(p["ratio"]), ">= 12",
         f"a wave of 32 subtasks as the chain sends it, {spread(p['wave_seq_per_s'])} seq/s, over the 32 one at a "
         f"time, {spread(p['sequential_seq_per_s'])} seq/s (tiny-4, 5 ms window); 32 separate concurrent "
         f"requests: {spread(p['separate_calls_ratio'])}"),
        ("single-request p50", f"{single['p50'] * 1e3:.1f} ms", "<= 18 ms", f"p95 {single['p95'] * 1e3:.1f} ms"),
        ("`pool_latency` p50 / p95 (ms)", "", "", "; ".join(
            f"{w}: " + ", ".join(f"c{c[1:]} {v['p50'] * 1e3:.0f}/{v['p95'] * 1e3:.0f}" for c, v in d.items())
            for w, d in lat.items() if w.startswith("window"))),
        ("`rollout_2w_speedup`", spread(ro["ratio"]), ">= 1.6",
         f"{spread(ro['trajectories_per_s_2w'])} vs {spread(ro['trajectories_per_s_1w'])} trajectories/s "
         f"({ro['trajectories_per_step']} a step); machine busy {ro['busy_cores']['1w']:.2f} / "
         f"{ro['busy_cores']['2w']:.2f} of {ro['placement']['machine_cpus']} cores, CPU "
         f"{ro['cpu_ms_per_trajectory']['1w']:.1f} / {ro['cpu_ms_per_trajectory']['2w']:.1f} ms a trajectory "
         f"(1 / 2 workers): at most {ro['cpu_bound_ratio']:.2f} on this machine"),
        ("`deepspeed_step_ratio` (20K)", spread(ds["demo"]["ratio"]), "<= 1.15",
         f"{ds['demo']['deepspeed_step_s']['median'] * 1e3:.0f} vs {ds['demo']['torch_step_s']['median'] * 1e3:.0f} ms a step"),
        ("`deepspeed_step_ratio` (10M)", spread(ds["10M"]["ratio"]), "<= 1.15",
         f"{ds['10M']['deepspeed_step_s']['median'] * 1e3:.0f} vs {ds['10M']['torch_step_s']['median'] * 1e3:.0f} ms a step"),
        ("`weight_sync` (object store, 2 workers)", "", "", "; ".join(
            f"{k} ({v['params']:,} params): {v['median'] * 1e3:.0f} ms, {v['share_of_step']:.1%} of a step"
            for k, v in ws.items() if isinstance(v, dict) and "params" in v)),
        ("`pipelined_speedup`", f"{r['pipelined_speedup']:.3f}",
         f"bound {r['pipelined_bound']:.3f} (CPU: {r['pipelined_cpu_bound']:.3f})",
         f"steps/s sync {r['pipelined_steps_per_s']['sync']:.3f}, pipelined {r['pipelined_steps_per_s']['pipelined']:.3f}; "
         f"reward after equal steps {r['pipelined_reward']['sync']:.4f} vs {r['pipelined_reward']['pipelined']:.4f}; "
         f"max lag {r['pipelined_max_lag']}; machine busy {r['busy_cores']['sync']:.2f} (sync) / "
         f"{r['busy_cores']['pipelined']:.2f} (pipelined) of {r['busy_cores']['machine_cpus']} cores"),
        ("`signal_per_second`", f"{r['signal_per_second']['sync']:.2f} -> {r['signal_per_second']['dynamic']:.2f}", "",
         f"groups with signal per step {r['signal_per_step']['sync']:.1f} -> {r['signal_per_step']['dynamic']:.1f} "
         f"(dynamic sampling, {r['dynamic_rounds_mean']:.1f} rounds a step); reward after "
         f"{r['dynamic_reward']['wall_s']:.0f} s: {r['dynamic_reward']['sync']:.4f} vs {r['dynamic_reward']['dynamic']:.4f}"),
        ("`peer_trl_ratio`", f"{r['peer_trl_ratio']:.2f}", "<= 1.0",
         f"{t['ours_s_per_step']:.3f} vs {t['trl_s_per_step']:.3f} s a step ({t['steps']} steps, G {t['G']}, "
         f"{t['batch']} subtasks); held-out reward (expected at the sampling temperature) ours {t['ours_reward']:.4f}, "
         f"TRL {t['trl_reward']:.4f} (start {t['reward_before']:.4f}); greedy tier ours {t['greedy_reward']['ours']:.4f}, "
         f"TRL {t['greedy_reward']['trl']:.4f} (start {t['greedy_reward']['before']:.4f}); {t['n_eval']} subtasks"),
        ("`peer_trl_ratio_pipelined`", f"{r['peer_trl_ratio_pipelined']:.2f}", "",
         f"ours with `train.pipelined` (one step off-policy): {t['pipelined_s_per_step']:.3f} s a step, "
         f"held-out reward {t['pipelined_reward']:.4f}"),
    ]
    d = r.get("demo_wall", {})
    if "total" in d:
        out.append(("`demo_wall`", f"{d['total']:.0f} s", "", ", ".join(
            f"{k} {d[k]:.0f}" for k in ("zoo", "labels", "sft", "grpo", "evaluate") if k in d) + " s"))
    return out


def markdown(r: dict) -> str:
    lines = ["| figure | measured: median [min, max] | target | detail |", "|---|---|---|---|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows(r)])


if __name__ == "__main__":
    print(markdown(json.loads(open(sys.argv[1] if len(sys.argv) > 1 else "runs/perf/results.json").read())))
