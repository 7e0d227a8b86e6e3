"""matplotlib for gpubp's figures: loaded on the non-interactive Agg backend, or one line saying how
to install it; figures written atomically (temporary file + rename)."""

from __future__ import annotations

from pathlib import Path

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


FORMATS = ("png", "pdf", "svg", "jpg", "jpeg", "eps", "ps", "tif", "tiff", "webp")


def image_format(path, what="--plot") -> str:
    """The image format ``path``'s extension names (png when it has none), or a one-line GpubpError:
    a figure is never written in a format other than the one its name says."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    if suffix not in FORMATS:
        raise GpubpError(f"{what} {path}: cannot write .{suffix} images; name the file .png, .pdf or .svg")
    return suffix


def save(fig, path) -> None:
    """Write ``fig`` to ``path`` in the format its extension names (PNG without one), atomically, and close it."""
    plt = pyplot()
    try:
        fmt = image_format(path)
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format=fmt)
    finally:
        plt.close(fig)
