"""Orientation recovery from distances, checked against the true orientations (E_OR)."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.errors import InputError
from cryopose.geometry import (
    matrix_to_quaternion,
    quaternion_distance,
    random_rotations,
    symmetry_group,
)
from cryopose.recovery import (
    e_or,
    recover_orientations,
    recover_orientations_online,
    sample_pairs,
)


def _problem(n: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True quaternions, a k-partner pair graph and its exact distances."""
    gen = torch.Generator().manual_seed(seed)
    q = matrix_to_quaternion(random_rotations(n, gen))
    pairs = sample_pairs(n, k, gen)
    return q, pairs, quaternion_distance(q[pairs[:, 0]], q[pairs[:, 1]])


def test_sample_pairs() -> None:
    pairs = sample_pairs(50, 7, torch.Generator().manual_seed(0))
    assert pairs.shape == (350, 2) and pairs.dtype == torch.int64
    assert bool((pairs[:, 0] != pairs[:, 1]).all())
    assert int(pairs.min()) >= 0 and int(pairs.max()) < 50
    torch.testing.assert_close(pairs[:, 0], torch.arange(50).repeat_interleave(7))


def test_recovery_from_exact_distances() -> None:
    q, pairs, d = _problem(300, 20, seed=0)
    # The recovery's own seed differs from the problem's: the same seed would start a
    # restart at the truth (both draw randn(n, 4) first).
    result = recover_orientations(300, pairs, d, steps=1200, restarts=4, seed=1, progress=False)
    assert result.quaternions.shape == (300, 4)
    assert result.loss_history.shape == (4, 1200)
    assert float(result.final_loss[result.best_restart]) < 1e-8
    assert e_or(q, result.quaternions) < 1.0


def test_recovery_from_noisy_distances() -> None:
    sigma = 0.05
    q, pairs, d = _problem(300, 20, seed=2)
    noise = sigma * torch.randn(d.shape, generator=torch.Generator().manual_seed(3))
    result = recover_orientations(
        300, pairs, d + noise, steps=1200, restarts=4, seed=4, progress=False
    )
    # The truth scores about sigma^2; the minimiser can only do better, and by little.
    at_truth = float((noise**2).mean())
    best = float(result.final_loss[result.best_restart])
    assert 0.7 * at_truth < best <= at_truth
    assert e_or(q, result.quaternions) < 2.5  # measured 1.3 deg


def _symmetric_distance(q1: torch.Tensor, q2: torch.Tensor, symmetry: str) -> torch.Tensor:
    """Brute force: min over g of the distance between the rotations R1 and R2 @ g."""
    from cryopose.geometry import angular_error, quaternion_to_matrix

    R1, R2 = quaternion_to_matrix(q1.double()), quaternion_to_matrix(q2.double())
    group = symmetry_group(symmetry)
    return torch.deg2rad(angular_error(R2, R1, group))


def test_d2_objective_is_blind_to_the_group_only() -> None:
    # Random starts do NOT solve the D2 problem yet (final loss ~0.07 rad^2 in 12 of 12
    # restarts measured); this checks the symmetric objective itself: started at the truth
    # with a random group element per particle, it stays at zero and reproduces the
    # symmetric distances of unseen pairs, while the plain objective cannot fit them.
    n = 200
    gen = torch.Generator().manual_seed(5)
    q = matrix_to_quaternion(random_rotations(n, gen))
    pairs = sample_pairs(n, 20, gen)
    d = _symmetric_distance(q[pairs[:, 0]], q[pairs[:, 1]], "D2").float()
    group = matrix_to_quaternion(symmetry_group("D2")).float()
    g = group[torch.randint(0, 4, (n,), generator=gen)]
    w1, v1, w2, v2 = q[:, :1], q[:, 1:], g[:, :1], g[:, 1:]
    q_equiv = torch.cat(
        [w1 * w2 - (v1 * v2).sum(-1, keepdim=True), w1 * v2 + w2 * v1 + torch.cross(v1, v2, -1)],
        dim=-1,
    )  # q_i g_i: the pose R_i @ g_i
    settings = {"steps": 40, "rounds": 1, "restarts": 1, "lr": 1e-3, "progress": False}
    result = recover_orientations(n, pairs, d, symmetry="D2", init=q_equiv, **settings)
    assert float(result.final_loss[0]) < 1e-6
    held_out = sample_pairs(n, 5, torch.Generator().manual_seed(7))
    qr = result.quaternions
    expected = _symmetric_distance(q[held_out[:, 0]], q[held_out[:, 1]], "D2")
    found = _symmetric_distance(qr[held_out[:, 0]], qr[held_out[:, 1]], "D2")
    assert math.degrees(float((found - expected).abs().max())) < 0.5
    plain = recover_orientations(n, pairs, d, init=q_equiv, **settings)
    assert float(plain.final_loss[0]) > 0.1


def test_online_recovery_queries_fresh_pairs() -> None:
    n = 150
    q = matrix_to_quaternion(random_rotations(n, torch.Generator().manual_seed(8)))
    seen: set[tuple[int, int]] = set()

    def distance_fn(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        seen.update(zip(i.tolist(), j.tolist(), strict=True))
        return quaternion_distance(q[i], q[j])

    result = recover_orientations_online(
        n, distance_fn, steps=600, batch_size=2000, restarts=3, seed=9, progress=False
    )
    assert e_or(q, result.quaternions) < 1.0
    # Fresh pairs every step: far more distinct pairs than any one batch (of 2000).
    assert len(seen) > 10_000


def test_large_n_runs_in_linear_memory() -> None:
    # n = 100,000 with 500,000 pairs: no n x n object (that would be 40 GB in float32).
    n = 100_000
    gen = torch.Generator().manual_seed(10)
    q = matrix_to_quaternion(random_rotations(n, gen))
    pairs = sample_pairs(n, 5, gen)
    d = quaternion_distance(q[pairs[:, 0]], q[pairs[:, 1]])
    result = recover_orientations(
        n, pairs, d, steps=6, rounds=1, restarts=1, candidates=64, seed=11, progress=False
    )
    assert result.quaternions.shape == (n, 4)
    norms = torch.linalg.vector_norm(result.quaternions, dim=1)
    torch.testing.assert_close(norms, torch.ones(n), atol=1e-5, rtol=0)
    assert bool(torch.isfinite(result.final_loss).all())
    # Surrogate loss decreases within the first round.
    assert float(result.loss_history[0, 2]) < float(result.loss_history[0, 0])


def test_bad_input_is_rejected() -> None:
    d = torch.ones(3)
    with pytest.raises(InputError, match="row 1"):
        recover_orientations(5, torch.tensor([[0, 1], [2, 2], [3, 4]]), d)
    with pytest.raises(InputError, match=r"\[0, 5\)"):
        recover_orientations(5, torch.tensor([[0, 1], [2, 5], [3, 4]]), d)
    with pytest.raises(InputError, match="expected \\(P, 2\\)"):
        recover_orientations(5, torch.tensor([0, 1, 2]), d)
    with pytest.raises(InputError, match="not finite"):
        recover_orientations(
            5, torch.tensor([[0, 1], [2, 3], [3, 4]]), torch.tensor([1, 0, math.nan])
        )
