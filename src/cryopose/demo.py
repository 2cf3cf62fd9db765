"""The demo that ``cryopose demo`` runs on the data bundled with cryopose: the drug-discovery story.

The same protein is imaged again and again with different ligands. The demo plays that out on
the bundled atomic model of a C1 complex (PDB 1u6g, Cul1-Cand1-Skp1, about 150 A across):

1. **apo data set**: the model -> density map (``apo_truth.mrc``) -> ``n_apo`` simulated
   particles (CTF, shifts, noise at ``snr``) -> the apo map reconstructed from their poses
   (``apo_map.mrc``), as an earlier refinement of the apo protein would have given;
2. **training**: a small Image2Sphere network learns poses from the apo particles, first
   pre-trained on particles simulated on the fly from the apo map, then fine-tuned on the
   particles, within ``minutes`` of wall time (``model/``);
3. **ligand-bound data set**: the same density plus a ligand-like blob at its best surface
   pocket (``ligand_truth.mrc``, :func:`cryopose.simulate.ligand.add_ligand`) -> ``n_ligand``
   new particles of which ``junk_fraction`` are junk; the poses, origins and junk labels are
   taken out (``ligand_picked.star``: what a picker gives);
4. **pose pipeline**: the apo network predicts every pose and its top-10 grid poses
   (``ligand_network.star``); every particle is refined locally against the apo map,
   starting from whichever of its predicted pose and top-10 grid poses matches the map best;
   the ``junk_fraction`` particles with the lowest ``cryoposeRefineZScore`` (robust z-score
   of the refinement's peak significance, :mod:`cryopose.pose.pruning`) are dropped
   (``ligand_refined.star`` holds the rest), and gold-standard half maps and the full map are
   reconstructed (``ligand_map.mrc``);
5. **evaluation** against the truth the simulation kept: angular errors of the network and of
   the refined poses, the pruning ROC AUC on the known junk, the FSC of the ligand map against
   the map reconstructed from the true poses, and the difference map ligand map minus apo map
   (``difference.mrc``), whose strongest peak falls on the ligand although the network never
   saw it. ``summary.json``, ``report.md``, ``fsc.png`` and ``errors.png`` hold the results.

Example usage::

    from cryopose.demo import DemoConfig, run_demo
    summary = run_demo("demo_output", DemoConfig(minutes=7.0))
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryopose._atomic import atomic_path
from cryopose.errors import InputError

__all__ = ["DemoConfig", "run_demo", "structure_path"]

_TRUTH_COLUMNS = (
    "rlnAngleRot",
    "rlnAngleTilt",
    "rlnAnglePsi",
    "rlnOriginXAngst",
    "rlnOriginYAngst",
    "cryoposeIsJunk",
    "cryoposeJunkKind",
)
_OUTPUTS = (
    "report.md",
    "summary.json",
    "fsc.png",
    "errors.png",
    "apo_map.mrc",
    "ligand_map.mrc",
    "difference.mrc",
    "ligand/ligand_refined.star",
    "model",
)


# Wider than RefineConfig's default (+-6 at 3, then +-2 at 1) at the same cost (33 + 33
# candidates): a network trained for minutes leaves many poses 10-20 degrees off. Measured on
# 300 particles of this demo (network median 33 deg): within 10 deg after refinement 33% with
# these settings, 14% with the defaults.
_REFINE_COARSE = (20.0, 10.0)  # range, step (degrees)
_REFINE_FINE = (8.0, 4.0)


@dataclass
class DemoConfig:
    """Settings of the demo (saved as ``demo.json`` in the output folder).

    Attributes
    ----------
    structure
        Bundled atomic model (``cryopose/data/demo`` or ``cryopose/data/shrec``), C1.
    angpix, box
        Pixel size (Angstrom) and box (pixels) of the particles.
    n_apo, n_ligand
        Particles of the apo (training) and ligand-bound (new) data sets.
    snr
        Signal-to-noise ratio of both data sets (CTF on).
    junk_fraction
        Fraction of junk in the ligand-bound set, and the fraction pruning removes.
    minutes
        Training budget (wall time): ``pretrain_share`` of it pre-training on simulated
        particles, the rest fine-tuning on the apo particles.
    pretrain_share
        Fraction of ``minutes`` spent pre-training.
    image_size
        Network input in pixels (the particles are Fourier-cropped to it).
    threads
        Torch CPU threads for the whole demo (``None``: torch's default, one per core). One
        thread trained 10x faster than the default on this 2-core machine shared with other
        jobs, where oversubscribed OpenMP threads spin (inference of the 2,000 ligand-bound
        particles took 111 s with the default two threads at load average 7).
    ligand_atoms, ligand_radius_angst
        Pseudo-atoms of the ligand and the radius they lie in.
    seed
        Seed of everything (the ligand set uses ``seed + 1``).
    """

    structure: str = "1u6g.pdb.gz"
    angpix: float = 3.0
    box: int = 64
    n_apo: int = 2000
    n_ligand: int = 2000
    snr: float = 0.1
    junk_fraction: float = 0.1
    minutes: float = 7.0
    pretrain_share: float = 0.7
    image_size: int = 32
    threads: int | None = 1
    ligand_atoms: int = 24
    ligand_radius_angst: float = 4.0
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`InputError` for settings the demo cannot run with."""
        checks = [
            (self.n_apo >= 20 and self.n_ligand >= 8, "n_apo >= 20 and n_ligand >= 8"),
            (0.0 < self.junk_fraction < 0.5, "a junk fraction in (0, 0.5)"),
            (self.minutes > 0, "a positive number of minutes"),
            (0.0 < self.pretrain_share < 1.0, "a pre-training share in (0, 1)"),
            (self.box >= 16 and self.image_size >= 8, "box >= 16 and image size >= 8"),
            (self.threads is None or self.threads >= 1, "threads None or >= 1"),
        ]
        for ok, expected in checks:
            if not ok:
                raise InputError(None, f"demo settings: expected {expected}", "DemoConfig")


def structure_path(name: str) -> Path:
    """Path of a bundled atomic model (``cryopose/data/demo`` first, then ``data/shrec``)."""
    data = resources.files("cryopose.data")
    for folder in ("demo", "shrec"):
        path = Path(str(data.joinpath(folder, name)))
        if path.is_file():
            return path
    raise InputError(None, f"no bundled structure {name!r} in cryopose/data/demo or data/shrec")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _write_json(path: Path, values: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(values, indent=2) + "\n")


def _errors_summary(errors_deg: torch.Tensor) -> dict[str, float]:
    """Median, mean and fractions within 5 / 10 degrees of ``(N,)`` errors in degrees."""
    e = errors_deg.to(torch.float64)
    return {
        # As cryopose evaluate-poses: the mean of the two middle values for an even count.
        "median_deg": float(np.median(e.numpy())) if e.numel() else math.nan,
        "mean_deg": float(e.mean()) if e.numel() else math.nan,
        "within_5_deg": float((e <= 5).to(torch.float64).mean()) if e.numel() else math.nan,
        "within_10_deg": float((e <= 10).to(torch.float64).mean()) if e.numel() else math.nan,
        "n": float(e.numel()),
    }


def _picked(table: Any) -> Any:
    """Drop poses, origins and junk labels from the table: what particle picking gives."""
    particles = table.particles.drop(columns=[c for c in _TRUTH_COLUMNS if c in table.particles])
    blocks = dict(table.blocks)
    blocks[table.particles_block] = particles
    return dataclasses.replace(table, particles=particles, blocks=blocks)


def run_demo(
    out_dir: str | Path = "demo_output", config: DemoConfig | None = None
) -> dict[str, Any]:
    """Run the demo and return its summary (also written to ``out_dir/summary.json``).

    Parameters
    ----------
    out_dir
        Output folder (created; the demo's own files in it are replaced).
    config
        Settings (``None``: :class:`DemoConfig` defaults, about 10 minutes on a 2-core CPU).

    Returns
    -------
    dict
        ``summary.json``'s content: ``timings_s``, ``apo``, ``training``, ``network``,
        ``pruning``, ``refined``, ``maps``, ``ligand``, ``outputs``.
    """
    cfg = config or DemoConfig()
    cfg.validate()
    before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    try:
        return _run_demo(Path(out_dir), cfg)
    finally:
        torch.set_num_threads(before)


def _run_demo(out: Path, cfg: DemoConfig) -> dict[str, Any]:
    """Run the demo's steps (:func:`run_demo`, with the torch threads already set)."""
    from cryopose.data.preprocess import channel_names
    from cryopose.evaluation.difference import difference_map, site_significance
    from cryopose.evaluation.fsc import fsc, pcc, plot_fsc, resolution_at, shell_frequencies
    from cryopose.geometry.distance import angular_error
    from cryopose.io.mrc import write_map
    from cryopose.io.particles import read_particles, write_particles
    from cryopose.models.image2sphere import Image2SphereConfig
    from cryopose.pose.infer import infer_poses
    from cryopose.pose.pruning import (
        REFINE_ZSCORE_COLUMN,
        refine_zscores,
        roc_auc,
        threshold_from_fraction,
    )
    from cryopose.pose.reconstruct import reconstruct_particles
    from cryopose.pose.refine import (
        CANDIDATE_COLUMN,
        CC_COLUMN,
        SCORE_COLUMN,
        RefineConfig,
        refine_particles,
    )
    from cryopose.report.demo import demo_markdown, plot_error_histograms
    from cryopose.simulate.density import density_from_file
    from cryopose.simulate.ligand import add_ligand
    from cryopose.simulate.particles import SimulationConfig, simulate_particles
    from cryopose.training import TrainConfig, default_preprocess, train_pose_model

    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "demo.json", asdict(cfg))
    timings: dict[str, float] = {}
    wall_start = time.perf_counter()
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 1)
        clock = now

    # ---------------------------------------------------------------- 1. apo data and map
    model_path = structure_path(cfg.structure)
    _say(
        f"1/6 apo data set: {cfg.n_apo} particles of {cfg.structure} ({cfg.box} px, "
        f"{cfg.angpix} A/px, SNR {cfg.snr}, CTF, shifts), and the apo map from their poses"
    )
    truth = density_from_file(model_path, cfg.angpix, box=cfg.box)
    write_map(out / "apo_truth.mrc", truth, cfg.angpix)
    apo_sim = SimulationConfig(n=cfg.n_apo, snr=cfg.snr, ctf=True, seed=cfg.seed)
    apo_star = simulate_particles(truth, cfg.angpix, out / "apo", apo_sim, progress=False)
    apo_table = read_particles(apo_star)
    apo_rec = reconstruct_particles(
        apo_table, ctf=True, halves=True, regularisation="tau2", show_progress=False
    )
    assert apo_rec.fsc is not None
    write_map(out / "apo_map.mrc", apo_rec.full, cfg.angpix)
    lap("apo_simulate_reconstruct")

    # ---------------------------------------------------------------- 2. training
    pretrain_minutes = cfg.minutes * cfg.pretrain_share
    _say(
        f"2/6 training a pose network on the apo particles: {pretrain_minutes:.1f} min "
        f"pre-training on particles simulated from apo_map.mrc, "
        f"{cfg.minutes - pretrain_minutes:.1f} min fine-tuning"
    )
    model_dir = out / "model"
    # A previous run's checkpoints would resume (and count) its budget: start afresh.
    shutil.rmtree(model_dir, ignore_errors=True)
    preprocess = default_preprocess(apo_table, image_size=cfg.image_size)
    network = Image2SphereConfig(
        in_channels=len(channel_names(preprocess)),
        image_size=cfg.image_size,
        activation_order=1,
    )
    train_cfg = TrainConfig(
        max_epochs=1000,
        max_minutes=cfg.minutes - pretrain_minutes,
        pretrain_epochs=1000,
        pretrain_minutes=pretrain_minutes,
        half_sets=False,
        device="cpu",
        threads=cfg.threads,
        seed=cfg.seed,
        keep_checkpoints=False,
    )
    trained = train_pose_model(
        apo_table, model_dir, network, preprocess, "C1", train_cfg,
        pretrain_map=out / "apo_map.mrc", progress=True,
    )  # fmt: skip
    lap("train")

    # ---------------------------------------------------------------- 3. ligand-bound data
    bound, site = add_ligand(
        truth,
        cfg.angpix,
        n_atoms=cfg.ligand_atoms,
        radius_angst=cfg.ligand_radius_angst,
        seed=cfg.seed,
    )
    write_map(out / "ligand_truth.mrc", bound, cfg.angpix)
    n_junk = round(cfg.junk_fraction * cfg.n_ligand)
    _say(
        f"3/6 ligand-bound data set: {cfg.n_ligand} particles ({n_junk} junk) of the map plus "
        f"a {cfg.ligand_atoms}-atom ligand at a surface pocket (score {site.pocket_score:.2f})"
    )
    lig_sim = dataclasses.replace(
        apo_sim, n=cfg.n_ligand, junk_fraction=cfg.junk_fraction, seed=cfg.seed + 1
    )
    lig_star = simulate_particles(bound, cfg.angpix, out / "ligand", lig_sim, progress=False)
    lig_truth = read_particles(lig_star)
    is_junk = lig_truth.particles["cryoposeIsJunk"].to_numpy(dtype=np.int64) == 1
    picked = _picked(lig_truth)
    write_particles(picked, out / "ligand" / "ligand_picked.star")
    picked = read_particles(out / "ligand" / "ligand_picked.star")
    lap("ligand_simulate")

    # ---------------------------------------------------------------- 4. pose pipeline
    _say("4/6 inferring poses of the ligand-bound particles with the apo network")
    n_candidates = RefineConfig().candidates
    inferred = infer_poses(
        picked,
        model_dir,
        out / "ligand" / "ligand_network.star",
        top_k=n_candidates,
        progress=False,
    )
    lap("infer")
    true_rot = lig_truth.rotations(torch.float64)
    network_err = angular_error(true_rot, inferred.rotations, "C1")

    _say(
        f"5/6 refining all {len(picked)} particles against apo_map.mrc (from the best of the "
        f"network's pose and its top-{n_candidates}), pruning by cryoposeRefineZScore, "
        "reconstructing"
    )
    refine_cfg = RefineConfig(
        range_deg=_REFINE_COARSE[0],
        step_deg=_REFINE_COARSE[1],
        fine_range_deg=_REFINE_FINE[0],
        fine_step_deg=_REFINE_FINE[1],
    )
    refined_all = refine_particles(
        inferred.table, apo_rec.full, refine_cfg, False, inferred.candidates
    )
    lap("refine")
    z = refine_zscores(refined_all.zscore).numpy()
    threshold = threshold_from_fraction(z, cfg.junk_fraction)
    keep = z >= threshold
    auc = roc_auc(z[~is_junk], z[is_junk]) if is_junk.any() else math.nan
    network_auc = math.nan
    if inferred.zscore is not None and is_junk.any():
        zn = inferred.zscore.numpy()
        network_auc = roc_auc(zn[~is_junk], zn[is_junk])
    kept_rows = np.flatnonzero(keep)
    rows = torch.from_numpy(kept_rows)
    kept = inferred.table.subset(kept_rows)
    kept.set_rotations(refined_all.rotations[rows])
    kept.set_shifts_angst(refined_all.origins_angst[rows])
    kept.particles[CC_COLUMN] = refined_all.cc[rows].numpy()
    kept.particles[SCORE_COLUMN] = refined_all.score[rows].numpy()
    kept.particles[REFINE_ZSCORE_COLUMN] = z[kept_rows]
    assert refined_all.candidate is not None
    kept.particles[CANDIDATE_COLUMN] = refined_all.candidate[rows].numpy()
    kept.blocks[kept.particles_block] = kept.particles
    write_particles(kept, out / "ligand" / "ligand_refined.star")
    lap("prune")
    lig_rec = reconstruct_particles(
        kept, ctf=True, halves=True, regularisation="tau2", show_progress=False
    )
    assert lig_rec.half1 is not None and lig_rec.half2 is not None and lig_rec.fsc is not None
    write_map(out / "ligand_map.mrc", lig_rec.full, cfg.angpix)
    write_map(out / "ligand_half1.mrc", lig_rec.half1, cfg.angpix)
    write_map(out / "ligand_half2.mrc", lig_rec.half2, cfg.angpix)
    # The reference: the true particles (no junk) at their true poses.
    true_rec = reconstruct_particles(
        lig_truth.subset(np.flatnonzero(~is_junk)), ctf=True, halves=True,
        regularisation="tau2", show_progress=False,
    )  # fmt: skip
    assert true_rec.fsc is not None
    write_map(out / "ligand_true_poses_map.mrc", true_rec.full, cfg.angpix)
    lap("reconstruct")

    # ---------------------------------------------------------------- 5. evaluation
    _say("6/6 evaluating: pose errors, FSC, difference map at the ligand site")
    kept_true = kept_rows[~is_junk[kept_rows]]
    refined_err = angular_error(
        true_rot[torch.from_numpy(kept_true)],
        refined_all.rotations[torch.from_numpy(kept_true)],
        "C1",
    )
    box = cfg.box
    freq = shell_frequencies(box, cfg.angpix)
    fsc_vs_true = fsc(lig_rec.full, true_rec.full)
    half_res = resolution_at(lig_rec.fsc, box, cfg.angpix, 0.143)
    # Difference maps low-passed to the ligand map's resolution (never finer than 2.5 px).
    lowpass_res = max(half_res, 2.5 * cfg.angpix)
    protein = truth > 0.1 * float(truth.max())
    reach = max(1, math.ceil(12.0 / cfg.angpix))
    region = torch.nn.functional.max_pool3d(protein[None, None].float(), 2 * reach + 1, 1, reach)[
        0, 0
    ].bool()

    def ligand_stats(
        volume: torch.Tensor, reference: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        diff = difference_map(volume, reference, cfg.angpix, lowpass_res)
        sig = site_significance(diff, site.mask, region)
        masked = torch.where(region, diff, torch.full_like(diff, -torch.inf))
        peak = torch.tensor(np.unravel_index(int(masked.argmax()), diff.shape), dtype=torch.float64)
        distance = float((site.centres_vox.to(torch.float64) - peak).norm(dim=1).min())
        return diff, {
            "site_sigma": sig.sigma,
            "site_mean": sig.site_mean,
            "peak_distance_to_site_angst": distance * cfg.angpix,
        }

    diff, ligand_refined = ligand_stats(lig_rec.full, apo_rec.full)
    write_map(out / "difference.mrc", diff, cfg.angpix)
    _, ligand_true_poses = ligand_stats(true_rec.full, apo_rec.full)
    # Null control: the two apo half maps differ by noise only, no ligand.
    assert apo_rec.half1 is not None and apo_rec.half2 is not None
    _, apo_control = ligand_stats(apo_rec.half1, apo_rec.half2)

    plot_fsc(
        {
            "ligand map: half 1 vs half 2": (freq, lig_rec.fsc),
            "ligand map vs map from true poses": (freq, fsc_vs_true),
            "true poses: half 1 vs half 2": (freq, true_rec.fsc),
            "apo map: half 1 vs half 2": (freq, apo_rec.fsc),
        },
        out / "fsc.png",
        title=f"{cfg.structure}: ligand-bound set, cryopose poses",
    )
    plot_error_histograms(
        {
            "network": network_err[torch.from_numpy(~is_junk)],
            "pruned + refined": refined_err,
        },
        out / "errors.png",
        title="angular error vs true poses (true particles)",
    )
    lap("evaluate")
    total = time.perf_counter() - wall_start

    net_summary = _errors_summary(network_err[torch.from_numpy(~is_junk)])
    ref_summary = _errors_summary(refined_err)
    pretrain = trained.pretrain
    fine = trained.halves[0]
    summary: dict[str, Any] = {
        "structure": cfg.structure,
        "minutes_total": round(total / 60.0, 2),
        "timings_s": timings,
        "apo": {
            "particles": cfg.n_apo,
            "half_map_resolution_0.143_A": resolution_at(apo_rec.fsc, box, cfg.angpix, 0.143),
        },
        "training": {
            "pretrain_epochs": 0 if pretrain is None else pretrain.epochs,
            "pretrain_validation_median_deg": math.nan
            if pretrain is None
            else pretrain.best_median_deg,
            "finetune_epochs": fine.epochs,
            "validation_median_deg": fine.best_median_deg,
            "images_per_second": fine.images_per_second,
            "threads": cfg.threads,
        },
        "network": {**net_summary, "particles_per_second": inferred.particles_per_second},
        "pruning": {
            "score": REFINE_ZSCORE_COLUMN,
            "roc_auc": auc,
            "network_zscore_roc_auc": network_auc,
            "threshold_z": threshold,
            "n_input": len(picked),
            "n_junk": int(is_junk.sum()),
            "n_kept": int(keep.sum()),
            "junk_removed_fraction": float((~keep[is_junk]).mean()) if is_junk.any() else math.nan,
            "particles_kept_fraction": float(keep[~is_junk].mean()),
        },
        "refined": {
            **ref_summary,
            "particles_per_second": refined_all.particles_per_second,
            "started_from_candidate_fraction": refined_all.summary()[
                "started_from_candidate_fraction"
            ],
        },
        "maps": {
            "ligand_half_map_resolution_0.143_A": half_res,
            "true_poses_half_map_resolution_0.143_A": resolution_at(
                true_rec.fsc, box, cfg.angpix, 0.143
            ),
            "fsc_vs_true_poses_resolution_0.5_A": resolution_at(fsc_vs_true, box, cfg.angpix, 0.5),
            "pcc_vs_true_poses_map": pcc(lig_rec.full, true_rec.full),
            "nyquist_A": 2 * cfg.angpix,
        },
        "ligand": {
            "pocket_score": site.pocket_score,
            "difference_lowpass_A": lowpass_res,
            "refined_poses": ligand_refined,
            "true_poses": ligand_true_poses,
            "apo_half_maps_control": apo_control,
        },
        "outputs": {name: str(out / name) for name in _OUTPUTS},
    }
    _write_json(out / "summary.json", summary)
    page = demo_markdown(_report_view(summary))
    with atomic_path(out / "report.md") as tmp:
        Path(tmp).write_text(page)
    return summary


def _report_view(s: dict[str, Any]) -> dict[str, Any]:
    """Arrange the summary's numbers as titled tables for :func:`demo_markdown`."""
    lig = s["ligand"]
    return {
        "structure": s["structure"],
        "minutes_total": s["minutes_total"],
        "story": (
            "A pose network trained only on the apo protein predicts the poses of new "
            "ligand-bound particles (with junk); local refinement against the apo map, "
            "pruning by the refinement's z-score and reconstruction follow, and the "
            "difference map (ligand map minus apo map) shows the ligand the network never saw."
        ),
        "tables": {
            "Training on the apo set": {
                "particles": s["apo"]["particles"],
                "apo half-map resolution (A, FSC 0.143)": s["apo"]["half_map_resolution_0.143_A"],
                "pre-training epochs": s["training"]["pretrain_epochs"],
                "validation median error (deg)": s["training"]["validation_median_deg"],
                "training images/s": s["training"]["images_per_second"],
            },
            "Poses of the ligand-bound set (true particles)": {
                "network median error (deg)": s["network"]["median_deg"],
                "network within 10 deg": s["network"]["within_10_deg"],
                "refined median error (deg)": s["refined"]["median_deg"],
                "refined within 5 deg": s["refined"]["within_5_deg"],
                "inference particles/s": s["network"]["particles_per_second"],
                "refinement particles/s": s["refined"]["particles_per_second"],
            },
            "Pruning": {
                "ROC AUC (particles vs junk), refinement z-score": s["pruning"]["roc_auc"],
                "ROC AUC, network z-score (not used)": s["pruning"]["network_zscore_roc_auc"],
                "junk removed": s["pruning"]["junk_removed_fraction"],
                "true particles kept": s["pruning"]["particles_kept_fraction"],
            },
            "Maps": {
                "ligand map half-map resolution (A)": s["maps"][
                    "ligand_half_map_resolution_0.143_A"
                ],
                "true-pose map half-map resolution (A)": s["maps"][
                    "true_poses_half_map_resolution_0.143_A"
                ],
                "ligand map vs true-pose map (A, FSC 0.5)": s["maps"][
                    "fsc_vs_true_poses_resolution_0.5_A"
                ],
                "PCC with true-pose map": s["maps"]["pcc_vs_true_poses_map"],
            },
            "Ligand in the difference map (ligand map - apo map)": {
                "site significance, cryopose poses (sigma)": lig["refined_poses"]["site_sigma"],
                "site significance, true poses (sigma)": lig["true_poses"]["site_sigma"],
                "site significance, apo half 1 - half 2 (control)": lig["apo_half_maps_control"][
                    "site_sigma"
                ],
                "strongest peak to ligand, cryopose poses (A)": lig["refined_poses"][
                    "peak_distance_to_site_angst"
                ],
            },
            "Wall time (s)": dict(s["timings_s"]),
        },
        "figures": {"FSC curves": "fsc.png", "angular errors": "errors.png"},
    }
