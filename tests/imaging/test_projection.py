"""Fourier-slice projection against relion_project and brute-force sums."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryopose.geometry.euler import euler_to_matrix
from cryopose.imaging.ctf import ctf_2d
from cryopose.imaging.fft import rfftn_centred
from cryopose.imaging.projection import Projector, project


def blob_map(n: int, seed: int = 0) -> np.ndarray:
    """A few Gaussian blobs around the centre n // 2: smooth, asymmetric, zero at the edges."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:n, :n, :n] - n // 2
    vol = np.zeros((n, n, n))
    for _ in range(6):
        c = rng.uniform(-n / 5, n / 5, 3)
        s = rng.uniform(1.5, 3.0) * n / 32
        vol += rng.uniform(0.5, 1.5) * np.exp(
            -((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s)
        )
    return vol.astype(np.float32)


def poses_table(n: int, size: int, angpix: float, seed: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    du = rng.uniform(8000, 20000, n)
    return pd.DataFrame(
        {
            "rlnAngleRot": rng.uniform(-180, 180, n),
            "rlnAngleTilt": rng.uniform(0, 180, n),
            "rlnAnglePsi": rng.uniform(-180, 180, n),
            # Both signs, up to 3 pixels.
            "rlnOriginXAngst": rng.uniform(-3, 3, n) * angpix,
            "rlnOriginYAngst": rng.uniform(-3, 3, n) * angpix,
            "rlnDefocusU": du,
            "rlnDefocusV": du - rng.uniform(0, 8000, n),
            "rlnDefocusAngle": rng.uniform(-90, 90, n),
            "rlnPhaseShift": np.zeros(n),
            "rlnCtfBfactor": np.zeros(n),
            "rlnCtfScalefactor": np.ones(n),
            "rlnImageName": [f"{i + 1}@dummy.mrcs" for i in range(n)],
            "rlnOpticsGroup": np.ones(n, dtype=int),
        }
    )


OPTICS = {"rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}


def relion_project(
    tmp_path: Path, vol_path: Path, parts: pd.DataFrame, size: int, angpix: float, ctf: bool
) -> np.ndarray:
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnImagePixelSize": [angpix],
            "rlnImageSize": [size],
            "rlnImageDimensionality": [2],
            **{k: [v] for k, v in OPTICS.items()},
        }
    )
    starfile.write({"optics": optics, "particles": parts}, tmp_path / "poses.star", overwrite=True)
    out = "proj_ctf" if ctf else "proj"
    cmd = ["relion_project", "--i", str(vol_path), "--ang", "poses.star", "--o", out]
    subprocess.run([*cmd, "--ctf"] if ctf else cmd, cwd=tmp_path, check=True, capture_output=True)
    return np.asarray(mrcfile.read(tmp_path / f"{out}.mrcs"), dtype=np.float64).reshape(
        -1, size, size
    )


def ours(
    vol: np.ndarray, parts: pd.DataFrame, angpix: float, ctf: bool, flip_origin: bool = False
) -> np.ndarray:
    n = vol.shape[0]
    angles = torch.tensor(parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    origins = torch.tensor(parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy())
    c = None
    if ctf:
        col = {k: torch.tensor(parts[k].to_numpy()) for k in parts.columns if "Defocus" in k}
        c = ctf_2d(
            (n, n),
            angpix,
            col["rlnDefocusU"],
            col["rlnDefocusV"],
            col["rlnDefocusAngle"],
            OPTICS["rlnVoltage"],
            OPTICS["rlnSphericalAberration"],
            OPTICS["rlnAmplitudeContrast"],
        )
    sign = -1.0 if flip_origin else 1.0
    images = Projector(torch.from_numpy(vol)).project(
        euler_to_matrix(angles.float()), sign * origins.float(), angpix, ctf=c
    )
    return np.asarray(images.numpy(), dtype=np.float64)


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return np.asarray((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1)))


def write_map(path: Path, vol: np.ndarray, angpix: float) -> None:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(vol)
        m.voxel_size = angpix


@pytest.mark.parametrize("ctf", [False, True])
def test_projector_matches_relion_project_64(relion: None, tmp_path: Path, ctf: bool) -> None:
    angpix = 2.0
    vol = blob_map(64)
    write_map(tmp_path / "map.mrc", vol, angpix)
    parts = poses_table(8, 64, angpix)
    ref = relion_project(tmp_path, tmp_path / "map.mrc", parts, 64, angpix, ctf)
    mine = ours(vol, parts, angpix, ctf)
    assert pearson(mine, ref).min() > 0.999
    # Same intensity scale (line integrals in voxel units), within 0.1 %.
    assert np.abs(mine - ref).max() < 1e-3 * np.abs(ref).max()
    # RELION's origin sign: flipping it must break the agreement.
    assert pearson(ours(vol, parts, angpix, ctf, flip_origin=True), ref).mean() < 0.95


@pytest.mark.parametrize("ctf", [False, True])
def test_projector_matches_relion_on_real_map(
    relion: None, tmp_path: Path, data_dir: Path, ctf: bool
) -> None:
    """EMD-3197: a real map in an even box of 20 voxels at 11.4 A."""
    shutil.copy(data_dir / "EMD-3197.map", tmp_path / "map.mrc")
    vol = np.asarray(mrcfile.read(tmp_path / "map.mrc"), dtype=np.float32)
    angpix = 11.4
    parts = poses_table(6, 20, angpix, seed=2)
    ref = relion_project(tmp_path, tmp_path / "map.mrc", parts, 20, angpix, ctf)
    assert pearson(ours(vol, parts, angpix, ctf), ref).min() > 0.99


def test_odd_box_relion_is_one_pixel_off(relion: None, tmp_path: Path) -> None:
    """cryopose keeps the centre at N // 2; relion_project puts it at N // 2 + 1 in x and y."""
    angpix = 2.0
    vol = blob_map(33)
    write_map(tmp_path / "map.mrc", vol, angpix)
    parts = poses_table(4, 33, angpix, seed=3)
    ref = relion_project(tmp_path, tmp_path / "map.mrc", parts, 33, angpix, False)
    mine = ours(vol, parts, angpix, False)
    assert pearson(mine, ref).max() < 0.97
    rolled = np.roll(mine, (1, 1), axis=(-2, -1))
    assert pearson(rolled, ref).min() > 0.999
    # cryopose: a delta at the centre N // 2 projects to N // 2 at every pose.
    delta = torch.zeros(33, 33, 33)
    delta[16, 16, 16] = 1.0
    rots = euler_to_matrix(
        torch.tensor(parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()).float()
    )
    img = project(delta, rots)
    assert all(divmod(int(i.argmax()), 33) == (16, 16) for i in img)


@pytest.mark.parametrize("n", [24, 25])
def test_identity_pose_is_sum_along_z(n: int) -> None:
    """Brute force: at A = I the image is sum_z V (even and odd N).

    Not exact: the gridding correction (divide by sinc^2, as RELION does) is right for
    off-grid trilinear samples on average but over-corrects on-grid ones by about
    1 / sinc^2(r / P) - 1, so the error falls as 1 / pad_factor^2.
    """
    vol = torch.from_numpy(blob_map(n, seed=4)).double()
    expected = vol.sum(0)
    errors = []
    for pad in (2.0, 4.0):
        img = project(vol, torch.eye(3, dtype=torch.float64)[None], pad_factor=pad)[0]
        errors.append(float((img - expected).abs().max() / expected.max()))
    assert errors[0] < 0.05
    assert errors[1] < 0.015
    assert 3.0 < errors[0] / errors[1] < 5.0


def test_tilt_90_is_sum_along_x() -> None:
    """A = [[0,0,-1],[0,1,0],[1,0,0]]: image(x, y) = sum_z V(X=z, Y=y, Z=-x)."""
    vol = torch.from_numpy(blob_map(24, seed=5)).double()
    a = euler_to_matrix(torch.tensor([[0.0, 90.0, 0.0]], dtype=torch.float64))
    img = project(vol, a, pad_factor=4.0)[0]
    s = vol.sum(-1)  # indexed [Z, Y]
    # image[y, x] = s[-x, y]; negating about index N // 2 is flip then roll by one (even N).
    expected = torch.roll(s.T.flip(-1), 1, dims=-1)
    assert torch.allclose(img, expected, atol=0.01 * float(expected.max()))
    wrong = torch.roll(s.flip(-1), 1, dims=-1)  # the transpose mistake
    assert not torch.allclose(img, wrong, atol=0.1 * float(expected.max()))


def test_batching_fourier_output_and_function_form() -> None:
    torch.manual_seed(0)
    vol = torch.from_numpy(blob_map(20, seed=6))
    rots = euler_to_matrix(torch.rand(7, 3) * torch.tensor([360.0, 180.0, 360.0]))
    shifts = torch.randn(7, 2) * 5.0
    proj = Projector(vol)
    full = proj.project(rots, shifts, angpix=2.5)
    small = proj.project(rots, shifts, angpix=2.5, batch_size=3)
    assert full.shape == (7, 20, 20) and full.dtype == torch.float32
    assert torch.allclose(full, small, atol=1e-5 * float(full.abs().max()))
    f = proj.project(rots, shifts, angpix=2.5, fourier=True)
    assert f.shape == (7, 20, 11)
    assert torch.allclose(f, rfftn_centred(full), atol=1e-3 * float(f.abs().max()))
    assert torch.allclose(project(vol, rots, shifts, angpix=2.5), full)
    with pytest.raises(ValueError, match="angpix"):
        proj.project(rots, shifts)
    with pytest.raises(ValueError, match="cubic"):
        Projector(torch.zeros(4, 4, 5))


def test_cropped_slices_are_the_fourier_cropped_projection() -> None:
    """``slices(box=b)`` holds the low frequencies: its image is the projection Fourier-cropped
    to ``b`` pixels (cryopose.imaging.resample.fourier_crop of the full-size image)."""
    from cryopose.imaging.fft import irfftn_centred
    from cryopose.imaging.resample import fourier_crop

    g = torch.Generator().manual_seed(5)
    volume = torch.randn(32, 32, 32, generator=g, dtype=torch.float64)
    rotations = euler_to_matrix(torch.tensor([[10.0, 40.0, 70.0], [200.0, 100.0, -30.0]]))
    projector = Projector(volume)
    full = projector.project(rotations.to(torch.float64))
    for box in (20, 21, 32):
        small = irfftn_centred(projector.slices(rotations, box=box), (box, box))
        expected = fourier_crop(full, box)
        torch.testing.assert_close(small * (box / 32) ** 2, expected, rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="between 1 and 32"):
        projector.slices(rotations, box=33)


def test_band_limited_slices_are_the_low_pass_of_the_full_ones() -> None:
    """``slices(kmax=k)`` equals the full slice inside ``|k| <= kmax`` (cycles per pixel of the
    map, at any output box) and is zero outside; ``kmax`` above Nyquist changes nothing."""
    from cryopose.imaging.fft import rfft_freq_grid

    g = torch.Generator().manual_seed(6)
    volume = torch.randn(32, 32, 32, generator=g, dtype=torch.float64)
    rotations = euler_to_matrix(torch.tensor([[10.0, 40.0, 70.0], [200.0, 100.0, -30.0]]))
    projector = Projector(volume)
    for box, kmax in ((32, 0.2), (20, 0.15), (20, 0.31)):
        full = projector.slices(rotations, box=box)
        band = projector.slices(rotations, box=box, kmax=kmax)
        ky, kx = rfft_freq_grid((box, box), dtype=torch.float64)
        inside = (kx**2 + ky**2) * (box / 32) ** 2 <= kmax**2
        assert 0 < int(inside.sum()) < inside.numel()
        torch.testing.assert_close(band[:, inside], full[:, inside], rtol=0, atol=0)
        assert bool((band[:, ~inside] == 0).all())
    torch.testing.assert_close(projector.slices(rotations, kmax=0.9), projector.slices(rotations))
