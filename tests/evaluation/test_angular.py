"""Pose errors against a brute-force numpy computation on hand-made tables, with symmetry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryopose.errors import InputError
from cryopose.evaluation.angular import plot_error_histogram, pose_errors
from cryopose.geometry import euler_to_matrix, matrix_to_euler, random_rotations, symmetry_group
from cryopose.geometry.rotations import axis_angle_to_matrix
from cryopose.io.particles import ParticleTable, write_particles

ANGLES = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]


def _table(R: torch.Tensor, names: list[str], shifts: np.ndarray, **extra: object) -> ParticleTable:
    angles = matrix_to_euler(R.to(torch.float64)).numpy()
    frame = pd.DataFrame(
        {
            "rlnImageName": names,
            **{k: angles[:, i] for i, k in enumerate(ANGLES)},
            "rlnOriginXAngst": shifts[:, 0],
            "rlnOriginYAngst": shifts[:, 1],
            "rlnPixelSize": 2.0,
            **extra,
        }
    )
    return ParticleTable(frame, None, {"": frame}, "")


def _brute_force(R_true: np.ndarray, R_pred: np.ndarray, group: np.ndarray) -> np.ndarray:
    """min over g of arccos((trace((A_true g)^T A_pred) - 1) / 2), one pair at a time."""
    out = []
    for a, b in zip(R_true, R_pred, strict=True):
        cosines = [(np.trace((a @ g).T @ b) - 1) / 2 for g in group]
        out.append(np.degrees(np.arccos(np.clip(max(cosines), -1, 1))))
    return np.array(out)


@pytest.mark.parametrize("symmetry", ["D2", "O"])
def test_errors_and_summary_equal_brute_force(symmetry: str, tmp_path: Path) -> None:
    n = 40
    gen = torch.Generator().manual_seed(3)
    R_true = random_rotations(n, generator=gen, dtype=torch.float64)
    group = symmetry_group(symmetry)
    # Predictions: a random symmetry mate of the truth, then a known small rotation (0-20 deg)
    # for every other particle, so some errors are exactly 0 and others known.
    mate = group[torch.randint(len(group), (n,), generator=gen)]
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen, dtype=torch.float64))
    angle = torch.rand(n, generator=gen, dtype=torch.float64) * 20.0
    angle[::2] = 0.0
    R_pred = R_true @ mate @ axis_angle_to_matrix(axis * torch.deg2rad(angle)[:, None])
    names = [f"{i + 1:06d}@stack.mrcs" for i in range(n)]
    s_true = np.random.default_rng(0).normal(size=(n, 2)) * 3
    s_pred = s_true + np.random.default_rng(1).normal(size=(n, 2))
    conf = np.random.default_rng(2).uniform(0.1, 1.0, n)
    write_particles(_table(R_true, names, s_true), tmp_path / "true.star")
    # Shuffled rows: matching is by rlnImageName.
    perm = np.random.default_rng(4).permutation(n)
    pred = _table(R_pred[perm], [names[i] for i in perm], s_pred[perm],
                  rlnMaxValueProbDistribution=conf[perm])  # fmt: skip
    write_particles(pred, tmp_path / "pred.star")

    errors = pose_errors(tmp_path / "true.star", tmp_path / "pred.star", symmetry)
    # Brute force on the matrices of the angles as written in the files.
    expected = _brute_force(
        euler_to_matrix(torch.from_numpy(matrix_to_euler(R_true).numpy()[perm])).numpy(),
        euler_to_matrix(torch.from_numpy(matrix_to_euler(R_pred[perm]).numpy())).numpy(),
        group.numpy(),
    )
    np.testing.assert_allclose(errors.angular_deg.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(errors.angular_deg.numpy(), angle.numpy()[perm], atol=1e-5)
    assert float(errors.angular_deg[angle[perm] == 0].max()) < 1e-5  # symmetry mates
    summary = errors.summary()
    w = conf[perm]
    assert summary["n"] == n
    assert summary["mean_deg"] == pytest.approx(expected.mean(), abs=1e-6)
    assert summary["weighted_mean_deg"] == pytest.approx((w * expected).sum() / w.sum(), abs=1e-6)
    assert summary["median_deg"] == pytest.approx(np.median(expected), abs=1e-6)
    assert summary["within_5_deg"] == pytest.approx(np.mean(expected <= 5))
    assert summary["within_10_deg"] == pytest.approx(np.mean(expected <= 10))
    shift = np.sqrt(((s_true[perm] - s_pred[perm]) ** 2).sum(1)).mean()
    assert summary["shift_error_angst"] == pytest.approx(shift, rel=1e-9)


def test_repeated_names_match_by_order_and_mismatches_name_the_file(tmp_path: Path) -> None:
    R = random_rotations(4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    turn = axis_angle_to_matrix(torch.tensor([0.0, 0.0, np.deg2rad(30.0)], dtype=torch.float64))
    zeros = np.zeros((4, 2))
    same = ["1@a.mrcs"] * 4
    true = _table(R, same, zeros)
    errors = pose_errors(true, _table(R @ turn, same, zeros), "C1")
    np.testing.assert_allclose(errors.angular_deg.numpy(), 30.0, atol=1e-9)
    assert errors.summary()["weighted_mean_deg"] == pytest.approx(30.0)  # no confidences
    write_particles(_table(R[:3], same[:3], zeros[:3]), tmp_path / "short.star")
    with pytest.raises(InputError, match=r"short.star.*3 rows here, 4"):
        pose_errors(true, tmp_path / "short.star")
    names = [f"{i}@a.mrcs" for i in range(1, 5)]
    write_particles(_table(R, [*names[:3], "9@b.mrcs"], zeros), tmp_path / "other.star")
    with pytest.raises(InputError, match=r"other.star: row 4, column rlnImageName: 1 particles"):
        pose_errors(_table(R, names, zeros), tmp_path / "other.star")
    # A pruned prediction (a subset) is fine.
    subset = pose_errors(
        _table(R, names, zeros), _table(R[[2, 0]], [names[2], names[0]], zeros[:2])
    )
    np.testing.assert_allclose(subset.angular_deg.numpy(), 0.0, atol=1e-6)


def test_histogram_png_is_written_atomically(tmp_path: Path) -> None:
    errors = torch.tensor([1.0, 2.0, 3.0, 170.0], dtype=torch.float64)
    path = plot_error_histogram(errors, tmp_path / "h.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["h.png"]
