"""cryoSPARC ``.cs`` particle files as RELION-convention particle tables.

A ``.cs`` file is a numpy structured array saved with ``np.save``: one record per particle,
fields such as ``blob/path``, ``blob/idx`` (0-based), ``blob/shape``, ``blob/psize_A``,
``alignments3D/pose``, ``alignments3D/shift``, ``ctf/df1_A``... :func:`read_cryosparc`
converts it the way pyem's ``csparc2star.py`` does (asarnow/pyem,
``pyem/metadata/cryosparc2.py`` and ``pyem/geom/convert_numba.py``), which cryoDRGN's
``parse_pose_csparc`` agrees with:

- pose: ``alignments3D/pose`` is an axis-angle vector (radians). pyem's ``expmap`` returns
  the *transpose* of the Rodrigues rotation of that vector, and ``rot2euler`` of it gives
  RELION's angles; so RELION's matrix is ``A = Rodrigues(pose)^T``.
- shift: ``alignments3D/shift`` is in pixels and copied unchanged (same sign) into RELION's
  ``rlnOriginX/Y``; cryoDRGN reads both as the same quantity. cryopose stores it as
  ``rlnOriginXAngst/YAngst = shift * blob/psize_A``.
- image names ``<blob/idx + 1>@<blob/path>`` (a leading ``>``, cryoSPARC's mark for paths
  relative to the project, is removed); defocus angle and phase shift radians -> degrees;
  ``alignments3D/split`` (0/1) -> ``rlnRandomSubset`` (1/2); the cryoSPARC ``uid`` is kept
  as the text column ``cryoposeCsUid``.
- one optics group per distinct (voltage, Cs, amplitude contrast, pixel size, box size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from cryopose.errors import InputError
from cryopose.geometry.euler import matrix_to_euler
from cryopose.geometry.rotations import axis_angle_to_matrix
from cryopose.io.particles import ParticleTable, _optics_from_30

__all__ = ["cryosparc_fields", "read_cryosparc"]

# cryoSPARC field -> (RELION label, scale applied to the value)
_SCALAR_FIELDS: dict[str, tuple[str, float]] = {
    "ctf/df1_A": ("rlnDefocusU", 1.0),
    "ctf/df2_A": ("rlnDefocusV", 1.0),
    "ctf/df_angle_rad": ("rlnDefocusAngle", 180.0 / np.pi),
    "ctf/accel_kv": ("rlnVoltage", 1.0),
    "ctf/cs_mm": ("rlnSphericalAberration", 1.0),
    "ctf/amp_contrast": ("rlnAmplitudeContrast", 1.0),
    "ctf/phase_shift_rad": ("rlnPhaseShift", 180.0 / np.pi),
    "ctf/bfactor": ("rlnCtfBfactor", 1.0),
    "ctf/scale": ("rlnCtfScalefactor", 1.0),
    "blob/psize_A": ("rlnPixelSize", 1.0),
}


def _load(path: Path, mmap: bool = False) -> npt.NDArray[Any]:
    try:
        data = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError as exc:
        raise InputError(path, "file not found") from exc
    except (ValueError, OSError) as exc:
        raise InputError(path, f"not a cryoSPARC .cs file (numpy structured array): {exc}") from exc
    if not isinstance(data, np.ndarray) or data.dtype.names is None or data.ndim != 1:
        raise InputError(path, "not a cryoSPARC .cs file: expected a 1-D numpy structured array")
    return data


def cryosparc_fields(path: str | Path) -> tuple[list[str], int]:
    """Field names and particle count of a ``.cs`` file (memory-mapped, nothing loaded).

    Returns
    -------
    tuple[list[str], int]
        Field names in file order, and the number of records.
    """
    data = _load(Path(path), mmap=True)
    assert data.dtype.names is not None
    return list(data.dtype.names), int(data.shape[0])


def _text(values: npt.NDArray[Any]) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.tolist()]


def read_cryosparc(path: str | Path, particles_dir: str | Path | None = None) -> ParticleTable:
    """Read a cryoSPARC ``.cs`` particle file as a RELION 3.1-style :class:`ParticleTable`.

    Parameters
    ----------
    path
        ``.cs`` file with at least ``blob/path`` and ``blob/idx``.
    particles_dir
        Folder holding the stacks (cryoSPARC paths are relative to its project folder).

    Returns
    -------
    ParticleTable
        Columns ``rlnImageName``, angles (from ``alignments3D/pose``), ``rlnOriginX/YAngst``
        (from ``alignments3D/shift``), CTF columns, ``rlnRandomSubset`` and
        ``cryoposeCsUid`` where the fields exist; optics groups from the per-particle optics.
        Conventions are in the module docstring.
    """
    path = Path(path)
    cs = _load(path)
    names = set(cs.dtype.names or ())
    missing = [f for f in ("blob/path", "blob/idx") if f not in names]
    if missing:
        raise InputError(path, f"missing field(s) {', '.join(missing)}: not a particle .cs file")
    stacks = [s[1:] if s.startswith(">") else s for s in _text(cs["blob/path"])]
    idx = np.asarray(cs["blob/idx"], dtype=np.int64)
    df = pd.DataFrame(
        {"rlnImageName": [f"{i + 1:06d}@{s}" for i, s in zip(idx, stacks, strict=True)]}
    )
    for name, (label, scale) in _SCALAR_FIELDS.items():
        if name in names:
            df[label] = np.asarray(cs[name], dtype=np.float64) * scale
    if "blob/shape" in names:
        df["rlnImageSize"] = np.asarray(cs["blob/shape"], dtype=np.int64).reshape(len(cs), -1)[
            :, -1
        ]
    if "alignments3D/pose" in names:
        pose = torch.from_numpy(np.asarray(cs["alignments3D/pose"], dtype=np.float64))
        # pyem: rot2euler(expmap(pose)) with expmap = Rodrigues(pose).T -> A = R^T.
        angles = matrix_to_euler(axis_angle_to_matrix(pose).transpose(-1, -2)).numpy()
        for k, label in enumerate(("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")):
            df[label] = angles[:, k]
    if "alignments3D/shift" in names:
        if "blob/psize_A" not in names:
            raise InputError(path, "alignments3D/shift needs blob/psize_A to convert to Angstrom")
        shift = np.asarray(cs["alignments3D/shift"], dtype=np.float64)
        psize = np.asarray(cs["blob/psize_A"], dtype=np.float64)
        df["rlnOriginXAngst"] = shift[:, 0] * psize
        df["rlnOriginYAngst"] = shift[:, 1] * psize
    if "alignments3D/split" in names:
        df["rlnRandomSubset"] = np.asarray(cs["alignments3D/split"], dtype=np.int64) + 1
    if "uid" in names:
        df["cryoposeCsUid"] = [str(u) for u in cs["uid"].tolist()]
    raw = ParticleTable(particles=df, optics=None, blocks={}, particles_block="", path=path)
    optics, particles = _optics_from_30(raw)
    return ParticleTable(
        particles=particles,
        optics=optics,
        blocks={"optics": optics, "particles": particles},
        particles_block="particles",
        path=path,
        particles_dir=None if particles_dir is None else Path(particles_dir),
    )
