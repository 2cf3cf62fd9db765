"""Junk images: content checked against projection integrals, the CTF and image moments."""

from __future__ import annotations

import pytest
import torch

from cryopose.imaging.ctf import apply_ctf, ctf_2d
from cryopose.imaging.fft import rfft_radial_freq
from cryopose.imaging.projection import Projector
from cryopose.simulate.junk import JUNK_KINDS, junk_images, random_blob_volume
from cryopose.simulate.poses import uniform_poses

BOX = 48
ANGPIX = 2.0
RADIUS = 8.0


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def projector() -> Projector:
    return Projector(random_blob_volume(BOX, RADIUS, gen(0)).double())


def centroid(images: torch.Tensor) -> torch.Tensor:
    """(n, 2) intensity centroid (x, y) in pixels relative to the centre N // 2."""
    ax = torch.arange(BOX, dtype=images.dtype) - BOX // 2
    w = images.clamp_min(0)
    total = w.sum((-1, -2))
    return torch.stack(
        [(w * ax).sum((-1, -2)) / total, (w * ax[:, None]).sum((-1, -2)) / total], -1
    )


def make(
    kind: str,
    n: int,
    projector: Projector,
    seed: int = 1,
    ctf: torch.Tensor | None = None,
    other: Projector | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    R = uniform_poses(n, gen(seed))
    shifts = torch.zeros(n, 2, dtype=torch.float64)
    images = junk_images(
        [kind] * n, projector, R, shifts, ANGPIX, RADIUS, gen(seed + 1), ctf=ctf, other=other
    )
    return images, R, shifts


def test_blob_volume_is_compact() -> None:
    vol = random_blob_volume(BOX, RADIUS, gen(3)).double()
    assert vol.shape == (BOX,) * 3 and float(vol.min()) >= 0
    ax = torch.arange(BOX, dtype=torch.float64) - BOX // 2
    r = torch.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    assert float(vol[r <= 1.5 * RADIUS].sum() / vol.sum()) > 0.95


def test_off_centre_is_displaced_by_more_than_a_radius(projector: Projector) -> None:
    images, _, _ = make("off_centre", 20, projector)
    # A projection keeps the integral of the map (no CTF here): a whole particle, moved.
    vol_sum = float(projector.project(torch.eye(3, dtype=torch.float64)[None]).sum())
    assert torch.allclose(
        images.sum((-1, -2)), torch.full((20,), vol_sum, dtype=torch.float64), rtol=1e-2
    )
    centred = projector.project(uniform_poses(20, gen(1)))
    offset = centroid(images) - centroid(centred)
    dist = torch.linalg.vector_norm(offset, dim=-1)
    assert float(dist.min()) > 0.95 * RADIUS and float(dist.max()) < 1.55 * RADIUS


def test_overlap_holds_two_particles(projector: Projector) -> None:
    images, _, _ = make("overlap", 20, projector)
    vol_sum = float(projector.project(torch.eye(3, dtype=torch.float64)[None]).sum())
    assert torch.allclose(
        images.sum((-1, -2)), torch.full((20,), 2 * vol_sum, dtype=torch.float64), rtol=1e-2
    )


def test_other_protein_projects_the_other_map(projector: Projector) -> None:
    other = Projector(random_blob_volume(BOX, RADIUS, gen(7)).double())
    images, R, shifts = make("other_protein", 5, projector, other=other)
    expected = other.project(R, shifts, ANGPIX)
    assert torch.allclose(images, expected, atol=1e-10)
    # Without a map, a random blob assembly: still a compact particle-sized object.
    blobs, _, _ = make("other_protein", 5, projector)
    assert float(centroid(blobs).abs().max()) < RADIUS


def test_empty_is_smooth_ice_and_ctf_is_the_particles(projector: Projector) -> None:
    images, _, _ = make("empty", 30, projector)
    power = torch.fft.rfft2(images).abs() ** 2
    k = rfft_radial_freq((BOX, BOX), dtype=torch.float64)
    assert float(power[:, k > 0.25].sum() / power.sum()) < 1e-3
    ctf = ctf_2d(
        (BOX, BOX),
        ANGPIX,
        torch.full((30,), 15000.0),
        torch.full((30,), 14000.0),
        torch.full((30,), 30.0),
        300.0,
        2.7,
        0.1,
        dtype=torch.float64,
    )
    with_ctf, _, _ = make("empty", 30, projector, ctf=ctf)
    assert torch.allclose(with_ctf, apply_ctf(images, ctf), atol=1e-10)


def test_contaminant_has_dense_content(projector: Projector) -> None:
    images, _, _ = make("contaminant", 20, projector)
    assert float(images.min()) >= 0
    assert bool((images.amax((-1, -2)) >= 1.0).all())


def test_all_kinds_finite_and_distinct(projector: Projector) -> None:
    kinds = list(JUNK_KINDS) * 2
    R = uniform_poses(len(kinds), gen(9))
    images = junk_images(kinds, projector, R, torch.zeros(len(kinds), 2), ANGPIX, RADIUS, gen(10))
    assert images.shape == (len(kinds), BOX, BOX) and bool(images.isfinite().all())
    assert bool((images.std((-1, -2)) > 0).all())
    with pytest.raises(ValueError, match="unknown junk"):
        junk_images(["ice"], projector, R[:1], torch.zeros(1, 2), ANGPIX, RADIUS, gen(0))
