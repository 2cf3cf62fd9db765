"""Direct Fourier reconstruction checked against relion_project / relion_reconstruct."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryopose.errors import InputError
from cryopose.evaluation.fsc import fsc, pcc
from cryopose.geometry.euler import euler_to_matrix
from cryopose.imaging.reconstruct import FourierReconstructor, reconstruct, reconstruct_halves

BOX = 64
ANGPIX = 2.0
N_PARTICLES = 400
# Shell index of 0.8 Nyquist: the FSC against RELION must stay >= 0.9 up to here.
SHELL_08 = int(0.8 * BOX / 2)


def _blob_map(rng: np.random.Generator, symmetric_c4: bool = False) -> np.ndarray:
    """Gaussian blobs (sigma 1-3 px, so there is signal up to Nyquist) in a 64^3 box."""
    g = np.arange(BOX) - BOX // 2
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    vol = np.zeros((BOX,) * 3)
    for _ in range(6 if symmetric_c4 else 14):
        c, s, a = rng.uniform(-13, 13, 3), rng.uniform(1.0, 3.0), rng.uniform(0.5, 1.5)
        copies = [c]
        if symmetric_c4:  # four copies rotated by 90 degrees about z
            copies = [
                np.array([c[0] * ct - c[1] * st, c[0] * st + c[1] * ct, c[2]])
                for ct, st in ((1, 0), (0, 1), (-1, 0), (0, -1))
            ]
        for p in copies:
            vol += a * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * s * s))
    return vol.astype(np.float32)


def _poses(
    rng: np.random.Generator, n: int, rot_range: tuple[float, float], max_tilt: float = 180.0
) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "rlnAngleRot": rng.uniform(*rot_range, n),
            "rlnAngleTilt": np.degrees(np.arccos(rng.uniform(np.cos(np.radians(max_tilt)), 1, n))),
            "rlnAnglePsi": rng.uniform(-180, 180, n),
            # both signs, several pixels
            "rlnOriginXAngst": rng.uniform(-7, 7, n),
            "rlnOriginYAngst": rng.uniform(-7, 7, n),
            "rlnDefocusU": rng.uniform(8000, 20000, n),
            "rlnDefocusAngle": rng.uniform(0, 180, n),
            "rlnOpticsGroup": 1,
            "rlnRandomSubset": np.arange(n) % 2 + 1,
        }
    )
    df["rlnDefocusV"] = df["rlnDefocusU"] - rng.uniform(0, 1000, n)
    return df


OPTICS = pd.DataFrame(
    {
        "rlnOpticsGroup": [1],
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnImagePixelSize": [ANGPIX],
        "rlnImageSize": [BOX],
        "rlnImageDimensionality": [2],
        "rlnVoltage": [300.0],
        "rlnSphericalAberration": [2.7],
        "rlnAmplitudeContrast": [0.1],
    }
)


def _run(args: list[str], cwd: Path) -> None:
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


def relion_ctf(df: pd.DataFrame) -> torch.Tensor:
    """RELION's CTF (ctf.h: -sin(K1 dz u^2 + K2 u^4 - K3), dz < 0 underfocus), rfft2 layout."""
    volt = OPTICS.rlnVoltage[0] * 1e3
    cs = OPTICS.rlnSphericalAberration[0] * 1e7
    q0 = OPTICS.rlnAmplitudeContrast[0]
    lam = 12.2643247 / np.sqrt(volt * (1 + volt * 0.978466e-6))
    ky = np.fft.fftfreq(BOX)[:, None] / ANGPIX
    kx = np.fft.rfftfreq(BOX)[None, :] / ANGPIX
    u2 = kx**2 + ky**2
    du = df.rlnDefocusU.to_numpy()[:, None, None]
    dv = df.rlnDefocusV.to_numpy()[:, None, None]
    az = np.radians(df.rlnDefocusAngle.to_numpy()[:, None, None])
    dz = -(0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2 * (np.arctan2(ky, kx) - az)))
    arg = (
        np.pi * lam * dz * u2
        + np.pi / 2 * cs * lam**3 * u2 * u2
        - np.arctan(q0 / np.sqrt(1 - q0 * q0))
    )
    return torch.from_numpy(-np.sin(arg))


@dataclass
class Particles:
    images: torch.Tensor
    rotations: torch.Tensor
    shifts: torch.Tensor
    ctf: torch.Tensor | None
    subsets: torch.Tensor
    relion_map: torch.Tensor
    source: torch.Tensor
    folder: Path
    name: str


def _simulate(
    folder: Path, name: str, vol: np.ndarray, df: pd.DataFrame, ctf: bool, sym: str = "C1"
) -> Particles:
    """relion_project the map at the poses, then relion_reconstruct the particles."""
    mrcfile.write(folder / f"{name}_map.mrc", vol, voxel_size=ANGPIX, overwrite=True)
    starfile.write({"optics": OPTICS, "particles": df}, folder / f"{name}_poses.star")
    flag = ["--ctf"] if ctf else []
    _run(
        [
            "relion_project",
            "--i",
            f"{name}_map.mrc",
            "--ang",
            f"{name}_poses.star",
            "--o",
            f"{name}_proj",
            "--angpix",
            str(ANGPIX),
            *flag,
        ],
        folder,
    )
    _run(
        [
            "relion_reconstruct",
            "--i",
            f"{name}_proj.star",
            "--o",
            f"{name}_rel.mrc",
            "--sym",
            sym,
            "--j",
            "2",
            *flag,
        ],
        folder,
    )
    parts = starfile.read(folder / f"{name}_proj.star")["particles"]
    angles = torch.tensor(parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    return Particles(
        images=torch.from_numpy(mrcfile.read(folder / f"{name}_proj.mrcs").astype(np.float32)),
        rotations=euler_to_matrix(angles),
        shifts=torch.tensor(parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy()),
        ctf=relion_ctf(parts) if ctf else None,
        subsets=torch.tensor(parts["rlnRandomSubset"].to_numpy()),
        relion_map=torch.from_numpy(mrcfile.read(folder / f"{name}_rel.mrc").astype(np.float32)),
        source=torch.from_numpy(vol),
        folder=folder,
        name=name,
    )


def _need_relion() -> None:
    for tool in ("relion_project", "relion_reconstruct"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not on PATH: install RELION with 'apt-get install -y relion'")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Particles:
    _need_relion()
    rng = np.random.default_rng(7)
    vol = _blob_map(rng)
    return _simulate(
        tmp_path_factory.mktemp("plain"),
        "plain",
        vol,
        _poses(rng, N_PARTICLES, (-180, 180)),
        ctf=False,
    )


@pytest.fixture(scope="module")
def with_ctf(tmp_path_factory: pytest.TempPathFactory) -> Particles:
    _need_relion()
    rng = np.random.default_rng(8)
    vol = _blob_map(rng)
    return _simulate(
        tmp_path_factory.mktemp("ctf"), "ctf", vol, _poses(rng, N_PARTICLES, (-180, 180)), ctf=True
    )


def _assert_like_relion(mine: torch.Tensor, p: Particles) -> None:
    assert pcc(mine, p.relion_map) >= 0.98
    curve = fsc(mine, p.relion_map)
    assert curve[1 : SHELL_08 + 1].min() >= 0.9, curve
    # Both agree with the map the particles were projected from, at the same scale.
    assert pcc(mine, p.source) >= 0.98
    assert pcc(p.relion_map, p.source) >= 0.98
    scale = float((mine * p.source).sum() / (p.source * p.source).sum())
    assert scale == pytest.approx(1.0, abs=0.05)


def test_matches_relion_reconstruct(relion: None, plain: Particles) -> None:
    mine = reconstruct(plain.images, plain.rotations, plain.shifts, angpix=ANGPIX, batch_size=200)
    assert mine.shape == (BOX, BOX, BOX) and mine.dtype == torch.float32
    _assert_like_relion(mine, plain)


def test_shift_sign_matters(relion: None, plain: Particles) -> None:
    # Origins of both signs are in the data: using -origin must ruin the map.
    wrong = reconstruct(plain.images, plain.rotations, -plain.shifts, angpix=ANGPIX)
    assert pcc(wrong, plain.source) < 0.8


def test_matches_relion_reconstruct_with_ctf(relion: None, with_ctf: Particles) -> None:
    mine = reconstruct(
        with_ctf.images,
        with_ctf.rotations,
        with_ctf.shifts,
        with_ctf.ctf,
        angpix=ANGPIX,
        batch_size=200,
    )
    _assert_like_relion(mine, with_ctf)


def test_symmetry_from_one_asymmetric_unit(relion: None, tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    vol = _blob_map(rng, symmetric_c4=True)
    # C4 about z: poses A g with g = Rz(90 k) add 90 k to rot, so rot in [0, 90) with tilt
    # in [0, 90] is one asymmetric unit (of a hemisphere, enough by Friedel symmetry).
    p = _simulate(tmp_path, "c4", vol, _poses(rng, 200, (0, 90), 90.0), ctf=False, sym="C4")
    sym = reconstruct(p.images, p.rotations, p.shifts, symmetry="C4", angpix=ANGPIX)
    _assert_like_relion(sym, p)
    asym = reconstruct(p.images, p.rotations, p.shifts, angpix=ANGPIX)
    # Without symmetry the views cover 1/4 of the directions: a missing cone shows at high
    # resolution (and the poses A g, not g A, are the right copies).
    assert fsc(asym, p.source)[10:SHELL_08].mean() < fsc(sym, p.source)[10:SHELL_08].mean() - 0.05


@pytest.mark.parametrize("sym", ["O", "D7"])
def test_symmetrised_accumulators_match_relion(relion: None, plain: Particles, sym: str) -> None:
    # The same asymmetric particles, symmetrised after insertion (O: exact axis permutations;
    # D7: trilinear resampling) must give RELION's symmetrised map.
    out = f"{plain.name}_{sym}.mrc"
    _run(
        ["relion_reconstruct", "--i", f"{plain.name}_proj.star", "--o", out, "--sym", sym],
        plain.folder,
    )
    theirs = torch.from_numpy(mrcfile.read(plain.folder / out).astype(np.float32))
    mine = reconstruct(plain.images, plain.rotations, plain.shifts, symmetry=sym, angpix=ANGPIX)
    assert pcc(mine, theirs) >= 0.98
    assert fsc(mine, theirs)[1 : SHELL_08 + 1].min() >= 0.9
    # Symmetrising is not a no-op here: the map differs from the asymmetric reconstruction.
    assert pcc(mine, plain.relion_map) < 0.9


def test_merge_and_resume_equal_one_pass(relion: None, plain: Particles, tmp_path: Path) -> None:
    imgs, rots, sh = plain.images[:200], plain.rotations[:200], plain.shifts[:200]
    # float64 accumulators: sums in another order must agree to rounding.
    f64 = torch.float64
    whole = FourierReconstructor(BOX, ANGPIX, dtype=f64)
    whole.insert(imgs, rots, sh)
    first, second = (
        FourierReconstructor(BOX, ANGPIX, dtype=f64),
        FourierReconstructor(BOX, ANGPIX, dtype=f64),
    )
    first.insert(imgs[:70], rots[:70], sh[:70])
    second.insert(imgs[70:], rots[70:], sh[70:])
    first.merge(second)
    assert first.n_inserted == 200
    torch.testing.assert_close(first.data, whole.data, rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(first.weight, whole.weight, rtol=1e-12, atol=1e-9)
    # Resume: save after 70 particles, reload in a fresh object, finish the stream.
    part = FourierReconstructor(BOX, ANGPIX, dtype=f64)
    part.insert(imgs[:70], rots[:70], sh[:70])
    torch.save(part.state_dict(), tmp_path / "acc.pt")
    resumed = FourierReconstructor(BOX, ANGPIX, dtype=f64)
    resumed.load_state_dict(torch.load(tmp_path / "acc.pt"))
    resumed.insert(imgs[70:], rots[70:], sh[70:])
    torch.testing.assert_close(resumed.finalize(), whole.finalize(), rtol=0, atol=1e-5)


def test_halves_and_tau2_regularisation(relion: None, with_ctf: Particles) -> None:
    p = with_ctf
    gen = torch.Generator().manual_seed(0)
    noisy = p.images + 3.0 * p.images.std() * torch.randn(p.images.shape, generator=gen)
    args = (noisy, p.rotations, p.subsets, p.shifts, p.ctf)
    h1, h2, full, curve = reconstruct_halves(*args, angpix=ANGPIX)
    torch.testing.assert_close(curve, fsc(h1, h2))
    whole = reconstruct(noisy, p.rotations, p.shifts, p.ctf, angpix=ANGPIX)
    torch.testing.assert_close(full, whole, rtol=0, atol=1e-4)
    # The halves are independent: their FSC falls with resolution, full beats each half.
    assert curve[2] > 0.9 and curve[-3:].mean() < 0.5
    assert pcc(full, p.source) > max(pcc(h1, p.source), pcc(h2, p.source))
    # RELION's FSC-derived Wiener term lowers the noise: closer to the true map.
    r1, _, rfull, _ = reconstruct_halves(*args, angpix=ANGPIX, regularisation="tau2")
    assert pcc(rfull, p.source) > pcc(full, p.source) + 0.01
    assert pcc(r1, p.source) > pcc(h1, p.source)


def test_wiener_constant_zero_is_plain_division(relion: None, plain: Particles) -> None:
    rec = FourierReconstructor(BOX, ANGPIX)
    rec.insert(plain.images[:100], plain.rotations[:100], plain.shifts[:100])
    torch.testing.assert_close(rec.finalize("wiener", 0.0), rec.finalize("relion"))
    damped = rec.finalize("wiener", 1e6)
    assert float(damped.std()) < 0.5 * float(rec.finalize().std())


def test_bad_inputs_name_what_was_expected() -> None:
    rec = FourierReconstructor(16, 1.0)
    with pytest.raises(InputError, match=r"expected images \(B,16,16\)"):
        rec.insert(torch.zeros(2, 16, 15), torch.eye(3).expand(2, 3, 3))
    with pytest.raises(InputError, match=r"expected rotations"):
        rec.insert(torch.zeros(2, 16, 16), torch.eye(3).expand(3, 3, 3))
    with pytest.raises(InputError, match=r"expected ctf"):
        rec.insert(torch.zeros(2, 16, 16), torch.eye(3).expand(2, 3, 3), ctf=torch.ones(2, 16, 16))
    with pytest.raises(InputError, match="needs fsc_curve"):
        rec.finalize("tau2")
    with pytest.raises(InputError, match="accumulators differ"):
        rec.merge(FourierReconstructor(32, 1.0))
