"""Paths of the demo files shipped inside the package (provenance in ``demo/README.md``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["demo_dir", "demo_file"]


def demo_dir() -> Path:
    """Folder holding the bundled demo files."""
    return Path(str(resources.files("cryopose.data").joinpath("demo")))


def demo_file(name: str) -> Path:
    """Path of one bundled demo file, e.g. ``demo_file("6z6u.pdb.gz")``.

    Raises
    ------
    FileNotFoundError
        When no such file is bundled; the message lists the files that are.
    """
    path = demo_dir() / name
    if not path.is_file():
        available = sorted(p.name for p in demo_dir().iterdir() if p.name != "README.md")
        raise FileNotFoundError(f"no bundled demo file {name!r}; bundled: {', '.join(available)}")
    return path
