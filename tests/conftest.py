"""Shared pytest fixtures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


def relion_missing_reason() -> str | None:
    """Why RELION tests cannot run here, or None when they can."""
    for tool in ("relion_project", "relion_reconstruct", "relion_particle_symmetry_expand"):
        if shutil.which(tool) is None:
            return f"{tool} not on PATH: install RELION with 'apt-get install -y relion'"
    return None


@pytest.fixture
def data_dir() -> Path:
    """Folder of small real test files (provenance in tests/data/README.md)."""
    return DATA


@pytest.fixture
def relion() -> None:
    """Skip the test with a clear reason when the RELION tools are not installed."""
    reason = relion_missing_reason()
    if reason is not None:
        pytest.skip(reason)
