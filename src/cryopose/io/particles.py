"""Particle tables: RELION particle star files (3.0 and 3.1+) as one object.

A :class:`ParticleTable` holds the particle rows exactly as in the file, the optics groups
(RELION 3.1+) and every other block, and gives the numbers cryopose needs in cryopose's
units: rotation matrices (RELION convention), shifts in Angstrom, pixel sizes, CTF
parameters, image locations. :func:`write_particles` always writes RELION 3.1+ layout.

>>> from pathlib import Path
>>> import tempfile, pandas as pd
>>> folder = Path(tempfile.mkdtemp())
>>> table = ParticleTable(
...     particles=pd.DataFrame({"rlnAngleRot": [10.0], "rlnAngleTilt": [20.0],
...                             "rlnAnglePsi": [30.0], "rlnOriginX": [2.0],
...                             "rlnOriginY": [-1.0], "rlnVoltage": [300.0],
...                             "rlnPixelSize": [1.5]}),
...     optics=None, blocks={}, particles_block="")
>>> table.shifts_angst().tolist()
[[3.0, -1.5]]
>>> write_particles(table, folder / "p.star")
>>> back = read_particles(folder / "p.star")
>>> back.is_relion30, back.optics["rlnImagePixelSize"].tolist()
(False, [1.5])
>>> back.particles["rlnOriginXAngst"].tolist()
[3.0]

Notes
-----
Unknown labels (e.g. ``cryoposeIsJunk``) are kept when reading and writing. Measured with
RELION 3.1.3: ``relion_star_handler`` and ``relion_reconstruct`` accept such files, print
``WARNING: will ignore (but maintain) values for the unknown label``, and keep the column in
their output.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from cryopose.errors import InputError
from cryopose.geometry.euler import euler_to_matrix, matrix_to_euler
from cryopose.io.image_names import parse_image_name, resolve_image_path
from cryopose.io.star import StarBlock, read_star, write_star

__all__ = ["ParticleTable", "read_particles", "write_particles"]

ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGINS_ANGST = ("rlnOriginXAngst", "rlnOriginYAngst")
ORIGINS_PIXEL = ("rlnOriginX", "rlnOriginY")
CTF_REQUIRED = {
    "defocus_u": "rlnDefocusU",
    "defocus_v": "rlnDefocusV",
    "defocus_angle": "rlnDefocusAngle",
    "voltage": "rlnVoltage",
    "cs": "rlnSphericalAberration",
    "amplitude_contrast": "rlnAmplitudeContrast",
}
CTF_OPTIONAL = {
    "phase_shift": ("rlnPhaseShift", 0.0),
    "bfactor": ("rlnCtfBfactor", 0.0),
    "ctf_scale": ("rlnCtfScalefactor", 1.0),
}
# Per-particle columns of a RELION 3.0 file that RELION 3.1 keeps per optics group.
OPTICS_KEYS_30 = (
    "rlnVoltage",
    "rlnSphericalAberration",
    "rlnAmplitudeContrast",
    "rlnBeamTiltX",
    "rlnBeamTiltY",
    "rlnImageSize",
    "rlnImageDimensionality",
)
# RELION 3.0 pixel-size columns, replaced by rlnImagePixelSize when written as 3.1.
PIXEL_SIZE_30 = ("rlnPixelSize", "rlnMagnification", "rlnDetectorPixelSize")


@dataclass
class ParticleTable:
    """Particles of a RELION star file, with their optics groups and the file's other blocks.

    Attributes
    ----------
    particles
        One row per particle, columns exactly as in the file (RELION labels without ``_``).
    optics
        The ``data_optics`` rows (one per optics group), ``None`` for RELION 3.0 files.
    blocks
        All blocks as read, in file order (the particle and optics blocks included by name).
    particles_block
        Name of the particle block: ``"particles"``, or for 3.0 files ``""`` or another name.
    path
        The star file the table came from; image paths are resolved relative to its folder.
    particles_dir
        Optional folder holding the image stacks (tried first when resolving image paths).
    """

    particles: pd.DataFrame
    optics: pd.DataFrame | None
    blocks: dict[str, StarBlock]
    particles_block: str
    path: Path | None = None
    particles_dir: Path | None = None
    _location_cache: dict[str, Path] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __len__(self) -> int:
        """Return the number of particles."""
        return len(self.particles)

    # ------------------------------------------------------------------ helpers

    def _where(self, row: int | None = None, column: str | None = None) -> str:
        parts = [f"block data_{self.particles_block}"]
        if row is not None:
            parts.append(f"row {row + 1}")
        if column is not None:
            parts.append(f"column {column}")
        return ", ".join(parts)

    def _float_column(self, frame: pd.DataFrame, column: str) -> npt.NDArray[np.float64]:
        """Return a column as float64; InputError naming the first row that is not a number."""
        values = frame[column]
        if values.dtype.kind in "iufb":
            return values.to_numpy(dtype=np.float64)
        out = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(np.isnan(out) & ~values.astype(str).str.lower().eq("nan").to_numpy())
        if bad.size:
            i = int(bad[0])
            raise InputError(
                self.path, f"expected a number, found {values.iloc[i]!r}", self._where(i, column)
            )
        return out

    def _require(self, frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise InputError(
                self.path, f"{what} needs column(s) {', '.join(missing)}, missing", self._where()
            )

    # ------------------------------------------------------------------ properties

    @property
    def is_relion30(self) -> bool:
        """True for a RELION 3.0 table (no optics groups)."""
        return self.optics is None

    @property
    def has_poses(self) -> bool:
        """True when all three Euler angle columns are present."""
        return all(c in self.particles.columns for c in ANGLES)

    @property
    def has_shifts(self) -> bool:
        """True when origins are present (Angstrom or pixel columns)."""
        cols = self.particles.columns
        return all(c in cols for c in ORIGINS_ANGST) or all(c in cols for c in ORIGINS_PIXEL)

    @property
    def has_ctf(self) -> bool:
        """True when every required CTF column is present (per particle or per optics group)."""
        merged_cols = set(self.particles.columns)
        if self.optics is not None:
            merged_cols |= set(self.optics.columns)
        return all(c in merged_cols for c in CTF_REQUIRED.values())

    @property
    def has_half_sets(self) -> bool:
        """True when ``rlnRandomSubset`` (gold-standard half set) is present."""
        return "rlnRandomSubset" in self.particles.columns

    # ------------------------------------------------------------------ views

    def merged(self) -> pd.DataFrame:
        """Particles with their optics group's columns added to each row.

        Returns
        -------
        pandas.DataFrame
            A copy with one row per particle: the particle columns, then every optics column
            not already in the particle rows (a particle-level value wins). For RELION 3.0
            tables, a copy of the particle rows.
        """
        merged = self.particles.copy()
        if self.optics is None:
            return merged
        extra = [c for c in self.optics.columns if c not in merged.columns]
        rows = _optics_rows(self.particles, self.optics, self.path, self.particles_block)
        for column in extra:
            merged[column] = self.optics[column].to_numpy()[rows]
        return merged

    def angpix(self) -> npt.NDArray[np.float64]:
        """Pixel size of every particle image in Angstrom.

        From ``rlnImagePixelSize`` (optics), else ``rlnPixelSize``, else
        ``rlnDetectorPixelSize * 1e4 / rlnMagnification`` (RELION 3.0: detector pixel in
        micrometres, magnification).

        Returns
        -------
        numpy.ndarray
            ``(N,)`` float64, Angstrom per pixel.

        Raises
        ------
        InputError
            No pixel-size column, or a value that is NaN or not positive (row named).
        """
        merged = self.merged()
        if "rlnImagePixelSize" in merged.columns:
            column = "rlnImagePixelSize"
            apix = self._float_column(merged, column)
        elif "rlnPixelSize" in merged.columns:
            column = "rlnPixelSize"
            apix = self._float_column(merged, column)
        elif "rlnDetectorPixelSize" in merged.columns and "rlnMagnification" in merged.columns:
            column = "rlnDetectorPixelSize/rlnMagnification"
            apix = (
                self._float_column(merged, "rlnDetectorPixelSize")
                * 1e4
                / self._float_column(merged, "rlnMagnification")
            )
        else:
            raise InputError(
                self.path,
                "no pixel size: expected rlnImagePixelSize (optics), rlnPixelSize, or "
                "rlnDetectorPixelSize and rlnMagnification",
                self._where(),
            )
        bad = np.flatnonzero(~(np.isfinite(apix) & (apix > 0)))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                self.path,
                f"pixel size must be a positive number, found {apix[i]}",
                self._where(i, column),
            )
        return apix

    def image_size(self) -> npt.NDArray[np.int64]:
        """Box size in pixels of every particle, from ``rlnImageSize``.

        Returns
        -------
        numpy.ndarray
            ``(N,)`` int64.

        Raises
        ------
        InputError
            The column is missing (RELION 3.0 files rarely have it) or not a positive integer.
        """
        merged = self.merged()
        self._require(merged, ["rlnImageSize"], "image size")
        size = self._float_column(merged, "rlnImageSize")
        bad = np.flatnonzero(~(np.isfinite(size) & (size > 0) & (size == np.round(size))))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                self.path,
                f"expected a positive integer, found {size[i]}",
                self._where(i, "rlnImageSize"),
            )
        return size.astype(np.int64)

    def rotations(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Rotation matrices from the Euler angles (RELION convention, see DESIGN.md).

        Parameters
        ----------
        dtype
            Floating dtype of the result (computed in float64, then cast).

        Returns
        -------
        torch.Tensor
            ``(N, 3, 3)`` matrices ``A`` of :func:`cryopose.geometry.euler_to_matrix`
            applied to (rlnAngleRot, rlnAngleTilt, rlnAnglePsi) in degrees.
        """
        self._require(self.particles, ANGLES, "rotations")
        angles = np.stack([self._float_column(self.particles, c) for c in ANGLES], axis=-1)
        return euler_to_matrix(torch.from_numpy(angles)).to(dtype)

    def set_rotations(self, R: torch.Tensor) -> None:
        """Write rotations as RELION Euler angles in degrees (rlnAngleRot/Tilt/Psi).

        Parameters
        ----------
        R
            ``(N, 3, 3)`` rotation matrices in RELION's convention.
        """
        if R.shape != (len(self), 3, 3):
            raise InputError(
                None, f"expected rotations of shape ({len(self)}, 3, 3), got {tuple(R.shape)}"
            )
        angles = matrix_to_euler(R.detach().to("cpu", torch.float64)).numpy()
        for k, column in enumerate(ANGLES):
            self.particles[column] = angles[:, k]
        self._sync_block()

    def shifts_angst(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Particle origins in Angstrom (RELION sign: image content sits at -origin).

        From ``rlnOriginXAngst/YAngst``, else ``rlnOriginX/Y`` (pixels) times
        :meth:`angpix`, else zeros (and :attr:`has_shifts` is False).

        Returns
        -------
        torch.Tensor
            ``(N, 2)`` (x, y) in Angstrom.
        """
        cols = self.particles.columns
        if all(c in cols for c in ORIGINS_ANGST):
            xy = np.stack([self._float_column(self.particles, c) for c in ORIGINS_ANGST], axis=-1)
        elif all(c in cols for c in ORIGINS_PIXEL):
            xy = np.stack([self._float_column(self.particles, c) for c in ORIGINS_PIXEL], axis=-1)
            xy = xy * self.angpix()[:, None]
        else:
            xy = np.zeros((len(self), 2))
        return torch.from_numpy(xy).to(dtype)

    def set_shifts_angst(self, s: torch.Tensor) -> None:
        """Write origins in Angstrom (rlnOriginXAngst/YAngst); drops pixel rlnOriginX/Y.

        Parameters
        ----------
        s
            ``(N, 2)`` (x, y) origins in Angstrom, RELION sign.
        """
        if s.shape != (len(self), 2):
            raise InputError(
                None, f"expected shifts of shape ({len(self)}, 2), got {tuple(s.shape)}"
            )
        xy = s.detach().to("cpu", torch.float64).numpy()
        # One truth: pixel origins would disagree with the new Angstrom ones.
        self.particles = self.particles.drop(
            columns=[c for c in ORIGINS_PIXEL if c in self.particles]
        )
        for k, column in enumerate(ORIGINS_ANGST):
            self.particles[column] = xy[:, k]
        self._sync_block()

    def ctf_parameters(self) -> dict[str, torch.Tensor]:
        """Per-particle CTF parameters in RELION's definition and units.

        Returns
        -------
        dict[str, torch.Tensor]
            ``(N,)`` float64 tensors: ``defocus_u``, ``defocus_v`` (Angstrom),
            ``defocus_angle`` (degrees), ``voltage`` (kV), ``cs`` (mm), ``amplitude_contrast``,
            ``phase_shift`` (degrees, 0 if absent), ``bfactor`` (A^2, 0 if absent),
            ``ctf_scale`` (1 if absent).
        """
        merged = self.merged()
        self._require(merged, list(CTF_REQUIRED.values()), "CTF")
        out = {k: torch.from_numpy(self._float_column(merged, c)) for k, c in CTF_REQUIRED.items()}
        for key, (column, default) in CTF_OPTIONAL.items():
            if column in merged.columns:
                out[key] = torch.from_numpy(self._float_column(merged, column))
            else:
                out[key] = torch.full((len(self),), default, dtype=torch.float64)
        return out

    def image_locations(self) -> list[tuple[Path, int]]:
        """Where every particle image is: resolved stack path and 0-based index in it.

        Raises
        ------
        InputError
            ``rlnImageName`` missing, a malformed name, or a stack that cannot be found
            (the message names the star file, the row and the paths tried).
        """
        self._require(self.particles, ["rlnImageName"], "image locations")
        star_dir = self.path.parent if self.path is not None else Path.cwd()
        out: list[tuple[Path, int]] = []
        for i, name in enumerate(self.particles["rlnImageName"].astype(str).tolist()):
            where = self._where(i, "rlnImageName")
            index, stack = parse_image_name(name, self.path, where)
            resolved = self._location_cache.get(stack)
            if resolved is None:
                resolved = resolve_image_path(
                    stack, star_dir, self.particles_dir, star_path=self.path, where=where
                )
                self._location_cache[stack] = resolved
            out.append((resolved, index))
        return out

    def relocated(self, star: str | Path, strict: bool = True) -> ParticleTable:
        """Return a copy to be written as ``star``, image names rewritten to resolve there.

        Image names are relative to the folder of the star file that holds them (RELION's
        convention), so a table written elsewhere than it was read would lose its images:
        each relative name becomes the stack's path relative to ``star``'s folder (the same
        index). Absolute names, and a table written to its own folder, are left as they are.

        Parameters
        ----------
        star
            Where the copy will be written.
        strict
            Raise for a stack that cannot be found; otherwise keep its names unchanged.

        Raises
        ------
        InputError
            With ``strict``, a stack that cannot be found (as :meth:`image_locations`).
        """
        target = Path(star).resolve()
        base = target.parent
        moved = replace(self, path=target, particles_dir=None)
        if "rlnImageName" not in self.particles.columns or (
            self.path is not None and self.path.resolve().parent == base
        ):
            return moved
        star_dir = self.path.parent if self.path is not None else Path.cwd()
        names: list[str] = []
        renamed: dict[str, str] = {}
        for i, name in enumerate(self.particles["rlnImageName"].astype(str).tolist()):
            where = self._where(i, "rlnImageName")
            index, stack = parse_image_name(name, self.path, where)
            if stack not in renamed:
                if Path(stack).is_absolute():
                    renamed[stack] = stack
                else:
                    try:
                        found = resolve_image_path(
                            stack, star_dir, self.particles_dir, star_path=self.path, where=where
                        )
                        renamed[stack] = os.path.relpath(found.resolve(), base)
                    except InputError:
                        if strict:
                            raise
                        renamed[stack] = stack
            names.append(f"{index + 1:06d}@{renamed[stack]}")
        particles = self.particles.copy()
        particles["rlnImageName"] = names
        blocks = dict(self.blocks)
        blocks[self.particles_block] = particles
        return replace(moved, particles=particles, blocks=blocks)

    def random_subset(self) -> npt.NDArray[np.int64]:
        """Gold-standard half set of every particle (``rlnRandomSubset``, 1 or 2).

        Returns
        -------
        numpy.ndarray
            ``(N,)`` int64 with values 1 or 2.
        """
        self._require(self.particles, ["rlnRandomSubset"], "half sets")
        values = self._float_column(self.particles, "rlnRandomSubset")
        bad = np.flatnonzero((values != 1) & (values != 2))
        if bad.size:
            i = int(bad[0])
            raise InputError(
                self.path, f"expected 1 or 2, found {values[i]}", self._where(i, "rlnRandomSubset")
            )
        return values.astype(np.int64)

    def subset(self, index: npt.ArrayLike | torch.Tensor) -> ParticleTable:
        """Select particle rows into a new table (optics and other blocks kept).

        Parameters
        ----------
        index
            ``(N,)`` boolean mask or integer row indices (0-based, order kept).
        """
        idx = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise InputError(None, f"mask of shape {idx.shape} for {len(self)} particles")
            idx = np.flatnonzero(idx)
        particles = self.particles.iloc[idx.astype(np.int64)].reset_index(drop=True)
        blocks = dict(self.blocks)
        blocks[self.particles_block] = particles
        return replace(self, particles=particles, blocks=blocks)

    def _sync_block(self) -> None:
        self.blocks[self.particles_block] = self.particles


def _optics_rows(
    particles: pd.DataFrame, optics: pd.DataFrame, path: Path | None, block: str
) -> npt.NDArray[np.int64]:
    """Row of ``optics`` for every particle (matched by ``rlnOpticsGroup``)."""
    if "rlnOpticsGroup" not in particles.columns:
        if len(optics) == 1:
            return np.zeros(len(particles), dtype=np.int64)
        raise InputError(
            path,
            f"column rlnOpticsGroup is missing but data_optics has {len(optics)} groups",
            f"block data_{block}",
        )
    if "rlnOpticsGroup" not in optics.columns:
        raise InputError(path, "column rlnOpticsGroup is missing", "block data_optics")
    lookup = {str(g): k for k, g in enumerate(optics["rlnOpticsGroup"].tolist())}
    if len(lookup) != len(optics):
        raise InputError(path, "rlnOpticsGroup values are not unique", "block data_optics")
    rows = np.empty(len(particles), dtype=np.int64)
    for i, group in enumerate(particles["rlnOpticsGroup"].tolist()):
        k = lookup.get(str(group))
        if k is None:
            raise InputError(
                path,
                f"optics group {group} is not in data_optics (groups: {', '.join(lookup)})",
                f"block data_{block}, row {i + 1}, column rlnOpticsGroup",
            )
        rows[i] = k
    return rows


def _particle_block_name(blocks: dict[str, StarBlock], path: Path) -> str:
    """Which block holds the particles (see :func:`read_particles`)."""
    if "particles" in blocks:
        if not isinstance(blocks["particles"], pd.DataFrame):
            raise InputError(path, "data_particles must be a loop_ table", "block data_particles")
        return "particles"
    loops = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame) and k != "optics"}
    for marker in ("rlnImageName", "rlnCoordinateX"):
        found = [k for k, v in loops.items() if marker in v.columns]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(f"data_{k}" for k in found)
            raise InputError(
                path, f"several blocks could be the particle table ({names}); expected one"
            )
    raise InputError(
        path,
        "not a particle file: no data_particles block and no loop with rlnImageName or "
        f"rlnCoordinateX (blocks: {', '.join('data_' + k for k in blocks)})",
    )


def read_particles(path: str | Path, particles_dir: str | Path | None = None) -> ParticleTable:
    """Read a RELION particle star file (3.0, or 3.1/4/5 with optics groups).

    The particle table is ``data_particles`` if present, else the single loop block with
    ``rlnImageName`` (or, failing that, ``rlnCoordinateX``). ``data_optics``, when present,
    gives the optics groups, matched to particles by ``rlnOpticsGroup``.

    Parameters
    ----------
    path
        Star file.
    particles_dir
        Optional folder with the image stacks (see :func:`resolve_image_path`).

    Raises
    ------
    InputError
        Malformed STAR, a file with no particle table (pipeline, optimiser... star files),
        or a particle whose optics group is not in ``data_optics`` (row named).
    """
    path = Path(path)
    blocks = read_star(path)
    name = _particle_block_name(blocks, path)
    particles = blocks[name]
    assert isinstance(particles, pd.DataFrame)
    optics_block = blocks.get("optics")
    optics: pd.DataFrame | None = None
    if optics_block is not None:
        if not isinstance(optics_block, pd.DataFrame):
            raise InputError(path, "data_optics must be a loop_ table", "block data_optics")
        optics = optics_block
        _optics_rows(particles, optics, path, name)
    return ParticleTable(
        particles=particles,
        optics=optics,
        blocks=blocks,
        particles_block=name,
        path=path,
        particles_dir=None if particles_dir is None else Path(particles_dir),
    )


def _stack_box_size(table: ParticleTable) -> int | None:
    """Box size from the first particle's stack header, or None if it cannot be read."""
    if "rlnImageName" not in table.particles.columns or len(table) == 0:
        return None
    star_dir = table.path.parent if table.path is not None else Path.cwd()
    try:
        _, stack = parse_image_name(str(table.particles["rlnImageName"].iloc[0]))
        stack_path = resolve_image_path(stack, star_dir, table.particles_dir)
        with warnings.catch_warnings():
            # Old stacks (e.g. written before MRC2014) lack the 'MAP ' id; nx is still right.
            warnings.simplefilter("ignore", RuntimeWarning)
            with mrcfile.open(stack_path, header_only=True, permissive=True) as mrc:
                return int(mrc.header.nx)
    except (InputError, OSError, ValueError):
        return None


def _optics_from_30(table: ParticleTable) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Optics groups and particle rows of a RELION 3.0 table in 3.1 layout.

    One group per distinct combination of the per-particle optics columns present; those
    columns move to the optics table, pixel size becomes ``rlnImagePixelSize`` and pixel
    origins become ``rlnOriginXAngst/YAngst``.
    """
    particles = table.particles.copy()
    keys = pd.DataFrame(index=particles.index)
    for column in OPTICS_KEYS_30:
        if column in particles.columns:
            keys[column] = particles[column]
    apix: npt.NDArray[np.float64] | None
    try:
        apix = table.angpix()
    except InputError:
        apix = None  # no pixel size anywhere: nothing to convert, columns kept as they are
    if apix is not None:
        keys["rlnImagePixelSize"] = apix
        particles = particles.drop(columns=[c for c in PIXEL_SIZE_30 if c in particles.columns])
    if "rlnImageSize" not in keys.columns:
        box = _stack_box_size(table)
        if box is not None:
            keys["rlnImageSize"] = box
            if "rlnImageDimensionality" not in keys.columns:
                keys["rlnImageDimensionality"] = 2
    if keys.shape[1]:
        group = keys.groupby(list(keys.columns), sort=False, dropna=False).ngroup().to_numpy() + 1
    else:
        group = np.ones(len(particles), dtype=np.int64)
    first = pd.Series(np.arange(len(particles))).groupby(group).first().to_numpy()
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": np.arange(1, len(first) + 1, dtype=np.int64),
            "rlnOpticsGroupName": [f"opticsGroup{g}" for g in range(1, len(first) + 1)],
        }
    )
    for column in keys.columns:
        optics[column] = keys[column].to_numpy()[first]
    particles = particles.drop(columns=[c for c in OPTICS_KEYS_30 if c in particles.columns])
    particles["rlnOpticsGroup"] = group.astype(np.int64)
    cols = particles.columns
    if (
        apix is not None
        and all(c in cols for c in ORIGINS_PIXEL)
        and not any(c in cols for c in ORIGINS_ANGST)
    ):
        for pixel, angst in zip(ORIGINS_PIXEL, ORIGINS_ANGST, strict=True):
            particles[angst] = particles[pixel].to_numpy(dtype=np.float64) * apix
        particles = particles.drop(columns=list(ORIGINS_PIXEL))
    return optics, particles


def write_particles(table: ParticleTable, path: str | Path) -> None:
    """Write a particle table as a RELION 3.1+ star file, atomically.

    Layout: ``data_optics``, ``data_particles``, then every other block in its order.
    A RELION 3.0 table is converted (the only renames): per-particle optics columns
    (rlnVoltage, rlnSphericalAberration, rlnAmplitudeContrast, rlnBeamTiltX/Y, rlnImageSize,
    rlnImageDimensionality) move to one optics group per distinct combination, with
    rlnOpticsGroup / rlnOpticsGroupName; rlnPixelSize or rlnDetectorPixelSize + rlnMagnification
    become rlnImagePixelSize; rlnOriginX/Y (pixels) become rlnOriginXAngst/YAngst. When the
    table has no rlnImageSize, the box size is read from the first image stack's header if it
    can be found. Every other column is written unchanged, including labels RELION does not
    know (RELION 3.1.3 keeps them with a warning). A 3.1 table whose particles carry only pixel
    origins gets them converted to Angstrom the same way.

    Parameters
    ----------
    table
        The particles to write.
    path
        Destination star file.
    """
    if table.optics is None:
        optics, particles = _optics_from_30(table)
    else:
        optics, particles = table.optics, table.particles
        cols = particles.columns
        if all(c in cols for c in ORIGINS_PIXEL) and not any(c in cols for c in ORIGINS_ANGST):
            apix = table.angpix()
            particles = particles.copy()
            for pixel, angst in zip(ORIGINS_PIXEL, ORIGINS_ANGST, strict=True):
                particles[angst] = particles[pixel].to_numpy(dtype=np.float64) * apix
            particles = particles.drop(columns=list(ORIGINS_PIXEL))
    others = {
        k: v
        for k, v in table.blocks.items()
        if k != table.particles_block and not (k == "optics" and table.optics is not None)
    }
    clash = [k for k in ("optics", "particles") if k in others]
    if clash:
        raise InputError(
            table.path,
            f"cannot write as RELION 3.1: the file already has a block named data_{clash[0]} "
            f"besides the particle table data_{table.particles_block}",
        )
    blocks: dict[str, Any] = {"optics": optics, "particles": particles, **others}
    write_star(blocks, path)
