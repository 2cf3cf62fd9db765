"""Local refinement on simulated 1s3x particles with known poses, origins and CTF."""

from __future__ import annotations

import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryopose.errors import InputError
from cryopose.geometry.distance import geodesic_distance
from cryopose.geometry.healpix import grid_size, nearest_grid_index
from cryopose.geometry.rotations import axis_angle_to_matrix, random_rotations
from cryopose.imaging.ctf import ctf_2d
from cryopose.imaging.projection import Projector
from cryopose.io.mrc import read_images, read_map
from cryopose.io.particles import ParticleTable, read_particles, write_particles
from cryopose.pose._local_grid import local_rotation_grid
from cryopose.pose.candidates import Candidates, encode_indices, with_candidate_columns
from cryopose.pose.refine import (
    PreparedReference,
    RefineConfig,
    match_local,
    refine_particles,
    refine_star,
    working_box,
)
from cryopose.simulate.particles import SimulationConfig, simulate_from_structure

BOX = 40
ANGPIX = 2.5
STRUCTURE = Path(__file__).resolve().parents[1] / "data" / "structures" / "1s3x.pdb.gz"


def _simulate(folder: Path, n: int, snr: float | None, seed: int) -> Path:
    config = SimulationConfig(n=n, snr=snr, seed=seed, particles_per_micrograph=4)
    return simulate_from_structure(STRUCTURE, ANGPIX, BOX, folder, config=config, progress=False)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 noise-free CTF-modulated particles (shifts up to 10 A) and the map projected."""
    return _simulate(tmp_path_factory.mktemp("clean"), 24, None, 11)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 particles at SNR 0.1."""
    return _simulate(tmp_path_factory.mktemp("noisy"), 32, 0.1, 12)


def _perturbed(table: ParticleTable, angle_deg: float, shift_px: float, seed: int) -> ParticleTable:
    """Copy of ``table`` with every pose turned by ``angle_deg`` about a random axis and
    every origin moved by up to ``shift_px`` pixels along x and y."""
    g = torch.Generator().manual_seed(seed)
    n = len(table)
    axes = torch.randn(n, 3, generator=g, dtype=torch.float64)
    axes = axes / torch.linalg.vector_norm(axes, dim=-1, keepdim=True)
    out = table.subset(np.arange(n))
    out.particles = out.particles.copy()
    out.set_rotations(
        axis_angle_to_matrix(axes * math.radians(angle_deg)) @ table.rotations(torch.float64)
    )
    jitter = (torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1) * shift_px * ANGPIX
    out.set_shifts_angst(table.shifts_angst(torch.float64) + jitter)
    return out


def _errors(table: ParticleTable, rotations: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(geodesic_distance(table.rotations(torch.float64), rotations))


def test_local_grid_covers_the_ball() -> None:
    grid = local_rotation_grid(6.0, 2.0)
    # Integer points of norm <= 3 in a cube: 123 (1 + 6 + 12 + 8 + 6 + 24 + 24 + 6 + 12 + 24).
    assert grid.shape == (123, 3, 3)
    angles = torch.rad2deg(geodesic_distance(torch.eye(3, dtype=torch.float64), grid))
    assert float(angles.max()) == pytest.approx(6.0) and float(angles[0]) == 0.0
    # Covering radius of a cubic grid of spacing s: s * sqrt(3) / 2 (plus curvature slack).
    g = torch.Generator().manual_seed(0)
    v = torch.randn(500, 3, generator=g, dtype=torch.float64)
    v = v / torch.linalg.vector_norm(v, dim=-1, keepdim=True) * math.radians(5.5)
    v = v * torch.rand(500, 1, generator=g, dtype=torch.float64) ** (1 / 3)
    probes = axis_angle_to_matrix(v)
    nearest = torch.rad2deg(geodesic_distance(probes[:, None], grid[None])).min(-1).values
    assert float(nearest.max()) <= 2.0 * math.sqrt(3) / 2 + 0.05


def test_perturbed_poses_and_origins_come_back(clean: Path) -> None:
    truth = read_particles(clean)
    start = _perturbed(truth, 5.0, 2.5, seed=1)
    volume, _ = read_map(clean.parent / "ground_truth.mrc")
    config = RefineConfig(step_deg=2.0, fine_range_deg=1.5, fine_step_deg=0.5)
    result = refine_particles(start, volume, config, progress=False)
    assert float(_errors(truth, start.rotations(torch.float64)).median()) == pytest.approx(5.0)
    assert float(_errors(truth, result.rotations).median()) <= 1.5
    shift_error = result.origins_angst - truth.shifts_angst(torch.float64)
    assert float(torch.linalg.vector_norm(shift_error, dim=-1).max()) / ANGPIX < 0.5
    assert float(result.cc.min()) > 0.85
    assert result.n_local_poses == (123, 123)


def test_correct_poses_stay(clean: Path) -> None:
    truth = read_particles(clean)
    volume, _ = read_map(clean.parent / "ground_truth.mrc")
    result = refine_particles(truth, volume, RefineConfig(), progress=False)
    assert float(result.angle_change_deg.median()) < 1.0
    assert float(result.shift_change_angst.max()) / ANGPIX < 0.1


def test_noise_improves_perturbed_poses(noisy: Path) -> None:
    truth = read_particles(noisy)
    start = _perturbed(truth, 5.0, 1.0, seed=2)
    volume, _ = read_map(noisy.parent / "ground_truth.mrc")
    result = refine_particles(start, volume, RefineConfig(), progress=False)
    before = float(_errors(truth, start.rotations(torch.float64)).median())
    after = float(_errors(truth, result.rotations).median())
    assert after < 0.7 * before


def test_peak_score_separates_particles_from_noise(noisy: Path) -> None:
    truth = read_particles(noisy).subset(np.arange(16))
    volume, _ = read_map(noisy.parent / "ground_truth.mrc")
    projector = Projector(volume)
    images = read_images(truth.image_locations())
    p = truth.ctf_parameters()
    ctf = ctf_2d(
        (BOX, BOX),
        ANGPIX,
        p["defocus_u"],
        p["defocus_v"],
        p["defocus_angle"],
        p["voltage"],
        p["cs"],
        p["amplitude_contrast"],
    )
    grid = local_rotation_grid(6.0, 2.0)
    rotations, origins = truth.rotations(torch.float64), truth.shifts_angst(torch.float64)
    real = match_local(projector, images, rotations, origins, ANGPIX, grid, ctf=ctf)
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(3)) * images.std()
    junk = match_local(projector, noise, rotations, origins, ANGPIX, grid, ctf=ctf)
    # Measured 7.1 +- 0.7 vs 2.6 +- 0.5 (refine module docstring): no overlap.
    assert float(real.peak_zscore.min()) > float(junk.peak_zscore.max())


def _bandpass(images: torch.Tensor, kmax: float) -> torch.Tensor:
    """Keep ``0 < |k| <= kmax`` cycles/pixel (plain rfft2, no cryopose helpers)."""
    f = torch.fft.rfft2(images.to(torch.float64))
    ky = torch.fft.fftfreq(images.shape[-2], dtype=torch.float64)[:, None]
    kx = torch.fft.rfftfreq(images.shape[-1], dtype=torch.float64)[None, :]
    k2 = kx**2 + ky**2
    f = f * ((k2 > 0) & (k2 <= kmax**2))
    return torch.fft.irfft2(f, s=images.shape[-2:])


@pytest.mark.parametrize("crop", [False, True])
def test_matches_brute_force_search(noisy: Path, crop: bool) -> None:
    """One particle: every local pose x every origin on the search's translation grid
    (whole pixels, or every ``BOX / working_box`` pixels when Fourier-cropped), projected
    one by one at the full box and band-passed."""
    table = read_particles(noisy).subset([5])
    start = _perturbed(table, 4.0, 1.0, seed=4)
    volume, _ = read_map(noisy.parent / "ground_truth.mrc")
    projector = Projector(volume)
    image = read_images(start.image_locations())
    p = start.ctf_parameters()
    ctf = ctf_2d(
        (BOX, BOX),
        ANGPIX,
        p["defocus_u"],
        p["defocus_v"],
        p["defocus_angle"],
        p["voltage"],
        p["cs"],
        p["amplitude_contrast"],
    )
    resolution, max_shift = 6.0, 8.0
    grid = local_rotation_grid(6.0, 2.0)
    rot0, origin0 = start.rotations(torch.float64), start.shifts_angst(torch.float64)
    ours = match_local(
        projector,
        image,
        rot0,
        origin0,
        ANGPIX,
        grid,
        ctf=ctf,
        max_shift_angst=max_shift,
        resolution_angst=resolution,
        subpixel=False,
        crop=crop,
    )
    kmax = ANGPIX / resolution
    target = _bandpass(image, kmax)[0]
    # Translation grid step in pixels: 40 / 36 at 6 A (band 0.417 cycles/px + one spare).
    step = BOX / working_box(BOX, ANGPIX, resolution) if crop else 1.0
    assert step == (pytest.approx(40 / 36) if crop else 1.0)
    r = int(max_shift / (ANGPIX * step))
    offsets = [(u, v) for u in range(-r, r + 1) for v in range(-r, r + 1) if u * u + v * v <= r * r]
    pairs = [(k, u, v) for k in range(grid.shape[0]) for u, v in offsets]
    rotations = torch.stack([grid[k] @ rot0[0] for k, _, _ in pairs])
    steps = torch.tensor([[u, v] for _, u, v in pairs], dtype=torch.float64) * step
    refs = _bandpass(projector.project(rotations, origin0 + steps * ANGPIX, ANGPIX, ctf), kmax)
    ccs = (refs * target).sum((-2, -1)) / torch.sqrt((refs**2).sum((-2, -1)) * (target**2).sum())
    j = int(ccs.argmax())
    best = (float(ccs[j]), pairs[j][0], pairs[j][1:])
    cc, k, (u, v) = best
    assert int(ours.index[0]) == k
    expected_origin = origin0[0] + torch.tensor([u, v], dtype=torch.float64) * step * ANGPIX
    torch.testing.assert_close(ours.origins_angst[0], expected_origin, rtol=0, atol=1e-4)
    assert float(ours.cc[0]) == pytest.approx(cc, abs=2e-4)


def test_refine_star_writes_all_columns(clean: Path, tmp_path: Path) -> None:
    truth = read_particles(clean)
    start = _perturbed(truth, 5.0, 1.0, seed=5)
    start.particles["rlnMaxValueProbDistribution"] = 0.5
    start.particles["myLabel"] = np.arange(len(start))
    star_in = tmp_path / "in.star"
    write_particles(start, star_in)
    out = tmp_path / "refined.star"
    reference = clean.parent / "ground_truth.mrc"
    result = refine_star(star_in, reference, out, progress=False, particles_dir=clean.parent)
    back = read_particles(out, particles_dir=clean.parent)
    assert list(back.particles["myLabel"]) == list(range(len(start)))
    assert np.allclose(back.particles["rlnMaxValueProbDistribution"], 0.5)
    assert np.allclose(back.particles["cryoposeRefineCC"], result.cc.numpy(), atol=1e-5)
    score = back.particles["cryoposeRefineScore"].to_numpy()
    assert np.all((score > 0) & (score < 0.5))  # the network's 0.5 times a logistic
    peak = back.particles["cryoposeRefinePeakZ"].to_numpy(dtype=np.float64)
    np.testing.assert_allclose(peak, result.zscore.numpy(), rtol=1e-6)
    # The robust z-score against the star file's own particles: (s - median) / (1.4826 MAD).
    med = np.median(peak)
    expected = (peak - med) / (1.4826 * np.median(np.abs(peak - med)))
    np.testing.assert_allclose(back.particles["cryoposeRefineZScore"], expected, atol=1e-5)
    assert float(_errors(truth, back.rotations(torch.float64)).median()) < 2.0
    assert (tmp_path / "refined_refine.json").exists()


def test_mismatched_map_is_named(clean: Path, tmp_path: Path) -> None:
    volume, _ = read_map(clean.parent / "ground_truth.mrc")
    big = tmp_path / "big.mrc"
    with mrcfile.new(big) as m:
        m.set_data(
            torch.nn.functional.interpolate(volume[None, None], size=(80, 80, 80))[0, 0].numpy()
        )
        m.voxel_size = ANGPIX / 2
    with pytest.raises(
        InputError, match=r"map box 80 at 1\.250 A/px vs particles box 40 at 2\.500 A/px"
    ):
        refine_star(clean, big, tmp_path / "out.star", progress=False)
    assert not (tmp_path / "out.star").exists()


def test_rescaled_map_refines_like_the_original(clean: Path, tmp_path: Path) -> None:
    """A 2x finer copy of the map (Fourier padded) is resampled back with rescale_map."""
    from cryopose.imaging.resample import fourier_pad

    volume, _ = read_map(clean.parent / "ground_truth.mrc")
    fine_map = tmp_path / "fine.mrc"
    with mrcfile.new(fine_map) as m:
        m.set_data(fourier_pad(volume, 2 * BOX, ndim=3).numpy())
        m.voxel_size = ANGPIX / 2
    config = RefineConfig(rescale_map=True)
    result = refine_star(clean, fine_map, tmp_path / "out.star", config, progress=False)
    assert float(result.angle_change_deg.median()) < 1.0 and float(result.cc.min()) > 0.99


def test_random_start_is_not_rescued(clean: Path) -> None:
    """A local search cannot fix a pose tens of degrees off: the CC stays low."""
    truth = read_particles(clean).subset(np.arange(8))
    start = truth.subset(np.arange(8))
    start.particles = start.particles.copy()
    start.set_rotations(
        random_rotations(8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    )
    volume, _ = read_map(clean.parent / "ground_truth.mrc")
    far = float(_errors(truth, start.rotations(torch.float64)).min())
    config = RefineConfig()
    result = refine_particles(start, volume, config, progress=False)
    reach = config.range_deg + config.fine_range_deg  # coarse ball, then fine ball around it
    assert far > 20.0 and float(result.angle_change_deg.max()) <= reach + 1e-6
    assert float(result.cc.max()) < 0.9


def _wrong_start_with_candidates(
    truth: ParticleTable, k: int, seed: int
) -> tuple[ParticleTable, Candidates, torch.Tensor]:
    """Poses 40 degrees off, and k random order-3 grid cells per particle of which one (at a
    varying rank) is the cell nearest to the true pose. Returns the start table, the
    candidates and the rank (0-based) of the true cell."""
    start = _perturbed(truth, 40.0, 0.0, seed=seed)
    g = torch.Generator().manual_seed(seed)
    n = len(truth)
    indices = torch.randint(0, grid_size(3), (n, k), generator=g)
    rank = torch.arange(n) % k
    indices[torch.arange(n), rank] = nearest_grid_index(truth.rotations(torch.float64), 3)
    return start, Candidates(indices, torch.full((n,), 3)), rank


def test_candidates_rescue_a_wrong_start(clean: Path) -> None:
    """With the true pose's grid cell among the candidates, refinement from a pose 40 degrees
    off ends within 2 degrees; without candidates it stays far (a local search)."""
    truth = read_particles(clean).subset(np.arange(12))
    start, candidates, rank = _wrong_start_with_candidates(truth, 6, seed=7)
    volume, _ = read_map(clean.parent / "ground_truth.mrc")
    config = RefineConfig()
    rescued = refine_particles(start, volume, config, progress=False, candidates=candidates)
    alone = refine_particles(start, volume, config, progress=False)
    assert float(_errors(truth, rescued.rotations).max()) < 2.0
    assert float(_errors(truth, alone.rotations).min()) > 25.0
    # Candidate 0 is the start pose, i >= 1 the i-th network candidate.
    assert rescued.n_candidates == 6 and alone.n_candidates == 0
    assert rescued.candidate is not None and torch.equal(rescued.candidate, rank + 1)
    assert rescued.summary()["started_from_candidate_fraction"] == 1.0
    # Fewer candidates than the true cell's rank: not rescued.
    few = refine_particles(start, volume, RefineConfig(candidates=1), False, candidates)
    assert float(_errors(truth, few.rotations)[rank == 0].max()) < 2.0
    assert float(_errors(truth, few.rotations)[rank > 0].min()) > 25.0


def test_correct_start_beats_candidates(clean: Path) -> None:
    """The input pose is candidate 0 and wins over unrelated grid cells: nothing moves."""
    truth = read_particles(clean).subset(np.arange(8))
    g = torch.Generator().manual_seed(8)
    indices = torch.randint(0, grid_size(3), (8, 5), generator=g)
    candidates = Candidates(indices, torch.full((8,), 3))
    volume, _ = read_map(clean.parent / "ground_truth.mrc")
    result = refine_particles(truth, volume, RefineConfig(), False, candidates)
    assert result.candidate is not None and int(result.candidate.max()) == 0
    assert float(result.angle_change_deg.max()) < 1.0


def test_refine_star_uses_the_star_candidates(clean: Path, tmp_path: Path) -> None:
    """cryoposeTopKIndices / cryoposeGridOrder in the star file (as cryopose infer writes
    them) are used by refine_star, and ignored with candidates=0."""
    truth = read_particles(clean).subset(np.arange(12))
    start, candidates, rank = _wrong_start_with_candidates(truth, 4, seed=9)
    star_in = tmp_path / "in.star"
    write_particles(with_candidate_columns(start, candidates.indices, 3), star_in)
    reference = clean.parent / "ground_truth.mrc"
    out = tmp_path / "refined.star"
    result = refine_star(star_in, reference, out, progress=False, particles_dir=clean.parent)
    back = read_particles(out, particles_dir=clean.parent)
    assert float(_errors(truth, back.rotations(torch.float64)).max()) < 2.0
    np.testing.assert_array_equal(back.particles["cryoposeRefineCandidate"], rank.numpy() + 1)
    assert list(back.particles["cryoposeTopKIndices"]) == encode_indices(candidates.indices)
    assert result.summary()["n_candidates"] == 4.0
    # Refining the refined file without candidates drops the stale start column.
    again = tmp_path / "again.star"
    no_cand = RefineConfig(candidates=0)
    refine_star(out, reference, again, no_cand, progress=False, particles_dir=clean.parent)
    assert "cryoposeRefineCandidate" not in read_particles(again).particles
    plain = refine_star(star_in, reference, tmp_path / "plain.star", no_cand, False, clean.parent)
    assert float(_errors(truth, plain.rotations).min()) > 25.0


def test_prepared_reference_is_shared_between_calls(clean: Path) -> None:
    """A reference prepared once refines like the map itself, and a second call with the same
    candidates projects no new grid slice (a stream's files share the cache)."""
    truth = read_particles(clean).subset(np.arange(8))
    start, candidates, _ = _wrong_start_with_candidates(truth, 4, seed=9)
    volume, _ = read_map(clean.parent / "ground_truth.mrc")
    config = RefineConfig()
    direct = refine_particles(start, volume, config, progress=False, candidates=candidates)
    prepared = PreparedReference(volume)
    first = refine_particles(start, prepared, config, progress=False, candidates=candidates)
    torch.testing.assert_close(first.rotations, direct.rotations, rtol=0, atol=1e-12)
    torch.testing.assert_close(first.origins_angst, direct.origins_angst, rtol=0, atol=1e-9)
    (cache,) = prepared._caches.values()
    projected = cache.projected
    assert 0 < projected <= 8 * 4
    refine_particles(start, prepared, config, progress=False, candidates=candidates)
    assert cache.projected == projected
    with pytest.raises(ValueError, match=r"pad factor 2\.0"):
        refine_particles(start, prepared, RefineConfig(pad_factor=3.0), False, candidates)
