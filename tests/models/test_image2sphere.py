"""Image2Sphere: shapes, exact in-plane equivariance, neighbour-averaged poses, overfitting."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from cryopose.geometry import (
    angular_error,
    geodesic_distance,
    grid_size,
    nearest_grid_index,
    random_rotations,
    so3_healpix_grid,
    symmetry_group,
)
from cryopose.imaging import Projector, circular_mask
from cryopose.models import (
    Image2Sphere,
    Image2SphereConfig,
    flat_wigner,
    label_cross_entropy,
    poses_from_logits,
    rotation_label_indices,
)
from cryopose.simulate import density_from_file

# torch.rot90(x, 1, dims=(-2, -1)) maps image(x, y) to image(-y, x) (x = column, y = row):
# the in-plane rotation Q with pose A -> Q A, RELION's passive Rz(90 deg).
QUARTER = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _tiny(order: int, **kwargs: object) -> Image2SphereConfig:
    values: dict[str, object] = {
        "image_size": 32,
        "encoder_width": 4,
        "sphere_features": 4,
        "s2_features": 4,
        "lmax": 4,
        "output_order": order,
    }
    values.update(kwargs)
    return Image2SphereConfig.from_dict(values)


def _masked_noise(n: int, size: int, seed: int) -> torch.Tensor:
    images = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    return images * circular_mask(size, size / 2 - 1)


@pytest.mark.parametrize(("order", "encoder"), [(1, "unet"), (2, "resnet"), (3, "unet")])
def test_shapes_at_orders_1_to_3(order: int, encoder: str) -> None:
    torch.manual_seed(0)
    net = Image2Sphere(_tiny(order, encoder=encoder)).eval()
    images = torch.randn(3, 1, 32, 32)
    logits = net(images)
    assert logits.shape == (3, grid_size(order))
    pred = net.predict(images, top_k=4)
    assert pred.top_k_indices.shape == (3, 4) and pred.rotation.shape == (3, 3, 3)
    assert torch.equal(pred.index, logits.argmax(dim=1))
    # The top-1 rotation is the grid rotation of the top-1 index.
    grid = so3_healpix_grid(order, dtype=torch.float64)
    assert torch.allclose(pred.rotation, grid[pred.index], atol=1e-12)
    eye = torch.eye(3, dtype=torch.float64).expand(3, 3, 3)
    avg = pred.averaged_rotation
    assert torch.allclose(avg @ avg.transpose(-1, -2), eye, atol=1e-10)
    with pytest.raises(ValueError, match="images of shape"):
        net(torch.randn(1, 1, 30, 30))


def test_forward_at_order_4_matches_direct_wigner_evaluation() -> None:
    torch.manual_seed(1)
    net = Image2Sphere(_tiny(2)).eval()
    images = torch.randn(1, 1, 32, 32)
    start = time.perf_counter()
    with torch.no_grad():
        logits = net(images, order=4)
    print(f"order-4 forward, 1 image: {time.perf_counter() - start:.2f} s")
    assert logits.shape == (1, 294_912)
    # Independent check: evaluate the output signal at a few order-4 grid rotations directly.
    with torch.no_grad():
        coefficients = net.so3_coefficients(net.encode(images)).to(torch.float64)
    picks = torch.tensor([0, 5, 3071, 3072, 100_000, 294_911])
    rotations = so3_healpix_grid(4, dtype=torch.float64)[picks]
    direct = coefficients @ flat_wigner(rotations, 4).T
    scale = float(logits.abs().max())
    assert torch.allclose(logits[:, picks].to(torch.float64), direct, atol=1e-4 * scale)


def test_rot90_is_the_in_plane_rotation_quarter() -> None:
    # Odd box: rot90 turns about pixel N // 2, the projection origin, so it is exact.
    gen = torch.Generator().manual_seed(2)
    volume = torch.zeros(33, 33, 33)
    volume[10:15, 14:18, 12:20] = 1.0
    volume[16:24, 20:23, 16:18] = 2.0
    A = random_rotations(3, generator=gen)
    proj = Projector(volume)
    rotated = torch.rot90(proj.project(A), 1, dims=(-2, -1))
    right = proj.project(QUARTER.float() @ A)
    wrong = proj.project(QUARTER.T.float() @ A)
    for k in range(3):
        good = torch.corrcoef(torch.stack([rotated[k].flatten(), right[k].flatten()]))[0, 1]
        bad = torch.corrcoef(torch.stack([rotated[k].flatten(), wrong[k].flatten()]))[0, 1]
        assert float(good) > 0.999 and float(bad) < 0.9


def _reindex(order: int) -> torch.Tensor:
    """perm[k] = grid index of Q @ R_k (exact: the grid is invariant under Q for order >= 1)."""
    grid = so3_healpix_grid(order, dtype=torch.float64)
    perm = nearest_grid_index(QUARTER @ grid, order)
    moved = so3_healpix_grid(order, dtype=torch.float64)[perm]
    assert float(geodesic_distance(moved, QUARTER @ grid).max()) < 1e-6
    return perm


def test_rotating_the_image_moves_the_pose_by_the_in_plane_rotation() -> None:
    # Random network with the rotation-averaged encoder: every step is exactly
    # rot90-equivariant, so logits of the rotated image at Q R_k equal the logits at R_k.
    torch.manual_seed(3)
    order = 2
    net = Image2Sphere(_tiny(order, rotation_averaged_encoder=True, lmax=6)).eval()
    images = _masked_noise(24, 32, seed=3)
    with torch.no_grad():
        before = net(images)
        after = net(torch.rot90(images, 1, dims=(-2, -1)))
    perm = _reindex(order)
    moved_correctly = (perm[before.argmax(dim=1)] == after.argmax(dim=1)).float().mean()
    corr = torch.stack(
        [torch.corrcoef(torch.stack([before[i], after[i, perm]]))[0, 1] for i in range(24)]
    )
    print(f"top-1 moved correctly: {float(moved_correctly):.3f}; min corr {float(corr.min()):.7f}")
    assert float(moved_correctly) >= 0.95
    assert float(corr.min()) > 0.9999


def test_head_is_equivariant_for_the_plain_unet_features() -> None:
    # The plain CNN encoder is not rot90-equivariant (measured: top-1 right for ~3 % of
    # inputs); everything after it is: rotating its feature maps permutes the logits exactly.
    torch.manual_seed(4)
    order = 2
    net = Image2Sphere(_tiny(order)).eval()
    with torch.no_grad():
        features = net.encode(_masked_noise(8, 32, seed=4))
        before = net.head(features)
        after = net.head(torch.rot90(features, 1, dims=(-2, -1)))
    perm = _reindex(order)
    assert torch.allclose(after[:, perm], before, atol=1e-4 * float(before.abs().max()))


def test_neighbour_average_gathers_symmetry_copies() -> None:
    # Logits: a Gaussian (sigma 8 deg) around every D2 mate of R0. The averaged pose must be
    # much closer to R0 than the top-1 cell, and must collect the mass of all four copies.
    order, sigma = 2, 8.0
    R0 = random_rotations(6, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    group = symmetry_group("D2")
    grid = so3_healpix_grid(order, dtype=torch.float64)
    dist = torch.rad2deg(geodesic_distance(R0[:, None, None] @ group[None, :, None], grid))
    logits = torch.logsumexp(-(dist**2) / (2 * sigma**2), dim=1)
    pred = poses_from_logits(logits, order, top_k=4, symmetry="D2")
    top1 = angular_error(R0, pred.rotation, "D2")
    averaged = angular_error(R0, pred.averaged_rotation, "D2")
    assert float(averaged.max()) < 1.5
    assert float(averaged.mean()) < float(top1.mean()) / 3
    assert float(pred.neighbourhood_probability.min()) > 0.9  # one copy alone holds 0.25
    # The four most probable cells are the four copies' peaks.
    assert torch.allclose(
        pred.top_k_probabilities.sum(1), pred.top_k_probabilities[:, 0] * 4, rtol=0.5
    )


def test_tiny_model_overfits_64_particles(data_dir: Path) -> None:
    torch.manual_seed(6)
    order = 2
    volume = density_from_file(data_dir / "structures" / "1s3x.pdb.gz", 3.0, 32, 8.0)
    poses = random_rotations(64, generator=torch.Generator().manual_seed(6))
    images = Projector(volume).project(poses)[:, None]
    images = (images - images.mean()) / images.std()
    # The ReLU grid dominates the cost: order 1 (576 rotations) is enough for lmax 4 here.
    cfg = _tiny(order, encoder_width=4, sphere_features=8, s2_features=8, activation_order=1)
    net = Image2Sphere(cfg)
    labels = rotation_label_indices(poses, order)
    # lr 2e-2 for 100 steps stalled at a 0.78 hit rate for one seed with one thread (the
    # reduction order changes the path); 1e-2 for 150 steps reached 1.0 for seeds 6-8 at
    # one and two threads.
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    start = time.perf_counter()
    for _ in range(150):
        loss = label_cross_entropy(net(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    elapsed = time.perf_counter() - start
    pred = net.predict(images)
    error = angular_error(poses.double(), pred.rotation)
    averaged = angular_error(poses.double(), pred.averaged_rotation)
    # Reference: the error of the true cells themselves (grid quantisation).
    quantisation = angular_error(
        poses.double(), so3_healpix_grid(order, torch.float64)[labels[:, 0]]
    )
    hit = (pred.index == labels[:, 0]).float().mean()
    print(
        f"overfit: {elapsed:.1f} s, loss {float(loss.detach()):.3f}, "
        f"cell hit rate {float(hit):.2f}, "
        f"median error top-1 {float(error.median()):.2f} deg, averaged "
        f"{float(averaged.median()):.2f} deg, quantisation {float(quantisation.median()):.2f} deg"
    )
    assert float(hit) >= 0.9
    assert float(error.median()) <= float(quantisation.median()) + 0.5


def test_default_config_sizes() -> None:
    cfg = Image2SphereConfig()
    net = Image2Sphere(cfg)
    # Learned filters: the S2 filter on the 48 order-1 directions, the SO(3) filter on the
    # order-3 grid rotations within 22.5 deg of the identity (97, brute force in test_so3).
    assert net.s2_conv.weight.numel() == cfg.sphere_features * cfg.s2_features * 48
    assert net.so3_conv.weight.numel() == cfg.s2_features * 1 * 97
    # Derived Wigner matrices are buffers, not parameters, and not saved.
    assert set(net.state_dict()) == {n for n, _ in net.named_parameters()}
    total = sum(p.numel() for p in net.parameters())
    images = torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        net(images[:1])
        start = time.perf_counter()
        logits = net(images)
    per_image = (time.perf_counter() - start) / 4
    print(f"default config: {total} parameters, {per_image * 1000:.0f} ms per 64 px image")
    assert logits.shape == (4, 36_864)
