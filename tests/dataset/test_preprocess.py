"""Preprocessing numbers: background statistics, phase flip, rescale, crop, mask, filters."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.data.preprocess import (
    PreprocessConfig,
    channel_names,
    output_geometry,
    preprocess,
)
from cryopose.errors import InputError
from cryopose.imaging.ctf import ctf_2d, phase_flip
from cryopose.imaging.projection import Projector
from cryopose.imaging.resample import fourier_crop, rescale
from cryopose.io.mrc import read_images
from cryopose.io.particles import ParticleTable, read_particles

ANGPIX_REAL = 2.806
RAW = PreprocessConfig(normalise=False)


@pytest.fixture
def real(data_dir: Path) -> tuple[torch.Tensor, ParticleTable]:
    table = read_particles(data_dir / "particles" / "relion31.star", particles_dir=data_dir)
    return read_images(table.image_locations()), table


def distances(n: int) -> np.ndarray:
    """Brute-force distance of every pixel from (n // 2, n // 2)."""
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            out[i, j] = math.hypot(i - n // 2, j - n // 2)
    return out


@pytest.mark.parametrize("radius_angst", [120.0, None])
def test_background_mean_zero_std_one(
    real: tuple[torch.Tensor, ParticleTable], radius_angst: float | None
) -> None:
    images, _ = real
    config = PreprocessConfig(particle_radius_angst=radius_angst)
    out = preprocess(images, None, ANGPIX_REAL, config).images[:, 0].double().numpy()
    radius = 120.0 / ANGPIX_REAL if radius_angst is not None else 0.375 * 256
    background = distances(256) > radius
    for img in out:
        values = img[background]
        assert abs(values.mean()) < 1e-5
        assert values.std() == pytest.approx(1.0, abs=1e-5)
    # Inside the particle the statistics differ: the background was really selected.
    assert abs(out[:, ~background].std() - 1.0) > 1e-3


def ctf_of(table: ParticleTable, shape: tuple[int, int], angpix: float) -> torch.Tensor:
    p = table.ctf_parameters()
    return ctf_2d(
        shape,
        angpix,
        p["defocus_u"],
        p["defocus_v"],
        p["defocus_angle"],
        p["voltage"],
        p["cs"],
        p["amplitude_contrast"],
        p["phase_shift"],
    )


def test_phase_flip_equals_imaging_phase_flip_on_real_particles(
    real: tuple[torch.Tensor, ParticleTable],
) -> None:
    images, table = real
    config = PreprocessConfig(normalise=False, ctf_correction="concat_phase_flip")
    out = preprocess(images, table.ctf_parameters(), ANGPIX_REAL, config).images
    assert out.shape == (5, 2, 256, 256)
    torch.testing.assert_close(out[:, 0], images)
    expected = phase_flip(images, ctf_of(table, (256, 256), ANGPIX_REAL))
    torch.testing.assert_close(out[:, 1], expected, rtol=0, atol=1e-5)
    assert channel_names(config) == ["image_s0", "phase_flipped_s0"]


def test_phase_flip_makes_the_ctf_positive(clean_star: Path, blob_volume: torch.Tensor) -> None:
    """Noise-free CTF-modulated particles: after flipping, every Fourier component of the image
    has the phase of the CTF-free projection (astigmatism included)."""
    table = read_particles(clean_star)
    images = read_images(table.image_locations()[:8])
    ctf = {k: v[:8] for k, v in table.ctf_parameters().items()}
    flipped = preprocess(
        images, ctf, 3.0, PreprocessConfig(normalise=False, ctf_correction="phase_flip")
    )
    clean = Projector(blob_volume).project(table.rotations()[:8], table.shifts_angst()[:8], 3.0)

    def negative_fraction(x: torch.Tensor) -> float:
        """Fraction of the Fourier components (above round-off) opposite to the projection's."""
        cross = (torch.fft.rfft2(x.double()) * torch.fft.rfft2(clean.double()).conj()).real
        significant = cross.abs() > 1e-6 * cross.abs().amax()
        return float((cross[significant] < 0).double().mean())

    assert negative_fraction(flipped.images[:, 0]) == 0.0
    assert negative_fraction(images) > 0.2


def gaussian_image(n: int, sigma_px: float) -> torch.Tensor:
    ax = torch.arange(n, dtype=torch.float64) - n // 2
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    return torch.exp(-(x * x + y * y) / (2 * sigma_px**2))


def second_moment_sigma(img: torch.Tensor) -> float:
    n = img.shape[-1]
    ax = torch.arange(n, dtype=torch.float64) - n // 2
    _, x = torch.meshgrid(ax, ax, indexing="ij")
    w = img.double() / img.double().sum()
    return math.sqrt(float((w * x * x).sum()))


def test_rescale_changes_the_pixel_size_exactly() -> None:
    sigma_angst, angpix = 9.0, 2.0
    img = gaussian_image(64, sigma_angst / angpix)[None]
    config = PreprocessConfig(angpix=3.1, normalise=False)
    out = preprocess(img, None, angpix, config)
    # round(64 * 2 / 3.1) = 41, made even: 42 pixels of 2 * 64 / 42 A.
    assert out.images.shape == (1, 1, 42, 42)
    assert out.angpix == 2.0 * 64 / 42
    assert output_geometry(64, angpix, config) == (42, 42, 2.0 * 64 / 42)
    torch.testing.assert_close(out.images[:, 0], rescale(img, angpix, 3.1))
    # The blob keeps its size in Angstrom at the new sampling.
    assert second_moment_sigma(out.images[0, 0]) * out.angpix == pytest.approx(sigma_angst, 1e-3)


def test_rescale_then_phase_flip_equals_phase_flip_then_crop(
    real: tuple[torch.Tensor, ParticleTable],
) -> None:
    images, table = real
    config = PreprocessConfig(angpix=2 * ANGPIX_REAL, normalise=False, ctf_correction="phase_flip")
    out = preprocess(images, table.ctf_parameters(), ANGPIX_REAL, config)
    full = phase_flip(images, ctf_of(table, (256, 256), ANGPIX_REAL))
    expected = fourier_crop(full, 128)
    # Equal below Nyquist: the two orders differ only in how the new Nyquist column is
    # made real (measured: 1e-4 elsewhere against components up to 1271).
    diff = torch.fft.rfft2(out.images[:, 0] - expected)
    diff[:, 64, :] = 0
    diff[:, :, 64] = 0
    assert float(diff.abs().amax()) < 1e-6 * float(torch.fft.rfft2(expected).abs().amax())


def test_centre_crop_keeps_the_centre() -> None:
    img = torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = preprocess(img, None, 1.0, PreprocessConfig(normalise=False, image_size=20))
    assert torch.equal(out.images[:, 0], img[:, 6:26, 6:26])
    out = preprocess(img, None, 1.0, PreprocessConfig(normalise=False, image_size=21))
    assert torch.equal(out.images[:, 0], img[:, 6:27, 6:27])  # centre 16 -> 10


@pytest.mark.parametrize("edge", [0.0, 3.0])
def test_mask_radius(edge: float) -> None:
    n, angpix, radius_px = 48, 1.5, 13.0
    config = PreprocessConfig(
        normalise=False,
        mask=True,
        mask_soft_edge_px=edge,
        particle_radius_angst=radius_px * angpix,
    )
    out = preprocess(torch.ones(n, n), None, angpix, config).images[0, 0].numpy()
    r = distances(n)
    assert np.all(out[r <= radius_px] == 1.0)
    assert (
        np.all(out[r >= radius_px + edge + 1e-9] == 0.0)
        if edge
        else np.all(out[r > radius_px] == 0)
    )
    if edge:
        ring = (r > radius_px + 0.1) & (r < radius_px + edge - 0.1)
        assert ring.sum() > 0 and np.all((out[ring] > 0) & (out[ring] < 1))
        # Raised cosine: halfway through the edge the mask is 1/2.
        k = np.argmin(np.abs(r - (radius_px + edge / 2)))
        expected = 0.5 + 0.5 * math.cos(math.pi * (r.flat[k] - radius_px) / edge)
        assert out.flat[k] == pytest.approx(expected, abs=1e-6)


def test_gaussian_channels_have_the_right_widths() -> None:
    n = 64
    delta = torch.zeros(n, n, dtype=torch.float64)
    delta[n // 2, n // 2] = 1.0
    sigmas = (0.0, 0.3, 1.0, 2.0)
    config = PreprocessConfig(normalise=False, gaussian_sigmas_px=sigmas)
    out = preprocess(delta, None, 1.0, config).images[0]
    assert out.shape == (4, n, n)
    assert channel_names(config) == ["image_s0", "image_s1", "image_s2", "image_s3"]
    assert torch.equal(out[0], delta)
    for channel, sigma in zip(out[2:], sigmas[2:], strict=True):
        assert float(channel.sum()) == pytest.approx(1.0, abs=1e-9)
        assert second_moment_sigma(channel) == pytest.approx(sigma, rel=1e-3)
    # sigma = 0.3 px is below the sampling: check its transfer function, exp(-2 pi^2 s^2 k^2).
    transfer = torch.fft.rfft2(torch.fft.ifftshift(out[1])).real
    k = np.fft.fftfreq(n)
    for iy, ix in ((0, 5), (7, 3), (32, 32), (20, 0)):
        expected = math.exp(-2 * math.pi**2 * 0.09 * (k[iy] ** 2 + k[ix] ** 2))
        assert float(transfer[iy, ix]) == pytest.approx(expected, abs=1e-9)


def test_batch_equals_one_by_one(real: tuple[torch.Tensor, ParticleTable]) -> None:
    images, table = real
    config = PreprocessConfig(
        angpix=4 * ANGPIX_REAL,
        image_size=40,
        ctf_correction="concat_phase_flip",
        mask=True,
        gaussian_sigmas_px=(0.0, 1.0),
    )
    ctf = table.ctf_parameters()
    batch = preprocess(images, ctf, ANGPIX_REAL, config).images
    assert batch.shape == (5, 4, 40, 40)
    for i in range(5):
        one = preprocess(images[i], {k: v[i] for k, v in ctf.items()}, ANGPIX_REAL, config)
        torch.testing.assert_close(one.images[0], batch[i], rtol=0, atol=1e-5)
    # Channel order: the Gaussian copies of the image, then those of the phase-flipped image.
    assert channel_names(config) == [
        "image_s0",
        "image_s1",
        "phase_flipped_s0",
        "phase_flipped_s1",
    ]


def test_config_round_trip_and_validation() -> None:
    config = PreprocessConfig(
        angpix=3.0, gaussian_sigmas_px=(0.0, 2.0), ctf_correction="phase_flip"
    )
    assert PreprocessConfig.from_dict(config.to_dict()) == config
    with pytest.raises(InputError, match="ctf_correction"):
        PreprocessConfig(ctf_correction="wiener")
    with pytest.raises(InputError, match="sigmas"):
        PreprocessConfig(gaussian_sigmas_px=())
    with pytest.raises(InputError, match="unknown"):
        PreprocessConfig.from_dict({"angpix": 2.0, "bin": 2})
    with pytest.raises(InputError, match="CTF"):
        preprocess(torch.zeros(8, 8), None, 1.0, PreprocessConfig(ctf_correction="phase_flip"))
    assert RAW.to_dict()["normalise"] is False
