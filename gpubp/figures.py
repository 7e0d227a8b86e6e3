"""matplotlib for gpubp's figures: loaded on the non-interactive Agg backend, or one line saying how
to install it; figures written atomically (temporary file + rename)."""

from __future__ import annotations

from .errors import GpubpError
from .fileio import atomic_path


def pyplot(what="--plot", command="gpubp ..."):
    """matplotlib.pyplot on Agg, or a one-line GpubpError naming the extra that brings it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise GpubpError(f"{what} needs matplotlib: from the clone, uv run --extra plot {command} "
                         f"or pip install -e '.[plot]'") from None
    return plt


def save(fig, path) -> None:
    """Write ``fig`` to ``path`` as PNG, atomically, and close it."""
    plt = pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
    finally:
        plt.close(fig)
