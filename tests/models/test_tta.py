"""Quarter-turn test-time augmentation: exact grid permutations and an equivariant ensemble."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.data.augment import in_plane_rotation, rot90_images
from cryopose.geometry import grid_size
from cryopose.geometry.distance import geodesic_distance
from cryopose.geometry.healpix import so3_healpix_grid
from cryopose.models import Image2Sphere, Image2SphereConfig, poses_from_logits
from cryopose.models.tta import quarter_turn_logits, quarter_turn_permutation

CONFIG = Image2SphereConfig(image_size=16, encoder_width=4, sphere_features=4, s2_features=4,
                            lmax=3, output_order=2, activation_order=1)  # fmt: skip


@pytest.mark.parametrize("order", [1, 2, 3])
def test_quarter_turns_permute_the_grid_exactly(order: int) -> None:
    grid = so3_healpix_grid(order, torch.float64)
    for k in range(4):
        index = quarter_turn_permutation(order, k)
        assert sorted(index.tolist()) == list(range(grid_size(order)))
        turned = in_plane_rotation(k * math.pi / 2, torch.float64) @ grid
        assert float(geodesic_distance(grid[index], turned).max()) < 1e-6
    assert torch.equal(quarter_turn_permutation(order, 0), torch.arange(grid_size(order)))
    # Four quarter turns are the identity; one and three are inverse to each other.
    one, three = quarter_turn_permutation(order, 1), quarter_turn_permutation(order, -1)
    assert torch.equal(one[three], torch.arange(grid_size(order)))


def test_four_turn_ensemble_is_exactly_equivariant() -> None:
    torch.manual_seed(0)
    net = Image2Sphere(CONFIG).eval()
    images = torch.randn(3, 1, 16, 16)
    turned = rot90_images(images, 1)
    with torch.no_grad():
        fused = quarter_turn_logits(net, images, 2, turns=4)
        fused_turned = quarter_turn_logits(net, turned, 2, turns=4)
        plain, plain_turned = net(images, 2), net(turned, 2)
    # Pose C of the turned image is pose Rz(-90 deg) C of the original.
    back = quarter_turn_permutation(2, -1)
    torch.testing.assert_close(fused_turned, fused[:, back], rtol=0, atol=1e-9)
    pred, pred_turned = poses_from_logits(fused, 2), poses_from_logits(fused_turned, 2)
    rz = in_plane_rotation(math.pi / 2, torch.float64)
    torch.testing.assert_close(pred_turned.averaged_rotation, rz @ pred.averaged_rotation)
    # The untrained network alone is not equivariant: the ensemble is what makes it so.
    assert float((plain_turned.log_softmax(-1) - plain.log_softmax(-1)[:, back]).abs().max()) > 1e-3
    # Probabilities: a distribution, the mean of the turns' probabilities.
    torch.testing.assert_close(fused.exp().sum(-1), torch.ones(3, dtype=torch.float64))
    with torch.no_grad():
        two = quarter_turn_logits(net, images, 2, turns=2)
        p0 = torch.softmax(net(images, 2).double(), -1)
        p2 = torch.softmax(net(rot90_images(images, 2), 2).double(), -1)
    expected = (p0 + p2[:, quarter_turn_permutation(2, 2)]) / 2
    torch.testing.assert_close(two.exp(), expected)
    with torch.no_grad():
        torch.testing.assert_close(
            quarter_turn_logits(net, images, 2, turns=1).exp(), p0, rtol=0, atol=1e-12
        )
    with pytest.raises(ValueError, match="turns must be one of"):
        quarter_turn_logits(net, images, 2, turns=3)
