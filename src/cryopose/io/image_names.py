"""RELION image names (``12@stack.mrcs``) and where their stacks are on disk.

RELION names a particle image ``<n>@<stack>``, with ``n`` counted from 1 (written as ``12`` or
zero-padded as ``000012``); a name without ``@`` is a file holding a single image. cryopose
counts images from 0, so ``000012@stack.mrcs`` is image 11 of ``stack.mrcs``.

>>> parse_image_name("000012@Extract/job007/stack.mrcs")
(11, 'Extract/job007/stack.mrcs')
>>> parse_image_name("single.mrc")
(0, 'single.mrc')
"""

from __future__ import annotations

from pathlib import Path

from cryopose.errors import InputError

__all__ = ["parse_image_name", "resolve_image_path"]


def parse_image_name(
    name: str, star_path: str | Path | None = None, where: str | None = None
) -> tuple[int, str]:
    """Split a RELION image name into a 0-based image index and a stack path.

    Parameters
    ----------
    name
        ``"<n>@<stack>"`` with ``n >= 1`` (1-based, zero padding allowed), or ``"<file>"``
        for a one-image file.
    star_path, where
        The star file and row the name came from, only used in error messages.

    Returns
    -------
    tuple[int, str]
        ``(index, stack)``: 0-based index into the stack, and the stack path as written.

    Raises
    ------
    InputError
        Empty name, a non-integer or non-positive image number, or an empty stack path.
    """
    name = str(name).strip()
    if not name:
        raise InputError(star_path, "empty image name", where)
    if "@" not in name:
        return 0, name
    number, _, stack = name.partition("@")
    if not stack:
        raise InputError(star_path, f"image name {name!r} has no stack path after '@'", where)
    if not number.isdigit() or int(number) < 1:
        raise InputError(
            star_path,
            f"image name {name!r}: expected a positive image number (1-based) before '@'",
            where,
        )
    return int(number) - 1, stack


def resolve_image_path(
    name: str | Path,
    star_dir: str | Path,
    particles_dir: str | Path | None = None,
    *,
    star_path: str | Path | None = None,
    where: str | None = None,
) -> Path:
    """Find the file a stack path from a star file refers to.

    Candidates, first existing wins:

    1. if ``particles_dir`` is given: ``particles_dir / name`` (relative names), then
       ``particles_dir / basename(name)``;
    2. ``star_dir / name`` (RELION writes paths relative to its project folder, which is
       usually where the star file sits or above it);
    3. ``name`` as given (absolute, or relative to the current directory).

    Parameters
    ----------
    name
        Stack path as written in the star file (without the ``n@`` part).
    star_dir
        Folder of the star file.
    particles_dir
        Optional folder that holds the stacks (e.g. after moving a dataset).
    star_path, where
        Star file and row, for the error message.

    Returns
    -------
    pathlib.Path
        Absolute path of the existing file.

    Raises
    ------
    InputError
        No candidate exists; the message names the star file, the row and every path tried.
    """
    rel = Path(name)
    tried: list[Path] = []
    if particles_dir is not None:
        pdir = Path(particles_dir)
        if not rel.is_absolute():
            tried.append(pdir / rel)
        tried.append(pdir / rel.name)
    if not rel.is_absolute():
        tried.append(Path(star_dir) / rel)
    tried.append(rel)
    for candidate in tried:
        if candidate.is_file():
            return candidate.resolve()
    listing = ", ".join(str(p) for p in dict.fromkeys(tried))
    raise InputError(star_path, f"image file {str(name)!r} not found; tried: {listing}", where)
