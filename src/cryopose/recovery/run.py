"""Orientations for the particles of a star file, from a trained distance network.

:func:`recover_star` reads the particle images (streamed in batches from the stacks),
centres them by their origins when the star has any, resamples them to the network's pixel
size and box, and computes every particle's feature vector once (memory: ``n x features``).
Pair distances come from the features (``pi (1 - cos) / 2``, see
:mod:`cryopose.models.siamese`), mapped through the model's calibration
(:func:`~cryopose.recovery.calibrate`; the raw outputs are compressed). For a C1 particle
(default ``RunSettings.neighbours > 0``) orientations are then recovered from near
neighbours only: the ``neighbours`` particles of smallest estimated distance to each
(:func:`~cryopose.recovery.nearest_pairs`, all ``n^2`` pairs scored from the features), a
spectral start on that graph and a refinement of the objective on the same pairs
(:func:`~cryopose.recovery.recover_from_near_pairs`). Measured on 5,000 noiseless
projections of 5j0n with a network trained 4 CPU-minutes (1,481 steps): E_OR 8.7 deg
uncalibrated, 6.8 deg calibrated. With a network trained for the same time on single pairs
(1,034 steps, no all-pairs loss) it fails (72 deg): 12% of its near neighbours were more than
60 deg apart, and such edges fold the spectral embedding. Under a point group (whose
distances the spectral start does not model) or with ``neighbours=0``,
:func:`~cryopose.recovery.recover_orientations_online` recovers them from random pairs with
restarts. For C1 the orientations are then polished by projection matching against their
own reconstruction (``RunSettings.polish``, :mod:`cryopose.recovery.polish`; on by
default). The recovered rotations are written as RELION angles into a copy of the star
file; every other column (origins, CTF, image names, unknown labels) is kept. The poses are
determined up to a global rotation and mirror of the map (and under a point group up to
per-particle group elements).

:func:`evaluate_recovery` compares predicted with true poses: E_OR (mean ``d_q`` after the
best O(4) transform, :func:`~cryopose.recovery.e_or`), the mean geodesic error after the best
map-frame rotation and handedness flip (:func:`~cryopose.recovery.align_so3`; larger than
E_OR when the recovery landed in a part of O(4) that is not a change of map frame), and,
given the ground-truth map, the FSC of the map reconstructed from the aligned predicted poses.

Example usage::

    recover_star("particles.star", "recovered.star", model_dir="model")
    print(evaluate_recovery("particles.star", "recovered.star").e_or_deg)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryopose._progress import progress as progress_reporter
from cryopose.errors import InputError
from cryopose.geometry.rotations import matrix_to_quaternion, quaternion_to_matrix
from cryopose.imaging.resample import rescale, window_centred
from cryopose.imaging.shift import origin_to_image_shift, shift_images
from cryopose.io.mrc import StackCache, read_images, read_map
from cryopose.io.particles import ParticleTable, read_particles, write_particles
from cryopose.models.siamese import feature_distance, standardise
from cryopose.recovery.align import align_o4, align_so3
from cryopose.recovery.polish import (
    PolishResult,
    PolishSettings,
    load_images,
    polish_orientations,
    resolve_frame,
    table_ctf,
)
from cryopose.recovery.recover import DistanceFn, RecoveryResult, recover_orientations_online
from cryopose.recovery.spectral import nearest_pairs, recover_from_near_pairs
from cryopose.recovery.train import (
    DistanceModel,
    calibrate,
    load_distance_model,
    prepare_volume,
)

__all__ = [
    "EvaluationResult",
    "RunResult",
    "RunSettings",
    "embed_particles",
    "evaluate_recovery",
    "features_distance_fn",
    "prepare_images",
    "recover_star",
]


@dataclass(frozen=True)
class RunSettings:
    """Settings of the recovery step (see :func:`recover_orientations_online`).

    Attributes
    ----------
    neighbours
        Near-neighbour partners per particle (:func:`~cryopose.recovery.nearest_pairs`) for
        the spectral start and the refinement; ``0``: recover from random pairs instead
        (:func:`~cryopose.recovery.recover_orientations_online`), as is always done under a
        point group.
    candidates
        Partners scored per particle to find its near neighbours; ``None``: all.
    refine_lr
        Learning rate of the refinement from the spectral start.
    trim_rounds
        Rounds of rejecting near-neighbour pairs that the recovered orientations contradict
        (:func:`~cryopose.recovery.recover_from_near_pairs`).
    k_per_node
        Random pairs: partners per particle of the graphs used for node repair and the
        final loss.
    steps
        Adam steps in total.
    batch_size
        Pairs per step.
    restarts
        Random pairs: independent random starts.
    rounds
        Random pairs: surrogate rounds with node repair.
    seed
        Seed of every random draw.
    embed_batch
        Images read and embedded at once.
    polish
        Polishing after the distance-based recovery (C1 only; ``None``: none): frame search
        and reconstruct-and-match rounds, :mod:`cryopose.recovery.polish`. Measured on 5,000
        projections of 5j0n (``benchmarks/bench_recovery.py --max-minutes 15``, network
        trained 15 CPU-minutes, 3,215 steps; 3 rounds): E_OR 7.6 -> 0.6 deg noiseless,
        14.5 -> 2.4 deg at noise variance 16.
    polish_angpix, polish_box
        Pixel size and box of the polishing; ``None``: the network's (with ``distance_fn``:
        the images').
    """

    neighbours: int = 20
    candidates: int | None = None
    refine_lr: float = 0.01
    trim_rounds: int = 0
    k_per_node: int = 20
    steps: int = 2000
    batch_size: int = 1 << 14
    restarts: int = 4
    rounds: int = 5
    seed: int = 0
    embed_batch: int = 256
    polish: PolishSettings | None = dataclasses.field(default_factory=PolishSettings)
    polish_angpix: float | None = None
    polish_box: int | None = None


@dataclass(frozen=True)
class RunResult:
    """Outcome of :func:`recover_star`.

    Attributes
    ----------
    output
        The star file written.
    quaternions
        ``(n, 4)`` recovered unit quaternions (CPU, float64), row order of the star file.
    recovery
        The optimiser's result (loss history, restarts).
    distance_quaternions
        ``(n, 4)`` the orientations from distances alone, before polishing (same as
        ``quaternions`` without polishing).
    polish
        The polishing's result (``None`` without).
    """

    output: Path
    quaternions: torch.Tensor
    recovery: RecoveryResult
    distance_quaternions: torch.Tensor | None = None
    polish: PolishResult | None = None


@dataclass(frozen=True)
class EvaluationResult:
    """Recovered poses against the truth.

    Attributes
    ----------
    n
        Number of particles compared.
    e_or_deg
        E_OR: mean ``d_q`` after the best O(4) transform, degrees.
    so3_error_deg
        Mean geodesic error after the best map rotation (and mirror), degrees.
    flip
        Whether the predicted map is the mirror image of the true one.
    fsc
        ``(D // 2 + 1,)`` FSC between the reconstruction from the aligned predicted poses and
        the ground-truth map (``None`` without a map).
    resolution_fsc_05, resolution_fsc_0143
        Where that FSC crosses 0.5 and 0.143, Angstrom (``None`` without a map).
    """

    n: int
    e_or_deg: float
    so3_error_deg: float
    flip: bool
    fsc: torch.Tensor | None = None
    resolution_fsc_05: float | None = None
    resolution_fsc_0143: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the FSC as a list)."""
        out = dataclasses.asdict(self)
        out["fsc"] = None if self.fsc is None else [float(v) for v in self.fsc]
        return out


def prepare_images(
    images: torch.Tensor, angpix: float, box: int, angpix_model: float
) -> torch.Tensor:
    """Resample images to the network's pixel size and box, and standardise them.

    Parameters
    ----------
    images
        ``(N, H, H)`` square images at ``angpix`` Angstrom per pixel, centred.
    angpix
        Their pixel size in Angstrom.
    box
        The network's box in pixels.
    angpix_model
        The network's pixel size in Angstrom.

    Returns
    -------
    torch.Tensor
        ``(N, 1, box, box)`` float32, mean 0 and standard deviation 1 per image.
    """
    x = images.to(torch.float32)
    if abs(angpix - angpix_model) > 1e-3 * angpix_model:
        x = rescale(x, angpix, angpix_model)
    x = window_centred(x, box)
    return standardise(x)[:, None]


def embed_particles(
    table: ParticleTable,
    model: DistanceModel,
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """Feature vector of every particle image of a table.

    Images are read in batches of ``batch_size`` (memory does not grow with their number),
    centred by their origins (translated by ``+origin``, RELION's sign) when the table has
    origins, then :func:`prepare_images` and :meth:`SiameseDistance.embed`.

    Parameters
    ----------
    table
        Particles with ``rlnImageName`` and a pixel size.
    model
        The distance network.
    batch_size
        Images per batch.
    device
        Device of the network.
    progress
        Report progress.

    Returns
    -------
    torch.Tensor
        ``(n, features)`` float32 on ``device``.
    """
    n = len(table)
    angpix = table.angpix()
    locations = table.image_locations()
    shifts = table.shifts_angst(dtype=torch.float64) if table.has_shifts else None
    parts = []
    with (
        StackCache() as cache,
        progress_reporter("embedding particles", n, enabled=progress, unit="images") as advance,
        torch.no_grad(),
    ):
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            images = read_images(locations[start:stop], cache).to(torch.float64)
            apix = float(angpix[start])
            if not np.allclose(angpix[start:stop], apix, rtol=1e-4):
                raise InputError(
                    table.path,
                    "particles of one batch have different pixel sizes; expected one",
                    "column rlnImagePixelSize",
                )
            if shifts is not None:
                images = shift_images(images, -origin_to_image_shift(shifts[start:stop], apix))
            x = prepare_images(images, apix, model.box, model.angpix).to(device)
            parts.append(model.network.embed(x))
            advance(stop - start)
    return torch.cat(parts)


def features_distance_fn(
    features: torch.Tensor, calibration: torch.Tensor | None = None
) -> DistanceFn:
    """Distance callable over precomputed features: ``(i, j) -> pi (1 - cos(f_i, f_j)) / 2``.

    Parameters
    ----------
    features
        ``(n, F)`` feature vectors of the particles.
    calibration
        Optional ``(2, K)`` knots applied to the result (:func:`~cryopose.recovery.calibrate`).

    Returns
    -------
    DistanceFn
        ``fn(i (B,) int64, j (B,) int64) -> (B,)`` radians, on the device of ``features``.
    """
    unit = torch.nn.functional.normalize(features.detach(), dim=-1)

    def distance(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        i, j = i.to(unit.device), j.to(unit.device)
        d = feature_distance(unit[i], unit[j])
        return d if calibration is None else calibrate(d, calibration)

    return distance


def _write_poses(table: ParticleTable, quaternions: torch.Tensor, output: Path) -> None:
    out = dataclasses.replace(table, particles=table.particles.copy(), blocks=dict(table.blocks))
    out.set_rotations(quaternion_to_matrix(quaternions.to(torch.float64)))
    write_particles(out, output)


def recover_star(
    star: str | Path,
    output: str | Path,
    *,
    model_dir: str | Path | None = None,
    distance_fn: DistanceFn | None = None,
    settings: RunSettings | None = None,
    symmetry: str | None = None,
    particles_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> RunResult:
    """Recover the orientations of the particles of a star file and write them to a copy.

    Parameters
    ----------
    star
        Particle star file (RELION 3.0 or 3.1+), images reachable through ``rlnImageName``.
    output
        Star file to write: the input with rlnAngleRot/Tilt/Psi replaced (written atomically).
    model_dir
        Folder written by :func:`~cryopose.recovery.train_distance_network`.
    distance_fn
        Instead of a model: ``fn(i, j) -> (B,)`` distances in radians between particles
        (0-based row indices of the star file), e.g. an oracle for testing.
    settings
        Recovery settings; default ``RunSettings()``.
    symmetry
        Point group for the distances; default the model's (C1 with ``distance_fn``).
    particles_dir
        Folder to look for the stacks in first.
    device
        Device of the network and of the optimisation.
    progress
        Report progress.

    Returns
    -------
    RunResult

    Raises
    ------
    InputError
        When neither or both of ``model_dir`` and ``distance_fn`` are given, for bad star
        files or model folders, and for fewer than 4 particles.
    """
    if (model_dir is None) == (distance_fn is None):
        raise InputError(None, "give exactly one of model_dir and distance_fn", "arguments")
    s = RunSettings() if settings is None else settings
    table = read_particles(star, particles_dir=particles_dir)
    n = len(table)
    if n < 4:
        raise InputError(table.path, f"{n} particles; expected at least 4 to recover poses")
    group = symmetry or "C1"
    model_angpix: float | None = None
    model_box: int | None = None
    if model_dir is not None:
        model = load_distance_model(model_dir, device)
        model_angpix, model_box = model.angpix, model.box
        group = symmetry or model.symmetry
        features = embed_particles(
            table, model, batch_size=s.embed_batch, device=device, progress=progress
        )
        distance_fn = features_distance_fn(features, model.calibration)
    assert distance_fn is not None
    if s.neighbours > 0 and group == "C1" and n >= 10:
        result = _recover_near(n, distance_fn, s, device, progress)
    else:
        result = recover_orientations_online(
            n,
            distance_fn,
            k_per_node=min(s.k_per_node, n - 1),
            steps=s.steps,
            batch_size=s.batch_size,
            restarts=s.restarts,
            rounds=s.rounds,
            symmetry=None if group == "C1" else group,
            seed=s.seed,
            device=device,
            progress=progress,
        )
    q = result.quaternions.detach().to("cpu", torch.float64)
    q_distance = q
    polished: PolishResult | None = None
    if s.polish is not None and s.polish.rounds > 0 and group == "C1":
        apix = s.polish_angpix if s.polish_angpix is not None else model_angpix
        box = s.polish_box if s.polish_box is not None else model_box
        images, apix_work = load_images(table, apix, box, progress=progress)
        ctf = table_ctf(table, int(images.shape[-1]), apix_work)
        R = quaternion_to_matrix(q)
        frame = resolve_frame(images, R, apix_work, s.polish, ctf=ctf, progress=progress)
        polished = polish_orientations(
            images, frame.rotations, apix_work, s.polish, ctf=ctf, progress=progress
        )
        q = matrix_to_quaternion(polished.rotations)
    out = Path(output)
    _write_poses(table, q, out)
    return RunResult(out, q, result, q_distance, polished)


def _recover_near(
    n: int, distance_fn: DistanceFn, s: RunSettings, device: str | torch.device, progress: bool
) -> RecoveryResult:
    """Near-neighbour graph, then :func:`~cryopose.recovery.recover_from_near_pairs`."""
    gen = torch.Generator().manual_seed(s.seed)
    pairs, d = nearest_pairs(
        n, distance_fn, min(s.neighbours, n - 1), candidates=s.candidates, generator=gen,
        device=device,
    )  # fmt: skip
    return recover_from_near_pairs(
        n, pairs, d, steps=s.steps, lr=s.refine_lr, batch_size=s.batch_size,
        trim_rounds=s.trim_rounds, seed=s.seed, device=device, progress=progress,
    )  # fmt: skip


def _match_rows(true: ParticleTable, pred: ParticleTable) -> tuple[np.ndarray, np.ndarray]:
    """Row indices pairing the two tables: by rlnImageName when both have it, else by order."""
    cols_t, cols_p = true.particles.columns, pred.particles.columns
    if "rlnImageName" in cols_t and "rlnImageName" in cols_p:
        names_t = true.particles["rlnImageName"].astype(str).tolist()
        names_p = pred.particles["rlnImageName"].astype(str).tolist()
        index = {name: k for k, name in enumerate(names_t)}
        missing = [k for k, name in enumerate(names_p) if name not in index]
        if missing:
            raise InputError(
                pred.path,
                f"image {names_p[missing[0]]!r} is not in {true.path}",
                f"row {missing[0] + 1}, column rlnImageName",
            )
        rows_p = np.arange(len(names_p))
        return np.array([index[name] for name in names_p]), rows_p
    if len(true) != len(pred):
        raise InputError(
            pred.path,
            f"{len(pred)} particles but {true.path} has {len(true)}; without rlnImageName "
            "rows are paired by order and the counts must match",
        )
    return np.arange(len(true)), np.arange(len(pred))


def evaluate_recovery(
    true_star: str | Path,
    pred_star: str | Path,
    *,
    map_path: str | Path | None = None,
    particles_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> EvaluationResult:
    """E_OR and map-frame error of predicted poses, and optionally the FSC to the true map.

    Parameters
    ----------
    true_star, pred_star
        Star files with true and predicted angles (rows paired by ``rlnImageName``).
    map_path
        Ground-truth map. When given, the predicted poses are mapped to the truth's frame by
        the O(4) transform of E_OR (:func:`align_o4`; distances determine poses only up to
        O(4), of which map rotations and mirrors are a part), the map is reconstructed from
        the predicted star's images at those poses (CTF-corrected when it has CTF columns),
        and its FSC against the ground truth (padded to a cube, resampled to the images' pixel
        size and box) is reported.
    particles_dir
        Folder to look for the stacks in first.
    device
        Device of the reconstruction.
    progress
        Report progress of the reconstruction.

    Returns
    -------
    EvaluationResult

    Raises
    ------
    InputError
        For star files without angles, unmatched rows, or fewer than 4 particles.
    """
    true = read_particles(true_star, particles_dir=particles_dir)
    pred = read_particles(pred_star, particles_dir=particles_dir)
    for table in (true, pred):
        if not table.has_poses:
            raise InputError(table.path, "no rlnAngleRot/Tilt/Psi columns; expected poses")
    rows_t, rows_p = _match_rows(true, pred)
    if rows_t.shape[0] < 4:
        raise InputError(pred.path, f"{rows_t.shape[0]} particles; expected at least 4")
    R_true = true.rotations(dtype=torch.float64)[torch.from_numpy(rows_t)]
    R_pred = pred.rotations(dtype=torch.float64)[torch.from_numpy(rows_p)]
    q_pred = matrix_to_quaternion(R_pred)
    T, err_rad = align_o4(matrix_to_quaternion(R_true), q_pred)
    _, flip, so3 = align_so3(R_true, R_pred)
    result = EvaluationResult(int(rows_t.shape[0]), math.degrees(err_rad), so3, flip)
    if map_path is None:
        return result
    from cryopose.evaluation.fsc import fsc, resolution_at
    from cryopose.pose.reconstruct import reconstruct_particles

    # Distances leave the poses undetermined up to all of O(4), not only map rotations and
    # mirrors (module docstring of cryopose.recovery.align), so the poses are brought into the
    # truth's frame by the E_OR transform itself, as in the paper.
    aligned = pred.subset(rows_p)
    aligned.set_rotations(quaternion_to_matrix(q_pred @ T.to(torch.float64).T))
    rec = reconstruct_particles(aligned, ctf=aligned.has_ctf, device=device, show_progress=progress)
    box = int(rec.full.shape[-1])
    truth, angpix_map = read_map(map_path)
    truth, _ = prepare_volume(truth, angpix_map, box, rec.angpix)
    curve = fsc(rec.full.to(torch.float64), truth.to(torch.float64)).cpu()
    return dataclasses.replace(
        result,
        fsc=curve,
        resolution_fsc_05=resolution_at(curve, box, rec.angpix, 0.5),
        resolution_fsc_0143=resolution_at(curve, box, rec.angpix, 0.143),
    )
