"""Errors that cryopose raises for bad input.

Every error a user can cause with a file carries the file, the place in it (row, column,
block, image index) and what was expected, so the command line can print it as one line.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CryoposeError", "InputError"]


class CryoposeError(Exception):
    """Base class of the errors cryopose raises on purpose."""


class InputError(CryoposeError, ValueError):
    """A file or value given by the user is not what cryopose expected.

    Parameters
    ----------
    path
        The file at fault (``None`` when the fault is in an argument, not a file).
    message
        What is wrong and what was expected, e.g. ``"expected 1024 bytes of header, found 12"``.
    where
        Where in the file: ``"row 12"``, ``"column rlnImageName"``, ``"block data_optics"``.

    Examples
    --------
    >>> str(InputError("particles.star", "missing column rlnImageName", where="block particles"))
    'particles.star: block particles: missing column rlnImageName'
    """

    def __init__(self, path: str | Path | None, message: str, where: str | None = None) -> None:
        self.path = None if path is None else Path(path)
        self.where = where
        self.message = message
        parts = [str(path)] if path is not None else []
        if where:
            parts.append(where)
        parts.append(message)
        super().__init__(": ".join(parts))
