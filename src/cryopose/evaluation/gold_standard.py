"""Gold-standard evaluation of predicted poses: the CESPED protocol without RELION or MPI.

A pose estimator is judged twice. Per particle, by the angular error of its poses against the
ground truth (modulo the point group) and the error of its shifts. As a whole, by what its
poses do to a reconstruction: half maps ``V0, V1`` and ``V = (V0 + V1) / 2`` are reconstructed
from the predicted poses, ``GT0, GT1, GT`` from the true poses, with the same images, CTF
correction and half sets (``rlnRandomSubset`` of the ground truth), and the maps are compared
by real-space Pearson correlation (PCC) and FSC resolution at 0.143 and 0.5.

What a method did not predict comes from the ground truth, as CESPED's ``preparePredStar``
does, by copying star columns:

========  =====================================================================================
type      taken from the prediction (everything else from the ground-truth row)
========  =====================================================================================
S2        ``rlnAngleRot``, ``rlnAngleTilt``: the viewing direction. In RELION's ZYZ convention
          ``A = Rz(psi) Ry(tilt) Rz(rot)`` and the projection direction ``A^T z`` (third row of
          ``A``) is ``(sin tilt cos rot, sin tilt sin rot, cos tilt)``: it depends on rot and
          tilt only, so the pose evaluated is ``(rot_pred, tilt_pred, psi_true)``. A wrong psi
          is ignored. (Under symmetry the true psi belongs to the true pose's frame; when the
          prediction picked another symmetry copy the combined pose mixes frames, as in
          CESPED.)
SO3       the three Euler angles; origins from the ground truth
SO3xR2    angles and ``rlnOriginXAngst/YAngst`` (pixel origins are converted)
========  =====================================================================================

The angular error is computed on the completed poses with
:func:`cryopose.geometry.distance.angular_error` (``min_g geodesic(A_true g, A_pred)``). The
weighted mean weights each error by ``rlnMaxValueProbDistribution`` of the ground truth (as
CESPED's wMAnE: how sure the consensus refinement was), else of the prediction, else uniformly.

Map metrics
-----------
``cesped`` holds :func:`cryopose.evaluation.fsc.cesped_deltas` verbatim: (GT0, GT1), (V0, V1),
(V, GT) and the deltas of (V, GT) against (GT0, GT1). (V, GT) shares its particles, so even the
ground-truth poses give ``map_vs_gt_pcc = 1`` and a Nyquist resolution: CESPED's deltas are then
``1 - pcc(GT0, GT1)`` and ``Nyquist - res(GT0, GT1)``, not 0. The headline deltas of this report
remove that bias by comparing across halves, ``(V0, GT1)`` and ``(V1, GT0)`` (independent
images), against ``(GT0, GT1)``:

* ``delta_pcc = mean(pcc(V0, GT1), pcc(V1, GT0)) - pcc(GT0, GT1)`` (0 for perfect poses, < 0
  worse),
* ``delta_fsc = res(V0, GT1 | V1, GT0) - res(GT0, GT1)`` in Angstrom at FSC 0.143, with the FSC
  curve averaged over the two cross pairs (0 for perfect poses, > 0 worse),

exactly 0 when the predictions are the ground truth. With a mask, every PCC and FSC is computed
on masked maps (the mask multiplies both maps).

>>> from cryopose.evaluation.gold_standard import evaluate_gold_standard  # doctest: +SKIP
>>> report = evaluate_gold_standard("pred.star", "truth.star", symmetry="D7")  # doctest: +SKIP
>>> report.mean_error_deg, report.delta_fsc  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch

from cryopose._atomic import atomic_path
from cryopose.errors import InputError
from cryopose.evaluation.fsc import (
    CespedMetrics,
    cesped_deltas,
    fsc,
    pcc,
    plot_fsc,
    resolution_at,
    shell_frequencies,
)
from cryopose.geometry.distance import angular_error
from cryopose.io.image_names import parse_image_name
from cryopose.io.mrc import read_map, write_map
from cryopose.io.particles import ParticleTable, read_particles, write_particles
from cryopose.pose.reconstruct import half_set_labels, reconstruct_particles

__all__ = [
    "PREDICTION_TYPES",
    "GoldStandardReport",
    "MapPair",
    "PredictionType",
    "ReferenceMaps",
    "complete_predictions",
    "evaluate_gold_standard",
    "map_pair",
    "match_particles",
    "particle_errors",
    "reconstruct_reference",
    "relion_crosscheck",
    "write_outputs",
]

PredictionType = Literal["S2", "SO3", "SO3xR2"]
PREDICTION_TYPES: tuple[str, ...] = get_args(PredictionType)
_ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
_ORIGINS = ("rlnOriginXAngst", "rlnOriginYAngst")
_CONFIDENCE = "rlnMaxValueProbDistribution"
# CESPED reconstructs predicted poses with --fom_weighting when this column is predicted.
_FOM = "rlnParticleFigureOfMerit"

StarInput = str | Path | ParticleTable


@dataclass(frozen=True)
class MapPair:
    """Agreement of two maps.

    Attributes
    ----------
    pcc
        Real-space Pearson correlation (masked when a mask was given).
    resolution_0143, resolution_05
        FSC resolution in Angstrom at 0.143 and 0.5.
    fsc
        FSC per shell (``box // 2 + 1`` values, shell ``i`` at ``i / (box * angpix)`` 1/A).
    """

    pcc: float
    resolution_0143: float
    resolution_05: float
    fsc: list[float]


@dataclass
class ReferenceMaps:
    """Half maps from the ground-truth poses (reused for every method of a benchmark entry).

    Attributes
    ----------
    half1, half2
        ``(D, D, D)`` float32 GT0, GT1 (``rlnRandomSubset`` 1 and 2).
    full
        ``(D, D, D)`` GT reconstructed from all particles.
    angpix
        Voxel size in Angstrom.
    """

    half1: torch.Tensor
    half2: torch.Tensor
    full: torch.Tensor
    angpix: float


@dataclass
class GoldStandardReport:
    """Result of :func:`evaluate_gold_standard` (``report.json`` is :meth:`to_dict`).

    Attributes
    ----------
    n_particles, symmetry, prediction_type, angpix, box, masked
        What was evaluated.
    mean_error_deg, weighted_mean_error_deg, median_error_deg
        Angular errors of the completed poses under the point group (degrees).
    weights_source
        Where the weights of the weighted mean came from (``"truth"``, ``"prediction"`` or
        ``"uniform"``).
    shift_rmse_angst
        ``sqrt(mean |s_pred - s_true|^2)`` over particles, Angstrom (SO3xR2 only, else None).
    half_maps, map_vs_gt, gt_halves, cross_halves
        (V0, V1), (V, GT), (GT0, GT1) and the cross-half pairs (V0, GT1), (V1, GT0) (PCC
        averaged, FSC curve averaged).
    delta_pcc, delta_fsc, delta_fsc_05
        Cross-half deltas against (GT0, GT1) (see the module docstring); resolutions in A.
    cesped
        :class:`~cryopose.evaluation.fsc.CespedMetrics` as CESPED computes them (0.143).
    relion_pcc
        PCC between the full predicted-pose map (all particles in one reconstruction) and
        ``relion_reconstruct`` of the same poses, when asked.
    seconds
        Wall time of the evaluation.
    files
        Files written, by role.
    errors_deg
        ``(N,)`` per-particle angular errors (not in the JSON).
    """

    n_particles: int
    symmetry: str
    prediction_type: str
    angpix: float
    box: int
    masked: bool
    mean_error_deg: float
    weighted_mean_error_deg: float
    median_error_deg: float
    weights_source: str
    shift_rmse_angst: float | None
    half_maps: MapPair
    map_vs_gt: MapPair
    gt_halves: MapPair
    cross_halves: MapPair
    delta_pcc: float
    delta_fsc: float
    delta_fsc_05: float
    cesped: CespedMetrics
    relion_pcc: float | None = None
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)
    errors_deg: torch.Tensor = field(default_factory=lambda: torch.zeros(0), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field but ``errors_deg``."""
        out = {k: v for k, v in asdict(self).items() if k != "errors_deg"}
        clean: dict[str, Any] = _finite(out)
        return clean


def _finite(value: Any) -> Any:
    """Replace NaN/inf floats by None so the JSON is standard."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------- inputs


def _as_table(value: StarInput, what: str) -> ParticleTable:
    table = value if isinstance(value, ParticleTable) else read_particles(value)
    if not table.has_poses:
        raise InputError(table.path, f"{what} star file has no rlnAngleRot/Tilt/Psi columns")
    return table


def _concat(tables: Sequence[ParticleTable]) -> ParticleTable:
    """Stack the particle rows of prediction files (e.g. CESPED's two half-set files)."""
    first = tables[0]
    frames = [t.particles for t in tables]
    particles = pd.concat(frames, ignore_index=True)
    blocks = dict(first.blocks)
    blocks[first.particles_block] = particles
    return ParticleTable(
        particles=particles,
        optics=first.optics,
        blocks=blocks,
        particles_block=first.particles_block,
        path=first.path,
        particles_dir=first.particles_dir,
    )


def _image_keys(table: ParticleTable, basename: bool) -> list[str]:
    if "rlnImageName" not in table.particles.columns:
        raise InputError(table.path, "needs column rlnImageName to match particles")
    keys = []
    for i, name in enumerate(table.particles["rlnImageName"].astype(str).tolist()):
        index, stack = parse_image_name(name, table.path, f"row {i + 1}, column rlnImageName")
        # 1-based and zero-padded as RELION writes names, so messages read like the file.
        keys.append(f"{index + 1:06d}@{Path(stack).name if basename else stack}")
    return keys


def match_particles(pred: ParticleTable, truth: ParticleTable) -> npt.NDArray[np.int64]:
    """Row of ``pred`` for every row of ``truth``, matched by ``rlnImageName``.

    Names are compared as (image index, stack path); when that fails (a prediction written
    in another folder), as (image index, stack file name) if those are unique.

    Returns
    -------
    numpy.ndarray
        ``(len(truth),)`` int64 indices into ``pred``.

    Raises
    ------
    InputError
        A duplicate name, a truth particle without prediction or a prediction without truth
        (the first such name is given).
    """
    last: InputError | None = None
    for basename in (False, True):
        pk, tk = _image_keys(pred, basename), _image_keys(truth, basename)
        try:
            return _match_keys(pk, tk, pred, truth)
        except InputError as exc:
            last = exc
    assert last is not None
    raise last


def _match_keys(
    pk: list[str], tk: list[str], pred: ParticleTable, truth: ParticleTable
) -> npt.NDArray[np.int64]:
    for keys, table in ((pk, pred), (tk, truth)):
        seen: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k in seen:
                raise InputError(
                    table.path,
                    f"image {k} appears twice (rows {seen[k] + 1} and {i + 1}); expected unique",
                    where="column rlnImageName",
                )
            seen[k] = i
    index = {k: i for i, k in enumerate(pk)}
    missing = [k for k in tk if k not in index]
    if missing:
        raise InputError(
            pred.path,
            f"no prediction for {len(missing)} ground-truth particle(s), first {missing[0]}"
            + ("" if truth.path is None else f" (of {truth.path})"),
            where="column rlnImageName",
        )
    extra = set(pk) - set(tk)
    if extra:
        raise InputError(
            pred.path,
            f"{len(extra)} predicted particle(s) not in the ground truth {truth.path}, "
            f"e.g. {sorted(extra)[0]}",
            where="column rlnImageName",
        )
    return np.array([index[k] for k in tk], dtype=np.int64)


def complete_predictions(
    pred: ParticleTable, truth: ParticleTable, prediction_type: PredictionType
) -> ParticleTable:
    """Ground-truth table with the columns a method predicted copied from ``pred``.

    Parameters
    ----------
    pred, truth
        Predicted and true particles (matched by :func:`match_particles`).
    prediction_type
        ``"S2"``, ``"SO3"`` or ``"SO3xR2"`` (see the module docstring).

    Returns
    -------
    ParticleTable
        A copy of ``truth`` (its images, CTF, half sets, optics) with the predicted angles
        (and origins for SO3xR2, in Angstrom) and, when predicted,
        ``rlnParticleFigureOfMerit`` and ``rlnMaxValueProbDistribution``.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise InputError(
            None,
            f"unknown prediction type {prediction_type!r}; expected one of {PREDICTION_TYPES}",
            where="argument prediction_type",
        )
    rows = match_particles(pred, truth)
    out = truth.subset(np.arange(len(truth)))
    particles = out.particles.copy()
    keep = _ANGLES[:2] if prediction_type == "S2" else _ANGLES
    for column in keep:
        particles[column] = pred.particles[column].to_numpy(dtype=np.float64)[rows]
    for column in (_FOM, _CONFIDENCE):
        if column in pred.particles.columns:
            particles[column] = pred.particles[column].to_numpy(dtype=np.float64)[rows]
    out.particles = particles
    out.blocks[out.particles_block] = particles
    if prediction_type == "SO3xR2":
        if not pred.has_shifts:
            raise InputError(
                pred.path, "prediction type SO3xR2 needs rlnOriginXAngst/YAngst (or rlnOriginX/Y)"
            )
        out.set_shifts_angst(pred.shifts_angst(torch.float64)[torch.from_numpy(rows)])
    return out


# ----------------------------------------------------------------------------- maps


def map_pair(
    a: torch.Tensor, b: torch.Tensor, angpix: float, mask: torch.Tensor | None = None
) -> MapPair:
    """PCC, FSC curve and FSC resolutions (0.143, 0.5) of two ``(D, D, D)`` maps."""
    curve = fsc(a, b, mask)
    return _pair_from(pcc(a, b, mask), curve, angpix)


def _pair_from(p: float, curve: torch.Tensor, angpix: float) -> MapPair:
    box = 2 * (len(curve) - 1)
    return MapPair(
        pcc=p,
        resolution_0143=resolution_at(curve, box, angpix, 0.143),
        resolution_05=resolution_at(curve, box, angpix, 0.5),
        fsc=[float(v) for v in curve],
    )


def reconstruct_reference(
    truth: StarInput,
    symmetry: str = "C1",
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> ReferenceMaps:
    """Reconstruct GT0, GT1 and GT from the ground-truth poses (CTF-corrected when possible).

    Half sets come from ``rlnRandomSubset`` (a seeded split when absent, see
    :func:`cryopose.pose.reconstruct.half_set_labels`).
    """
    table = _as_table(truth, "ground-truth")
    res = reconstruct_particles(
        table,
        ctf=table.has_ctf,
        symmetry=symmetry,
        halves=True,
        regularisation="relion",
        device=device,
        show_progress=progress,
    )
    assert res.half1 is not None and res.half2 is not None
    return ReferenceMaps(res.half1, res.half2, res.full, res.angpix)


def _read_mask(mask: str | Path | torch.Tensor | None, box: int) -> torch.Tensor | None:
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor):
        m = mask
        path: Path | None = None
    else:
        path = Path(mask)
        m, _ = read_map(path)
    if tuple(m.shape) != (box, box, box):
        raise InputError(
            path, f"mask has shape {tuple(m.shape)}, expected ({box}, {box}, {box}) as the maps"
        )
    if float(m.to(torch.float64).sum()) <= 0:
        raise InputError(path, "mask is empty (sums to 0)")
    return m.to(torch.float32)


def _weights(
    pred: ParticleTable, truth: ParticleTable, completed: ParticleTable
) -> tuple[torch.Tensor, str]:
    """Weights of the weighted mean error, in ground-truth row order, and their source."""
    candidates = [(truth, "truth")]
    if _CONFIDENCE in pred.particles.columns:
        # completed holds the prediction's column in ground-truth order.
        candidates.append((completed, "prediction"))
    for table, source in candidates:
        if _CONFIDENCE in table.particles.columns:
            w = torch.as_tensor(table.particles[_CONFIDENCE].to_numpy(dtype=np.float64))
            if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
                raise InputError(
                    table.path, "weights must be finite, >= 0 and not all 0", where=_CONFIDENCE
                )
            return w, source
    return torch.ones(len(truth), dtype=torch.float64), "uniform"


def particle_errors(
    completed: ParticleTable,
    truth: ParticleTable,
    symmetry: str = "C1",
    prediction_type: PredictionType = "SO3",
    pred: ParticleTable | None = None,
) -> tuple[torch.Tensor, torch.Tensor, str, float | None]:
    """Per-particle pose errors of completed predictions (rows aligned with ``truth``).

    Parameters
    ----------
    completed
        Output of :func:`complete_predictions`.
    truth
        Ground truth, same row order.
    symmetry
        Point group for the angular error.
    prediction_type
        The shift error is only reported for ``"SO3xR2"``.
    pred
        The raw prediction (says whether it carried ``rlnMaxValueProbDistribution``).

    Returns
    -------
    errors, weights, weights_source, shift_rmse
        ``(N,)`` float64 angular errors in degrees, ``(N,)`` weights of the weighted mean,
        where the weights came from, and the shift RMSE in Angstrom (or None).
    """
    R_true = truth.rotations(torch.float64)
    R_pred = completed.rotations(torch.float64)
    errors = angular_error(R_true, R_pred, symmetry)
    weights, source = _weights(completed if pred is None else pred, truth, completed)
    shift_rmse = None
    if prediction_type == "SO3xR2":
        d = completed.shifts_angst(torch.float64) - truth.shifts_angst(torch.float64)
        shift_rmse = float(torch.sqrt((d**2).sum(-1).mean()))
    return errors, weights, source, shift_rmse


# ----------------------------------------------------------------------------- main


def evaluate_gold_standard(
    pred: StarInput | tuple[StarInput, StarInput],
    truth: StarInput,
    symmetry: str = "C1",
    prediction_type: PredictionType = "SO3",
    mask: str | Path | torch.Tensor | None = None,
    out_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
    *,
    save_maps: bool = False,
    relion: bool = False,
    reference: ReferenceMaps | None = None,
) -> GoldStandardReport:
    """Evaluate predicted poses against the ground truth with the CESPED protocol.

    Parameters
    ----------
    pred
        Star file (or table) with the predicted poses, or a pair of them (CESPED's two half-set
        files, concatenated). Every ground-truth particle needs exactly one prediction.
    truth
        Ground-truth star file with images, poses, CTF and ``rlnRandomSubset``.
    symmetry
        Point group of the map (angular errors modulo it; reconstructions symmetrised).
    prediction_type
        ``"S2"``, ``"SO3"`` or ``"SO3xR2"``: what was predicted (rest from the ground truth).
    mask
        Optional ``.mrc`` mask (or ``(D, D, D)`` tensor) applied before every PCC and FSC.
    out_dir
        Folder for ``report.json`` (atomic), ``fsc.png``, ``errors.png``, ``report.md``,
        ``report.html`` and, with ``save_maps``, the six maps. ``None`` writes nothing.
    device
        Torch device of the reconstructions.
    progress
        Progress bars for the reconstructions.
    save_maps
        Write V0, V1, V, GT0, GT1, GT as ``.mrc`` files into ``out_dir``.
    relion
        Also run ``relion_reconstruct --ctf --sym`` on the completed poses and report its PCC
        with the map cryopose reconstructs from all of them in one pass (:func:`relion_crosscheck`;
        ``V``, the average of two half maps, is regularised per half and differs slightly).
    reference
        Ground-truth maps already reconstructed by :func:`reconstruct_reference` (saves one
        reconstruction when several methods are evaluated on the same entry).

    Returns
    -------
    GoldStandardReport
    """
    start = time.perf_counter()
    truth_table = _as_table(truth, "ground-truth")
    if isinstance(pred, tuple):
        pred_table = _concat([_as_table(p, "prediction") for p in pred])
    else:
        pred_table = _as_table(pred, "prediction")
    completed = complete_predictions(pred_table, truth_table, prediction_type)

    errors, weights, source, shift_rmse = particle_errors(
        completed, truth_table, symmetry, prediction_type, pred_table
    )

    # Same half sets for both reconstructions, taken from the ground truth.
    if "rlnRandomSubset" not in truth_table.particles.columns:
        labels = half_set_labels(truth_table).numpy()
        truth_table = truth_table.subset(np.arange(len(truth_table)))
        truth_table.particles["rlnRandomSubset"] = labels
        completed.particles["rlnRandomSubset"] = labels
    ref = reference or reconstruct_reference(truth_table, symmetry, device, progress)
    rec = reconstruct_particles(
        completed,
        ctf=completed.has_ctf,
        symmetry=symmetry,
        halves=True,
        weights_column=_FOM if _FOM in completed.particles.columns else None,
        regularisation="relion",
        device=device,
        show_progress=progress,
    )
    assert rec.half1 is not None and rec.half2 is not None
    box = int(rec.full.shape[-1])
    if tuple(ref.half1.shape) != tuple(rec.full.shape):
        raise InputError(None, "reference maps and prediction maps differ in box size")
    m = _read_mask(mask, box)
    report = _map_report(rec.half1, rec.half2, ref, rec.angpix, m)
    report.update(
        n_particles=len(truth_table),
        symmetry=symmetry,
        prediction_type=prediction_type,
        angpix=rec.angpix,
        box=box,
        masked=m is not None,
        mean_error_deg=float(errors.mean()),
        weighted_mean_error_deg=float((weights * errors).sum() / weights.sum()),
        median_error_deg=float(errors.median()),
        weights_source=source,
        shift_rmse_angst=shift_rmse,
    )
    result = GoldStandardReport(**report, errors_deg=errors)
    v = (rec.half1 + rec.half2) / 2
    if relion:
        result.relion_pcc = relion_crosscheck(completed, rec.full, symmetry, m)
    result.seconds = time.perf_counter() - start
    if out_dir is not None:
        maps = {
            "V0": rec.half1,
            "V1": rec.half2,
            "V": v,
            "GT0": ref.half1,
            "GT1": ref.half2,
            "GT": (ref.half1 + ref.half2) / 2,
        }
        write_outputs(result, out_dir, maps if save_maps else None)
    return result


def _map_report(
    v0: torch.Tensor,
    v1: torch.Tensor,
    ref: ReferenceMaps,
    angpix: float,
    mask: torch.Tensor | None,
) -> dict[str, Any]:
    """Map pairs and deltas of predicted half maps against the ground-truth half maps."""
    gt0, gt1 = ref.half1, ref.half2
    v, gt = (v0 + v1) / 2, (gt0 + gt1) / 2
    gt_pair = map_pair(gt0, gt1, angpix, mask)
    cross_curve = (fsc(v0, gt1, mask) + fsc(v1, gt0, mask)) / 2
    cross_pcc = (pcc(v0, gt1, mask) + pcc(v1, gt0, mask)) / 2
    cross = _pair_from(cross_pcc, cross_curve, angpix)
    return {
        "half_maps": map_pair(v0, v1, angpix, mask),
        "map_vs_gt": map_pair(v, gt, angpix, mask),
        "gt_halves": gt_pair,
        "cross_halves": cross,
        "delta_pcc": cross.pcc - gt_pair.pcc,
        "delta_fsc": cross.resolution_0143 - gt_pair.resolution_0143,
        "delta_fsc_05": cross.resolution_05 - gt_pair.resolution_05,
        "cesped": cesped_deltas(v0, v1, gt0, gt1, angpix, mask, 0.143),
    }


def write_outputs(
    report: GoldStandardReport,
    out_dir: str | Path,
    maps: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``report.json`` and the plots and pages of a report into ``out_dir``.

    Returns
    -------
    pathlib.Path
        ``out_dir / "report.json"``.
    """
    # The report layer draws the pages; imported here because evaluation sits below it.
    from cryopose.report.gold_standard import write_report_pages

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if maps is not None:
        for name, volume in maps.items():
            write_map(out / f"{name}.mrc", volume, angpix=report.angpix)
            report.files[f"map_{name}"] = f"{name}.mrc"
    freq = shell_frequencies(report.box, report.angpix)
    curves = {
        "GT0 vs GT1": (freq, torch.tensor(report.gt_halves.fsc)),
        "V0 vs V1": (freq, torch.tensor(report.half_maps.fsc)),
        "V vs GT": (freq, torch.tensor(report.map_vs_gt.fsc)),
        "V0 vs GT1, V1 vs GT0": (freq, torch.tensor(report.cross_halves.fsc)),
    }
    plot_fsc(curves, out / "fsc.png", title=f"{report.symmetry}, {report.prediction_type}")
    report.files["fsc_plot"] = "fsc.png"
    report.files.update(write_report_pages(report, out))
    path = out / "report.json"
    report.files["json"] = "report.json"
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- RELION


def relion_crosscheck(
    completed: ParticleTable,
    volume: torch.Tensor,
    symmetry: str,
    mask: torch.Tensor | None = None,
    relion_reconstruct: str = "relion_reconstruct",
) -> float:
    """PCC between ``volume`` and ``relion_reconstruct --ctf --sym`` of the same poses.

    RELION resolves image names relative to its working directory, so the star file handed to
    it names every stack by its absolute path (the user's files are left untouched).

    Parameters
    ----------
    completed
        Particles with the poses to reconstruct (e.g. from :func:`complete_predictions`).
    volume
        ``(D, D, D)`` map to compare (e.g. V).
    symmetry
        Point group passed as ``--sym``.
    mask
        Optional mask for the PCC.
    relion_reconstruct
        The RELION program (on PATH or a path).

    Raises
    ------
    InputError
        RELION is not installed or fails (its last output lines are quoted).
    """
    exe = shutil.which(relion_reconstruct)
    if exe is None:
        raise InputError(None, f"{relion_reconstruct} not found on PATH (install RELION)")
    table = completed.subset(np.arange(len(completed)))
    names = [f"{i + 1:06d}@{p.resolve()}" for p, i in completed.image_locations()]
    table.particles["rlnImageName"] = names
    table.blocks[table.particles_block] = table.particles
    with tempfile.TemporaryDirectory(prefix="cryopose_relion_") as tmp:
        star, out = Path(tmp) / "particles.star", Path(tmp) / "relion.mrc"
        write_particles(table, star)
        cmd = [exe, "--i", str(star), "--o", str(out), "--sym", symmetry.lower()]
        if table.has_ctf:
            cmd.append("--ctf")
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
            raise InputError(star, f"relion_reconstruct failed ({proc.returncode}): {tail}")
        relion_map, _ = read_map(out)
    return pcc(volume, relion_map.to(volume.dtype), mask)
