"""Symmetric, smoothed pose labels over the HEALPix SO(3) grid."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cryopose.geometry import (
    geodesic_distance,
    grid_size,
    random_rotations,
    so3_healpix_grid,
    symmetry_group,
)
from cryopose.models.labels import label_cross_entropy, rotation_label_indices, rotation_labels


@pytest.mark.parametrize("symmetry", ["D2", "O"])
def test_labels_mark_the_nearest_cell_of_every_symmetry_mate(symmetry: str) -> None:
    order = 2
    gen = torch.Generator().manual_seed(3)
    R = random_rotations(3, generator=gen, dtype=torch.float64)
    group = symmetry_group(symmetry)
    index = rotation_label_indices(R, order, symmetry)
    assert index.shape == (3, len(group))
    # Brute force: the grid rotation nearest to each mate R @ g by geodesic distance.
    grid = so3_healpix_grid(order, dtype=torch.float64)
    for b in range(3):
        for k, g in enumerate(group):
            brute = geodesic_distance(R[b] @ g, grid).argmin()
            assert int(index[b, k]) == int(brute)
    labels = rotation_labels(R, order, symmetry)
    assert labels.shape == (3, grid_size(order))
    # Mates are >= 90 deg apart, the grid's covering radius is 16 deg: all cells distinct.
    assert bool(((labels > 0).sum(dim=1) == len(group)).all())
    assert torch.allclose(labels.gather(1, index), torch.full(index.shape, 1 / len(group)))


def test_smoothing_spreads_mass_and_sums_to_one() -> None:
    R = random_rotations(4, generator=torch.Generator().manual_seed(4))
    eps, size = 0.1, grid_size(1)
    labels = rotation_labels(R, 1, "D2", smoothing=eps)
    assert torch.allclose(labels.sum(dim=1), torch.ones(4), atol=1e-6)
    assert torch.allclose(labels.min(dim=1).values, torch.full((4,), eps / size))
    assert torch.allclose(labels.max(dim=1).values, torch.full((4,), eps / size + (1 - eps) / 4))


def test_sparse_cross_entropy_equals_the_dense_one() -> None:
    gen = torch.Generator().manual_seed(5)
    R = random_rotations(5, generator=gen)
    logits = torch.randn(5, grid_size(1), generator=gen)
    for eps in (0.0, 0.2):
        dense = -(rotation_labels(R, 1, "C2", eps) * F.log_softmax(logits, -1)).sum(-1).mean()
        sparse = label_cross_entropy(logits, rotation_label_indices(R, 1, "C2"), eps)
        assert torch.allclose(sparse, dense, atol=1e-5)


def test_bad_smoothing_is_rejected() -> None:
    with pytest.raises(ValueError, match="smoothing"):
        rotation_labels(torch.eye(3)[None], 1, smoothing=1.0)
