"""One summary dictionary per file, for ``cryopose info`` and for scripts.

``describe(path)`` recognises the file by its name and content: STAR (any RELION version),
MRC/MRCS maps and stacks (also ``.map``, ``.gz``, ``.bz2``), PDB/mmCIF atomic models and
cryoSPARC ``.cs`` particle files. The result is plain JSON-serialisable data.

>>> from cryopose.io.describe import file_kind
>>> file_kind("run_data.star"), file_kind("emd_3001.map.gz"), file_kind("6z6u.pdb.gz")
('star', 'mrc', 'structure')
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryopose.errors import InputError

__all__ = ["describe", "file_kind", "relion31_labels"]

_MRC_SUFFIXES = {".mrc", ".mrcs", ".map", ".st", ".ali", ".rec"}
_STRUCTURE_SUFFIXES = {".pdb", ".ent", ".cif", ".mmcif"}

POSE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
SHIFT_COLUMNS = (("rlnOriginXAngst", "rlnOriginYAngst"), ("rlnOriginX", "rlnOriginY"))
CTF_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
OPTICS_FIELDS = {
    "rlnImagePixelSize": "pixel_size",
    "rlnVoltage": "voltage_kv",
    "rlnSphericalAberration": "cs_mm",
    "rlnAmplitudeContrast": "amplitude_contrast",
    "rlnImageSize": "image_size",
}


@lru_cache(maxsize=1)
def relion31_labels() -> frozenset[str]:
    """STAR labels known to RELION 3.1.3 (read from its binary when cryopose was built)."""
    text = resources.files("cryopose.io").joinpath("_data/relion31_labels.txt").read_text()
    return frozenset(line for line in text.split() if line.startswith("rln"))


def file_kind(path: str | Path) -> str:
    """Kind of file from its name: star, mrc, structure, cryosparc or unknown."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] in {".gz", ".bz2"}:
        suffixes = suffixes[:-1]
    last = suffixes[-1] if suffixes else ""
    if last == ".star":
        return "star"
    if last in _MRC_SUFFIXES:
        return "mrc"
    if last in _STRUCTURE_SUFFIXES:
        return "structure"
    if last == ".cs":
        return "cryosparc"
    return "unknown"


def describe(path: str | Path) -> dict[str, Any]:
    """Summarise one file.

    Parameters
    ----------
    path
        A STAR, MRC/MRCS, PDB/mmCIF or cryoSPARC ``.cs`` file.

    Returns
    -------
    dict
        ``{"path", "kind", ...}`` with kind-specific fields (see the ``_describe_*`` helpers).

    Raises
    ------
    InputError
        When the file is missing, empty, of an unknown kind, or malformed.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file")
    if p.is_dir():
        raise InputError(p, "is a folder; expected a STAR, MRC, PDB/mmCIF or .cs file")
    if p.stat().st_size == 0:
        raise InputError(p, "file is empty")
    kind = file_kind(p)
    summary: dict[str, Any] = {"path": str(p), "kind": kind}
    if kind == "star":
        summary.update(_describe_star(p))
    elif kind == "mrc":
        summary.update(_describe_mrc(p))
    elif kind == "structure":
        from cryopose.io.structure import structure_summary

        summary.update(structure_summary(p))
    elif kind == "cryosparc":
        from cryopose.io.cryosparc import cryosparc_fields

        fields, count = cryosparc_fields(p)
        summary.update({"particles": count, "fields": fields})
    else:
        raise InputError(
            p, "unknown file type; expected .star, .mrc/.mrcs/.map (.gz/.bz2), .pdb/.cif or .cs"
        )
    return summary


def _describe_mrc(path: Path) -> dict[str, Any]:
    from cryopose.io.mrc import map_statistics, read_map_header

    header = read_map_header(path)
    stats = map_statistics(path)
    return {
        "shape": list(header.shape),
        "voxel_size": [float(v) for v in header.voxel_size],
        "origin": [float(v) for v in header.origin],
        "dtype": str(header.dtype),
        "is_stack": bool(header.is_stack),
        **{k: float(v) for k, v in stats.items()},
    }


def _describe_star(path: Path) -> dict[str, Any]:
    from cryopose.io.particles import read_particles
    from cryopose.io.star import read_star

    blocks = read_star(path)
    block_info = []
    for name, block in blocks.items():
        if isinstance(block, pd.DataFrame):
            block_info.append(
                {"name": name, "loop": True, "rows": len(block), "columns": len(block.columns)}
            )
        else:
            block_info.append({"name": name, "loop": False, "rows": 1, "columns": len(block)})
    summary: dict[str, Any] = {"blocks": block_info}
    try:
        table = read_particles(path)
    except InputError as err:
        # A valid STAR file that holds no (single) particle table: summarise its blocks only.
        if err.message.startswith(("not a particle file", "several blocks could be")):
            summary["particles"] = None
            summary["note"] = err.message
            return summary
        raise
    summary["particles"] = len(table)
    summary["relion_version"] = "3.0" if table.optics is None else "3.1+"
    optics: list[dict[str, Any]] = []
    if table.optics is not None:
        for _, row in table.optics.iterrows():
            group: dict[str, Any] = {
                "group": int(row["rlnOpticsGroup"]) if "rlnOpticsGroup" in row else None,
                "name": str(row.get("rlnOpticsGroupName", "")),
            }
            for column, key in OPTICS_FIELDS.items():
                if column in row.index:
                    group[key] = _plain(row[column])
            optics.append(group)
    else:
        try:
            pixel = np.unique(table.angpix())
            optics.append(
                {
                    "group": None,
                    "name": "(per particle, RELION 3.0)",
                    "pixel_size": [float(v) for v in pixel],
                }
            )
        except InputError:
            optics.append({"group": None, "name": "(per particle, RELION 3.0)", "pixel_size": None})
    summary["optics_groups"] = optics
    columns = list(table.particles.columns)
    summary["has"] = {
        "poses": all(c in columns for c in POSE_COLUMNS),
        "shifts": any(all(c in columns for c in pair) for pair in SHIFT_COLUMNS),
        "ctf": all(c in columns for c in CTF_COLUMNS),
        "half_sets": "rlnRandomSubset" in columns,
        "image_names": "rlnImageName" in columns,
    }
    known = relion31_labels()
    all_columns = columns + ([] if table.optics is None else list(table.optics.columns))
    summary["unknown_columns"] = sorted({c for c in all_columns if c not in known})
    return summary


def _plain(value: Any) -> Any:
    """Turn numpy scalars into Python scalars (for JSON)."""
    if isinstance(value, np.generic):
        return value.item()
    return value
