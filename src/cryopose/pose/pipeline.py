"""The pose pipeline for related experiments: network poses -> pruning -> local refinement.

One call takes the particles of a new experiment (straight from picking, no 2D classification)
and returns the particles worth keeping with polished poses:

1. :func:`cryopose.pose.infer.infer_poses` predicts every pose with the model trained on the
   other half set and scores it (``cryoposeDirectionalZScore`` when the model folder has
   validation statistics);
2. pruning keeps particles whose directional z-score reaches ``threshold`` (or drops the
   ``junk_fraction`` with the lowest z-scores);
3. :func:`cryopose.pose.refine.refine_particles` matches each particle against its predicted
   pose and the network's top-k grid poses (``RefineConfig.candidates``), then searches a
   small ball of rotations and shifts around the best against the reference map.

With ``PipelineConfig(score="cryoposeRefineZScore")`` steps 2 and 3 swap: every particle is
refined, and pruning uses the robust z-score of its refinement peak significance, with the
median and MAD of the particles of the same call (:func:`cryopose.pose.pruning.refine_zscores`;
it separates simulated junk far better than the network's score, see that module). Refining
the junk too costs refinement time in proportion to the junk fraction. A call of fewer than a
few dozen particles gives noisy statistics: a stream should deliver files of at least that.

:class:`PosePipeline` is the callable :func:`cryopose.pose.stream.stream_folder` runs on each
new file; :func:`run_pipeline` does the same for one star file and writes the result.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryopose._atomic import atomic_path
from cryopose.errors import InputError
from cryopose.io.particles import ParticleTable, read_particles, write_particles
from cryopose.models.model_dir import read_pose_model_spec
from cryopose.models.tta import TURN_CHOICES
from cryopose.pose.infer import ZSCORE_COLUMN, infer_poses
from cryopose.pose.pruning import (
    REFINE_ZSCORE_COLUMN,
    load_directional_stats,
    refine_zscores,
    threshold_from_fraction,
)
from cryopose.pose.reconstruct import reconstruct_particles, table_box, write_reconstruction
from cryopose.pose.refine import (
    CANDIDATE_COLUMN,
    CC_COLUMN,
    PEAK_Z_COLUMN,
    SCORE_COLUMN,
    PreparedReference,
    RefineConfig,
    load_reference,
    refine_particles,
)

__all__ = [
    "PipelineConfig",
    "PipelineTimings",
    "PosePipeline",
    "run_experiment",
    "run_pipeline",
]


@dataclass(frozen=True)
class PipelineConfig:
    """Settings of :class:`PosePipeline`.

    Attributes
    ----------
    threshold
        Keep particles with score ``>= threshold``; ``None`` with ``junk_fraction`` ``None``
        keeps everything.
    junk_fraction
        Alternatively drop this fraction of each batch, lowest score first.
    score
        The score pruned by: ``"cryoposeDirectionalZScore"`` (the network's, before
        refinement) or ``"cryoposeRefineZScore"`` (after refinement of every particle; needs
        ``refine`` and a reference map).
    refine
        Local refinement settings; ``None`` skips refinement.
    batch_size
        Particles per network pass.
    device
        Torch device for the network and the refinement.
    tta
        Quarter turns of each image the network's probabilities are averaged over (1, 2 or
        4; :mod:`cryopose.models.tta`): more accurate poses for ``tta`` times the network time.
    """

    threshold: float | None = None
    junk_fraction: float | None = None
    score: str = ZSCORE_COLUMN
    refine: RefineConfig | None = field(default_factory=RefineConfig)
    batch_size: int = 128
    device: str = "cpu"
    tta: int = 1

    def __post_init__(self) -> None:
        if self.tta not in TURN_CHOICES:
            raise InputError(None, f"tta must be one of {TURN_CHOICES}, got {self.tta}")
        if self.threshold is not None and self.junk_fraction is not None:
            raise InputError(None, "give a z-score threshold or a junk fraction, not both")
        if self.score not in (ZSCORE_COLUMN, REFINE_ZSCORE_COLUMN):
            raise InputError(
                None,
                f"unknown pruning score {self.score!r}; expected {ZSCORE_COLUMN} or "
                f"{REFINE_ZSCORE_COLUMN}",
            )
        if self.score == REFINE_ZSCORE_COLUMN and self.refine is None:
            raise InputError(None, f"pruning by {REFINE_ZSCORE_COLUMN} needs refinement settings")

    @property
    def prunes(self) -> bool:
        """Whether a threshold or a junk fraction is set."""
        return self.threshold is not None or self.junk_fraction is not None


@dataclass
class PipelineTimings:
    """Seconds spent per stage and particles seen, summed over calls."""

    inference_s: float = 0.0
    refinement_s: float = 0.0
    n_in: int = 0
    n_kept: int = 0

    @property
    def particles_per_second(self) -> float:
        """Particles through inference + refinement per second."""
        total = self.inference_s + self.refinement_s
        return self.n_in / total if total > 0 else 0.0


def _with_columns(
    table: ParticleTable,
    rotations: torch.Tensor,
    origins: torch.Tensor,
    columns: dict[str, torch.Tensor],
) -> ParticleTable:
    out = replace(table, particles=table.particles.copy(), blocks=dict(table.blocks))
    out.set_rotations(rotations)
    out.set_shifts_angst(origins)
    for label, values in columns.items():
        out.particles[label] = values.detach().cpu().numpy().astype(np.float64)
    out.blocks[out.particles_block] = out.particles
    return out


class PosePipeline:
    """Inference, pruning and local refinement of particle tables with one model and map.

    Parameters
    ----------
    model_dir
        Pose model folder (``cryopose train``).
    reference
        Reference map (``.mrc``) for the local refinement at the particles' box and pixel size
        (rescaled when ``config.refine.rescale_map``); ``None`` skips refinement.
    config
        Pipeline settings.
    progress
        Progress bars for inference and refinement (off for streams of small files).

    Raises
    ------
    InputError
        At construction, before any particle: a model folder without ``config.json``, a
        missing reference map, pruning asked of a model without directional statistics, or
        pruning by ``cryoposeRefineZScore`` without a reference map (each naming the file or
        folder). Per table: a reference map whose box or pixel size
        differs from the particles' (naming the map and the star file).
    """

    def __init__(
        self,
        model_dir: str | Path,
        reference: str | Path | None,
        config: PipelineConfig | None = None,
        progress: bool = False,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.progress = progress
        self.reference = None if reference is None else Path(reference)
        self.config = config if config is not None else PipelineConfig()
        self.timings = PipelineTimings()
        # One map per (box, pixel size): streamed files need not share them, and a map
        # resampled for one file must not be used for another.
        self._references: dict[tuple[int, float], PreparedReference] = {}
        # Fail before the first particle (a stream may wait long for it), not after inference.
        read_pose_model_spec(self.model_dir)
        if self.reference is not None and not self.reference.is_file():
            raise InputError(self.reference, "reference map not found")
        pruning = self.config.prunes
        if pruning and self.config.score == REFINE_ZSCORE_COLUMN and self.reference is None:
            raise InputError(
                self.model_dir, f"pruning by {REFINE_ZSCORE_COLUMN} needs a reference map"
            )
        if (
            pruning
            and self.config.score == ZSCORE_COLUMN
            and load_directional_stats(self.model_dir) is None
        ):
            raise InputError(
                self.model_dir,
                "pruning needs directional statistics (validation_half*.pt from training)",
            )

    def _reference_volume(self, table: ParticleTable) -> PreparedReference:
        """Return the reference at the particles' box and pixel size, prepared once.

        A stream's files share its projector and grid-slice cache.
        """
        assert self.reference is not None and self.config.refine is not None
        box = table_box(table)
        key = (box, round(float(table.angpix()[0]), 6))
        if key not in self._references:
            rescale = self.config.refine.rescale_map
            volume, _ = load_reference(self.reference, table, box, rescale)
            self._references[key] = PreparedReference(
                volume, self.config.refine.pad_factor, self.config.device
            )
        return self._references[key]

    def _keep(self, scores: np.ndarray) -> np.ndarray:
        """``(n,)`` bool: ``scores >= threshold`` (given or from the junk fraction)."""
        t = self.config.threshold
        if t is None:
            assert self.config.junk_fraction is not None
            t = threshold_from_fraction(scores, self.config.junk_fraction)
        keep: np.ndarray = scores >= t
        return keep

    def __call__(self, table: ParticleTable) -> ParticleTable:
        """Return the kept particles of ``table`` with predicted (and refined) poses."""
        cfg = self.config
        start = time.perf_counter()
        # The network's top-k cells are the refinement's candidates: ask for enough of them.
        top_k = max(10, cfg.refine.candidates if cfg.refine is not None else 0)
        inference = infer_poses(
            table,
            self.model_dir,
            device=cfg.device,
            batch_size=cfg.batch_size,
            top_k=top_k,
            progress=self.progress,
            turns=cfg.tta,
        )
        inferred = inference.table
        keep = np.ones(len(inferred), dtype=bool)
        if cfg.prunes and cfg.score == ZSCORE_COLUMN:
            if ZSCORE_COLUMN not in inferred.particles.columns:
                raise InputError(
                    self.model_dir,
                    "pruning needs directional statistics (validation_half*.pt from training)",
                )
            keep = self._keep(inferred.particles[ZSCORE_COLUMN].to_numpy(dtype=np.float64))
        kept = inferred.subset(np.flatnonzero(keep))
        self.timings.inference_s += time.perf_counter() - start
        self.timings.n_in += len(table)
        if cfg.refine is None or self.reference is None or len(kept) == 0:
            self.timings.n_kept += len(kept)
            return kept
        start = time.perf_counter()
        refine_cfg = replace(cfg.refine, device=cfg.device)
        candidates = inference.candidates.subset(np.flatnonzero(keep))
        volume = self._reference_volume(kept)
        result = refine_particles(kept, volume, refine_cfg, self.progress, candidates)
        refine_z = refine_zscores(result.zscore)
        out = _with_columns(
            kept,
            result.rotations,
            result.origins_angst,
            {
                CC_COLUMN: result.cc,
                SCORE_COLUMN: result.score,
                PEAK_Z_COLUMN: result.zscore,
                REFINE_ZSCORE_COLUMN: refine_z,
            },
        )
        if result.n_candidates > 0 and result.candidate is not None:
            out.particles[CANDIDATE_COLUMN] = result.candidate.numpy()
            out.blocks[out.particles_block] = out.particles
        if cfg.prunes and cfg.score == REFINE_ZSCORE_COLUMN:
            out = out.subset(np.flatnonzero(self._keep(refine_z.numpy())))
        self.timings.refinement_s += time.perf_counter() - start
        self.timings.n_kept += len(out)
        return out


def run_pipeline(
    star: str | Path,
    model_dir: str | Path,
    reference: str | Path | None,
    out_star: str | Path,
    config: PipelineConfig | None = None,
) -> dict[str, Any]:
    """Run :class:`PosePipeline` on one star file; write the kept particles and a summary.

    Returns the summary (also written next to ``out_star`` as ``<stem>_pipeline.json``).
    """
    table = read_particles(star)
    pipeline = PosePipeline(model_dir, reference, config)
    kept = pipeline(table)
    write_particles(kept, out_star)
    t = pipeline.timings
    summary: dict[str, Any] = {
        "n_input": t.n_in,
        "n_kept": t.n_kept,
        "inference_s": t.inference_s,
        "refinement_s": t.refinement_s,
        "particles_per_second": t.particles_per_second,
        "config": asdict(pipeline.config),
    }
    out = Path(out_star)
    with atomic_path(out.with_name(out.stem + "_pipeline.json")) as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def run_experiment(
    star: str | Path,
    model_dir: str | Path,
    reference: str | Path | None,
    out_dir: str | Path,
    config: PipelineConfig | None = None,
    symmetry: str | None = None,
    particles_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Take a new experiment from picked particles to gold-standard maps, in one process.

    :class:`PosePipeline` (network poses, pruning, local refinement: with the particles' CTF
    when they have CTF columns), then the half maps and the full map of the kept particles
    (CTF-corrected when the particles have CTF columns,
    RELION's tau2 regularisation from the half-map FSC), as ``cryopose infer``, ``prune``,
    ``refine`` and ``reconstruct --halves`` do one after the other, without reading and
    writing the intermediate star files or starting four processes.

    Parameters
    ----------
    star
        Particles of the new experiment.
    model_dir, reference, config
        As for :class:`PosePipeline`.
    out_dir
        Output folder (created): ``particles.star`` (kept particles, image names relative to
        it), ``map.mrc``, ``map_half1.mrc``, ``map_half2.mrc``, ``map_fsc.json`` and
        ``pipeline.json`` (counts, seconds per stage, particles/s, resolutions, settings).
    symmetry
        Point group of the maps (``None``: the model's).
    particles_dir
        Folder to look for the stacks in first.
    progress
        Progress bars.

    Returns
    -------
    dict
        The ``pipeline.json`` summary.

    Raises
    ------
    InputError
        As :class:`PosePipeline`; also when pruning keeps no particle.
    """
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = read_particles(star, particles_dir=particles_dir)
    if len(table) == 0:
        raise InputError(star, "no particles")
    cfg = config if config is not None else PipelineConfig()
    if cfg.refine is not None and cfg.refine.ctf and not table.has_ctf:
        # No CTF columns: particles simulated or already corrected; match without a CTF.
        cfg = replace(cfg, refine=replace(cfg.refine, ctf=False))
    pipeline = PosePipeline(model_dir, reference, cfg, progress=progress)
    group = read_pose_model_spec(pipeline.model_dir).symmetry if symmetry is None else symmetry
    kept = pipeline(table)
    if len(kept) == 0:
        raise InputError(star, "pruning kept no particle; expected a lower threshold")
    particles_star = out / "particles.star"
    kept = kept.relocated(particles_star)
    write_particles(kept, particles_star)
    recon_start = time.perf_counter()
    result = reconstruct_particles(
        kept,
        ctf=kept.has_ctf,
        symmetry=group,
        halves=True,
        regularisation="tau2",
        device=pipeline.config.device,
        show_progress=progress,
    )
    fsc_summary = write_reconstruction(result, out / "map.mrc")
    t = pipeline.timings
    total = time.perf_counter() - start
    summary: dict[str, Any] = {
        "n_input": t.n_in,
        "n_kept": t.n_kept,
        "inference_s": t.inference_s,
        "refinement_s": t.refinement_s,
        "reconstruction_s": time.perf_counter() - recon_start,
        "total_s": total,
        "particles_per_second": t.n_in / total,
        "symmetry": group,
        "resolution_fsc_0.143": fsc_summary["resolution_fsc_0.143"],
        "resolution_fsc_0.5": fsc_summary["resolution_fsc_0.5"],
        "config": asdict(pipeline.config),
    }
    with atomic_path(out / "pipeline.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
