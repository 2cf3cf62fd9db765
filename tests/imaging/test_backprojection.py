"""Tilt-series projector and weighted back-projection against independent references."""

from __future__ import annotations

import math

import pytest
import torch

from cryopose.geometry.euler import euler_to_matrix
from cryopose.imaging.backprojection import (
    angular_weights,
    backproject,
    project_tilt_series,
    ramp_filter,
    wbp,
)
from cryopose.imaging.projection import project


def _blob(
    shape: tuple[int, int, int], centre_zyx: tuple[int, int, int], sigma: float
) -> torch.Tensor:
    """Analytic Gaussian blob sampled on the grid."""
    grids = torch.meshgrid(*(torch.arange(n, dtype=torch.float64) for n in shape), indexing="ij")
    r2 = torch.zeros(shape, dtype=torch.float64)
    for g, c in zip(grids, centre_zyx, strict=True):
        r2 += (g - c) ** 2
    return torch.exp(-r2 / (2.0 * sigma**2)).to(torch.float32)


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def test_zero_tilt_is_sum_along_z() -> None:
    """At 0 degrees the line integral is exactly the sum over z (brute force)."""
    vol = torch.rand(7, 9, 11, generator=torch.Generator().manual_seed(0))
    proj = project_tilt_series(vol, [0.0])
    torch.testing.assert_close(proj[0], vol.sum(0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("angle", [-70.0, -35.0, 20.0, 50.0, 89.0])
def test_projection_matches_relion_geometry(angle: float) -> None:
    """Image at tilt t equals the Fourier projector (relion_project) at Euler (0, t, 0)."""
    vol = _blob((40, 40, 40), (14, 25, 26), 2.5) + 0.5 * _blob((40, 40, 40), (24, 12, 10), 2.0)
    ours = project_tilt_series(vol, [angle])[0]
    ref = project(vol, euler_to_matrix(torch.tensor([[0.0, angle, 0.0]])))[0]
    assert _corr(ours, ref) > 0.995
    # The wrong tilt sign puts the off-centre blobs elsewhere.
    flipped = project(vol, euler_to_matrix(torch.tensor([[0.0, -angle, 0.0]])))[0]
    assert _corr(ours, flipped) < 0.9


def test_projection_conserves_mass() -> None:
    """A line integral over the whole detector equals the volume's integral at every tilt."""
    vol = _blob((24, 48, 48), (12, 20, 26), 3.0)
    proj = project_tilt_series(vol, torch.linspace(-60, 60, 7))
    torch.testing.assert_close(proj.sum((1, 2)), vol.sum().expand(7), rtol=1e-3, atol=0.0)


def test_ramp_filter_is_ram_lak() -> None:
    """The filter is close to |k| (cycles/pixel) away from DC and 0 < filter(0) < 1/(2n)."""
    n = 64
    filt = ramp_filter(n, dtype=torch.float64)
    k = torch.arange(n + 1, dtype=torch.float64) / (2 * n)
    assert float((filt[4:] - k[4:]).abs().max()) < 0.01
    assert 0.0 < float(filt[0]) < 1.0 / (2 * n)


def test_angular_weights_trapezoid() -> None:
    """T equal steps over 180 degrees: each tilt stands for pi / T."""
    w = angular_weights(torch.arange(-90.0, 90.0, 2.0))
    torch.testing.assert_close(w, torch.full((90,), math.pi / 90, dtype=torch.float64))


def test_full_range_wbp_inverts_projection() -> None:
    """Filtered back-projection of 180 degrees reconstructs a smooth blob (inverse Radon)."""
    vol = _blob((32, 32, 32), (12, 10, 20), 2.0)
    angles = torch.arange(-90.0, 90.0, 1.5)
    rec = wbp(project_tilt_series(vol, angles), angles, 32)
    assert _corr(rec, vol) > 0.99
    assert abs(float(rec.sum()) / float(vol.sum()) - 1.0) < 0.05
    assert abs(float(rec.max()) - 1.0) < 0.2


def test_wbp_localises_off_axis_blob_and_missing_wedge_elongates_z() -> None:
    """An off-centre blob comes back at its voxel (x, y, z order); +-60 degrees stretches z."""
    shape = (32, 40, 48)  # z, y, x all different: a transposed axis would change shape
    centre = (20, 13, 30)  # z, y, x, none at the centre
    vol = _blob(shape, centre, 1.2)
    angles = torch.linspace(-60.0, 60.0, 41)
    rec = wbp(project_tilt_series(vol, angles), angles, shape[0])
    assert rec.shape == shape
    peak = tuple(int(i) for i in torch.nonzero(rec == rec.max())[0])
    assert peak == centre
    # Second moments of the positive part around the peak: z wider than x (the wedge).
    window = rec[12:29, 5:22, 22:39].clamp(min=0.0)
    prof_z = window.sum((1, 2))
    prof_x = window.sum((0, 1))
    off = torch.arange(-8.0, 9.0)
    var_z = float((prof_z * off**2).sum() / prof_z.sum())
    var_x = float((prof_x * off**2).sum() / prof_x.sum())
    assert var_z > 1.5 * var_x


def test_backproject_geometry_is_transpose_of_projection() -> None:
    """Back-projecting a detector delta at 30 degrees lights the line x cos t - z sin t = x'."""
    n_z, n_x = 16, 32
    img = torch.zeros(1, 3, n_x)
    img[0, :, n_x // 2 + 5] = 1.0
    vol = backproject(img, [30.0], n_z)
    t = math.radians(30.0)
    for z in range(n_z):
        row = vol[z, 1]
        x_line = (5 + (z - n_z // 2) * math.sin(t)) / math.cos(t) + n_x // 2
        centroid = float((row * torch.arange(n_x)).sum() / row.sum())
        assert abs(centroid - x_line) < 0.15
