"""Simulated particle datasets: files, reproducibility, SNR, junk, and RELION reading them."""

from __future__ import annotations

import hashlib
import io
import json
import math
import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryopose.errors import InputError
from cryopose.imaging.masks import circular_mask
from cryopose.io.mrc import read_images, read_map, write_map
from cryopose.io.particles import read_particles
from cryopose.simulate.density import density_from_file
from cryopose.simulate.junk import random_blob_volume
from cryopose.simulate.particles import (
    SimulationConfig,
    load_config,
    simulate_from_structure,
    simulate_particles,
)

BOX = 32
ANGPIX = 3.0


@pytest.fixture(scope="module")
def volume() -> torch.Tensor:
    return random_blob_volume(BOX, 9.0, torch.Generator().manual_seed(11), n_blobs=10)


def simulate(volume: torch.Tensor, folder: Path, **kw: object) -> Path:
    defaults: dict[str, object] = {"n": 120, "chunk_size": 50, "seed": 1}
    return simulate_particles(
        volume, ANGPIX, folder, SimulationConfig(**(defaults | kw)), progress=False
    )


def images_of(star: Path) -> torch.Tensor:
    return read_images(read_particles(star).image_locations()).double()


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_files_and_columns(volume: torch.Tensor, tmp_path: Path) -> None:
    star = simulate(volume, tmp_path, junk_fraction=0.1)
    assert star == tmp_path / "particles.star"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "particles.star",
        "particles_000.mrcs",
        "particles_001.mrcs",
        "particles_002.mrcs",
        "simulation.json",
    ]
    with mrcfile.open(tmp_path / "particles_002.mrcs") as m:
        assert m.data.shape == (20, BOX, BOX) and m.data.dtype == np.float32
        assert m.header.ispg == 0 and math.isclose(float(m.voxel_size.x), ANGPIX)
        assert math.isclose(float(m.header.dmean), float(m.data.mean()), rel_tol=1e-4, abs_tol=1e-4)
    assert mrcfile.validate(str(tmp_path / "particles_000.mrcs"), print_file=io.StringIO())
    table = read_particles(star)
    assert list(table.optics.columns) == [
        "rlnOpticsGroup",
        "rlnOpticsGroupName",
        "rlnImagePixelSize",
        "rlnImageSize",
        "rlnVoltage",
        "rlnSphericalAberration",
        "rlnAmplitudeContrast",
        "rlnImageDimensionality",
    ]
    assert table.optics.iloc[0]["rlnImageSize"] == BOX
    p = table.particles
    for column in (
        "rlnAngleRot",
        "rlnAngleTilt",
        "rlnAnglePsi",
        "rlnOriginXAngst",
        "rlnOriginYAngst",
        "rlnDefocusU",
        "rlnDefocusV",
        "rlnDefocusAngle",
        "rlnPhaseShift",
        "rlnCtfBfactor",
        "rlnOpticsGroup",
        "rlnRandomSubset",
        "rlnMicrographName",
        "cryoposeIsJunk",
    ):
        assert column in p.columns, column
    assert p["rlnImageName"].iloc[0] == "000001@particles_000.mrcs"
    assert p["rlnImageName"].iloc[119] == "000020@particles_002.mrcs"
    assert (p["rlnDefocusU"] >= p["rlnDefocusV"]).all()
    mean_df = (p["rlnDefocusU"] + p["rlnDefocusV"]) / 2
    assert mean_df.between(5000, 25000).all()
    assert ((p["rlnDefocusU"] - p["rlnDefocusV"]) <= 1000).all()
    assert p[["rlnOriginXAngst", "rlnOriginYAngst"]].abs().max().max() <= 10.0
    # One fake micrograph per 100 particles, each with one CTF.
    assert p["rlnMicrographName"].nunique() == 2
    assert (p.groupby("rlnMicrographName")["rlnDefocusU"].nunique() == 1).all()
    config = load_config(tmp_path / "simulation.json")
    assert config == SimulationConfig(n=120, chunk_size=50, seed=1, junk_fraction=0.1)


def test_same_seed_same_bytes(volume: torch.Tensor, tmp_path: Path) -> None:
    a, b, c = (
        simulate(volume, tmp_path / name, junk_fraction=0.2, seed=seed, n=60)
        for name, seed in (("a", 4), ("b", 4), ("c", 5))
    )
    da, db, dc = digests(a.parent), digests(b.parent), digests(c.parent)
    assert da == db
    for name in ("particles.star", "particles_000.mrcs", "particles_001.mrcs"):
        assert da[name] != dc[name]


def test_snr_measured(volume: torch.Tensor, tmp_path: Path) -> None:
    snr = 0.1
    noisy = images_of(simulate(volume, tmp_path / "noisy", snr=snr, n=200))
    clean = images_of(simulate(volume, tmp_path / "clean", snr=snr, n=200, noise=False))
    noise = noisy - clean
    derived = json.loads((tmp_path / "noisy" / "simulation.json").read_text())["derived"]
    mask = circular_mask(BOX, derived["particle_radius_px"]).bool()
    signal_var = clean[:, mask].var(dim=1, correction=0).mean()
    measured = float(signal_var / noise.var())
    assert abs(measured / snr - 1) < 0.1
    assert abs(float(noise.std()) / derived["noise_sigma"] - 1) < 0.02
    # White: no correlation between neighbouring pixels.
    lag = (noise[:, :, 1:] * noise[:, :, :-1]).mean() / noise.var()
    assert abs(float(lag)) < 0.02


def test_half_sets_and_junk(volume: torch.Tensor, tmp_path: Path) -> None:
    n, fraction = 101, 0.3
    star = simulate(volume, tmp_path, n=n, junk_fraction=fraction, snr=0.5, noise=False)
    p = read_particles(star).particles
    counts = p["rlnRandomSubset"].value_counts()
    assert counts[1] == 51 and counts[2] == 50
    junk = p["cryoposeIsJunk"] == 1
    assert junk.sum() == round(fraction * n)
    assert (p.loc[junk, "cryoposeJunkKind"] != "none").all()
    assert (p.loc[~junk, "cryoposeJunkKind"] == "none").all()
    kinds = p.loc[junk, "cryoposeJunkKind"].value_counts()
    assert set(kinds.index) == {"empty", "contaminant", "off_centre", "overlap", "other_protein"}
    assert kinds.max() - kinds.min() <= 1
    # Junk has the particles' mean signal variance: not an intensity outlier.
    derived = json.loads((tmp_path / "simulation.json").read_text())["derived"]
    images = images_of(star)
    mask = circular_mask(BOX, derived["particle_radius_px"]).bool()
    var = images[:, mask].var(dim=1, correction=0)
    jv = var[torch.from_numpy(junk.to_numpy())]
    assert torch.allclose(jv, torch.full_like(jv, derived["signal_variance"]), rtol=1e-4)


def test_preferred_orientation_in_star(volume: torch.Tensor, tmp_path: Path) -> None:
    star = simulate(
        volume, tmp_path, n=300, pose_distribution="top", pose_concentration=50.0, snr=None
    )
    tilt = read_particles(star).particles["rlnAngleTilt"].to_numpy()
    # Within 25 degrees of the top view: uniform poses put (1 - cos 25) / 2 = 4.7% there,
    # vMF with kappa = 50 puts 1 - exp(-50 (1 - cos 25)) = 99.1%.
    assert (tilt < 25).mean() > 0.97


def test_bad_config(volume: torch.Tensor, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="snr"):
        simulate(volume, tmp_path, snr=-1.0)
    with pytest.raises(InputError, match="junk_fraction"):
        simulate(volume, tmp_path, junk_fraction=1.5)
    with pytest.raises(InputError):
        simulate(volume, tmp_path, symmetry="X3")


def test_from_structure(data_dir: Path, tmp_path: Path) -> None:
    config = SimulationConfig(n=8, snr=None, ctf=False, shift_sigma_angst=0.0)
    star = simulate_from_structure(
        data_dir / "structures" / "1s3x.pdb.gz", 4.0, 48, tmp_path, config, resolution=8.0
    )
    truth, apix = read_map(tmp_path / "ground_truth.mrc")
    assert apix == 4.0
    expected = density_from_file(data_dir / "structures" / "1s3x.pdb.gz", 4.0, 48, 8.0)
    assert torch.equal(truth, expected)
    table = read_particles(star)
    assert "rlnDefocusU" not in table.particles.columns
    # Without CTF, noise and shifts, every image integrates to the map's integral (to 2%: the
    # projector's gridding correction slightly inflates density near the box edge).
    sums = images_of(star).sum((-1, -2))
    assert torch.allclose(sums, torch.full_like(sums, float(truth.double().sum())), rtol=2e-2)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def test_images_match_relion_project(relion: None, volume: torch.Tensor, tmp_path: Path) -> None:
    star = simulate(volume, tmp_path, n=40, snr=None)
    write_map(tmp_path / "map.mrc", volume, ANGPIX)
    subprocess.run(
        ["relion_project", "--i", "map.mrc", "--ang", "particles.star", "--o", "rel", "--ctf"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    relion = np.asarray(mrcfile.read(tmp_path / "rel.mrcs"), dtype=np.float64)
    ours = images_of(star).numpy()
    assert min(correlation(r, o) for r, o in zip(relion, ours, strict=True)) > 0.99


def test_relion_reconstruct_reads_the_star(
    relion: None, volume: torch.Tensor, tmp_path: Path
) -> None:
    simulate(volume, tmp_path, n=300, snr=None, chunk_size=128)
    subprocess.run(
        ["relion_reconstruct", "--i", "particles.star", "--o", "rec.mrc", "--ctf"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    rec = np.asarray(mrcfile.read(tmp_path / "rec.mrc"), dtype=np.float64)
    assert correlation(rec, volume.double().numpy()) > 0.9
