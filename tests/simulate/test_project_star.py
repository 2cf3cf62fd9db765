"""project_star against relion_project, and its star file."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryopose.errors import InputError
from cryopose.imaging.resample import window_centred
from cryopose.io.mrc import read_images, write_map
from cryopose.io.particles import read_particles
from cryopose.simulate.junk import random_blob_volume
from cryopose.simulate.particles import SimulationConfig, simulate_particles
from cryopose.simulate.project_star import output_paths, project_star

BOX = 40
ANGPIX = 2.5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, Path]:
    folder = tmp_path_factory.mktemp("poses")
    volume = random_blob_volume(BOX, 11.0, torch.Generator().manual_seed(3))
    config = SimulationConfig(n=60, seed=8, bfactor=50.0, astigmatism_max=3000.0, chunk_size=25)
    star = simulate_particles(volume, ANGPIX, folder, config, progress=False)
    write_map(folder / "map.mrc", volume, ANGPIX)
    return volume, star


def pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(1, keepdims=True)
    return np.asarray((a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1)))


@pytest.mark.parametrize("ctf", [True, False])
def test_matches_relion_project(
    relion: None, dataset: tuple[torch.Tensor, Path], ctf: bool, tmp_path: Path
) -> None:
    volume, star = dataset
    table = read_particles(star)
    out = project_star(
        volume, ANGPIX, table, ctf, tmp_path / "ours.mrcs", batch_size=16, progress=False
    )
    assert out == tmp_path / "ours.star"
    cmd = [
        "relion_project",
        "--i",
        str(star.parent / "map.mrc"),
        "--ang",
        str(star),
        "--o",
        str(tmp_path / "rel"),
        *(["--ctf"] if ctf else []),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    relion = np.asarray(mrcfile.read(tmp_path / "rel.mrcs"), dtype=np.float64)
    ours = read_images(read_particles(out).image_locations()).double().numpy()
    assert ours.shape == relion.shape == (60, BOX, BOX)
    assert pearson(ours, relion).min() >= 0.99
    # Same scale as RELION too, not only the same shape.
    assert abs(np.linalg.norm(ours) / np.linalg.norm(relion) - 1) < 0.02


def test_output_star(dataset: tuple[torch.Tensor, Path], tmp_path: Path) -> None:
    volume, star = dataset
    table = read_particles(star)
    padded = window_centred(volume, 56, ndim=3)  # the map's box, not the star's, is used
    out = project_star(padded, ANGPIX, table, False, tmp_path / "p", progress=False)
    back = read_particles(out)
    assert back.particles["rlnImageName"].iloc[-1] == "000060@p.mrcs"
    assert back.optics["rlnImageSize"].tolist() == [56]
    kept = [c for c in table.particles.columns if c != "rlnImageName"]
    assert back.particles[kept].equals(table.particles[kept])
    # Without CTF the stack holds plain projections: their integrals equal the map's
    # (projection and shifts conserve mass), up to the few % by which the projector's sinc^-2
    # gridding correction (as RELION's) raises off-centre density.
    images = read_images(back.image_locations()).double()
    assert images.shape == (60, 56, 56)
    total = float(volume.double().sum())
    assert torch.allclose(
        images.sum((-1, -2)), torch.full((60,), total, dtype=torch.float64), rtol=3e-2
    )


def test_pixel_size_mismatch(dataset: tuple[torch.Tensor, Path], tmp_path: Path) -> None:
    volume, star = dataset
    table = read_particles(star)
    project_star(volume, ANGPIX * (1 + 5e-4), table, False, tmp_path / "ok", progress=False)
    with pytest.raises(InputError, match=r"2\.5 A does not match the map's 2\.6 A") as err:
        project_star(volume, 2.6, table, False, tmp_path / "bad", progress=False)
    assert err.value.path == star
    assert not (tmp_path / "bad.mrcs").exists()


def test_output_paths() -> None:
    assert output_paths("a/proj") == (Path("a/proj.mrcs"), Path("a/proj.star"))
    assert output_paths("a/proj.mrcs") == (Path("a/proj.mrcs"), Path("a/proj.star"))
