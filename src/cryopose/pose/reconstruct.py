"""Reconstruct maps from a particle star file, streaming images from memory-mapped stacks.

This is what ``relion_reconstruct`` does, plus gold-standard half maps and their FSC in the
same pass: particles are read in batches (memory does not grow with their number), centred by
their origins, CTF-weighted when asked, and inserted into one Fourier accumulator per half set.

>>> from cryopose.pose.reconstruct import reconstruct_particles  # doctest: +SKIP
>>> result = reconstruct_particles(read_particles("particles.star"), ctf=True)  # doctest: +SKIP
>>> result.full.shape  # doctest: +SKIP
torch.Size([64, 64, 64])
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from cryopose._atomic import atomic_path
from cryopose._progress import progress
from cryopose.errors import InputError
from cryopose.imaging.ctf import ctf_2d
from cryopose.imaging.reconstruct import FourierReconstructor, _one_thread
from cryopose.io.mrc import StackCache, read_images, write_map
from cryopose.io.particles import ParticleTable

__all__ = [
    "ReconstructionResult",
    "half_set_labels",
    "insert_particles",
    "reconstruct_particles",
    "table_box",
    "write_reconstruction",
]

Regularisation = Literal["relion", "wiener", "tau2"]


@dataclass
class ReconstructionResult:
    """Maps from one reconstruction run.

    Attributes
    ----------
    full
        ``(D, D, D)`` float32 map from all particles.
    half1, half2
        Half maps (``None`` unless half maps were asked for).
    fsc
        ``(D // 2 + 1,)`` FSC between the half maps (``None`` without halves). With
        ``regularisation="tau2"`` it is the FSC of the half maps *before* the tau2 filter
        (the filter is built from this very curve, and the FSC of the filtered maps reads
        better than the data are: half maps from random poses gave 8.5 A filtered, 38.9 A
        unfiltered, on 1,000 particles of 64 px at 2 A/px).
    angpix
        Voxel size in Angstrom.
    n_particles
        Number of particles inserted (per half: ``n_half``).
    """

    full: torch.Tensor
    half1: torch.Tensor | None
    half2: torch.Tensor | None
    fsc: torch.Tensor | None
    angpix: float
    n_particles: int
    n_half: tuple[int, int] | None


def reconstruct_particles(
    table: ParticleTable,
    *,
    ctf: bool = False,
    symmetry: str = "C1",
    halves: bool = False,
    weights_column: str | None = None,
    batch_size: int = 256,
    pad_factor: float = 2.0,
    regularisation: Regularisation = "relion",
    seed: int = 0,
    device: str | torch.device = "cpu",
    show_progress: bool = True,
) -> ReconstructionResult:
    """Reconstruct the map of the particles in ``table`` at their poses.

    Parameters
    ----------
    table
        Particles with ``rlnImageName``, angles and (optionally) origins and CTF columns.
    ctf
        Multiply each image by its CTF before insertion and accumulate CTF^2 weights
        (``relion_reconstruct --ctf``).
    symmetry
        Point group (C1, Cn, Dn, T, O, I) applied during insertion.
    halves
        Also reconstruct the two half maps from ``rlnRandomSubset`` (a seeded random split
        when the column is missing) and their FSC. ``regularisation="tau2"`` then uses that
        FSC as RELION's gold-standard refinement does.
    weights_column
        Optional per-particle weight column (e.g. ``rlnMaxValueProbDistribution``).
    batch_size
        Images read and inserted at once; memory is bounded by it, not by the particle count.
    regularisation
        See :meth:`cryopose.imaging.reconstruct.FourierReconstructor.finalize`.
    device
        Torch device of the accumulators.
    show_progress
        Progress bar (terminal) or log lines (otherwise).

    Returns
    -------
    ReconstructionResult
    """
    n = len(table)
    if n == 0:
        raise InputError(table.path, "no particles to reconstruct")
    angpix_all = table.angpix()
    angpix = float(angpix_all[0])
    if not np.allclose(angpix_all, angpix, rtol=1e-4):
        raise InputError(
            table.path,
            f"particles have different pixel sizes ({sorted(set(angpix_all.tolist()))}); "
            "expected one pixel size for a reconstruction",
            where="column rlnImagePixelSize",
        )
    weights = None
    if weights_column is not None:
        if weights_column not in table.particles.columns:
            raise InputError(table.path, f"missing column {weights_column} for weights")
        weights = torch.as_tensor(table.particles[weights_column].to_numpy(dtype=np.float64))
    subsets = _half_sets(table, seed) if halves else torch.ones(n, dtype=torch.int64)
    box = table_box(table)
    recs = {
        k: FourierReconstructor(box, angpix, pad_factor, symmetry, device)
        for k in ((1, 2) if halves else (1,))
    }
    insert_particles(
        table,
        recs,
        ctf=ctf,
        subsets=subsets,
        weights=weights,
        batch_size=batch_size,
        device=device,
        show_progress=show_progress,
    )
    if not halves:
        full = recs[1].finalize("relion" if regularisation == "tau2" else regularisation)
        return ReconstructionResult(full, None, None, None, angpix, n, None)
    from cryopose.evaluation.fsc import fsc as fsc_curve

    total = FourierReconstructor(box, angpix, pad_factor, symmetry, device)
    for rec in recs.values():
        total.merge(rec)
    if regularisation == "tau2":
        raw = [recs[k].finalize("relion") for k in (1, 2)]
        curve = fsc_curve(raw[0], raw[1])
        h1, h2 = (recs[k].finalize("tau2", fsc_curve=curve) for k in (1, 2))
        full = total.finalize("tau2", fsc_curve=curve, whole_map=True)
    else:
        h1, h2 = (recs[k].finalize(regularisation) for k in (1, 2))
        full = total.finalize(regularisation)
        curve = fsc_curve(h1, h2)
    n_half = (int((subsets == 1).sum()), int((subsets == 2).sum()))
    return ReconstructionResult(full, h1, h2, curve, angpix, n, n_half)


def write_reconstruction(result: ReconstructionResult, output: str | Path) -> dict[str, object]:
    """Write the maps of ``result``: ``output`` and, with half maps, their FSC summary.

    With half maps: ``<stem>_half1.mrc``, ``<stem>_half2.mrc`` and ``<stem>_fsc.json``
    (particles per half, FSC 0.143 and 0.5 resolutions in Angstrom, the curve), every file
    written atomically.

    Returns
    -------
    dict
        The FSC summary (empty without half maps).
    """
    from cryopose.evaluation.fsc import resolution_at

    out = Path(output)
    write_map(out, result.full, result.angpix)
    if result.half1 is None or result.half2 is None or result.fsc is None:
        return {}
    stem = out.with_suffix("")
    for k, half in ((1, result.half1), (2, result.half2)):
        write_map(f"{stem}_half{k}.mrc", half, result.angpix)
    box = result.full.shape[-1]
    summary: dict[str, object] = {
        "particles_per_half": list(result.n_half or ()),
        "resolution_fsc_0.143": resolution_at(result.fsc, box, result.angpix, 0.143),
        "resolution_fsc_0.5": resolution_at(result.fsc, box, result.angpix, 0.5),
        "fsc": [float(v) for v in result.fsc],
    }
    with atomic_path(f"{stem}_fsc.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2))
    return summary


def table_box(table: ParticleTable) -> int:
    """Box size in pixels of the particles' images (from the first stack's header)."""
    first = table.image_locations()[:1]
    cache = StackCache()
    try:
        return int(read_images(first, cache=cache).shape[-1])
    finally:
        cache.close()


def insert_particles(
    table: ParticleTable,
    reconstructors: Mapping[int, FourierReconstructor],
    *,
    ctf: bool,
    subsets: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
) -> None:
    """Back-project every particle of ``table`` into the reconstructor of its half set.

    Parameters
    ----------
    table
        Particles with poses (and CTF columns when ``ctf``).
    reconstructors
        Half set -> accumulator; with one entry keyed 1 every particle goes there.
    ctf
        Multiply by each particle's CTF (``relion_reconstruct --ctf``).
    subsets
        ``(N,)`` int half-set labels (1/2); ``None`` puts every particle in key 1.
    weights
        ``(N,)`` per-particle weights or ``None``.
    batch_size, device, show_progress
        Images read at once; accumulator device; progress bar.
    """
    n = len(table)
    rotations = table.rotations(dtype=torch.float64)
    shifts = table.shifts_angst(dtype=torch.float64)
    ctf_params = table.ctf_parameters() if ctf else None
    labels = torch.ones(n, dtype=torch.int64) if subsets is None else subsets
    locations = table.image_locations()
    cache = StackCache()
    # One intra-op thread for reading, CTF and insertion: many small tensor operations, which
    # two threads on a busy machine slow down tenfold (see imaging.reconstruct._one_thread).
    try:
        with (
            _one_thread(),
            progress("reconstructing", total=n, enabled=show_progress, unit="particles") as adv,
        ):
            for start in range(0, n, batch_size):
                idx = slice(start, min(start + batch_size, n))
                images = read_images(locations[idx], cache=cache).to(device)
                box = int(images.shape[-1])
                batch_ctf = None
                if ctf_params is not None:
                    batch_ctf = ctf_2d(
                        (box, box),
                        float(table.angpix()[0]),
                        ctf_params["defocus_u"][idx],
                        ctf_params["defocus_v"][idx],
                        ctf_params["defocus_angle"][idx],
                        ctf_params["voltage"][idx],
                        ctf_params["cs"][idx],
                        ctf_params["amplitude_contrast"][idx],
                        ctf_params["phase_shift"][idx],
                        ctf_params["bfactor"][idx],
                        ctf_params["ctf_scale"][idx],
                        device=device,
                    )
                for k, rec in reconstructors.items():
                    sel = labels[idx] == k
                    if not bool(sel.any()):
                        continue
                    rec.insert(
                        images[sel],
                        rotations[idx][sel].to(device),
                        shifts[idx][sel].to(device),
                        None if batch_ctf is None else batch_ctf[sel],
                        None if weights is None else weights[idx][sel].to(device),
                    )
                adv(idx.stop - idx.start)
    finally:
        cache.close()


def half_set_labels(table: ParticleTable, seed: int = 0) -> torch.Tensor:
    """``(N,)`` 1/2 half-set labels: ``rlnRandomSubset`` if present, else a seeded split."""
    return _half_sets(table, seed)


def _half_sets(table: ParticleTable, seed: int) -> torch.Tensor:
    """``(N,)`` 1/2 half-set labels: ``rlnRandomSubset`` if present, else a seeded split."""
    if "rlnRandomSubset" in table.particles.columns:
        return torch.as_tensor(table.random_subset(), dtype=torch.int64)
    rng = np.random.default_rng(seed)
    labels = np.ones(len(table), dtype=np.int64)
    labels[rng.permutation(len(table))[len(table) // 2 :]] = 2
    return torch.from_numpy(labels)
