"""Pose-aware augmentation: an augmented projection equals the projection at the updated labels."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.data.augment import (
    AugmentConfig,
    Augmenter,
    erase_rectangle,
    in_plane_rotation,
    rot90_images,
    rotate_images,
    rotate_labels,
    shift_labels,
    zoom_images,
    zoom_labels,
)
from cryopose.geometry.euler import euler_to_matrix, matrix_to_euler
from cryopose.imaging.projection import Projector
from cryopose.imaging.shift import shift_images
from cryopose.simulate.junk import random_blob_volume

BOX = 40
ANGPIX = 2.0
EULER = torch.tensor([[30.0, 60.0, -20.0]])
ORIGIN = torch.tensor([[4.0, -6.0]])  # Angstrom: content sits at (-2, +3) pixels


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double() - a.double().mean()
    b = b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def projector() -> Projector:
    # Blobs at random positions: no symmetry, so a wrong in-plane angle cannot match.
    vol = random_blob_volume(BOX, 10.0, torch.Generator().manual_seed(3), n_blobs=10)
    return Projector(vol)


@pytest.fixture(scope="module")
def image(projector: Projector) -> torch.Tensor:
    return projector.project(euler_to_matrix(EULER), ORIGIN, ANGPIX)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_rot90_matches_projection_at_updated_pose(
    projector: Projector, image: torch.Tensor, k: int
) -> None:
    A = euler_to_matrix(EULER)
    R, o = rotate_labels(A, ORIGIN, k * math.pi / 2)
    assert corr(rot90_images(image, k), projector.project(R, o, ANGPIX)) >= 0.99
    R_wrong, o_wrong = rotate_labels(A, ORIGIN, -k * math.pi / 2)
    if k != 2:  # a half turn is its own inverse
        assert corr(rot90_images(image, k), projector.project(R_wrong, o_wrong, ANGPIX)) < 0.5


@pytest.mark.parametrize("degrees", [37.0, -123.0, 150.0])
def test_arbitrary_rotation_matches_projection_at_updated_pose(
    projector: Projector, image: torch.Tensor, degrees: float
) -> None:
    t = math.radians(degrees)
    A = euler_to_matrix(EULER)
    R, o = rotate_labels(A, ORIGIN, t)
    rotated = rotate_images(image, t)
    assert corr(rotated, projector.project(R, o, ANGPIX)) >= 0.97
    R_wrong, o_wrong = rotate_labels(A, ORIGIN, -t)
    assert corr(rotated, projector.project(R_wrong, o_wrong, ANGPIX)) < 0.9
    # The pose alone, origin not rotated with it, also fails.
    assert corr(rotated, projector.project(R, ORIGIN, ANGPIX)) < 0.9


def test_shift_matches_projection_at_updated_origin(
    projector: Projector, image: torch.Tensor
) -> None:
    A = euler_to_matrix(EULER)
    d = torch.tensor([[2.5, -1.25]])
    moved = shift_images(image, d)
    assert corr(moved, projector.project(A, shift_labels(ORIGIN, d, ANGPIX), ANGPIX)) >= 0.99
    wrong = ORIGIN + d * ANGPIX
    assert corr(moved, projector.project(A, wrong, ANGPIX)) < 0.9


def test_augmenter_labels_match_projection(projector: Projector, image: torch.Tensor) -> None:
    A = euler_to_matrix(EULER)[0]
    aug = Augmenter(AugmentConfig(p_rot90=1.0, p_rotate=1.0, p_shift=1.0, max_shift_px=3.0))
    for seed in range(4):
        out = aug(image, A, ORIGIN[0], ANGPIX, torch.Generator().manual_seed(seed))
        assert out.applied["rot90_k"] in (1, 2, 3) and out.applied["angle_deg"] != 0.0
        expected = projector.project(out.rotation[None], out.shift_angst[None], ANGPIX)
        assert corr(out.image, expected) >= 0.97


def test_rotation_label_is_psi_minus_angle() -> None:
    """In RELION's Euler angles, turning the content by t from +x towards +y is psi - t."""
    A = euler_to_matrix(EULER.double())
    R, _ = rotate_labels(A, ORIGIN.double(), math.radians(25.0))
    rot, tilt, psi = matrix_to_euler(R)[0].tolist()
    assert (rot, tilt) == pytest.approx((30.0, 60.0), abs=1e-9)
    assert psi == pytest.approx(-45.0, abs=1e-9)
    # And the origin turns with the content: (4, -6) by 25 degrees.
    c, s = math.cos(math.radians(25.0)), math.sin(math.radians(25.0))
    _, o = rotate_labels(A, ORIGIN.double(), math.radians(25.0))
    assert o[0].tolist() == pytest.approx([4 * c + 6 * s, 4 * s - 6 * c], abs=1e-12)


@pytest.mark.parametrize("n", [16, 17])
def test_rot90_is_an_exact_permutation_about_the_centre(n: int) -> None:
    x = torch.randn(2, 3, n, n)
    for k in range(4):
        y = rot90_images(x, k)
        assert torch.equal(y.flatten().sort().values, x.flatten().sort().values)
    assert torch.equal(rot90_images(rot90_images(x, 1), 3), x)
    # The centre pixel N // 2 stays; (x=+1, y=0) goes to (x=0, y=+1).
    delta = torch.zeros(n, n)
    delta[n // 2, n // 2 + 1] = 1.0
    delta[n // 2, n // 2] = 2.0
    turned = rot90_images(delta, 1)
    assert float(turned[n // 2, n // 2]) == 2.0 and float(turned[n // 2 + 1, n // 2]) == 1.0


def test_batched_rotation_matches_one_by_one() -> None:
    x = torch.randn(3, 2, 24, 24, generator=torch.Generator().manual_seed(0))
    angles = torch.tensor([0.3, -1.2, 2.0])
    batched = rotate_images(x, angles)
    for i in range(3):
        # float32 sampling coordinates round differently in a batch: 2e-5 measured.
        single = rotate_images(x[i], float(angles[i]))
        torch.testing.assert_close(batched[i], single, rtol=0, atol=1e-4)


def gaussian_image(n: int, centre: tuple[float, float], sigma: float) -> torch.Tensor:
    ax = torch.arange(n, dtype=torch.float64) - n // 2
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    return torch.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))


def moments(img: torch.Tensor) -> tuple[float, float, float]:
    n = img.shape[-1]
    ax = torch.arange(n, dtype=torch.float64) - n // 2
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    w = img.double() / img.double().sum()
    mx, my = float((w * x).sum()), float((w * y).sum())
    var = float((w * ((x - mx) ** 2 + (y - my) ** 2)).sum()) / 2
    return mx, my, math.sqrt(var)


def test_zoom_scales_positions_and_widths_about_the_centre() -> None:
    img = gaussian_image(48, (5.0, -3.0), 2.5)
    z = 1.08
    mx, my, sigma = moments(zoom_images(img, z))
    # PyTorch's bicubic kernel (a = -0.75) limits the accuracy: 0.6% measured.
    assert (mx, my, sigma) == pytest.approx((5.0 * z, -3.0 * z, 2.5 * z), rel=1e-2)
    # The content centre (5, -3) px is at -origin / angpix: the origin scales the same way.
    origin = torch.tensor([-5.0, 3.0]) * ANGPIX
    new = zoom_labels(origin, z)
    assert (-new / ANGPIX).tolist() == pytest.approx([mx, my], rel=1e-2)


def test_noise_and_erasing_leave_labels_alone() -> None:
    A = euler_to_matrix(EULER)[0]
    img = torch.zeros(2, 32, 32)
    aug = Augmenter(
        AugmentConfig(p_rot90=0, p_rotate=0, p_shift=0, p_noise=1.0, noise_std=(0.5, 0.5))
    )
    out = aug(img, A, ORIGIN[0], ANGPIX, torch.Generator().manual_seed(1))
    assert float(out.image.std()) == pytest.approx(0.5, rel=0.05)
    assert torch.equal(out.rotation, A) and torch.equal(out.shift_angst, ORIGIN[0])
    aug = Augmenter(
        AugmentConfig(p_rot90=0, p_rotate=0, p_shift=0, p_erase=1.0, erase_area=(0.1, 0.2))
    )
    img = torch.randn(2, 32, 32, generator=torch.Generator().manual_seed(2)) + 10.0
    out = aug(img, A, ORIGIN[0], ANGPIX, torch.Generator().manual_seed(3))
    changed = (out.image != img).all(dim=0)  # every channel erased in the same rectangle
    assert 0.1 * 1024 * 0.8 <= int(changed.sum()) <= 0.2 * 1024 * 1.2
    assert torch.equal((out.image != img)[0], (out.image != img)[1])
    assert torch.equal(out.rotation, A)
    assert torch.equal(erase_rectangle(img, 2, 3, 4, 5)[:, 2:6, 3:8], torch.zeros(2, 4, 5))


def test_same_generator_seed_same_augmentation() -> None:
    aug = Augmenter(AugmentConfig(p_zoom=0.5, p_noise=0.5, p_erase=0.5))
    img = torch.randn(1, 24, 24)
    a = aug(img, torch.eye(3), torch.zeros(2), 1.0, torch.Generator().manual_seed(9))
    b = aug(img, torch.eye(3), torch.zeros(2), 1.0, torch.Generator().manual_seed(9))
    assert torch.equal(a.image, b.image) and a.applied == b.applied
    torch.testing.assert_close(
        in_plane_rotation(math.pi / 2)[:2, :2], torch.tensor([[0.0, -1], [1, 0]])
    )


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(p_rotate=1.5)
    with pytest.raises(ValueError, match="zoom"):
        AugmentConfig(zoom_range=(0.0, 1.0))
