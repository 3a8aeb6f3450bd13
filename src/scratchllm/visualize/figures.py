"""What the pictures share: matplotlib off-screen, and how a token is written as a label.

Not here: saving (files.save_figure writes a PNG atomically), the pictures themselves.
"""

from __future__ import annotations

from typing import Any


def pyplot() -> Any:
    """matplotlib.pyplot with the off-screen Agg backend (no display needed; PNGs only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label(piece: str, width: int = 12) -> str:
    """A token's text as a short, visible label: newlines and tabs written as escapes, long ones cut.

    >>> label(" the"), label("\\n\\n"), label("antidisestablishment", 8)
    ("' the'", "'\\\\n\\\\n'", "'antid…'")
    """
    shown = piece.replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    if len(shown) > width - 2:
        shown = shown[: width - 3] + "…"
    return f"'{shown}'"
