"""Tomogram pick lists: particle centres with a class id, read from SHREC text or RELION star.

A pick list is what a picker (template matching, a segmentation network) reports for one
tomogram: for each particle a class id (a PDB id such as ``"1bxn"`` in SHREC, any string in
cryopose), a centre in **voxels** ordered x, y, z, optionally three Euler angles and a score.
Volumes are stored z, y, x (mrcfile / RELION), so the voxel of pick ``i`` is
``volume[z, y, x]`` with ``(x, y, z) = coords[i]``.

Two formats are read:

- SHREC text (``particle_locations.txt``, SHREC submissions): one particle per line,
  ``pdb x y z [rotZ1 rotX rotZ2]`` separated by whitespace, angles in degrees in SHREC's
  Z-X-Z convention. Blank lines and lines starting with ``#`` are skipped. Either every line
  has angles or none has.
- RELION star (``.star``): columns ``rlnCoordinateX/Y/Z`` (voxels) and a class column,
  ``cryoposeClass`` (any string) or else ``rlnClassNumber``; ``rlnAutopickFigureOfMerit`` is
  read as the score when present. RELION's ``rlnAngleRot/Tilt/Psi`` are Z-Y-Z angles, not
  SHREC's Z-X-Z, so they are not read into :attr:`Picks.angles` (left ``None``).

Only SHREC text is written.

>>> import numpy as np
>>> p = Picks(["1bxn", "3qm1"], [[10.0, 20.0, 30.0], [1.5, 2.5, 3.5]])
>>> len(p), p.coords.shape, p.angles is None
(2, (2, 3), True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import starfile

from cryopose._atomic import atomic_path
from cryopose.errors import InputError

__all__ = ["Picks", "read_picks", "write_picks"]

_TEXT_FORMAT = "expected 'pdb x y z [rotZ1 rotX rotZ2]'"
_STAR_CLASS_COLUMNS = ("cryoposeClass", "rlnClassNumber")
_STAR_SCORE_COLUMN = "rlnAutopickFigureOfMerit"


@dataclass(frozen=True, eq=False)
class Picks:
    """Particle picks in one tomogram.

    Parameters
    ----------
    class_ids
        ``(n,)`` class id of each pick (strings, e.g. PDB ids).
    coords
        ``(n, 3)`` float64 centres in voxels, ordered x, y, z (the volume is indexed
        ``[z, y, x]``).
    angles
        Optional ``(n, 3)`` float64 Euler angles in degrees, SHREC's ``rotZ1 rotX rotZ2``.
    scores
        Optional ``(n,)`` float64 confidence of each pick (higher is more confident).

    Notes
    -----
    Inputs are copied into numpy arrays (torch tensors are accepted too); ``class_ids`` becomes
    a numpy unicode array. Non-finite coordinates, angles or scores are rejected.
    """

    class_ids: npt.NDArray[np.str_]
    coords: npt.NDArray[np.float64]
    angles: npt.NDArray[np.float64] | None = None
    scores: npt.NDArray[np.float64] | None = None

    def __init__(
        self,
        class_ids: Any,
        coords: Any,
        angles: Any | None = None,
        scores: Any | None = None,
    ) -> None:
        ids = np.asarray([str(c) for c in class_ids], dtype=np.str_).reshape(-1)
        n = ids.shape[0]
        xyz = _float_array(coords, (n, 3), "coords")
        rot = None if angles is None else _float_array(angles, (n, 3), "angles")
        sco = None if scores is None else _float_array(scores, (n,), "scores")
        object.__setattr__(self, "class_ids", ids)
        object.__setattr__(self, "coords", xyz)
        object.__setattr__(self, "angles", rot)
        object.__setattr__(self, "scores", sco)

    def __len__(self) -> int:
        return int(self.class_ids.shape[0])


def _float_array(values: Any, shape: tuple[int, ...], name: str) -> npt.NDArray[np.float64]:
    """Copy ``values`` into a float64 array of ``shape``; reject wrong shapes and non-finite."""
    if hasattr(values, "detach"):  # torch tensor: leave the graph and the device
        values = values.detach().cpu().numpy()
    arr = np.array(values, dtype=np.float64)
    if arr.size == 0:
        arr = arr.reshape(shape)
    if arr.shape != shape:
        raise InputError(None, f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(None, f"{name} must be finite")
    return arr


def read_picks(path: str | Path) -> Picks:
    """Read a pick list from SHREC text or a RELION star file (chosen by the ``.star`` suffix).

    Parameters
    ----------
    path
        A SHREC-style text file (``pdb x y z [rotZ1 rotX rotZ2]`` per line) or a ``.star`` file
        with ``rlnCoordinateX/Y/Z`` and ``cryoposeClass`` or ``rlnClassNumber``.

    Returns
    -------
    Picks
        Coordinates in voxels, x y z; angles only from SHREC text.

    Raises
    ------
    InputError
        A missing file, a bad line (naming it, e.g. ``line 7``), or a star file without the
        coordinate or class columns.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    if path.suffix.lower() == ".star":
        return _read_star(path)
    return _read_text(path)


def _read_text(path: Path) -> Picks:
    """Parse SHREC text, one ``pdb x y z [rotZ1 rotX rotZ2]`` record per non-comment line."""
    ids: list[str] = []
    rows: list[list[float]] = []
    n_fields: int | None = None
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields or fields[0].startswith("#"):
                continue
            where = f"line {number}"
            if len(fields) not in (4, 7):
                raise InputError(path, _TEXT_FORMAT, where=where)
            try:
                values = [float(v) for v in fields[1:]]
            except ValueError:
                raise InputError(path, _TEXT_FORMAT, where=where) from None
            if not all(math.isfinite(v) for v in values):
                raise InputError(path, _TEXT_FORMAT + " with finite numbers", where=where)
            if n_fields is not None and len(fields) != n_fields:
                raise InputError(
                    path, _TEXT_FORMAT + " with angles on every line or on none", where=where
                )
            n_fields = len(fields)
            ids.append(fields[0])
            rows.append(values)
    if not rows:  # a valid file with no picks (a picker found nothing)
        return Picks([], np.zeros((0, 3)))
    table = np.asarray(rows, dtype=np.float64)
    angles = table[:, 3:6] if n_fields == 7 else None
    return Picks(ids, table[:, 0:3].reshape(-1, 3), angles)


def _read_star(path: Path) -> Picks:
    """Parse the first star block that has ``rlnCoordinateX/Y/Z``."""
    try:
        data = starfile.read(path, always_dict=True)
    except Exception as exc:  # starfile raises many types on malformed input
        raise InputError(path, f"not a readable star file ({exc})") from exc
    blocks = {name: df for name, df in data.items() if isinstance(df, pd.DataFrame)}
    for name, df in blocks.items():
        if "rlnCoordinateX" in df.columns:
            return _picks_from_block(path, name or "data_", df)
    raise InputError(path, "expected a block with columns rlnCoordinateX/Y/Z")


def _picks_from_block(path: Path, name: str, df: pd.DataFrame) -> Picks:
    """Build picks from one star loop: coordinates, class column, optional score."""
    where = f"block {name}"
    for axis in "XYZ":
        if f"rlnCoordinate{axis}" not in df.columns:
            raise InputError(path, f"missing column rlnCoordinate{axis}", where=where)
    class_column = next((c for c in _STAR_CLASS_COLUMNS if c in df.columns), None)
    if class_column is None:
        raise InputError(path, "missing class column cryoposeClass or rlnClassNumber", where=where)
    try:
        coords = df[["rlnCoordinateX", "rlnCoordinateY", "rlnCoordinateZ"]].to_numpy(
            dtype=np.float64
        )
        scores = (
            df[_STAR_SCORE_COLUMN].to_numpy(dtype=np.float64)
            if _STAR_SCORE_COLUMN in df.columns
            else None
        )
    except ValueError as exc:
        raise InputError(path, f"expected numeric coordinates ({exc})", where=where) from exc
    bad = ~np.isfinite(coords).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0]) + 1
        raise InputError(path, "expected finite rlnCoordinateX/Y/Z", where=f"{where}, row {row}")
    return Picks([str(c) for c in df[class_column]], coords, scores=scores)


def write_picks(picks: Picks, path: str | Path) -> Path:
    """Write picks as SHREC text, ``pdb x y z [rotZ1 rotX rotZ2]`` per line, atomically.

    Numbers are written with Python's shortest round-trip representation, so reading the file
    back gives the same floats. Scores are not part of the SHREC format and are not written.

    Parameters
    ----------
    picks
        The picks; class ids must not contain whitespace.
    path
        Destination text file.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    lines = []
    for i, class_id in enumerate(picks.class_ids):
        if not class_id or any(ch.isspace() for ch in class_id) or class_id.startswith("#"):
            raise InputError(
                path,
                f"class id {class_id!r} cannot be written as one SHREC field",
                where=f"pick {i}",
            )
        values = list(picks.coords[i])
        if picks.angles is not None:
            values += list(picks.angles[i])
        lines.append(" ".join([str(class_id), *(repr(float(v)) for v in values)]) + "\n")
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")
    return path
