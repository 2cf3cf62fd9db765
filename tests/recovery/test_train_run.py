"""Training the distance network (pairs, checkpoints, resume) and recovering a star file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.errors import InputError
from cryopose.geometry import (
    angular_error,
    euler_to_matrix,
    geodesic_distance,
    matrix_to_quaternion,
    quaternion_distance,
    symmetry_group,
)
from cryopose.io.mrc import read_map
from cryopose.io.particles import read_particles
from cryopose.models.siamese import SiameseConfig
from cryopose.recovery import (
    RunSettings,
    TrainConfig,
    all_pairs_targets,
    calibrate,
    evaluate_recovery,
    load_distance_model,
    prepare_volume,
    recover_star,
    sample_rotation_pairs,
    train_distance_network,
)
from cryopose.simulate.particles import SimulationConfig, simulate_particles

TINY = SiameseConfig(widths=(4, 8), features=8, groups=4)


def test_c1_pairs_have_exact_uniform_distances() -> None:
    R1, R2, d = sample_rotation_pairs(4000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(d, geodesic_distance(R1, R2), atol=1e-9, rtol=0)
    counts = torch.histc(d, bins=8, min=0.0, max=math.pi)
    # Binomial(4000, 1/8): mean 500, sd 21; 5 sd either side.
    assert bool((counts - 500).abs().max() < 105)


def test_tilt_pairs_keep_exact_uniform_distances_about_in_plane_lab_axes() -> None:
    R1, R2, d = sample_rotation_pairs(4000, torch.Generator().manual_seed(5), tilt_fraction=0.5)
    torch.testing.assert_close(d, geodesic_distance(R1, R2), atol=1e-9, rtol=0)
    counts = torch.histc(d, bins=8, min=0.0, max=math.pi)
    assert bool((counts - 500).abs().max() < 105)
    # Lab-frame axis of R2 R1^T (= exp(d [R1 u]x)): in the xy plane for about half the pairs
    # (Binomial(4000, 1/2) +- 5 sd), uniform otherwise (|z| < 1e-6 has probability ~1e-6).
    from cryopose.geometry.rotations import matrix_to_axis_angle

    axis = matrix_to_axis_angle(R2 @ R1.transpose(-1, -2))
    in_plane = (axis[:, 2].abs() / torch.linalg.vector_norm(axis, dim=-1)) < 1e-6
    assert abs(int(in_plane.sum()) - 2000) < 160


def test_all_pairs_targets_are_brute_force_distances_weighted_to_uniform() -> None:
    R1, R2, _ = sample_rotation_pairs(32, torch.Generator().manual_seed(6))
    R = torch.cat([R1, R2])
    target, weight = all_pairs_targets(R)
    assert target.shape == weight.shape == (64 * 63 // 2,)
    brute = [float(geodesic_distance(R[a], R[b])) for a in range(64) for b in range(a + 1, 64)]
    torch.testing.assert_close(target, torch.tensor(brute, dtype=torch.float32))
    assert math.isclose(float(weight.sum()), 1.0, rel_tol=1e-5)
    # Every occupied bin of the 32-bin histogram carries the same total weight.
    mass = torch.zeros(32).index_add_(
        0, (target / float(target.max()) * 32).long().clamp_max(31), weight
    )
    occupied = mass[mass > 0]
    torch.testing.assert_close(occupied, torch.full_like(occupied, 1 / occupied.numel()))
    sym, _ = all_pairs_targets(R, "D2")
    expected = torch.deg2rad(angular_error(R[:1].expand(63, 3, 3), R[1:], "D2"))
    torch.testing.assert_close(sym[:63], expected.float())


def test_symmetric_targets_are_the_minimum_over_the_group_and_uniform() -> None:
    R1, R2, d = sample_rotation_pairs(3000, torch.Generator().manual_seed(1), symmetry="D2")
    group = symmetry_group("D2").to(torch.float64)
    brute = geodesic_distance(R1[:, None] @ group[None], R2[:, None]).amin(dim=1)
    torch.testing.assert_close(d, brute, atol=1e-7, rtol=0)
    torch.testing.assert_close(torch.deg2rad(angular_error(R1, R2, "D2")), brute, atol=1e-7, rtol=0)
    # Uniform up to near the largest distance, where candidates run out (the density of
    # random pairs vanishes at the corners of the asymmetric unit).
    counts = torch.histc(d, bins=5, min=0.0, max=0.8 * float(d.max()))
    assert bool((counts / counts.mean() - 1).abs().max() < 0.2)
    assert float(counts.sum()) > 0.7 * 3000


def test_calibrate_is_piecewise_linear_through_the_knots() -> None:
    knots = torch.tensor([[0.0, 0.5, 1.0, math.pi], [0.0, 1.0, 1.5, math.pi]])
    x = torch.tensor([-1.0, 0.0, 0.25, 0.75, 1.0, 2.0, 4.0])
    slope = (math.pi - 1.5) / (math.pi - 1.0)
    expected = torch.tensor([0.0, 0.0, 0.5, 1.25, 1.5, 1.5 + slope, math.pi])
    torch.testing.assert_close(calibrate(x, knots), expected)


def test_prepare_volume_pads_a_non_cubic_map_and_resamples() -> None:
    vol = torch.zeros(6, 8, 10)
    vol[1:5, 2:6, 3:7] = torch.rand(4, 4, 4, generator=torch.Generator().manual_seed(2))
    cube, apix = prepare_volume(vol, 2.0, 12, None)
    assert cube.shape == (12, 12, 12) and apix == 2.0
    assert math.isclose(float(cube.sum()), float(vol.sum()), rel_tol=1e-6)
    half, apix2 = prepare_volume(vol, 2.0, 6, 2.5)
    assert half.shape == (6, 6, 6) and math.isclose(apix2, 2.5)
    # A 10-voxel cube cannot reach 4 A exactly: it becomes 4 voxels (even, as RELION) of 5 A.
    _, apix3 = prepare_volume(vol, 2.0, 6, 4.0)
    assert math.isclose(apix3, 5.0)


def _emd(data_dir: Path) -> tuple[torch.Tensor, float]:
    return read_map(data_dir / "EMD-3197.map")


def test_training_resumes_exactly_and_checkpoints_load_weights_only(
    data_dir: Path, tmp_path: Path
) -> None:
    volume, angpix = _emd(data_dir)
    cfg = TrainConfig(
        box=16, batch_size=4, max_steps=4, max_minutes=None, validation_pairs=8, network=TINY
    )
    straight = train_distance_network(volume, angpix, tmp_path / "a", cfg, progress=False)
    first = TrainConfig(**{**cfg.__dict__, "max_steps": 2})
    train_distance_network(volume, angpix, tmp_path / "b", first, progress=False)
    resumed = train_distance_network(volume, angpix, tmp_path / "b", cfg, progress=False)
    assert straight.steps == resumed.steps == 4
    torch.testing.assert_close(straight.losses, resumed.losses)
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    for key, value in a["model"].items():
        torch.testing.assert_close(value, b["model"][key])
    model = load_distance_model(tmp_path / "b")
    assert model.box == 16 and model.symmetry == "C1" and model.angpix == angpix
    # The calibration map is stored with the weights: knots from (0, 0) to (>= pi, pi).
    knots = model.calibration
    assert knots is not None and knots.shape == (2, 34)
    assert bool((knots[0].diff() > 0).all() and (knots[1].diff() >= 0).all())
    assert float(knots[1, 0]) == 0.0 and math.isclose(float(knots[1, -1]), math.pi, rel_tol=1e-6)
    changed = TrainConfig(**{**cfg.__dict__, "box": 20})
    with pytest.raises(InputError, match="box"):
        train_distance_network(volume, angpix, tmp_path / "b", changed, progress=False)


def _simulated(data_dir: Path, folder: Path, n: int) -> Path:
    volume, angpix = _emd(data_dir)
    cfg = SimulationConfig(n=n, box=20, snr=None, ctf=True, shift_sigma_angst=0.0, seed=3)
    return simulate_particles(volume, angpix, folder, cfg, progress=False)


def test_oracle_distances_through_the_run_path_give_e_or_near_zero(
    data_dir: Path, tmp_path: Path
) -> None:
    star = _simulated(data_dir, tmp_path / "sim", 100)
    truth = read_particles(star)
    q = matrix_to_quaternion(truth.rotations(dtype=torch.float64))

    def oracle(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return quaternion_distance(q[i], q[j])

    out = star.parent / "recovered.star"  # beside the stacks its image names point to
    settings = RunSettings(
        steps=800, batch_size=4096, restarts=2, k_per_node=15, seed=1, polish=None
    )
    result = recover_star(star, out, distance_fn=oracle, settings=settings, progress=False)
    assert result.quaternions.shape == (100, 4)
    written = read_particles(out)
    # Only the angles changed; every other column is kept as it was.
    angles = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    rest = [c for c in truth.particles.columns if c not in angles]
    assert list(written.particles.columns) == list(truth.particles.columns)
    for column in rest:
        assert (written.particles[column].to_numpy() == truth.particles[column].to_numpy()).all()
    R_written = euler_to_matrix(torch.from_numpy(written.particles[angles].to_numpy()))
    torch.testing.assert_close(
        matrix_to_quaternion(R_written).abs(), result.quaternions.abs(), atol=1e-5, rtol=0
    )
    ev = evaluate_recovery(star, out)
    assert ev.n == 100 and ev.e_or_deg < 1.0
    # The reconstruction from the recovered poses (brought to the truth frame) matches the
    # one from the true poses.
    map_path = data_dir / "EMD-3197.map"
    ref = evaluate_recovery(star, star, map_path=map_path, progress=False)
    ev = evaluate_recovery(star, out, map_path=map_path, progress=False)
    assert ref.fsc is not None and ev.fsc is not None
    assert float((ev.fsc - ref.fsc).abs().max()) < 0.05


def test_evaluate_reconstructs_in_the_truth_frame(data_dir: Path, tmp_path: Path) -> None:
    star = _simulated(data_dir, tmp_path / "sim", 300)
    table = read_particles(star)
    # Predicted poses: the truth seen in a rotated, mirrored map frame (A -> F A F G^T).
    G = euler_to_matrix(torch.tensor([30.0, 50.0, -20.0], dtype=torch.float64))
    F = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    moved = table.subset(np.arange(len(table)))
    moved.set_rotations(F @ table.rotations(dtype=torch.float64) @ G.T @ F)
    from cryopose.io.particles import write_particles

    write_particles(moved, star.parent / "moved.star")
    map_path = data_dir / "EMD-3197.map"
    ref = evaluate_recovery(star, star, map_path=map_path, progress=False)
    ev = evaluate_recovery(star, star.parent / "moved.star", map_path=map_path, progress=False)
    assert ev.e_or_deg < 1e-3 and ev.so3_error_deg < 1e-3 and ev.flip
    assert ref.fsc is not None and ev.fsc is not None
    torch.testing.assert_close(ev.fsc, ref.fsc, atol=1e-3, rtol=0)
    assert ref.resolution_fsc_05 is not None and ref.resolution_fsc_05 < 40.0


def test_recover_star_needs_exactly_one_distance_source(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="exactly one"):
        recover_star(tmp_path / "x.star", tmp_path / "y.star")


def test_polishing_through_the_run_path_puts_poses_in_the_images_frame(
    data_dir: Path, tmp_path: Path
) -> None:
    from cryopose.geometry import quaternion_to_matrix
    from cryopose.recovery import PolishSettings, align_so3

    torch.set_num_threads(1)
    star = _simulated(data_dir, tmp_path / "sim", 200)
    R = read_particles(star).rotations(dtype=torch.float64)
    q = matrix_to_quaternion(R)

    def oracle(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return quaternion_distance(q[i], q[j])

    out = star.parent / "recovered.star"
    # No global search: at 20 px and 11.4 A/px about 1% of the particles find a better
    # correlation at a far-off, nearly equivalent view of this blob-like map.
    polish = PolishSettings(rounds=1, frame_particles=200, frame_box=12, global_order=None)
    settings = RunSettings(steps=400, batch_size=4096, seed=1, polish=polish)
    result = recover_star(star, out, distance_fn=oracle, settings=settings, progress=False)
    assert result.distance_quaternions is not None and result.polish is not None
    # Exact distances fix the poses up to O(4), in general not up to a change of map frame:
    # those poses do not describe the images. After the frame search and a round of
    # matching (20 px at 11.4 A/px: a few degrees of matching error) they do.
    before = align_so3(R, quaternion_to_matrix(result.distance_quaternions))[2]
    ev = evaluate_recovery(star, out)
    assert before > 20.0
    assert ev.e_or_deg < 4.0 and ev.so3_error_deg < 4.0
