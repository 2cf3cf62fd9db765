"""Geodesic distances, symmetric angular error and error summaries (cryopose.geometry.distance)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryopose.errors import InputError
from cryopose.geometry import distance
from cryopose.geometry.distance import (
    angular_error,
    error_summary,
    geodesic_distance,
    quaternion_distance,
)
from cryopose.geometry.rotations import (
    axis_angle_to_matrix,
    matrix_to_quaternion,
    random_rotations,
)
from cryopose.geometry.symmetry import symmetry_group


def _pairs(n: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return random_rotations(n, g, dtype=dtype), random_rotations(n, g, dtype=dtype)


def test_geodesic_quaternion_and_brute_acos_agree() -> None:
    A, B = _pairs(2000, 0)
    brute = torch.tensor(
        [
            math.acos(max(-1.0, min(1.0, (float(torch.trace(a.T @ b)) - 1) / 2)))
            for a, b in zip(A, B, strict=True)
        ],
        dtype=torch.float64,
    )
    geo = geodesic_distance(A, B)
    quat = quaternion_distance(matrix_to_quaternion(A), matrix_to_quaternion(B))
    assert torch.allclose(geo, brute, atol=1e-7)  # acos itself is only good to ~1e-8 near 0, pi
    assert torch.allclose(quat, geo, atol=1e-12)
    assert torch.allclose(geodesic_distance(B, A), geo, atol=1e-14)
    assert geo.min() >= 0 and geo.max() <= math.pi


@pytest.mark.parametrize("angle", [0.0, 1e-10, 1e-6, 0.3, 2.0, math.pi - 1e-6, math.pi - 1e-10])
def test_distance_is_the_relative_angle_near_zero_and_pi(angle: float) -> None:
    A, _ = _pairs(20, 1)
    axes = random_rotations(20, torch.Generator().manual_seed(2), dtype=torch.float64)[:, 0]
    B = A @ axis_angle_to_matrix(axes * angle)
    tol = 1e-13 + 1e-9 * angle
    assert (geodesic_distance(A, B) - angle).abs().max() < tol
    q = quaternion_distance(matrix_to_quaternion(A), matrix_to_quaternion(B))
    assert (q - angle).abs().max() < tol


def test_quaternion_distance_sign_and_scale_invariant() -> None:
    g = torch.Generator().manual_seed(3)
    q1, q2 = torch.randn(2, 50, 4, generator=g, dtype=torch.float64)
    d = quaternion_distance(q1, q2)
    assert torch.allclose(quaternion_distance(-2.5 * q1, q2), d, atol=1e-14)
    assert torch.allclose(quaternion_distance(q1, -q2), d, atol=1e-14)


def test_broadcasting() -> None:
    A, B = _pairs(6, 4)
    d = geodesic_distance(A[:, None], B[None])
    assert d.shape == (6, 6)
    assert torch.allclose(d[2, 5], geodesic_distance(A[2], B[5]))
    e = angular_error(A[:, None], B[None], "D3")
    assert e.shape == (6, 6)
    assert torch.allclose(e[1, 4], angular_error(A[1], B[4], "D3"))


def test_c1_error_is_geodesic_in_degrees() -> None:
    A, B = _pairs(100, 5)
    assert torch.allclose(angular_error(A, B), torch.rad2deg(geodesic_distance(A, B)), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sym", ["C1", "C4", "D7", "T", "O", "I"])
def test_error_zero_for_every_symmetry_mate(dtype: torch.dtype, sym: str) -> None:
    A, _ = _pairs(5, 6, dtype)
    G = symmetry_group(sym).to(dtype)
    mates = A[:, None] @ G[None]  # (5, |G|, 3, 3)
    err = angular_error(A[:, None], mates, sym)
    assert err.shape == (5, len(G))
    assert err.max() < (1e-3 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("sym", ["C2", "D7", "T", "O", "I"])
def test_error_is_min_over_group_brute_force(sym: str) -> None:
    A, B = _pairs(50, 7)
    G = symmetry_group(sym)
    brute = torch.stack(
        [
            torch.tensor(
                min(
                    math.degrees(
                        math.acos(max(-1.0, min(1.0, (float(torch.trace((a @ g).T @ b)) - 1) / 2)))
                    )
                    for g in G
                )
            )
            for a, b in zip(A, B, strict=True)
        ]
    ).double()
    err = angular_error(A, B, sym)
    assert torch.allclose(err, brute, atol=1e-5)
    assert torch.allclose(angular_error(A, B, G), err, atol=1e-12)  # group given as a tensor
    # invariant under replacing either pose by a symmetry mate
    assert torch.allclose(angular_error(A @ G[-1], B @ G[len(G) // 2], sym), err, atol=1e-9)
    assert (err <= torch.rad2deg(geodesic_distance(A, B)) + 1e-9).all()


def test_chunking_gives_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    A, B = _pairs(101, 8)
    whole = angular_error(A, B, "O")
    monkeypatch.setattr(distance, "_MAX_PAIRS", 24 * 7)  # chunks of 7 poses
    assert torch.allclose(angular_error(A, B, "O"), whole, atol=1e-12)


def test_angular_error_gradient_finite() -> None:
    A, B = _pairs(10, 9)
    v = torch.full((10, 3), 0.2, dtype=torch.float64, requires_grad=True)
    err = angular_error(A, B @ axis_angle_to_matrix(v), "D2")
    err.sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_mixed_dtypes_promote() -> None:
    A, B = _pairs(4, 10)
    assert angular_error(A.float(), B, "C2").dtype == torch.float64


def test_error_summary_against_numpy() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 10):  # odd and even counts for the median
        e = np.concatenate([[5.0, 10.0], rng.exponential(8.0, n)])
        w = rng.uniform(0.0, 1.0, e.size)
        s = error_summary(torch.tensor(e), torch.tensor(w, dtype=torch.float32))
        assert s["count"] == e.size
        assert s["mean"] == pytest.approx(np.mean(e), rel=1e-12)
        assert s["weighted_mean"] == pytest.approx(np.average(e, weights=np.float32(w)), rel=1e-6)
        assert s["median"] == pytest.approx(np.median(e), rel=1e-12)
        assert s["frac_within_5"] == pytest.approx(np.mean(e <= 5.0), abs=1e-15)
        assert s["frac_within_10"] == pytest.approx(np.mean(e <= 10.0), abs=1e-15)
    unweighted = error_summary(torch.tensor([1.0, 2.0, 30.0, 4.0]))
    assert unweighted["weighted_mean"] == unweighted["mean"] == 9.25
    assert unweighted["median"] == 3.0
    assert unweighted["frac_within_5"] == 0.75 and unweighted["frac_within_10"] == 0.75


@pytest.mark.parametrize(
    ("errors", "weights"),
    [
        (torch.zeros(0), None),
        (torch.ones(3), torch.ones(4)),
        (torch.ones(3), torch.tensor([1.0, -1.0, 1.0])),
        (torch.ones(3), torch.zeros(3)),
    ],
)
def test_error_summary_bad_input(errors: torch.Tensor, weights: torch.Tensor | None) -> None:
    with pytest.raises(InputError):
        error_summary(errors, weights)
