"""Near-neighbour graphs and the spectral start, checked against true orientations (E_OR)."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.errors import InputError
from cryopose.geometry import matrix_to_quaternion, quaternion_distance, random_rotations
from cryopose.recovery import e_or, nearest_pairs, recover_orientations, spectral_orientations
from cryopose.recovery.spectral import _fit_rotations


def _truth(n: int, seed: int) -> torch.Tensor:
    return matrix_to_quaternion(random_rotations(n, torch.Generator().manual_seed(seed)))


def test_nearest_pairs_are_the_brute_force_nearest() -> None:
    q = _truth(120, 0)

    def exact(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return quaternion_distance(q[i], q[j])

    pairs, d = nearest_pairs(120, exact, 7)
    assert pairs.shape == (840, 2) and d.shape == (840,)
    torch.testing.assert_close(pairs[:, 0], torch.arange(120).repeat_interleave(7))
    full = quaternion_distance(q[:, None], q[None])
    full.fill_diagonal_(math.inf)
    brute = full.topk(7, dim=1, largest=False)
    torch.testing.assert_close(d.reshape(120, 7), brute.values)
    torch.testing.assert_close(d, full[pairs[:, 0], pairs[:, 1]])
    # Random candidates: k partners among them, never the node itself.
    some, _ = nearest_pairs(120, exact, 5, candidates=30, generator=torch.Generator())
    assert some.shape == (600, 2) and bool((some[:, 0] != some[:, 1]).all())


def test_rotation_fit_undoes_an_unknown_orthogonal_map_of_r9() -> None:
    R = random_rotations(500, torch.Generator().manual_seed(1), dtype=torch.float64)
    gen = torch.Generator().manual_seed(2)
    W = torch.linalg.qr(torch.randn(9, 9, generator=gen, dtype=torch.float64)).Q
    Y = R.reshape(-1, 9) @ W.T
    O_fit = _fit_rotations(Y, 64, 30, gen)
    # The fit leaves only the O(4) ambiguity of distances: compare by E_OR.
    from cryopose.recovery.spectral import _project_so3

    R_fit = _project_so3((Y @ O_fit.T).reshape(-1, 3, 3))
    assert e_or(matrix_to_quaternion(R), matrix_to_quaternion(R_fit)) < 1e-6


def test_spectral_start_then_refinement_from_exact_near_distances() -> None:
    n = 400
    q = _truth(n, 3)
    pairs, d = nearest_pairs(n, lambda i, j: quaternion_distance(q[i], q[j]), 20)
    start = spectral_orientations(n, pairs, d, seed=4)
    # The l = 1 eigenvectors of a 20-neighbour graph on 400 points are a coarse estimate
    # of vec(R) (measured 13 deg); the refinement on the same pairs makes it exact.
    assert e_or(q, start) < 20.0
    result = recover_orientations(
        n, pairs, d, init=start.float(), restarts=1, rounds=0, lr=0.01, steps=400,
        seed=5, progress=False,
    )  # fmt: skip
    assert e_or(q, result.quaternions) < 0.5


def test_recovery_from_noisy_near_distances_degrades_gracefully() -> None:
    n, sigma = 400, 0.1  # 5.7 deg of noise on every estimated distance
    q = _truth(n, 6)
    noise = torch.Generator().manual_seed(7)

    def noisy(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        d = quaternion_distance(q[i], q[j])
        return d + sigma * torch.randn(d.shape, generator=noise)

    pairs, d = nearest_pairs(n, noisy, 20)
    start = spectral_orientations(n, pairs, d, seed=8)
    assert e_or(q, start) < 20.0
    result = recover_orientations(
        n, pairs, d, init=start.float(), restarts=1, rounds=0, lr=0.01, steps=400,
        seed=9, progress=False,
    )  # fmt: skip
    # Measured 3.1 deg at n = 600: the noise selects partners with negative errors, so
    # near distances are biased low, and no method reaches 0 here.
    assert e_or(q, result.quaternions) < 5.0


def test_spectral_rejects_a_node_without_pairs() -> None:
    pairs = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4], [4, 5], [5, 6], [6, 7], [7, 8]])
    with pytest.raises(InputError, match="no pair"):
        spectral_orientations(12, pairs, torch.full((8,), 0.3))
