"""Project a map at the poses of a star file, as ``relion_project --i map --ang star --o out``.

One image per particle, at its pose (rlnAngleRot/Tilt/Psi) and origin (rlnOriginXAngst/YAngst,
RELION sign: content at minus the origin), multiplied by its CTF (defocus U/V/angle, voltage,
Cs, amplitude contrast, phase shift, B-factor, scale factor) when asked, like
``relion_project --ctf``. The images have the map's box size. Writes ``out.mrcs`` and, beside
it, ``out.star``: the input table with rlnImageName pointing to the new images (relative to the
star file) and rlnImageSize set to the map's box, every other column kept.

Example usage::

    from cryopose.io.mrc import read_map
    from cryopose.io.particles import read_particles
    volume, angpix = read_map("map.mrc")
    project_star(volume, angpix, read_particles("poses.star"), ctf=True, out_stack="proj.mrcs")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress, TaskID

from cryopose.errors import InputError
from cryopose.imaging.ctf import ctf_2d
from cryopose.imaging.projection import Projector
from cryopose.io.particles import ParticleTable, write_particles
from cryopose.simulate.particles import _write_stack_streamed

__all__ = ["PIXEL_SIZE_TOLERANCE", "output_paths", "project_star"]

PIXEL_SIZE_TOLERANCE = 1e-3
"""Largest relative difference between the star's and the map's pixel sizes (RELION writes
six significant digits, and maps store single precision)."""


def output_paths(out: str | Path) -> tuple[Path, Path]:
    """Name the stack and star file written for ``out`` (``proj`` or ``proj.mrcs``).

    Parameters
    ----------
    out
        Output name, with or without the ``.mrcs`` ending (RELION's ``--o`` takes none).

    Returns
    -------
    tuple of pathlib.Path
        ``(proj.mrcs, proj.star)``.
    """
    p = Path(out)
    stem = p.with_suffix("") if p.suffix.lower() == ".mrcs" else p
    return stem.with_name(stem.name + ".mrcs"), stem.with_name(stem.name + ".star")


def _check_pixel_size(table: ParticleTable, angpix: float) -> None:
    apix = table.angpix()
    bad = np.flatnonzero(np.abs(apix - angpix) > PIXEL_SIZE_TOLERANCE * angpix)
    if bad.size:
        i = int(bad[0])
        raise InputError(
            table.path,
            f"pixel size {apix[i]} A does not match the map's {angpix} A "
            f"(relative tolerance {PIXEL_SIZE_TOLERANCE}); rescale the map or fix the star",
            where=f"row {i + 1}, rlnImagePixelSize",
        )


def _output_table(table: ParticleTable, stack: Path, star: Path, box: int) -> ParticleTable:
    """Copy the input table, pointing to the new images, with the map's box size."""
    particles = table.particles.copy()
    names = [f"{i + 1:06d}@{stack.name}" for i in range(len(particles))]
    if "rlnImageName" in particles.columns:
        particles["rlnImageName"] = names
    else:
        particles.insert(0, "rlnImageName", names)
    optics = None if table.optics is None else table.optics.copy()
    if optics is not None:
        optics["rlnImageSize"] = box
        if "rlnImageDimensionality" not in optics.columns:
            optics["rlnImageDimensionality"] = 2
    else:
        # RELION 3.0 table: write_particles moves these to the optics group it creates.
        particles["rlnImageSize"] = box
        particles["rlnImageDimensionality"] = 2
    blocks = dict(table.blocks)
    blocks[table.particles_block] = particles
    if optics is not None:
        blocks["optics"] = optics
    return dataclasses.replace(
        table, particles=particles, optics=optics, blocks=blocks, path=star, particles_dir=None
    )


def project_star(
    volume: torch.Tensor,
    angpix: float,
    table: ParticleTable,
    ctf: bool,
    out_stack: str | Path,
    batch_size: int = 256,
    progress: bool = True,
    pad_factor: float = 2.0,
) -> Path:
    """Project a map at every particle's pose and origin, with its CTF if asked.

    Parameters
    ----------
    volume
        ``(D, D, D)`` map (z, y, x), origin at ``D // 2``.
    angpix
        Voxel size of the map in Angstrom; the star's pixel sizes must agree within
        :data:`PIXEL_SIZE_TOLERANCE` (relative).
    table
        Particles with rlnAngleRot/Tilt/Psi, optional origins (zero if absent) and, with
        ``ctf``, the CTF columns (per particle or per optics group).
    ctf
        Multiply every image by its CTF (``relion_project --ctf``).
    out_stack
        Output stack (``proj.mrcs``, or ``proj`` as RELION's ``--o``); the star file is
        written beside it (:func:`output_paths`).
    batch_size
        Images projected at once (memory bound; results do not depend on it).
    progress
        Show a progress bar.
    pad_factor
        Fourier oversampling of the projector (RELION's ``--pad``, default 2).

    Returns
    -------
    pathlib.Path
        The star file written (``proj.star``); the stack is streamed to disk, so memory does
        not grow with the number of particles.

    Raises
    ------
    InputError
        Pixel sizes that do not match the map (row named, both values given), missing pose
        or CTF columns, an empty table, a map that is not cubic.
    """
    if volume.dim() != 3 or len(set(volume.shape)) != 1:
        raise InputError(None, f"expected a cubic (D, D, D) map, got {tuple(volume.shape)}")
    if len(table) == 0:
        raise InputError(table.path, "no particles to project", where="block data_particles")
    _check_pixel_size(table, angpix)
    rotations = table.rotations(torch.float64)
    shifts = table.shifts_angst(torch.float64)
    params = table.ctf_parameters() if ctf else None
    stack, star = output_paths(out_stack)
    projector = Projector(volume, pad_factor=pad_factor)
    box = projector.size
    n = len(table)

    def batches(bar: Progress, task: TaskID) -> Iterator[torch.Tensor]:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            c = None
            if params is not None:
                p = {k: v[start:stop] for k, v in params.items()}
                c = ctf_2d(
                    (box, box),
                    angpix,
                    p["defocus_u"],
                    p["defocus_v"],
                    p["defocus_angle"],
                    p["voltage"],
                    p["cs"],
                    p["amplitude_contrast"],
                    phase_shift=p["phase_shift"],
                    bfactor=p["bfactor"],
                    scale=p["ctf_scale"],
                )
            yield projector.project(
                rotations[start:stop], shifts[start:stop], angpix, ctf=c, batch_size=batch_size
            )
            bar.advance(task, stop - start)

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("projecting", total=n)
        _write_stack_streamed(stack, n, box, angpix, batches(bar, task))
    write_particles(_output_table(table, stack, star, box), star)
    return star
