"""The console every entry point prints to."""
from __future__ import annotations

from rich.console import Console


def console() -> Console:
    """A rich console that stays readable (wide tables, no live redraw) in logs and CI."""
    c = Console()
    return c if c.is_terminal else Console(width=200)
