"""The confidence-weighted symmetric loss against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.geometry.euler import euler_to_matrix
from cryopose.models import label_cross_entropy, rotation_label_indices, rotation_labels
from cryopose.training import per_particle_cross_entropy, weighted_pose_loss


def test_weighted_loss_matches_hand_computation() -> None:
    # Two particles, four cells; particle 0's label is cell 1, particle 1's is cell 3.
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    labels = torch.tensor([[1], [3]])
    eps = 0.2
    w = torch.tensor([0.25, 1.0], dtype=torch.float64)
    # Hand: log p0 = l - log(1 + e + e^2 + e^3); p1 uniform (log 1/4).
    z0 = math.log(1 + math.e + math.e**2 + math.e**3)
    logp0 = [v - z0 for v in (0.0, 1.0, 2.0, 3.0)]
    ce0 = -(1 - eps) * logp0[1] - eps * sum(logp0) / 4
    ce1 = -(1 - eps) * math.log(0.25) - eps * math.log(0.25)
    expected = (0.25 * ce0 + 1.0 * ce1) / 1.25
    got = weighted_pose_loss(logits, labels, w, eps)
    assert float(got) == pytest.approx(expected, rel=1e-12)
    per = per_particle_cross_entropy(logits, labels, eps)
    assert per.tolist() == pytest.approx([ce0, ce1], rel=1e-12)
    # Scaling every confidence leaves the normalised loss unchanged; equal ones: plain mean.
    assert float(weighted_pose_loss(logits, labels, 7 * w, eps)) == pytest.approx(expected)
    assert float(weighted_pose_loss(logits, labels, torch.ones(2), eps)) == pytest.approx(
        (ce0 + ce1) / 2
    )


def test_equal_weights_equal_dense_symmetric_cross_entropy() -> None:
    # Independent reference: the dense labels of rotation_labels with D3 symmetry.
    torch.manual_seed(0)
    R = euler_to_matrix(torch.tensor([[10.0, 50.0, 80.0], [200.0, 120.0, -30.0]]))
    idx = rotation_label_indices(R, 1, "D3")
    logits = torch.randn(2, 576, dtype=torch.float64)
    dense = rotation_labels(R, 1, "D3", smoothing=0.1).to(torch.float64)
    reference = -(dense * torch.log_softmax(logits, -1)).sum(-1)
    assert per_particle_cross_entropy(logits, idx, 0.1).tolist() == pytest.approx(
        reference.tolist(),
        rel=1e-6,  # the dense labels are float32
    )
    assert float(weighted_pose_loss(logits, idx, torch.ones(2), 0.1)) == pytest.approx(
        float(label_cross_entropy(logits, idx, 0.1)), rel=1e-10
    )
    # A zero weight removes a particle from the loss entirely.
    only_second = weighted_pose_loss(logits, idx, torch.tensor([0.0, 2.0]), 0.1)
    assert float(only_second) == pytest.approx(float(reference[1]), rel=1e-6)
