"""Atomic file writes: a temporary file in the target folder, renamed into place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path"]


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    An interrupted or failed write leaves ``path`` untouched (either the old file or none),
    never half written. The temporary file keeps ``path``'s suffix so that libraries which
    choose a format by extension (starfile, mrcfile) behave the same.

    Parameters
    ----------
    path
        Final destination.
    suffix
        Suffix of the temporary file; defaults to ``path``'s own suffixes.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    sfx = "".join(final.suffixes) if suffix is None else suffix
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{final.name}.", suffix=f".part{sfx}", dir=final.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
