"""Pose inference: a trained pose model folder applied to a particle star file.

:func:`infer_poses` streams the particles from their memory-mapped stacks in batches through
:class:`~cryopose.data.ParticlesDataset` with exactly the preprocessing stored in the model
folder, runs the network, and keeps only per-particle outputs (never the ``(B, M)`` logits of
more than one batch), so memory does not grow with the particle count.

Gold standard: with ``half1.pt`` and ``half2.pt`` the particles of half 1 (``rlnRandomSubset``)
are predicted by the model trained on half 2 and vice versa, so no particle is predicted by a
model that saw it; a ``full.pt`` model predicts every particle. A star file without
``rlnRandomSubset`` is split into seeded random halves (:func:`cryopose.data.half_sets`) and the
halves used are written as ``rlnRandomSubset``.

The output star file is the input (every column and block, input order) with:

* ``rlnAngleRot/Tilt/Psi``: the neighbour-averaged, symmetrised pose
  (:attr:`cryopose.models.PosePrediction.averaged_rotation`), or the top-1 grid pose with
  ``write_top1=True``; the origins are kept;
* ``rlnMaxValueProbDistribution``: the top-1 probability;
* ``cryoposeTop10Score``: the sum of the 10 largest probabilities (the pruning score);
* ``cryoposeNeighbourhoodProbability``: the probability mass of the averaged neighbourhood;
* ``cryoposeDirectionalZScore``: when the model folder has directional statistics
  (:mod:`cryopose.pose.pruning`), the score's robust z-score in its viewing cone, with the
  statistics of the model that predicted the particle;
* ``cryoposeTopKIndices`` and ``cryoposeGridOrder``: the ``top_k`` most probable grid cells
  (comma-separated indices, most probable first) and the order of the model's output grid
  (:mod:`cryopose.pose.candidates`), from which ``cryopose refine`` starts when the averaged
  pose matches the map worse than one of them.

Example usage::

    from cryopose.pose.infer import infer_poses
    result = infer_poses("particles.star", "model_dir", "predicted.star", batch_size=128)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from cryopose._progress import progress as progress_bar
from cryopose.data.dataset import ParticlesDataset, collate
from cryopose.data.predictions import write_predictions
from cryopose.data.preprocess import channel_names, output_geometry
from cryopose.data.splits import half_sets
from cryopose.errors import InputError
from cryopose.io.mrc import open_stack
from cryopose.io.particles import ParticleTable, read_particles
from cryopose.models.image2sphere import Image2Sphere, poses_from_logits
from cryopose.models.model_dir import CONFIG_NAME, PoseModelSpec, load_pose_model
from cryopose.models.tta import TURN_CHOICES, quarter_turn_logits
from cryopose.pose.candidates import Candidates, with_candidate_columns
from cryopose.pose.pruning import ZSCORE_COLUMN, load_directional_stats

__all__ = [
    "NEIGHBOURHOOD_COLUMN",
    "PROBABILITY_COLUMN",
    "TOP10_COLUMN",
    "ZSCORE_COLUMN",
    "InferenceResult",
    "infer_poses",
]

PROBABILITY_COLUMN = "rlnMaxValueProbDistribution"
TOP10_COLUMN = "cryoposeTop10Score"
NEIGHBOURHOOD_COLUMN = "cryoposeNeighbourhoodProbability"
# Probabilities summed for the pruning score (cryoPARES: top-10).
_SCORE_K = 10


@dataclass
class InferenceResult:
    """Per-particle outputs of :func:`infer_poses`, in the input's row order (N particles).

    Attributes
    ----------
    table
        The table as written: input rows and columns plus the predictions.
    rotations
        ``(N, 3, 3)`` float64 rotations written (averaged, or top-1 with ``write_top1``).
    top1_rotations, averaged_rotations
        ``(N, 3, 3)`` float64 top-1 grid rotations and neighbour-averaged symmetrised ones.
    probability
        ``(N,)`` float64 top-1 probability.
    top10_score
        ``(N,)`` float64 sum of the 10 largest probabilities.
    neighbourhood_probability
        ``(N,)`` float64 mass of the averaged neighbourhood.
    top_k_indices, top_k_probabilities
        ``(N, k)`` grid indices (int64, order ``grid_order``) and probabilities of the k most
        probable cells.
    model_half
        ``(N,)`` int64 model that predicted each particle (1: ``half1.pt``, 2, 0: ``full.pt``).
    zscore
        ``(N,)`` float64 directional z-scores, ``None`` without directional statistics.
    out_star
        The star file written, or ``None``.
    seconds
        Wall time of the network passes (data loading included, start-up excluded).
    grid_order
        Order of the model's output grid (``spec.network.output_order``).
    """

    table: ParticleTable
    rotations: torch.Tensor
    top1_rotations: torch.Tensor
    averaged_rotations: torch.Tensor
    probability: torch.Tensor
    top10_score: torch.Tensor
    neighbourhood_probability: torch.Tensor
    top_k_indices: torch.Tensor
    top_k_probabilities: torch.Tensor
    model_half: torch.Tensor
    zscore: torch.Tensor | None
    out_star: Path | None
    seconds: float
    grid_order: int

    @property
    def candidates(self) -> Candidates:
        """The top-k grid cells as refinement candidates (:mod:`cryopose.pose.candidates`)."""
        n = self.top_k_indices.shape[0]
        return Candidates(self.top_k_indices, torch.full((n,), self.grid_order))

    @property
    def particles_per_second(self) -> float:
        """Throughput of the inference loop."""
        return len(self.probability) / max(self.seconds, 1e-9)


def _check_geometry(table: ParticleTable, spec: PoseModelSpec, model_dir: Path) -> None:
    """Fail early when the images do not become the network's input after preprocessing."""
    net = spec.network
    channels = len(channel_names(spec.preprocess))
    if channels != net.in_channels:
        raise InputError(
            model_dir / CONFIG_NAME,
            f"the preprocessing gives {channels} channels but the network expects "
            f"{net.in_channels}",
        )
    angpix = table.angpix()
    boxes: dict[Path, int] = {}
    seen: set[tuple[int, float]] = set()
    for row, (path, _) in enumerate(table.image_locations()):
        if path not in boxes:
            with open_stack(path) as stack:
                boxes[path] = int(stack.shape[-1])
        key = (boxes[path], float(angpix[row]))
        if key in seen:
            continue
        seen.add(key)
        _, size, _ = output_geometry(key[0], key[1], spec.preprocess)
        if size != net.image_size:
            raise InputError(
                table.path,
                f"images of {key[0]} px at {key[1]:g} A/px become {size} px with the model's "
                f"preprocessing, but the model in {model_dir} expects {net.image_size} px",
                f"row {row + 1}, stack {path}",
            )


def _assignment(table: ParticleTable, spec: PoseModelSpec, seed: int) -> np.ndarray:
    """``(N,)`` model half predicting each particle: the other half's model, or 0."""
    if spec.halves == (0,):
        return np.zeros(len(table), dtype=np.int64)
    return np.asarray(3 - half_sets(table, seed), dtype=np.int64)


def infer_poses(
    star: str | Path | ParticleTable,
    model_dir: str | Path,
    out_star: str | Path | None = None,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    top_k: int = 100,
    num_workers: int = 0,
    progress: bool = True,
    write_top1: bool = False,
    particles_dir: str | Path | None = None,
    seed: int = 0,
    turns: int = 1,
) -> InferenceResult:
    """Predict the pose of every particle of ``star`` with the models of ``model_dir``.

    Parameters
    ----------
    star
        Particle star file (RELION 3.0 or 3.1+) or a table.
    model_dir
        Pose model folder (:mod:`cryopose.models.model_dir`).
    out_star
        Star file to write (see the module docstring), or ``None`` to write nothing.
    device
        Torch device of the networks.
    batch_size
        Particles per network pass.
    top_k
        Most probable grid cells kept per particle.
    num_workers
        ``DataLoader`` worker processes reading and preprocessing images.
    progress
        Show a progress bar.
    write_top1
        Write the top-1 grid pose instead of the neighbour-averaged one.
    particles_dir
        Folder holding the stacks, tried first (only when ``star`` is a path).
    seed
        Seed of the random half sets of a star file without ``rlnRandomSubset``.
    turns
        Test-time augmentation: average the probabilities of 1, 2 or 4 quarter turns of each
        image (:mod:`cryopose.models.tta`); costs ``turns`` network passes per particle.
        The averaged probabilities are a little flatter than one pass's, while the
        directional statistics of the model come from one pass: on the pose benchmark the
        median z-score fell from -0.13 to -0.26 with 4 turns, so a fixed z-score threshold
        keeps slightly fewer particles (a junk fraction is unaffected).

    Returns
    -------
    InferenceResult

    Raises
    ------
    InputError
        A missing or broken model folder (file named), images whose size after the model's
        preprocessing differs from the network's input (star file and row named), missing
        stacks or CTF columns.
    """
    model_dir = Path(model_dir)
    if batch_size < 1 or top_k < 1:
        raise InputError(None, f"batch size and top_k must be >= 1, got {batch_size}, {top_k}")
    if turns not in TURN_CHOICES:
        raise InputError(None, f"turns must be one of {TURN_CHOICES}, got {turns}")
    table = star if isinstance(star, ParticleTable) else read_particles(star, particles_dir)
    spec, nets = load_pose_model(model_dir, device)
    _check_geometry(table, spec, model_dir)
    if len(table) == 0:
        raise InputError(table.path, "no particles to predict")
    assignment = _assignment(table, spec, seed)
    out = _Outputs(len(table), top_k)
    start = time.perf_counter()
    with progress_bar("inferring poses", len(table), progress, "particles") as advance:
        for half, net in nets.items():
            dataset = ParticlesDataset(
                table, preprocess=spec.preprocess, half_set=None if half == 0 else 3 - half,
                symmetry=spec.symmetry, seed=seed,
            )  # fmt: skip
            _run(net, dataset, spec, out, top_k, batch_size, num_workers, device, advance, turns)
            dataset.close()
    seconds = time.perf_counter() - start
    zscore = _zscores(model_dir, out, assignment)
    written = _with_half_sets(table, spec, assignment)
    written = with_candidate_columns(written, out.top_k_indices, spec.network.output_order)
    rotations = out.top1 if write_top1 else out.averaged
    scores: dict[str, torch.Tensor] = {
        PROBABILITY_COLUMN: out.probability,
        TOP10_COLUMN: out.top10,
        NEIGHBOURHOOD_COLUMN: out.neighbourhood,
    }
    if zscore is not None:
        scores[ZSCORE_COLUMN] = zscore
    if out_star is not None:
        write_predictions(written, rotations, None, scores, out_star)
    written = replace(written, particles=written.particles.copy(), blocks=dict(written.blocks))
    written.set_rotations(rotations)
    for label, values in scores.items():
        written.particles[label] = values.numpy()
    written.blocks[written.particles_block] = written.particles
    return InferenceResult(
        table=written,
        rotations=rotations,
        top1_rotations=out.top1,
        averaged_rotations=out.averaged,
        probability=out.probability,
        top10_score=out.top10,
        neighbourhood_probability=out.neighbourhood,
        top_k_indices=out.top_k_indices,
        top_k_probabilities=out.top_k_probabilities,
        model_half=torch.from_numpy(assignment),
        zscore=zscore,
        out_star=None if out_star is None else Path(out_star),
        seconds=seconds,
        grid_order=spec.network.output_order,
    )


class _Outputs:
    """Preallocated per-particle outputs, filled batch by batch."""

    def __init__(self, n: int, top_k: int) -> None:
        f64 = torch.float64
        self.top1 = torch.full((n, 3, 3), torch.nan, dtype=f64)
        self.averaged = torch.full((n, 3, 3), torch.nan, dtype=f64)
        self.probability = torch.full((n,), torch.nan, dtype=f64)
        self.top10 = torch.full((n,), torch.nan, dtype=f64)
        self.neighbourhood = torch.full((n,), torch.nan, dtype=f64)
        self.top_k_indices = torch.full((n, top_k), -1, dtype=torch.int64)
        self.top_k_probabilities = torch.full((n, top_k), torch.nan, dtype=f64)


def _batches(
    dataset: ParticlesDataset, batch_size: int, num_workers: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images (B, C, S, S), rows (B,))`` of the dataset in order.

    In this process, each batch is read and preprocessed at once
    (:meth:`ParticlesDataset.preprocessed_batch`); with workers, by a ``DataLoader``.
    """
    if num_workers == 0:
        for start in range(0, len(dataset), batch_size):
            yield dataset.preprocessed_batch(range(start, min(start + batch_size, len(dataset))))
        return
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate)
    for batch in loader:
        yield batch.image, batch.metadata["index"]


@torch.inference_mode()
def _run(
    net: Image2Sphere,
    dataset: ParticlesDataset,
    spec: PoseModelSpec,
    out: _Outputs,
    top_k: int,
    batch_size: int,
    num_workers: int,
    device: str | torch.device,
    advance: Callable[[int], None],
    turns: int = 1,
) -> None:
    """Predict every particle of ``dataset`` with ``net`` into ``out`` (``turns``: TTA)."""
    order = spec.network.output_order
    k = max(top_k, _SCORE_K)
    for images, rows in _batches(dataset, batch_size, num_workers):
        images = images.to(device)
        logits = net(images) if turns == 1 else quarter_turn_logits(net, images, order, turns)
        pred = poses_from_logits(logits, order, k, spec.symmetry)
        out.top1[rows] = pred.rotation.cpu()
        out.averaged[rows] = pred.averaged_rotation.cpu()
        out.probability[rows] = pred.probability.cpu()
        out.top10[rows] = pred.top_k_probabilities[:, :_SCORE_K].sum(dim=1).cpu()
        out.neighbourhood[rows] = pred.neighbourhood_probability.cpu()
        out.top_k_indices[rows] = pred.top_k_indices[:, :top_k].cpu()
        out.top_k_probabilities[rows] = pred.top_k_probabilities[:, :top_k].cpu()
        advance(len(rows))


def _zscores(model_dir: Path, out: _Outputs, assignment: np.ndarray) -> torch.Tensor | None:
    """Directional z-scores with the statistics of each particle's model, or ``None``."""
    stats = load_directional_stats(model_dir)
    if stats is None:
        return None
    z = torch.full_like(out.top10, torch.nan)
    for half in np.unique(assignment).tolist():
        if half not in stats.halves:
            raise InputError(
                model_dir, f"the directional statistics have no entry for model half {half}"
            )
        rows = torch.from_numpy(np.flatnonzero(assignment == half))
        z[rows] = stats.halves[half].zscores(out.averaged[rows], out.top10[rows])
    return z


def _with_half_sets(
    table: ParticleTable, spec: PoseModelSpec, assignment: np.ndarray
) -> ParticleTable:
    """Add ``rlnRandomSubset`` to the table when gold-standard halves were drawn here."""
    if spec.halves == (0,) or table.has_half_sets:
        return table
    particles = table.particles.copy()
    particles["rlnRandomSubset"] = 3 - assignment
    blocks = dict(table.blocks)
    blocks[table.particles_block] = particles
    return replace(table, particles=particles, blocks=blocks)
