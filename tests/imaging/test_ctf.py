"""RELION's CTF: checked against relion_project --ctf on a delta-function volume."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryopose.imaging.ctf import (
    apply_ctf,
    ctf_2d,
    ctf_at_frequencies,
    phase_flip,
    wavelength_angstrom,
)
from cryopose.imaging.fft import rfft_radial_freq

N = 64
ANGPIX = 1.5


def _relion_ctf(
    tmp_path: Path, optics: dict[str, float], rows: list[dict[str, float]]
) -> np.ndarray:
    """CTFs as relion_project --ctf applies them: project a centred delta (flat spectrum)."""
    vol = np.zeros((N, N, N), np.float32)
    vol[N // 2, N // 2, N // 2] = 1.0
    with mrcfile.new(tmp_path / "delta.mrc", overwrite=True) as m:
        m.set_data(vol)
        m.voxel_size = ANGPIX
    opt = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnImagePixelSize": [ANGPIX],
            "rlnImageSize": [N],
            "rlnImageDimensionality": [2],
            **{k: [v] for k, v in optics.items()},
        }
    )
    parts = pd.DataFrame(rows)
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst"):
        parts[col] = 0.0
    parts["rlnImageName"] = [f"{i + 1}@x.mrcs" for i in range(len(rows))]
    parts["rlnOpticsGroup"] = 1
    starfile.write({"optics": opt, "particles": parts}, tmp_path / "poses.star")
    subprocess.run(
        ["relion_project", "--i", "delta.mrc", "--ang", "poses.star", "--o", "proj", "--ctf"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    images = mrcfile.read(tmp_path / "proj.mrcs").astype(np.float64).reshape(-1, N, N)
    # The image of a centred delta is the inverse FT of the CTF: its centred FT is real.
    f = np.fft.rfft2(np.fft.ifftshift(images, axes=(-2, -1)))
    assert np.abs(f.imag).max() < 1e-5
    return np.asarray(f.real)


NYQUIST = (rfft_radial_freq((N, N)) <= 0.5).numpy()  # relion_project zeroes the corners


def _ours(rows: list[dict[str, float]], optics: dict[str, float], **kw: float) -> np.ndarray:
    col = {k: torch.tensor([r[k] for r in rows], dtype=torch.float64) for k in rows[0]}
    c = ctf_2d(
        (N, N),
        ANGPIX,
        col["rlnDefocusU"],
        col["rlnDefocusV"],
        col["rlnDefocusAngle"] + kw.get("angle_offset", 0.0),
        optics["rlnVoltage"],
        optics["rlnSphericalAberration"],
        optics["rlnAmplitudeContrast"],
        phase_shift=col.get("rlnPhaseShift", 0.0),
        bfactor=col.get("rlnCtfBfactor", 0.0),
        scale=col.get("rlnCtfScalefactor", 1.0),
        dtype=torch.float64,
    )
    return np.asarray(c.numpy())


def test_ctf_matches_relion_at_strong_astigmatism(relion: None, tmp_path: Path) -> None:
    optics = {"rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}
    rows = [
        {"rlnDefocusU": 20000.0, "rlnDefocusV": 12000.0, "rlnDefocusAngle": 30.0},
        {"rlnDefocusU": 15000.0, "rlnDefocusV": 15000.0, "rlnDefocusAngle": 0.0},
        {"rlnDefocusU": 9000.0, "rlnDefocusV": 14000.0, "rlnDefocusAngle": -65.0},
    ]
    ref = _relion_ctf(tmp_path, optics, rows)
    ours = _ours(rows, optics)
    assert ours.shape == (3, N, N // 2 + 1)
    assert np.abs(ours - ref)[:, NYQUIST].max() < 1e-5
    # Sign: positive at DC (+Q0) and throughout the first lobe, like RELION.
    assert ref[0, 0, 0] == pytest.approx(0.1, abs=1e-6)
    assert ours[0, 0, 1] > 0
    away = np.abs(ref) > 0.2
    assert (np.sign(ours) == np.sign(ref))[away & NYQUIST].mean() == 1.0
    # Swapping the astigmatism axes (angle + 90 deg, as CESPED effectively does) is detected.
    swapped = _ours(rows[:1], optics, angle_offset=90.0)
    assert (np.sign(swapped[0]) == np.sign(ref[0]))[away[0] & NYQUIST].mean() < 0.8


def test_ctf_phase_shift_bfactor_scale_match_relion(relion: None, tmp_path: Path) -> None:
    optics = {"rlnVoltage": 200.0, "rlnSphericalAberration": 1.4, "rlnAmplitudeContrast": 0.07}
    rows = [
        {
            "rlnDefocusU": 9000.0,
            "rlnDefocusV": 11000.0,
            "rlnDefocusAngle": -70.0,
            "rlnPhaseShift": 60.0,
            "rlnCtfBfactor": 200.0,
            "rlnCtfScalefactor": 0.7,
        }
    ]
    ref = _relion_ctf(tmp_path, optics, rows)
    assert np.abs(_ours(rows, optics) - ref)[:, NYQUIST].max() < 1e-5


def test_wavelength_known_values() -> None:
    # Relativistic electron wavelengths (Williams & Carter table): 0.02508 A at 200 kV,
    # 0.01969 A at 300 kV.
    lam = wavelength_angstrom(torch.tensor([200.0, 300.0], dtype=torch.float64))
    assert torch.allclose(lam, torch.tensor([0.025079, 0.019687], dtype=torch.float64), atol=2e-6)


def test_ctf_along_azimuth_is_1d_formula_with_defocus_u() -> None:
    du, dv, az = 20000.0, 12000.0, 30.0
    k = torch.linspace(0.0, 0.3, 50, dtype=torch.float64)
    for angle, df in ((az, du), (az + 90.0, dv)):
        kx = k * math.cos(math.radians(angle))
        ky = k * math.sin(math.radians(angle))
        c = ctf_at_frequencies(kx, ky, du, dv, az, 300.0, 2.7, 0.1)
        lam = 12.2643247 / math.sqrt(300e3 * (1 + 0.978466e-6 * 300e3))
        chi = math.pi * lam * df * k**2 - math.pi / 2 * 2.7e7 * lam**3 * k**4
        expected = torch.sin(chi + math.asin(0.1))  # standard weak-phase form
        assert torch.allclose(c, expected, atol=1e-9)


def test_ctf_shapes_layouts_and_device() -> None:
    du = torch.tensor([10000.0, 12000.0, 14000.0])
    c = ctf_2d((32, 30), 2.0, du, du - 500, torch.zeros(3), 300.0, 2.7, 0.1)
    assert c.shape == (3, 32, 16) and c.dtype == torch.float32
    full = ctf_2d((32, 30), 2.0, du, du - 500, torch.zeros(3), 300.0, 2.7, 0.1, rfft=False)
    assert full.shape == (3, 32, 30)
    assert torch.allclose(full[..., :16], c, atol=1e-6)
    shifted = ctf_2d(
        (32, 30), 2.0, du, du - 500, torch.zeros(3), 300.0, 2.7, 0.1, rfft=False, fftshift=True
    )
    assert torch.allclose(torch.fft.ifftshift(shifted, dim=(-2, -1)), full)
    c2 = ctf_2d((32, 32), 2.0, du[:, None], du[:, None], 0.0, 300.0, 2.7, 0.1)
    assert c2.shape == (3, 1, 32, 17)


def test_apply_ctf_and_phase_flip_brute_force() -> None:
    torch.manual_seed(0)
    # Odd box: no Nyquist bin, whose value an astigmatic CTF leaves ambiguous (+-0.5).
    images = torch.randn(2, 25, 25, dtype=torch.float64)
    c = ctf_2d((25, 25), 3.0, torch.tensor([8000.0, 15000.0]), 9000.0, 20.0, 300.0, 2.7, 0.1)
    c = c.to(torch.float64)
    # Brute force with a full complex FFT and the full-grid CTF.
    full = ctf_2d(
        (25, 25), 3.0, torch.tensor([8000.0, 15000.0]), 9000.0, 20.0, 300.0, 2.7, 0.1, rfft=False
    ).to(torch.float64)
    expected = torch.fft.ifft2(torch.fft.fft2(images) * full).real
    assert torch.allclose(apply_ctf(images, c), expected, atol=1e-10)
    flipped = torch.fft.ifft2(torch.fft.fft2(images) * torch.where(full < 0, -1.0, 1.0)).real
    assert torch.allclose(phase_flip(images, c), flipped, atol=1e-10)
    assert torch.allclose(phase_flip(phase_flip(images, c), c), images, atol=1e-10)
