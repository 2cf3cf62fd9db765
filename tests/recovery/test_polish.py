"""Polishing of recovered orientations: frame search and reconstruct-and-match rounds."""

from __future__ import annotations

import torch

from cryopose.data.demo_files import demo_file
from cryopose.geometry import matrix_to_quaternion, random_rotations
from cryopose.geometry.distance import geodesic_distance
from cryopose.geometry.healpix import so3_healpix_grid
from cryopose.geometry.rotations import axis_angle_to_matrix
from cryopose.imaging.ctf import ctf_2d
from cryopose.imaging.projection import Projector
from cryopose.io.mrc import read_map
from cryopose.recovery import align_so3, e_or, prepare_volume
from cryopose.recovery.polish import (
    PolishSettings,
    global_match,
    polish_orientations,
    resolve_frame,
)


def _setup(
    n: int, box: int, off_deg: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Projections of 5j0n, their true poses and poses perturbed by up to ``off_deg``."""
    torch.set_num_threads(1)
    volume, angpix = read_map(demo_file("5j0n_simulated.mrc.gz"))
    cube, apix = prepare_volume(volume, angpix, box, angpix * 116 / box)
    gen = torch.Generator().manual_seed(3)
    R = random_rotations(n, gen, dtype=torch.float64)
    images = Projector(cube).project(R).to(torch.float32)
    axis = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    angle = torch.deg2rad(torch.tensor(off_deg)) * torch.rand(n, 1, generator=gen).double()
    perturbed = axis_angle_to_matrix(axis / axis.norm(dim=1, keepdim=True) * angle) @ R
    return images, R, perturbed, apix


def test_polish_brings_perturbed_poses_back() -> None:
    images, R, perturbed, apix = _setup(300, 24, 16.0)
    q = matrix_to_quaternion(R)
    before = e_or(q, matrix_to_quaternion(perturbed))
    s = PolishSettings(rounds=2)
    result = polish_orientations(images, perturbed, apix, s, progress=False)
    after = e_or(q, matrix_to_quaternion(result.rotations))
    assert 6.0 < before < 10.0  # uniform angles in [0, 16] deg: mean 8
    assert after < 2.0, (before, after)
    assert len(result.resolution_angst) == 3 and len(result.median_change_deg) == 2


def test_frame_search_undoes_left_factor_and_transpose() -> None:
    images, R, perturbed, apix = _setup(200, 24, 6.0)
    gen = torch.Generator().manual_seed(4)
    left, right = random_rotations(2, gen, dtype=torch.float64)
    scrambled = left @ perturbed.transpose(-1, -2) @ right
    assert align_so3(R, scrambled)[2] > 30.0  # not a change of map frame
    s = PolishSettings(frame_particles=200, frame_box=12)
    frame = resolve_frame(images, scrambled, apix, s, progress=False)
    assert frame.transposed
    assert frame.score > frame.runner_up
    # Back in a frame where poses describe the images: the map-frame error is that of the
    # perturbation (mean 3 deg) plus the frame's own error.
    assert align_so3(R, frame.rotations)[2] < 6.0


def test_global_match_finds_the_grid_rotation_with_and_without_ctf() -> None:
    torch.set_num_threads(1)
    volume, angpix = read_map(demo_file("5j0n_simulated.mrc.gz"))
    cube, apix = prepare_volume(volume, angpix, 24, angpix * 116 / 24)
    projector = Projector(cube)
    grid = so3_healpix_grid(1, dtype=torch.float64)
    truth = torch.randperm(grid.shape[0], generator=torch.Generator().manual_seed(5))[:40]
    defocus = torch.linspace(5000.0, 20000.0, 40)

    def ctf(index: torch.Tensor) -> torch.Tensor:
        return ctf_2d((24, 24), apix, defocus[index], defocus[index], 0.0, 300.0, 2.7, 0.1)

    plain = projector.project(grid[truth])
    with_ctf = projector.project(grid[truth], ctf=ctf(torch.arange(40)))
    for images, c in ((plain, None), (with_ctf, ctf)):
        rotations, cc = global_match(projector, images, apix, grid, 2 * apix, ctf=c)
        assert torch.equal(rotations, grid[truth])
        assert float(cc.min()) > 0.99
    # Without the CTF in the model, CTF-modulated images no longer match their projection.
    _, cc_no_ctf = global_match(projector, with_ctf, apix, grid, 2 * apix)
    assert float(cc_no_ctf.mean()) < 0.95, float(cc_no_ctf.mean())


def test_global_search_recovers_particles_far_off() -> None:
    images, R, perturbed, apix = _setup(300, 24, 6.0)
    gen = torch.Generator().manual_seed(6)
    far = torch.randperm(300, generator=gen)[:45]  # 15% at random poses
    perturbed = perturbed.clone()
    perturbed[far] = random_rotations(45, gen, dtype=torch.float64)
    errors = {}
    for order in (None, 2):
        s = PolishSettings(rounds=2, global_order=order)
        result = polish_orientations(images, perturbed, apix, s, progress=False)
        errors[order] = torch.rad2deg(geodesic_distance(R, result.rotations))
    assert float((errors[None] > 20.0).float().mean()) > 0.1  # local passes cannot reach them
    assert float(errors[2].max()) < 5.0, float(errors[2].max())
