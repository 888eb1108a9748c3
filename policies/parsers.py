"""Total parsers for the router's two policies: any model output yields a result with a `format_ok`
flag; nothing here raises on any string."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from policies.tiny_lm import STEP_SEP

_STEP_LINE = re.compile(r"^\s*(?:step\s*)?(\d+)\s*[:.)]\s*(.+?)\s*$", re.IGNORECASE)


@dataclass
class Decomposition:
    steps: list[str]
    format_ok: bool
    raw: str = ""
    notes: list[str] = field(default_factory=list)


def parse_decomposition(text: str, max_steps: int = 8) -> Decomposition:
    """Accepts numbered lines (`step 1: ...` / `1. ...`, the natural-language form) or steps separated
    by ` | ` (the tiny world's form). Well-formed means: at least one non-empty step, numbering (if
    any) 1..k in order, at most `max_steps` steps."""
    text = text if isinstance(text, str) else ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    numbered = [_STEP_LINE.match(ln) for ln in lines]
    if lines and all(numbered):
        nums = [int(m.group(1)) for m in numbered]
        steps = [m.group(2) for m in numbered]
        ok = nums == list(range(1, len(nums) + 1))
        notes = [] if ok else [f"step numbers {nums}"]
    elif any(numbered):  # numbered lines mixed with prose: keep the numbered ones
        steps = [m.group(2) for m in numbered if m]
        ok, notes = False, ["prose between numbered steps"]
    else:
        steps = [s.strip() for s in text.replace("\n", f" {STEP_SEP} ").split(STEP_SEP)]
        ok = all(steps) and bool(steps)
        steps = [s for s in steps if s]
        notes = [] if ok else ["empty step"]
    if not steps:
        return Decomposition([], False, text, ["no steps"])
    if len(steps) > max_steps:
        return Decomposition(steps[:max_steps], False, text, [f"{len(steps)} steps > {max_steps}"])
    return Decomposition(steps, ok, text, notes)


def format_decomposition(steps: list[str], numbered: bool = False) -> str:
    """The target text a decomposer is trained to write (inverse of `parse_decomposition`)."""
    if numbered:
        return "\n".join(f"step {i}: {s}" for i, s in enumerate(steps, 1))
    return f" {STEP_SEP} ".join(steps)

