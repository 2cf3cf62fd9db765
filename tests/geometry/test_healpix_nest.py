"""cryopose's numpy HEALPix NEST routines against healpy (the reference implementation)."""

from __future__ import annotations

import subprocess
import sys

import healpy
import numpy as np
import pytest

from cryopose.geometry._healpix_nest import (
    boundaries_nest,
    max_pixrad,
    neighbours_nest,
    pix2ang_nest,
    pix2vec_nest,
    query_disc_centres,
    vec2pix_nest,
)


@pytest.mark.parametrize("order", range(7))
def test_pixel_centres_match_healpy(order: int) -> None:
    nside = 2**order
    pix = np.arange(12 * nside * nside)
    theta, phi = pix2ang_nest(nside, pix)
    ref_theta, ref_phi = healpy.pix2ang(nside, pix, nest=True)
    np.testing.assert_allclose(theta, ref_theta, rtol=0, atol=1e-14)
    np.testing.assert_allclose(phi, ref_phi, rtol=0, atol=1e-14)
    vec = np.stack(pix2vec_nest(nside, pix))
    np.testing.assert_allclose(vec, np.stack(healpy.pix2vec(nside, pix, nest=True)), atol=1e-14)
    # Every centre lies in its own pixel.
    np.testing.assert_array_equal(vec2pix_nest(nside, *vec), pix)


@pytest.mark.parametrize("order", [0, 1, 3, 6])
def test_pixel_lookup_matches_healpy(order: int) -> None:
    """Random directions of any length, and the awkward ones: poles, the equator, the
    +-2/3 ring boundaries, phi = 0 and just below 2 pi, directions 1e-9 from a pole."""
    nside = 2**order
    rng = np.random.default_rng(order)
    v = rng.normal(size=(3, 100_000)) * rng.uniform(0.1, 10.0, size=100_000)
    z23 = 2.0 / 3.0
    s23 = np.sqrt(1 - z23**2)
    special = np.array(
        [
            [0, 0, 1], [0, 0, -1], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0],
            [s23, 0, z23], [s23, 0, -z23], [1, -1e-12, 0], [1e-9, 0, 1], [1e-9, 1e-9, -1],
            [np.cos(0.3), np.sin(0.3), 0.999], [0.01, -0.02, 0.995],
        ]
    ).T  # fmt: skip
    v = np.concatenate([v, special], axis=1)
    np.testing.assert_array_equal(vec2pix_nest(nside, *v), healpy.vec2pix(nside, *v, nest=True))


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="power of 2"):
        pix2ang_nest(3, [0])
    with pytest.raises(ValueError, match=r"\[0, 48\)"):
        pix2vec_nest(2, [48])


def test_the_pose_pipeline_does_not_import_healpy() -> None:
    """healpy pulls in matplotlib and astropy (about a second at every start-up): loading the
    pipeline, the directional statistics' neighbours and the network's nearest-cell look-up
    (pixel radius, boundaries, discs) run without it."""
    code = (
        "import sys, torch, cryopose.pose.pipeline, cryopose.models.so3, cryopose.evaluation.fsc;"
        "from cryopose.pose.pruning import _neighbour_pixels; _neighbour_pixels(2);"
        "from cryopose.geometry.healpix import nearest_grid_index, grid_resolution_deg;"
        "nearest_grid_index(torch.eye(3)[None], 2); grid_resolution_deg(3);"
        "print(sorted(m for m in ('healpy', 'matplotlib', 'astropy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("order", range(7))
def test_neighbours_match_healpy(order: int) -> None:
    """All 8 neighbours of every pixel in healpy's order; -1 for the 24 missing ones (the 8
    points where only three faces meet, each missing one neighbour for 3 pixels)."""
    nside = 2**order
    pix = np.arange(12 * nside * nside)
    ours = neighbours_nest(nside, pix)
    np.testing.assert_array_equal(ours, healpy.get_all_neighbours(nside, pix, nest=True))
    assert int((ours == -1).sum()) == 24


@pytest.mark.parametrize("order", range(7))
def test_boundaries_and_pixel_radius_match_healpy(order: int) -> None:
    nside = 2**order
    pix = np.arange(12 * nside * nside)
    ours = boundaries_nest(nside, pix, step=8)
    np.testing.assert_allclose(ours, healpy.boundaries(nside, pix, step=8, nest=True), atol=1e-14)
    assert max_pixrad(nside) == pytest.approx(healpy.max_pixrad(nside), rel=1e-14)


@pytest.mark.parametrize(("order", "radius"), [(1, 0.3), (3, 0.1), (3, 0.25), (4, 0.12)])
def test_disc_queries_match_healpy(order: int, radius: float) -> None:
    """Discs around every pixel centre and around random directions."""
    nside = 2**order
    centres = np.stack(pix2vec_nest(nside, np.arange(12 * nside * nside)), axis=-1)
    rng = np.random.default_rng(order)
    random = rng.normal(size=(50, 3))
    random /= np.linalg.norm(random, axis=1, keepdims=True)
    vectors = np.concatenate([centres, random])
    ours = query_disc_centres(nside, vectors, radius)
    for v, got in zip(vectors, ours, strict=True):
        np.testing.assert_array_equal(got, np.sort(healpy.query_disc(nside, v, radius, nest=True)))
