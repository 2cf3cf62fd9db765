"""ParticlesDataset: items, labels, half sets and DataLoader workers, on real and simulated data."""

from __future__ import annotations

import math
import shutil
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cryopose.data.augment import AugmentConfig, Augmenter
from cryopose.data.dataset import ParticleItem, ParticlesDataset, collate
from cryopose.data.preprocess import PreprocessConfig
from cryopose.errors import InputError
from cryopose.imaging.ctf import ctf_2d
from cryopose.imaging.projection import Projector
from cryopose.io.particles import read_particles

ANGPIX_REAL = 2.806


def relion_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """DESIGN.md's RELION Euler matrix, written out independently."""
    a, b, g = (math.radians(v) for v in (rot, tilt, psi))
    ca, sa, cb, sb, cg, sg = (
        math.cos(a),
        math.sin(a),
        math.cos(b),
        math.sin(b),
        math.cos(g),
        math.sin(g),
    )
    return np.array(
        [
            [cg * cb * ca - sg * sa, cg * cb * sa + sg * ca, -cg * sb],
            [-sg * cb * ca - cg * sa, -sg * cb * sa + cg * ca, sg * sb],
            [sb * ca, sb * sa, cb],
        ]
    )


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.double() - a.double().mean()
    b = b.double() - b.double().mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_real_particles_items_and_labels(data_dir: Path) -> None:
    ds = ParticlesDataset(data_dir / "particles" / "relion31.star", particles_dir=data_dir)
    assert len(ds) == 5
    star = read_particles(data_dir / "particles" / "relion31.star").particles
    with warnings.catch_warnings():
        # An old stack without the MRC2014 'MAP ' id: mrcfile warns but reads it.
        warnings.simplefilter("ignore", RuntimeWarning)
        with mrcfile.open(data_dir / "relion31.mrcs", permissive=True) as mrc:
            stack = np.asarray(mrc.data, dtype=np.float32)
    for i in range(5):
        item = ds[i]
        assert isinstance(item, ParticleItem)
        assert item.particle_id == f"{i + 1:06d}@relion31.mrcs"
        assert item.image.shape == (1, 256, 256) and item.image.dtype == torch.float32
        np.testing.assert_array_equal(item.image[0].numpy(), stack[i])
        row = star.iloc[i]
        expected = relion_matrix(row.rlnAngleRot, row.rlnAngleTilt, row.rlnAnglePsi)
        assert item.rotation.dtype == torch.float32 and item.rotation.shape == (3, 3)
        np.testing.assert_allclose(item.rotation.numpy(), expected, atol=1e-6)
        np.testing.assert_allclose(
            item.shift_angst.numpy(), [row.rlnOriginXAngst, row.rlnOriginYAngst], rtol=1e-6
        )
        assert item.confidence.dtype == torch.float32
        assert float(item.confidence) == pytest.approx(row.rlnMaxValueProbDistribution, 1e-6)
        meta = item.metadata
        assert meta["index"] == i and meta["optics_group"] == 1 and meta["half_set"] == 1
        assert meta["angpix"] == ANGPIX_REAL
        assert meta["defocus_u"] == pytest.approx(row.rlnDefocusU)
        assert meta["defocus_angle"] == pytest.approx(row.rlnDefocusAngle)
    torch.testing.assert_close(
        torch.stack([ds[i].rotation for i in range(5)]), ds.table.rotations(), rtol=0, atol=0
    )


def test_real_particles_preprocessed(data_dir: Path) -> None:
    config = PreprocessConfig(
        angpix=4 * ANGPIX_REAL,
        image_size=48,
        ctf_correction="concat_phase_flip",
        gaussian_sigmas_px=(0.0, 1.0),
        particle_radius_angst=150.0,
    )
    ds = ParticlesDataset(data_dir / "particles" / "relion31.star", data_dir, preprocess=config)
    item = ds[2]
    assert item.image.shape == (4, 48, 48) and item.image.dtype == torch.float32
    # 256 px Fourier-cropped to 64 px: the pixel size grows exactly 4 times.
    assert item.metadata["angpix"] == pytest.approx(ANGPIX_REAL * 4, rel=1e-12)
    assert bool(torch.isfinite(item.image).all())


@pytest.fixture(scope="module")
def clean(clean_star: Path) -> ParticlesDataset:
    return ParticlesDataset(clean_star)


def test_simulated_labels_reproduce_the_images(
    clean: ParticlesDataset, blob_volume: torch.Tensor
) -> None:
    """Projecting the map at each item's labels (pose, origin, CTF) gives its image."""
    projector = Projector(blob_volume)
    table = clean.table
    ctf = table.ctf_parameters()
    for i in (0, 7, 31, 47):
        item = clean[i]
        c = ctf_2d(
            (32, 32),
            3.0,
            ctf["defocus_u"][i],
            ctf["defocus_v"][i],
            ctf["defocus_angle"][i],
            ctf["voltage"][i],
            ctf["cs"][i],
            ctf["amplitude_contrast"][i],
        )
        expected = projector.project(item.rotation[None], item.shift_angst[None], 3.0, c[None])
        assert corr(item.image[0], expected[0]) > 0.999
        # A label off by a 10-degree in-plane turn no longer explains the image.
        wrong = euler_psi_offset(item.rotation, 10.0)
        off = projector.project(wrong[None], item.shift_angst[None], 3.0, c[None])
        assert corr(item.image[0], off[0]) < 0.99
    torch.testing.assert_close(
        torch.stack([clean[i].rotation for i in range(len(clean))]), table.rotations()
    )
    torch.testing.assert_close(
        torch.stack([clean[i].shift_angst for i in range(len(clean))]), table.shifts_angst()
    )


def euler_psi_offset(rotation: torch.Tensor, degrees: float) -> torch.Tensor:
    t = math.radians(degrees)
    rz = torch.tensor(
        [[math.cos(t), math.sin(t), 0.0], [-math.sin(t), math.cos(t), 0.0], [0.0, 0.0, 1.0]]
    )
    return rz @ rotation


def test_half_sets_follow_rln_random_subset(clean_star: Path) -> None:
    table = read_particles(clean_star)
    subset = table.particles["rlnRandomSubset"].to_numpy()
    h1 = ParticlesDataset(table, half_set=1)
    h2 = ParticlesDataset(table, half_set=2)
    np.testing.assert_array_equal(h1.indices, np.flatnonzero(subset == 1))
    np.testing.assert_array_equal(h2.indices, np.flatnonzero(subset == 2))
    assert len(h1) + len(h2) == len(table) == 48
    item = h2[3]
    assert item.metadata["half_set"] == 2
    assert item.metadata["index"] == int(np.flatnonzero(subset == 2)[3])
    assert item.particle_id == table.particles["rlnImageName"].iloc[item.metadata["index"]]
    assert len(h2.rows()) == len(h2)
    with pytest.raises(InputError, match="half set must be 1 or 2"):
        ParticlesDataset(table, half_set=3)


def test_collate_shapes_and_metadata(clean: ParticlesDataset) -> None:
    batch = collate([clean[i] for i in (4, 5, 6)])
    assert batch.image.shape == (3, 1, 32, 32)
    assert batch.rotation.shape == (3, 3, 3) and batch.shift_angst.shape == (3, 2)
    assert batch.confidence.shape == (3,)
    torch.testing.assert_close(batch.confidence, torch.ones(3))  # no rlnMaxValueProbDistribution
    assert batch.metadata["index"].tolist() == [4, 5, 6]
    assert batch.metadata["index"].dtype == torch.int64
    assert batch.metadata["defocus_u"].dtype == torch.float64
    assert batch.particle_id == [clean[i].particle_id for i in (4, 5, 6)]


def loader_batches(ds: ParticlesDataset, workers: int) -> list[tuple[torch.Tensor, ...]]:
    loader = DataLoader(ds, batch_size=8, num_workers=workers, collate_fn=collate)
    return [(b.image, b.rotation, b.shift_angst, b.metadata["index"]) for b in loader]


def test_dataloader_two_workers_equal_zero_workers(noisy_star: Path) -> None:
    config = AugmentConfig(p_rot90=0.5, p_rotate=0.5, p_shift=0.5, p_noise=0.5, p_erase=0.3)
    ds = ParticlesDataset(
        noisy_star,
        preprocess=PreprocessConfig(gaussian_sigmas_px=(0.0, 1.0)),
        augment=Augmenter(config),
        seed=7,
    )
    single = loader_batches(ds, 0)
    double = loader_batches(ds, 2)
    assert len(single) == len(double) == 8
    for a, b in zip(single, double, strict=True):
        # Same draws; workers run torch with one thread, so FFT sums may round differently.
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=0, atol=1e-5)
        assert torch.equal(a[3], b[3])
    # Augmentation is on (labels changed for some items) and a new epoch draws anew.
    rotations = torch.cat([b[1] for b in single])
    changed = (rotations - ds.table.rotations()).abs().amax(dim=(1, 2)) > 1e-4
    assert 0 < int(changed.sum()) < len(ds)
    ds.set_epoch(1)
    assert not torch.equal(torch.cat([b[1] for b in loader_batches(ds, 0)]), rotations)


def test_no_poses_give_nan_rotations(data_dir: Path, tmp_path: Path) -> None:
    table = read_particles(data_dir / "particles" / "relion31.star", particles_dir=data_dir)
    table = table.subset(np.arange(2))
    table.particles = table.particles.drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])
    ds = ParticlesDataset(table)
    assert bool(torch.isnan(ds[0].rotation).all())


def test_bad_inputs_fail_early(data_dir: Path, tmp_path: Path) -> None:
    star = tmp_path / "relion31.star"
    shutil.copy(data_dir / "particles" / "relion31.star", star)
    with pytest.raises(InputError, match=r"relion31\.mrcs"):
        ParticlesDataset(star)  # the stack is not beside the star file
    table = read_particles(data_dir / "particles" / "relion31.star", particles_dir=data_dir)
    no_ctf = table.subset(np.arange(5))
    no_ctf.particles = no_ctf.particles.drop(columns=["rlnDefocusU"])
    with pytest.raises(InputError, match="needs CTF columns"):
        ParticlesDataset(no_ctf, preprocess=PreprocessConfig(ctf_correction="phase_flip"))
    with pytest.raises(InputError):
        ParticlesDataset(table, symmetry="X5")
    ds = ParticlesDataset(table, symmetry="D2")
    assert ds.symmetry_matrices.shape == (4, 3, 3)
    with pytest.raises(IndexError):
        ds[5]


def test_preprocessed_batch_equals_the_items(data_dir: Path) -> None:
    """Real particles (CTF phase flip, Fourier crop, Gaussian channels): the batch path used by
    inference gives each item's image and row."""
    config = PreprocessConfig(
        angpix=4 * ANGPIX_REAL,
        image_size=48,
        ctf_correction="concat_phase_flip",
        gaussian_sigmas_px=(0.0, 1.0),
        particle_radius_angst=150.0,
    )
    ds = ParticlesDataset(data_dir / "particles" / "relion31.star", data_dir, preprocess=config)
    assert len(ds) >= 3
    positions = [len(ds) - 1, 0, 1]
    images, rows = ds.preprocessed_batch(positions)
    assert images.shape == (3, 4, 48, 48) and images.dtype == torch.float32
    for j, i in enumerate(positions):
        item = ds[i]
        assert int(rows[j]) == item.metadata["index"]
        torch.testing.assert_close(images[j], item.image, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="without augmentation"):
        ParticlesDataset(
            data_dir / "particles" / "relion31.star", data_dir, augment=Augmenter(AugmentConfig())
        ).preprocessed_batch([0])
