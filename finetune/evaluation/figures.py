"""Matplotlib figures as PNG bytes, without pyplot: no global figure state, no backend
switched under a user's notebook, and the caller writes the bytes atomically."""

from __future__ import annotations

import io

from matplotlib.figure import Figure

DPI = 100


def png_bytes(fig: Figure) -> bytes:
    """``fig`` (a ``Figure`` with an Agg canvas attached) rendered as a PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


__all__ = ["DPI", "png_bytes"]
