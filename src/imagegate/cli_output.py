"""What the command line prints on stderr besides its results: errors and notes, one line each."""

from __future__ import annotations

import typer
from rich.console import Console

err = Console(stderr=True)


def note(message: str) -> None:
    """`message` on stderr as one line (never wrapped, never read as markup)."""
    err.print(message, markup=False, highlight=False, soft_wrap=True)


def fail(message: str, status: int = 2) -> typer.Exit:
    """Print `error: message` on stderr; the Exit to raise. Status 2 is the operator's to fix (a
    setting, the database, the storage); 1 is a failure of the work itself (a request refused)."""
    note(f"error: {message}")
    return typer.Exit(status)
