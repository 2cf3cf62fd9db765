"""FSC, resolution, PCC and CESPED deltas against brute force, numpy and RELION."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import starfile
import torch

from cryopose.errors import InputError
from cryopose.evaluation.fsc import (
    cesped_deltas,
    conical_fsc,
    directional_resolution,
    fsc,
    hemisphere_directions,
    pcc,
    plot_fsc,
    resolution_at,
    shell_frequencies,
    shell_resolutions,
)


def _smooth_map(seed: int, n: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    ft = torch.fft.rfftn(torch.randn(n, n, n, generator=g, dtype=torch.float64))
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    fx = torch.fft.rfftfreq(n, dtype=torch.float64)
    r2 = f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2
    return torch.fft.irfftn(ft * torch.exp(-r2 / 0.02), s=(n, n, n))


def _brute_force_fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Full complex FFT, shells round(|k|), plain loops over shells."""
    n = a.shape[0]
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    f = np.fft.fftfreq(n) * n
    r = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    shell = np.round(r).astype(int)
    out = np.empty(n // 2 + 1)
    for i in range(n // 2 + 1):
        m = shell == i
        num = np.real(np.sum(fa[m] * np.conj(fb[m])))
        out[i] = num / np.sqrt(np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2))
    out[0] = 1.0
    return out


@pytest.mark.parametrize("n", [32, 33])
def test_fsc_equals_brute_force(n: int) -> None:
    a = _smooth_map(1, n)
    b = a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(2), dtype=a.dtype)
    np.testing.assert_allclose(
        fsc(a, b).numpy(), _brute_force_fsc(a.numpy(), b.numpy()), atol=1e-10
    )


def test_fsc_of_map_with_itself_and_scaled_copy_is_one() -> None:
    a = _smooth_map(3)
    torch.testing.assert_close(fsc(a, a), torch.ones(17, dtype=torch.float64))
    torch.testing.assert_close(fsc(a, 2.5 * a + 1.0), torch.ones(17, dtype=torch.float64))


def test_fsc_of_independent_noise_is_bounded_by_shell_size() -> None:
    n = 32
    g = torch.Generator().manual_seed(4)
    curves = np.stack(
        [
            fsc(torch.randn(n, n, n, generator=g), torch.randn(n, n, n, generator=g)).numpy()
            for _ in range(8)
        ]
    )
    f = np.fft.fftfreq(n) * n
    shell = np.round(np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2))
    counts = np.array([(shell == i).sum() for i in range(n // 2 + 1)])
    # Per shell the FSC of noise has standard deviation 1/sqrt(n) (n voxels, counting Friedel
    # mates): every shell within 4 sigma, and the RMS of FSC * sqrt(n) over 8 x 16 shells is 1.
    z = curves[:, 1:] * np.sqrt(counts[1:])
    assert np.all(np.abs(curves[:, 1:]) <= 4 / np.sqrt(counts[1:]))
    assert np.sqrt(np.mean(z**2)) == pytest.approx(1.0, abs=0.2)


def test_masked_fsc_multiplies_the_mask_in_first() -> None:
    a, b = _smooth_map(5), _smooth_map(6)
    m = (torch.rand(a.shape, generator=torch.Generator().manual_seed(7)) > 0.3).double()
    torch.testing.assert_close(fsc(a, b, mask=m), fsc(a * m, b * m))


@pytest.mark.skipif(
    shutil.which("relion_image_handler") is None,
    reason="relion_image_handler not on PATH: apt-get install -y relion",
)
def test_fsc_matches_relion_image_handler(relion: None, tmp_path: Path) -> None:
    a = _smooth_map(8).float()
    b = a + 0.02 * torch.randn(a.shape, generator=torch.Generator().manual_seed(9))
    mrcfile.write(tmp_path / "a.mrc", a.numpy(), voxel_size=1.5)
    mrcfile.write(tmp_path / "b.mrc", b.numpy(), voxel_size=1.5)
    out = subprocess.run(
        ["relion_image_handler", "--i", "a.mrc", "--fsc", "b.mrc"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (tmp_path / "fsc.star").write_text(out[out.index("data_fsc") :])
    table = starfile.read(tmp_path / "fsc.star")
    theirs = table["rlnFourierShellCorrelation"].to_numpy()
    # RELION sums the rfft half (x = 0 plane counted with both Friedel mates, the other voxels
    # once); we sum the full transform. The curves differ by much less than their noise.
    np.testing.assert_allclose(fsc(a, b).numpy()[: len(theirs)], theirs, atol=1e-2)
    np.testing.assert_allclose(
        shell_resolutions(32, 1.5).numpy()[1 : len(theirs)],
        table["rlnAngstromResolution"].to_numpy()[1:],
        rtol=1e-4,
    )


def test_resolution_interpolates_the_crossing() -> None:
    curve = torch.tensor([1.0, 0.9, 0.5, 0.1, 0.0])
    # crossing 0.143 between shells 2 (f = 2/16) and 3 (f = 3/16), 0.8925 of the way
    f = 2 / 16 + (0.5 - 0.143) / (0.5 - 0.1) / 16
    assert resolution_at(curve, box=8, angpix=2.0) == pytest.approx(1 / f)
    assert resolution_at(curve, box=8, angpix=2.0, threshold=0.5) == pytest.approx(8.0)
    assert resolution_at(torch.ones(5), box=8, angpix=2.0) == 4.0  # never crosses: Nyquist
    assert resolution_at(torch.tensor([1.0, 0.0, 0.0, 0, 0]), 8, 2.0) == 16.0
    with pytest.raises(InputError, match=r"expected \(5,\)"):
        resolution_at(torch.ones(4), box=8, angpix=2.0)


def test_shell_resolutions() -> None:
    res = shell_resolutions(64, 2.0)
    assert math.isinf(res[0]) and res[1] == 128.0 and res[-1] == 4.0
    torch.testing.assert_close(
        shell_frequencies(64, 2.0)[32], torch.tensor(0.25, dtype=torch.float64)
    )


def test_pcc_equals_numpy_corrcoef() -> None:
    a, b = _smooth_map(10), _smooth_map(10) + 0.3 * _smooth_map(11)
    assert pcc(a, b) == pytest.approx(np.corrcoef(a.flatten(), b.flatten())[0, 1], abs=1e-12)
    m = a > 0
    want = np.corrcoef(a[m].numpy(), b[m].numpy())[0, 1]
    assert pcc(a, b, mask=m) == pytest.approx(want, abs=1e-12)


def test_cesped_deltas_follow_cesped_definitions() -> None:
    signal = _smooth_map(12)
    g = torch.Generator().manual_seed(13)

    def noise() -> torch.Tensor:
        return 0.3 * signal.std() * torch.randn(signal.shape, generator=g, dtype=signal.dtype)

    gt1, gt2 = signal + noise(), signal + noise()
    # "predicted poses" blur the map: a Gaussian low-pass
    f = torch.fft.fftfreq(32, dtype=torch.float64)
    fx = torch.fft.rfftfreq(32, dtype=torch.float64)
    lp = torch.exp(-(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx**2) / 0.005)
    blurred = torch.fft.irfftn(torch.fft.rfftn(signal) * lp, s=signal.shape)
    p1, p2 = blurred + noise(), blurred + noise()
    m = cesped_deltas(p1, p2, gt1, gt2, angpix=1.0)
    np_pcc = np.corrcoef(((p1 + p2) / 2).flatten(), ((gt1 + gt2) / 2).flatten())[0, 1]
    assert m.map_vs_gt_pcc == pytest.approx(np_pcc, abs=1e-12)
    assert m.gt_pcc == pytest.approx(np.corrcoef(gt1.flatten(), gt2.flatten())[0, 1], abs=1e-12)
    assert m.delta_pcc == pytest.approx(m.map_vs_gt_pcc - m.gt_pcc)
    assert m.relative_pcc_drop == pytest.approx((m.gt_pcc - m.map_vs_gt_pcc) / m.gt_pcc)
    assert m.delta_resolution == pytest.approx(m.map_vs_gt_resolution - m.gt_resolution)
    assert m.delta_resolution > 0  # the blurred map is worse than the GT halves
    same = cesped_deltas(gt1, gt2, gt1, gt2, angpix=1.0)
    assert same.half2half_resolution == same.gt_resolution


def test_plot_fsc_writes_a_png_atomically(tmp_path: Path) -> None:
    freq = shell_frequencies(32, 1.5)
    curve = fsc(_smooth_map(14), _smooth_map(14) + 0.1 * _smooth_map(15))
    out = plot_fsc({"half maps": (freq, curve)}, tmp_path / "fsc.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["fsc.png"]
    with pytest.raises(InputError, match="differ"):
        plot_fsc({"bad": (freq, curve[:-1])}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


# ---------------------------------------------------------------------- conical FSC

AXES = torch.eye(3, dtype=torch.float64)  # x, y, z


def _brute_force_conical(a: np.ndarray, b: np.ndarray, d: np.ndarray, half: float) -> np.ndarray:
    """Full complex FFT; voxel (iz, iy, ix) has frequency (x, y, z) = (fx, fy, fz)."""
    n = a.shape[0]
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    f = np.fft.fftfreq(n) * n
    fz, fy, fx = np.meshgrid(f, f, f, indexing="ij")
    r = np.sqrt(fx**2 + fy**2 + fz**2)
    shell = np.round(r).astype(int)
    d = d / np.linalg.norm(d)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.abs(fx * d[0] + fy * d[1] + fz * d[2]) / r
    cone = cos >= math.cos(math.radians(half)) - 1e-12
    out = np.full(n // 2 + 1, np.nan)
    for i in range(1, n // 2 + 1):
        m = (shell == i) & cone
        if m.any():
            num = np.real(np.sum(fa[m] * np.conj(fb[m])))
            out[i] = num / np.sqrt(np.sum(np.abs(fa[m]) ** 2) * np.sum(np.abs(fb[m]) ** 2))
    out[0] = 1.0
    return out


@pytest.mark.parametrize("n", [16, 17])
def test_conical_fsc_equals_brute_force(n: int) -> None:
    a = _smooth_map(3, n)
    b = a + 0.05 * torch.randn(a.shape, generator=torch.Generator().manual_seed(4), dtype=a.dtype)
    dirs = torch.cat([AXES, torch.randn(4, 3, generator=torch.Generator().manual_seed(5))])
    got = conical_fsc(a, b, dirs, half_angle_deg=25.0)
    assert got.shape == (7, n // 2 + 1)
    # On even boxes the Nyquist shell holds aliased samples (+-N/2 are one sample) whose
    # direction is ambiguous: compared below it only.
    top = n // 2 if n % 2 == 0 else n // 2 + 1
    for j, d in enumerate(dirs.double().numpy()):
        expected = _brute_force_conical(a.numpy(), b.numpy(), d, 25.0)
        np.testing.assert_allclose(got[j, :top].numpy(), expected[:top], atol=1e-10, equal_nan=True)
    # A 90 degree cone is the whole sphere: the plain FSC.
    whole = conical_fsc(a, b, dirs[:2], half_angle_deg=90.0)
    np.testing.assert_allclose(whole.numpy(), fsc(a, b).expand(2, -1).numpy(), atol=1e-12)


def test_conical_fsc_of_identical_maps_is_one() -> None:
    a = _smooth_map(6, 20)
    curves = conical_fsc(a, 3.0 * a, hemisphere_directions(1), half_angle_deg=20.0)
    filled = curves[~torch.isnan(curves)]
    torch.testing.assert_close(filled, torch.ones_like(filled), rtol=0, atol=1e-12)
    assert int(torch.isnan(curves).sum()) < curves.numel() // 10  # only some low shells empty


def test_flipping_the_cone_around_x_drops_only_the_x_cones() -> None:
    # map2 = map1 with the sign of every Fourier voxel within 45 degrees of +-x flipped (a
    # real filter: the region is Friedel-symmetric). Cones of 20 degrees around x lie inside
    # that region (FSC -1 in every shell), cones around y and z outside it (FSC +1).
    n, angpix = 24, 2.0
    a = _smooth_map(7, n)
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    fx = torch.fft.rfftfreq(n, dtype=torch.float64)
    kx = fx[None, None, :].expand(n, n, n // 2 + 1)
    r = torch.sqrt(kx**2 + f[None, :, None] ** 2 + f[:, None, None] ** 2)
    flip = kx.abs() >= math.cos(math.radians(45.0)) * r
    flip[0, 0, 0] = False
    b = torch.fft.irfftn(torch.fft.rfftn(a) * torch.where(flip, -1.0, 1.0), s=(n, n, n))
    curves = conical_fsc(a, b, AXES, half_angle_deg=20.0)
    torch.testing.assert_close(curves[0, 1:], -torch.ones(n // 2, dtype=torch.float64))
    torch.testing.assert_close(curves[1:, 1:], torch.ones(2, n // 2, dtype=torch.float64))
    # The plain FSC mixes both: strictly between -1 and 1.
    plain = fsc(a, b)[1:]
    assert bool(((plain > -1 + 1e-3) & (plain < 1 - 1e-3)).all())
    res = directional_resolution(a, b, angpix, AXES, half_angle_deg=20.0)
    # x: below the threshold from shell 1 (resolution of shell 1, N * angpix); y, z: Nyquist.
    assert res.resolutions.tolist() == pytest.approx([n * angpix, 2 * angpix, 2 * angpix])
    assert res.anisotropy == pytest.approx(n / 2)
    assert res.spread_angst == pytest.approx(n * angpix - 2 * angpix)
    assert res.worst_direction.tolist() == [1.0, 0.0, 0.0]
    # Over the 24 HEALPix directions, the worst cones are the ones nearest x.
    spread = directional_resolution(a, b, angpix, half_angle_deg=20.0)
    worst = spread.directions[spread.resolutions == spread.resolutions.max()]
    assert bool((worst[:, 0].abs() > math.cos(math.radians(30.0))).all())


def test_hemisphere_directions_are_half_of_the_healpix_centres() -> None:
    for order, k in ((0, 6), (1, 24), (2, 96)):
        d = hemisphere_directions(order)
        assert d.shape == (k, 3)
        torch.testing.assert_close(
            torch.linalg.vector_norm(d, dim=-1), torch.ones(k, dtype=d.dtype)
        )
        both = torch.cat([d, -d])
        # No direction is the antipode of another: the 2k vectors are distinct.
        gaps = torch.cdist(both, both) + 10 * torch.eye(2 * k, dtype=d.dtype)
        assert float(gaps.min()) > 0.1
    with pytest.raises(InputError, match="order"):
        hemisphere_directions(-1)
