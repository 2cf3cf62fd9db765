"""Gold-standard evaluation (CESPED protocol): errors, map metrics, deltas, RELION cross-check."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryopose.errors import InputError
from cryopose.evaluation.benchmark_suite import BenchmarkEntry, make_benchmark_entries
from cryopose.evaluation.gold_standard import (
    complete_predictions,
    evaluate_gold_standard,
    map_pair,
    particle_errors,
    reconstruct_reference,
)
from cryopose.geometry.rotations import axis_angle_to_matrix
from cryopose.io.particles import ParticleTable, read_particles


@pytest.fixture(scope="module")
def entry(tmp_path_factory: pytest.TempPathFactory) -> BenchmarkEntry:
    """A tiny simulated C1 entry: 240 particles, 32 px, SNR 1."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench")
    return make_benchmark_entries(out, ("C1",), n_particles=240, box=32, snr=1.0, seed=3)[0]


def _table(angles: list[tuple[float, float, float]], **columns: list[float]) -> ParticleTable:
    frame = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@s.mrcs" for i in range(len(angles))],
            "rlnAngleRot": [a[0] for a in angles],
            "rlnAngleTilt": [a[1] for a in angles],
            "rlnAnglePsi": [a[2] for a in angles],
            "rlnOriginXAngst": [0.0] * len(angles),
            "rlnOriginYAngst": [0.0] * len(angles),
            **columns,
        }
    )
    return ParticleTable(frame, None, {"": frame}, "")


def _perturbed(table: ParticleTable, degrees: float, seed: int = 0) -> ParticleTable:
    """Every pose rotated by exactly ``degrees`` about a random axis (right-multiplied)."""
    g = torch.Generator().manual_seed(seed)
    axes = torch.randn(len(table), 3, generator=g, dtype=torch.float64)
    axes = axes / torch.linalg.vector_norm(axes, dim=1, keepdim=True)
    turn = axis_angle_to_matrix(axes * math.radians(degrees))
    out = table.subset(np.arange(len(table)))
    out.set_rotations(table.rotations(torch.float64) @ turn)
    return out


# ----------------------------------------------------------------------------- per particle


def test_angular_errors_with_symmetry_match_hand_table() -> None:
    truth = _table([(0, 0, 0)] * 5, rlnMaxValueProbDistribution=[1.0, 0.0, 3.0, 1.0, 1.0])
    # With tilt 0, rot and psi are both turns about z; C4 identifies turns 90 degrees apart.
    pred = _table([(90, 0, 0), (0, 0, 100), (0, 30, 0), (45, 0, 0), (0, 0, 180)])
    completed = complete_predictions(pred, truth, "SO3")
    errors, weights, source, shift = particle_errors(completed, truth, "C4", "SO3", pred)
    hand = torch.tensor([0.0, 10.0, 30.0, 45.0, 0.0], dtype=torch.float64)
    assert torch.allclose(errors, hand, atol=1e-9)
    assert source == "truth" and shift is None
    assert float((weights * errors).sum() / weights.sum()) == pytest.approx(
        (0 + 0 + 3 * 30 + 45 + 0) / 6
    )
    # D2 holds the half turn about y: tilt 180 is the same pose.
    flip = complete_predictions(_table([(0, 180, 0)]), _table([(0, 0, 0)]), "SO3")
    d2 = particle_errors(flip, _table([(0, 0, 0)]), "D2")[0]
    c1 = particle_errors(flip, _table([(0, 0, 0)]), "C1")[0]
    assert float(d2[0]) == pytest.approx(0.0, abs=1e-9)
    assert float(c1[0]) == pytest.approx(180.0)


def test_s2_takes_psi_and_so3xr2_takes_shifts() -> None:
    truth = _table([(10, 20, 30), (40, 50, 60)])
    pred = _table([(10, 20, 99), (40, 50, -80)])
    pred.particles["rlnOriginXAngst"] = [3.0, 0.0]
    pred.particles["rlnOriginYAngst"] = [4.0, 0.0]
    s2 = complete_predictions(pred, truth, "S2")
    assert s2.particles["rlnAnglePsi"].tolist() == [30, 60]
    assert float(particle_errors(s2, truth)[0].abs().max()) < 1e-9
    so3 = particle_errors(complete_predictions(pred, truth, "SO3"), truth)[0]
    assert so3.tolist() == pytest.approx([69.0, 140.0])
    full = complete_predictions(pred, truth, "SO3xR2")
    rmse = particle_errors(full, truth, "C1", "SO3xR2")[3]
    assert rmse == pytest.approx(math.sqrt(25 / 2))  # |(3, 4)| = 5 for one of two particles


def test_particles_are_matched_by_image_name_and_missing_ones_named() -> None:
    truth = _table([(0, 0, 0), (0, 10, 0), (0, 20, 0)])
    pred = _table([(0, 20, 0), (0, 10, 0), (0, 0, 0)])
    pred.particles["rlnImageName"] = ["000003@other/s.mrcs", "000002@other/s.mrcs", "1@s.mrcs"]
    done = complete_predictions(pred, truth, "SO3")
    assert done.particles["rlnAngleTilt"].tolist() == [0, 10, 20]
    with pytest.raises(InputError, match=r"000002@s\.mrcs"):
        complete_predictions(pred.subset([0, 2]), truth, "SO3")


# ----------------------------------------------------------------------------- maps


def test_pcc_and_fsc_resolution_against_references() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 24, 24, 24, generator=g, dtype=torch.float64)
    mask = (torch.rand(24, 24, 24, generator=g) > 0.5).to(torch.float64)
    inside = mask.bool().numpy()
    pair = map_pair(a, b + 0.5 * a, 2.0, mask)
    expected = np.corrcoef(a.numpy()[inside], (b + 0.5 * a).numpy()[inside])[0, 1]
    assert pair.pcc == pytest.approx(expected, abs=1e-12)
    same = map_pair(a, a, 2.0)
    assert same.resolution_0143 == pytest.approx(4.0)  # Nyquist = 2 * angpix
    noise = map_pair(a, b, 2.0)
    # Independent noise: FSC ~ 0 from shell 1 on, so the curve is already below 0.143 there.
    assert noise.resolution_0143 == pytest.approx(24 * 2.0)
    assert abs(noise.pcc) < 0.02


# ----------------------------------------------------------------------------- protocol


def test_ground_truth_predictions_give_zero_deltas(entry: BenchmarkEntry, tmp_path: Path) -> None:
    rep = evaluate_gold_standard(
        entry.star, entry.star, "C1", "SO3", mask=entry.mask, out_dir=tmp_path, save_maps=True
    )
    assert rep.mean_error_deg == pytest.approx(0.0, abs=1e-6)
    assert rep.delta_pcc == 0.0 and rep.delta_fsc == 0.0 and rep.delta_fsc_05 == 0.0
    assert rep.half_maps == rep.gt_halves
    # CESPED's (V, GT) pair shares its particles: V == GT gives PCC 1 and Nyquist.
    assert rep.cesped.map_vs_gt_pcc == pytest.approx(1.0)
    assert rep.map_vs_gt.resolution_0143 == pytest.approx(2 * rep.angpix)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["delta_pcc"] == 0.0 and saved["n_particles"] == 240
    for name in ("fsc.png", "errors.png", "report.md", "report.html", "V0.mrc", "GT.mrc"):
        assert (tmp_path / name).is_file()


def test_perturbed_poses_degrade_monotonically(entry: BenchmarkEntry) -> None:
    truth = entry.table()
    reference = reconstruct_reference(truth, "C1")
    reports = [
        evaluate_gold_standard(
            _perturbed(truth, d), truth, "C1", mask=entry.mask, reference=reference
        )
        for d in (0.0, 10.0, 30.0)
    ]
    assert [r.mean_error_deg for r in reports] == pytest.approx([0.0, 10.0, 30.0], abs=1e-6)
    res = [r.cross_halves.resolution_0143 for r in reports]
    dpcc = [r.delta_pcc for r in reports]
    assert res[0] < res[1] < res[2]
    assert dpcc[0] == pytest.approx(0.0, abs=1e-12) and dpcc[0] > dpcc[1] > dpcc[2]
    assert reports[1].delta_fsc > 0


def test_s2_ignores_a_wrong_psi(entry: BenchmarkEntry) -> None:
    truth = entry.table()
    wrong = truth.subset(np.arange(len(truth)))
    wrong.particles["rlnAnglePsi"] = wrong.particles["rlnAnglePsi"] + 40.0
    reference = reconstruct_reference(truth, "C1")
    s2 = evaluate_gold_standard(wrong, truth, "C1", "S2", reference=reference)
    so3 = evaluate_gold_standard(wrong, truth, "C1", "SO3", reference=reference)
    assert s2.mean_error_deg == pytest.approx(0.0, abs=1e-6)
    assert s2.delta_pcc == 0.0 and s2.delta_fsc == 0.0
    assert so3.mean_error_deg == pytest.approx(40.0, abs=1e-6)
    assert so3.delta_fsc > 0


def test_half_set_files_are_concatenated(entry: BenchmarkEntry, tmp_path: Path) -> None:
    from cryopose.io.particles import write_particles

    truth = entry.table()
    halves = truth.random_subset()
    paths = []
    for k in (1, 2):
        part = _perturbed(truth, 5.0).subset(halves == k)
        part.path = None
        # Absolute stack paths: the half files are written to another folder.
        names = [f"{i + 1:06d}@{p}" for p, i in part.image_locations()]
        part.particles["rlnImageName"] = names
        paths.append(tmp_path / f"particles_{k - 1}.star")
        write_particles(part, paths[-1])
    rep = evaluate_gold_standard((paths[0], paths[1]), entry.star, "C1")
    assert rep.mean_error_deg == pytest.approx(5.0, abs=1e-4)


def test_relion_crosscheck(entry: BenchmarkEntry, relion: None) -> None:
    truth = read_particles(entry.star)
    rep = evaluate_gold_standard(_perturbed(truth, 3.0), truth, "C1", mask=entry.mask, relion=True)
    assert rep.relion_pcc is not None and rep.relion_pcc > 0.99
