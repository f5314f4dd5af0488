"""Figures written as PNG files, never through pyplot's global state."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from finetune import atomic


def subplots(*args, **kwargs):
    """Like `plt.subplots`, on a bare Figure: writing PNGs never switches the global backend.

    pyplot + `matplotlib.use("Agg")` would turn off a notebook's inline plots as a side effect.
    """
    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(*args, **kwargs)


def save_figure(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic.open_replacing(path, "wb") as f:  # a viewer or a second writer never sees half a PNG
        fig.savefig(f, dpi=120, format=path.suffix.lstrip(".") or "png")
    return path
