"""How detectable each particle of a simulated tomogram is: the oracle matched-filter z-score.

A picker can only find a particle whose signal stands out of the noise and the clutter (ice,
neighbours, missing-wedge streaks) around it. The best linear detector of a known signal in
Gaussian noise is the matched filter, so the score of the *oracle* template matcher -- one that
knows each particle's exact density, orientation and position -- bounds what template matching
can reach, and tells whether a learned picker's misses are the picker's fault or the data's.

For particle ``k`` of a SHREC-layout folder (:func:`oracle_zscores`):

1. template: the grandmodel minus the background (ice) level, times the particle's own
   occupancy (``occupancy == k``), in a cubic box around its centre; so it is the particle
   exactly as simulated, in its true orientation;
2. filters and score exactly as :mod:`cryopose.tomo.template_matching` (full size, no binning):
   the tomogram band-limited to the CTF's first zero and whitened, the template filtered by
   ``|CTF|`` x missing wedge x the same whitening, the FLCF under a mask (the occupancy dilated
   by ``mask_dilation`` voxels, tighter than the matcher's sphere, so the oracle scores higher);
3. z-score: the FLCF map over a ``crop`` x ``crop`` region (full depth) centred on the particle,
   minus its median, over 1.4826 x its MAD (:func:`cryopose.tomo.peaks.robust_zscore`), i.e. in
   units of the spread of the same template's scores over the particle's neighbourhood;
   the particle's z is the largest within one voxel of its true centre.

A particle with z below about 4 cannot be told from the best of the background's tens of
thousands of independent positions in a SHREC-sized volume, by template matching or any other
way of correlating with the particle's density.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cryopose.errors import InputError
from cryopose.evaluation.shrec import (
    SHREC_CLASS_MASS_KDA,
    load_truth,
    size_group,
)
from cryopose.io.mrc import read_map
from cryopose.tomo.peaks import robust_zscore
from cryopose.tomo.template_matching import (
    MatchConfig,
    _Correlator,
    _interp,
    _radius,
    prepare_tomogram,
)
from cryopose.tomo.templates import CtfParams, normalise_under_mask, template_filter

__all__ = [
    "ParticleDetectability",
    "detectability_summary",
    "oracle_zscores",
    "oracle_zscores_folder",
]

_NON_PROTEIN = ("fiducial", "vesicle")


@dataclass(frozen=True)
class ParticleDetectability:
    """Oracle z-score of one particle.

    Attributes
    ----------
    index
        1-based line of ``particle_locations.txt`` (the particle's occupancy label).
    class_id
        Its class (PDB id).
    zscore
        Oracle matched-filter z-score (module docstring).
    """

    index: int
    class_id: str
    zscore: float


def _template_box(occupancy_k: torch.Tensor, centre_zyx: Sequence[int], margin: int) -> int:
    """Even cubic box holding the particle's voxels around its centre, plus ``margin``."""
    voxels = torch.nonzero(occupancy_k)
    if voxels.shape[0] == 0:
        return 0
    c = torch.tensor(list(centre_zyx))
    reach = int((voxels - c).abs().max())
    return 2 * (reach + margin + 1)


def oracle_zscores(
    tomogram: torch.Tensor,
    grandmodel: torch.Tensor,
    occupancy: torch.Tensor,
    class_ids: Sequence[str],
    centres_xyz: torch.Tensor,
    angpix: float,
    ctf: CtfParams | None = None,
    crop: int = 128,
    mask_dilation: int = 2,
    classes: Sequence[str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[ParticleDetectability]:
    """Oracle matched-filter z-score of every protein particle (module docstring).

    Parameters
    ----------
    tomogram, grandmodel
        ``(D, H, W)`` reconstruction and noiseless sample volume, same shape.
    occupancy
        ``(D, H, W)`` integer labels: ``k`` marks particle ``k`` (1-based), 0 background.
    class_ids
        ``(m,)`` class of particle ``k + 1`` at index ``k``.
    centres_xyz
        ``(m, 3)`` true centres in voxels, x y z.
    angpix
        Voxel size, Angstrom.
    ctf
        CTF and tilt range of the tomogram (default: the matcher's).
    crop
        Edge of the region (voxels, y and x) whose score spread defines the z-score.
    mask_dilation
        Voxels by which the occupancy is dilated into the correlation mask.
    classes
        Only these classes (default: every class but fiducials and vesicles).
    progress
        Called with 1 after each particle of the table (evaluated or not).

    Returns
    -------
    list[ParticleDetectability]
        One per particle evaluated, in file order. Particles with no occupied voxel (fully
        cut off at the border) are skipped.
    """
    if tomogram.shape != grandmodel.shape or tomogram.shape != occupancy.shape:
        raise InputError(
            None,
            f"tomogram {tuple(tomogram.shape)}, grandmodel {tuple(grandmodel.shape)} and "
            f"occupancy {tuple(occupancy.shape)} must have the same shape",
        )
    config = MatchConfig(bin_factor=1) if ctf is None else MatchConfig(ctf=ctf, bin_factor=1)
    prepared = prepare_tomogram(tomogram, angpix, config)
    volume = prepared.full
    labels = occupancy.to(torch.int64)
    background = float(grandmodel[labels == 0].median()) if bool((labels == 0).any()) else 0.0
    wanted = None if classes is None else {c.lower() for c in classes}
    depth, height, width = (int(s) for s in volume.shape)
    out: list[ParticleDetectability] = []
    for k, name in enumerate(class_ids):
        if progress is not None:
            progress(1)
        if name.lower() in _NON_PROTEIN or (wanted is not None and name.lower() not in wanted):
            continue
        x, y, z = (round(float(v)) for v in centres_xyz[k])
        if not (0 <= z < depth and 0 <= y < height and 0 <= x < width):
            continue
        own = labels == k + 1
        box = _template_box(own, (z, y, x), mask_dilation + 1)
        if box == 0:
            continue
        half = box // 2
        # Template box around the centre, zero-padded where it leaves the volume.
        pads = [(half - min(half, c), half - min(half, n - c)) for c, n in
                zip((z, y, x), (depth, height, width), strict=True)]  # fmt: skip
        window = tuple(
            slice(c - half + lo, c + half - hi) for c, (lo, hi) in zip((z, y, x), pads, strict=True)
        )
        flat_pad = [v for pair in reversed(pads) for v in pair]
        mine = F.pad(own[window].to(torch.float32), flat_pad)
        density = F.pad((grandmodel[window].to(torch.float32) - background), flat_pad) * mine
        shape = (box, box, box)
        weights = template_filter(shape, angpix, config.ctf, config.wedge)
        if prepared.whitening is not None:
            weights = weights * _interp(prepared.whitening, _radius(shape, weights.device)).to(
                weights
            )
        filtered = torch.fft.irfftn(torch.fft.rfftn(density) * weights, s=shape)
        mask = F.max_pool3d(
            mine[None, None], 2 * mask_dilation + 1, stride=1, padding=mask_dilation
        )[0, 0]
        template = normalise_under_mask(filtered[None], mask)
        # Score over a crop (full depth) around the particle: its spread is the null.
        c_y = min(max(0, y - crop // 2), max(0, height - crop))
        c_x = min(max(0, x - crop // 2), max(0, width - crop))
        region = volume[:, c_y : c_y + crop, c_x : c_x + crop]
        scores = robust_zscore(_Correlator(region, mask).scores(template)[0])
        near = scores[
            max(0, z - 1) : z + 2,
            max(0, y - c_y - 1) : y - c_y + 2,
            max(0, x - c_x - 1) : x - c_x + 2,
        ]
        out.append(ParticleDetectability(k + 1, name.lower(), float(near.max())))
    return out


def oracle_zscores_folder(
    folder: str | Path, ctf: CtfParams | None = None, crop: int = 128, progress: bool = False
) -> list[ParticleDetectability]:
    """:func:`oracle_zscores` of a SHREC-layout folder (reconstruction, grandmodel, truth).

    Parameters
    ----------
    folder
        Holds ``reconstruction.mrc``, ``grandmodel.mrc``, ``occupancy_mask.mrc`` and
        ``particle_locations.txt`` (:func:`cryopose.simulate.tomogram.simulate_tomogram`).
    ctf, crop
        As :func:`oracle_zscores`.
    progress
        Show a progress bar over the particles.
    """
    from cryopose._progress import progress as progress_bar

    folder = Path(folder)
    truth = load_truth(folder)
    tomogram, angpix = read_map(folder / "reconstruction.mrc")
    grandmodel, _ = read_map(folder / "grandmodel.mrc")
    if tomogram.shape != grandmodel.shape or tuple(tomogram.shape) != truth.occupancy.shape:
        raise InputError(
            folder,
            f"reconstruction {tuple(tomogram.shape)}, grandmodel {tuple(grandmodel.shape)} and "
            f"occupancy_mask {truth.occupancy.shape} must have the same shape",
        )
    ids = [str(c) for c in truth.class_ids]
    with progress_bar("oracle matching", len(ids), progress, unit="particles") as advance:
        return oracle_zscores(
            tomogram,
            grandmodel,
            torch.from_numpy(truth.occupancy.astype(np.int64)),
            ids,
            torch.from_numpy(truth.coords),
            angpix,
            ctf=ctf,
            crop=crop,
            progress=advance,
        )


def detectability_summary(
    particles: Sequence[ParticleDetectability], threshold: float = 4.0
) -> dict[str, dict[str, float]]:
    """Median z and fraction at or above ``threshold`` per class and per SHREC size group.

    Returns
    -------
    dict
        ``{name: {"n": count, "median_z": ..., "fraction_detectable": ...}}`` for every class,
        then ``"small"``, ``"medium"``, ``"large"`` (classes of known mass) and ``"all"``.
    """
    groups: dict[str, list[float]] = {}
    for p in particles:
        groups.setdefault(p.class_id, []).append(p.zscore)
    for p in particles:
        mass = SHREC_CLASS_MASS_KDA.get(p.class_id)
        if mass is not None:
            groups.setdefault(size_group(mass), []).append(p.zscore)
        groups.setdefault("all", []).append(p.zscore)
    out: dict[str, dict[str, float]] = {}
    for name, values in groups.items():
        z = np.asarray(values)
        out[name] = {
            "n": float(z.size),
            "median_z": float(np.median(z)),
            "fraction_detectable": float(np.mean(z >= threshold)),
        }
    return out
