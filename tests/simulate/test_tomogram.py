"""SHREC-style tomogram simulation: files, ground-truth consistency, conventions, noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import affine_transform
from scipy.spatial.transform import Rotation

from cryopose.errors import InputError
from cryopose.evaluation.shrec import SHREC_CLASS_MASS_KDA, evaluate_picks, load_truth
from cryopose.io.mrc import read_map, write_map
from cryopose.io.picks import read_picks
from cryopose.io.structure import structure_summary
from cryopose.simulate.density import density_from_file
from cryopose.simulate.tomogram import (
    POTENTIAL_PER_KDA,
    TomogramConfig,
    euler_zxz_to_matrix,
    load_class_density,
    simulate_tilt_series,
    simulate_tomogram,
)

CLASSES = ["1s3x", "3qm1", "1bxn"]
DATA = Path(__file__).resolve().parents[1] / "data"
FILES = ("grandmodel.mrc", "class_mask.mrc", "occupancy_mask.mrc", "reconstruction.mrc")


@pytest.fixture(scope="module")
def tomo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small tomogram without ice noise (so the grandmodel is a function of the particles)."""
    return simulate_tomogram(
        tmp_path_factory.mktemp("tomo") / "model_0",
        size=64,
        thickness=32,
        seed=3,
        structures_dir=DATA / "structures",
        classes=CLASSES,
        n_particles=45,
        progress=False,
        n_fiducials=2,
        n_vesicles=1,
        ice_noise=0.0,
    )


def test_files_and_shapes(tomo: Path) -> None:
    for name in (*FILES, "particle_locations.txt", "simulation.json"):
        assert (tomo / name).is_file(), name
    shapes = {name: tuple(read_map(tomo / name)[0].shape) for name in FILES}
    assert set(shapes.values()) == {(32, 64, 64)}
    assert read_map(tomo / "grandmodel.mrc")[1] == 10.0
    record = json.loads((tomo / "simulation.json").read_text())
    assert record["class_index"] == {
        "1s3x": 1, "3qm1": 2, "1bxn": 3, "fiducial": 4, "vesicle": 5,
    }  # fmt: skip
    assert record["n_objects"] == len(read_picks(tomo / "particle_locations.txt"))


def test_truth_is_consistent(tomo: Path) -> None:
    """Every line's label sits at its centre; class mask = class of the occupying line."""
    truth = load_truth(tomo)
    n = len(truth.class_ids)
    counts = {c: int((truth.class_ids == c).sum()) for c in (*CLASSES, "fiducial", "vesicle")}
    assert counts["vesicle"] == 1 and counts["fiducial"] == 2
    assert all(counts[c] >= 5 for c in CLASSES), counts
    xyz = truth.coords.astype(np.int64)
    labels = truth.occupancy[xyz[:, 2], xyz[:, 1], xyz[:, 0]]
    np.testing.assert_array_equal(labels, np.arange(1, n + 1))
    # Every label is used; a particle's voxels are one label only (disjoint by construction).
    assert set(np.unique(truth.occupancy)) == set(range(n + 1))
    index = json.loads((tomo / "simulation.json").read_text())["class_index"]
    lut = np.array([0] + [index[c] for c in truth.class_ids])
    class_mask = read_map(tomo / "class_mask.mrc")[0].numpy().astype(np.int64)
    np.testing.assert_array_equal(class_mask > 0, truth.occupancy > 0)
    np.testing.assert_array_equal(class_mask, lut[truth.occupancy])


def test_true_locations_score_f1_one(tomo: Path) -> None:
    truth = load_truth(tomo)
    result = evaluate_picks(read_picks(tomo / "particle_locations.txt"), truth)
    assert result.f1 == 1.0 and result.fp == 0 and result.fn == 0
    assert result.tp == sum(c in CLASSES for c in truth.class_ids)
    assert all(v == 1.0 for v in result.per_class_f1.values())


def _scipy_rotate(density: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Independent reference: out(u) = V(R^T u), R from scipy's intrinsic ZXZ, in (z, y, x)."""
    rot = Rotation.from_euler("ZXZ", angles, degrees=True).as_matrix()
    rev = np.eye(3)[::-1]  # (x, y, z) <-> (z, y, x)
    matrix = rev @ rot.T @ rev
    c = np.full(3, density.shape[0] // 2, dtype=np.float64)
    out: np.ndarray = affine_transform(
        density, matrix, offset=c - matrix @ c, order=1, mode="constant"
    )
    return out


def test_angles_reproduce_grandmodel(tomo: Path, data_dir: Path) -> None:
    """Rotating the class density by the written ZXZ angles and pasting it at x y z gives the
    grandmodel in the particle's voxels; the transposed rotation does not."""
    truth = load_truth(tomo)
    picks = read_picks(tomo / "particle_locations.txt")
    assert picks.angles is not None
    grand = read_map(tomo / "grandmodel.mrc")[0].numpy()
    config = TomogramConfig()
    checked = 0
    for name in ("3qm1", "1s3x"):
        dens = load_class_density(data_dir / "structures" / f"{name}.pdb.gz").density.numpy()
        b = dens.shape[0]
        for k in np.flatnonzero(picks.class_ids == name)[:3]:
            x, y, z = picks.coords[k].astype(int)
            box = grand[z - b // 2 : z - b // 2 + b, y - b // 2 : y - b // 2 + b, x - b // 2 :]
            box = box[:, :, :b]
            own = truth.occupancy[
                z - b // 2 : z - b // 2 + b,
                y - b // 2 : y - b // 2 + b,
                x - b // 2 : x - b // 2 + b,
            ] == (k + 1)
            results = []
            for angles in (picks.angles[k], -picks.angles[k][::-1]):  # R, then R^T
                ref = _scipy_rotate(dens, angles)
                fill = np.clip(ref / 6.0, 0.0, 1.0)
                expected = ref + (1.0 - fill) * config.ice_potential
                results.append(np.corrcoef(box[own], expected[own])[0, 1])
            assert results[0] > 0.98, (name, k, results)
            assert results[1] < results[0] - 0.05, (name, k, results)
            checked += 1
    assert checked == 6


def test_euler_matrix_matches_scipy() -> None:
    angles = torch.tensor([[10.0, 70.0, -140.0], [200.0, 5.0, 33.0]], dtype=torch.float64)
    ref = Rotation.from_euler("ZXZ", angles.numpy(), degrees=True).as_matrix()
    np.testing.assert_allclose(euler_zxz_to_matrix(angles).numpy(), ref, atol=1e-12)


def test_reproducible_from_seed(tmp_path: Path, data_dir: Path) -> None:
    def run(seed: int, name: str) -> Path:
        return simulate_tomogram(
            tmp_path / name, size=32, thickness=16, seed=seed, n_tilts=9,
            structures_dir=data_dir / "structures", classes=["1s3x", "3qm1"],
            n_particles=10, progress=False,
        )  # fmt: skip

    a, b, c = run(5, "a"), run(5, "b"), run(6, "c")
    # Map data, not bytes: the MRC header holds a time-stamped label.
    for name in FILES:
        assert torch.equal(read_map(a / name)[0], read_map(b / name)[0]), name
    assert (a / "particle_locations.txt").read_bytes() == (
        b / "particle_locations.txt"
    ).read_bytes()
    assert not torch.equal(read_map(a / FILES[3])[0], read_map(c / FILES[3])[0])
    assert (a / "particle_locations.txt").read_text() != (c / "particle_locations.txt").read_text()


@pytest.mark.parametrize("snr", [0.004, 0.5])
def test_tilt_series_snr(snr: float) -> None:
    """var(noiseless) / var(noise) equals the target SNR at every tilt (within 10 %)."""
    gen = torch.Generator().manual_seed(0)
    vol = torch.zeros(16, 48, 48)
    vol[6:10, 10:20, 12:30] = 3.0
    vol[4:12, 30:36, 30:40] = 2.0
    config = TomogramConfig(size=48, thickness=16, snr=snr, n_tilts=7, ice_potential=0.0)
    tilts = simulate_tilt_series(vol, config, gen)
    noise = tilts.images - tilts.noiseless
    measured = tilts.noiseless.var(dim=(1, 2)) / noise.var(dim=(1, 2))
    torch.testing.assert_close(measured, torch.full((7,), snr), rtol=0.1, atol=0.0)
    assert tilts.images.shape == (7, 48, 48)


def test_map_class_scaled_to_mass(tmp_path: Path, data_dir: Path) -> None:
    """A class given as a map is cropped around its centre and scaled to its SHREC mass."""
    dens = density_from_file(data_dir / "structures" / "3qm1.pdb.gz", 5.0, box=48)
    write_map(tmp_path / "3qm1_5A_map.mrc", dens, 5.0)
    loaded = load_class_density(tmp_path / "3qm1_5A_map.mrc")
    assert loaded.name == "3qm1"
    vol = loaded.density
    expected = POTENTIAL_PER_KDA * SHREC_CLASS_MASS_KDA["3qm1"]
    assert abs(float(vol.sum()) / expected - 1.0) < 1e-4
    grid = torch.arange(vol.shape[0], dtype=torch.float64)
    com = [
        float((vol.sum(dims).double() * grid).sum() / vol.sum())
        for dims in ((1, 2), (0, 2), (0, 1))
    ]
    assert max(abs(c - vol.shape[0] // 2) for c in com) < 1.0


def test_potential_per_kda_constant(data_dir: Path) -> None:
    """The potential integral per kDa holds for a model it was not measured on (1s3x)."""
    path = data_dir / "structures" / "1s3x.pdb.gz"
    dens = density_from_file(path, 10.0)
    mass = structure_summary(path)["mass_kda"]
    assert abs(float(dens.sum()) / mass / POTENTIAL_PER_KDA - 1.0) < 0.02


def test_deposited_assembly_is_the_asymmetric_unit(data_dir: Path) -> None:
    """``assembly="deposited"`` places the entry's chains (SHREC's mass table), the default
    its biological assembly 1: 3qm1's asymmetric unit is one 31 kDa chain, assembly 1 a dimer.
    """
    path = data_dir / "structures" / "3qm1.pdb.gz"
    deposited = float(load_class_density(path, assembly="deposited").density.sum())
    biological = float(load_class_density(path).density.sum())
    chains_kda = structure_summary(path)["mass_kda"]
    assert abs(deposited / POTENTIAL_PER_KDA / chains_kda - 1.0) < 0.02
    # RCSB's weight also counts residues without coordinates and ligands: 12 % more here.
    assert abs(deposited / POTENTIAL_PER_KDA / SHREC_CLASS_MASS_KDA["3qm1"] - 1.0) < 0.15
    assert 1.6 < biological / deposited < 2.2
    # A model without an assembly record, and a map, are the same either way.
    one = data_dir / "structures" / "1s3x.pdb.gz"
    assert torch.equal(
        load_class_density(one, assembly="deposited").density, load_class_density(one).density
    )
    with pytest.raises(ValueError, match="assembly"):
        load_class_density(path, assembly="assembly1")


def test_simulation_records_assembly(tmp_path: Path) -> None:
    """The choice is saved in simulation.json; an unknown one is refused before any work."""
    out = simulate_tomogram(
        tmp_path / "t",
        size=32,
        thickness=16,
        seed=1,
        structures_dir=DATA / "structures",
        classes=["3qm1"],
        n_particles=3,
        progress=False,
        n_fiducials=0,
        n_vesicles=0,
        assembly="deposited",
    )
    config = json.loads((out / "simulation.json").read_text())["config"]
    assert config["assembly"] == "deposited"
    with pytest.raises(InputError, match="assembly"):
        simulate_tomogram(tmp_path / "u", size=32, assembly="dimer", progress=False)
    assert not (tmp_path / "u").exists()
