"""Segmentation -> picks: connected components on hand-made label volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryopose.io.picks import Picks
from cryopose.tomo.clustering import (
    cluster_segmentation,
    drop_converged,
    match_centres,
    merge_saddle_picks,
    peak_picks,
    refine_centres,
)
from cryopose.tomo.segmentation import erode_labels

NAMES = ["a", "b", "c"]


def _labels() -> np.ndarray:
    lab = np.zeros((20, 24, 28), dtype=np.int64)
    lab[2:7, 3:8, 4:9] = 1  # 5^3 cube of class a, centre (x, y, z) = (6, 5, 4)
    lab[10:13, 15:18, 20:23] = 3  # 3^3 cube of class c, centre (21, 16, 11)
    lab[10, 15, 20] = 2  # one voxel of class b inside it: the majority is still c
    lab[15:17, 2:4, 2:4] = 2  # 2^3 cube of class b, centre (2.5, 2.5, 15.5)
    return lab


def test_centres_classes_and_sizes() -> None:
    picks = cluster_segmentation(_labels(), NAMES, by_class=False)
    # Scores are the sizes without a probability: largest first.
    assert picks.class_ids.tolist() == ["a", "c", "b"]
    np.testing.assert_allclose(
        picks.coords, [[6.0, 5.0, 4.0], [21.0, 16.0, 11.0], [2.5, 2.5, 15.5]]
    )
    assert picks.scores is not None
    np.testing.assert_allclose(picks.scores, [125.0, 27.0, 8.0])
    # By class, the lone b voxel is its own component and the c cube loses it.
    picks = cluster_segmentation(_labels(), NAMES)
    assert picks.class_ids.tolist() == ["a", "c", "b", "b"]
    assert picks.scores is not None
    np.testing.assert_allclose(picks.scores, [125.0, 26.0, 8.0, 1.0])
    np.testing.assert_allclose(picks.coords[3], [20.0, 15.0, 10.0])


def test_size_filter_drops_small_components() -> None:
    picks = cluster_segmentation(_labels(), NAMES, min_voxels={2: 9, 3: 26})
    assert picks.class_ids.tolist() == ["a", "c"]
    picks = cluster_segmentation(_labels(), NAMES, min_voxels={2: 2, 3: 27})
    assert picks.class_ids.tolist() == ["a", "b"]


def test_probability_weighted_centroid() -> None:
    lab = np.zeros((6, 6, 10), dtype=np.int64)
    lab[2, 2, 2:6] = 1  # a line of 4 voxels along x
    fg = np.zeros(lab.shape)
    fg[2, 2, 2:6] = [0.1, 0.1, 0.1, 0.7]
    picks = cluster_segmentation(lab, NAMES, foreground=torch.from_numpy(fg))
    expected_x = (0.1 * 2 + 0.1 * 3 + 0.1 * 4 + 0.7 * 5) / 1.0
    np.testing.assert_allclose(picks.coords, [[expected_x, 2.0, 2.0]])
    assert picks.scores is not None
    np.testing.assert_allclose(picks.scores, [0.25])


def test_fragments_near_a_larger_component_are_suppressed() -> None:
    lab = np.zeros((16, 16, 30), dtype=np.int64)
    lab[5:10, 5:10, 5:10] = 1  # main body, centre x = 7
    lab[7, 7, 12] = 1  # fragment 5 voxels away
    lab[7, 7, 25] = 1  # separate particle 18 voxels away
    assert len(cluster_segmentation(lab, NAMES)) == 3
    picks = cluster_segmentation(lab, NAMES, min_distance={1: 6.0})
    np.testing.assert_allclose(picks.coords, [[7.0, 7.0, 7.0], [25.0, 7.0, 7.0]])


def test_connectivity_counts_diagonal_contacts() -> None:
    lab = np.zeros((4, 4, 4), dtype=np.int64)
    lab[0, 0, 0] = lab[1, 1, 1] = 1  # corner-touching voxels
    assert len(cluster_segmentation(lab, NAMES, connectivity=1)) == 2
    assert len(cluster_segmentation(lab, NAMES, connectivity=3)) == 1


def test_empty_and_bad_labels() -> None:
    assert len(cluster_segmentation(np.zeros((3, 3, 3), dtype=np.int64), NAMES)) == 0
    with pytest.raises(ValueError, match=r"0\.\.3"):
        cluster_segmentation(np.full((3, 3, 3), 4), NAMES)


def test_erosion_peels_only_contacts() -> None:
    occ = torch.zeros((10, 10, 20), dtype=torch.int64)
    occ[2:8, 2:8, 2:8] = 1
    occ[2:8, 2:8, 8:14] = 2  # touches object 1 on the face x = 7 | 8
    occ[2:5, 2:5, 17:20] = 3  # alone, at the border
    alive = erode_labels(occ, 1)
    # Brute force: a voxel survives when no other object is within 1 voxel (cube).
    expected = torch.zeros_like(alive)
    for z, y, x in torch.nonzero(occ).tolist():
        win = occ[max(z - 1, 0) : z + 2, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
        expected[z, y, x] = bool(((win == 0) | (win == occ[z, y, x])).all())
    assert torch.equal(alive, expected)
    assert int(alive[:, :, 7].sum()) == 0 and int(alive[:, :, 8].sum()) == 0
    assert int(alive[:, :, 6].sum()) == 36
    assert int((alive & (occ == 3)).sum()) == 27


def _ball(shape: tuple[int, int, int], centre_zyx: tuple[int, int, int], r: float) -> np.ndarray:
    z, y, x = np.indices(shape)
    cz, cy, cx = centre_zyx
    return np.asarray((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r)


def test_peaks_separate_particles_that_a_miscalibrated_segmentation_merges() -> None:
    # What the U-Net trained on particle-centred patches produced on a whole tomogram:
    # P(background) ~0.1 nearly everywhere (argmax foreground), particles only more confident.
    shape = (20, 24, 30)
    prob = np.full((4, *shape), 0.3, dtype=np.float32)
    prob[0] = 0.1
    truth = {(10, 12, 11): 2, (10, 12, 18): 3}  # (z, y, x) -> class: two touching balls
    for centre, c in truth.items():
        ball = _ball(shape, centre, 3.0)
        prob[:, ball] = 0.001
        prob[c, ball] = 0.997
    labels = prob.argmax(0)
    merged = cluster_segmentation(labels, NAMES, 1 - prob[0])
    assert len(merged) <= 3  # one per argmax class: the particles are lost in the background
    picks = peak_picks(prob, NAMES, sigma=1.0, radius=3, threshold=0.95)
    pairs = zip(picks.coords, picks.class_ids, strict=True)
    got = {tuple(int(v) for v in xyz[::-1]): name for xyz, name in pairs}
    assert got == {(10, 12, 11): "b", (10, 12, 18): "c"}
    # Below the miscalibrated background level every voxel of the flat region is a "peak".
    assert len(peak_picks(prob, NAMES, sigma=1.0, radius=3, threshold=0.5)) > 10


def test_match_centres_counts_first_hits_only() -> None:
    picks = np.array([[0, 0, 0], [0, 0, 1], [10, 10, 10], [5, 5, 5]], dtype=np.float64)
    centres = np.array([[0, 0, 0], [10, 10, 11]], dtype=np.float64)
    hit = match_centres(picks, centres, np.array([2.0, 2.0]))
    assert hit.tolist() == [True, False, True, False]
    assert match_centres(picks[:0], centres, np.array([2.0, 2.0])).tolist() == []


def _blob(
    shape: tuple[int, int, int], centres: list[tuple[float, float, float]], sigma: float
) -> np.ndarray:
    """Sum of Gaussians at ``(z, y, x)`` centres, peak 1 each."""
    z, y, x = np.indices(shape, dtype=np.float64)
    out = np.zeros(shape)
    for cz, cy, cx in centres:
        out += np.exp(-((z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))
    return out.astype(np.float32)


def test_saddle_merge_joins_one_elongated_particle_not_two_neighbours() -> None:
    # One elongated particle: two Gaussians 6 voxels apart with sigma 3 (no valley: the
    # midpoint is 2 exp(-1/2) = 1.21, the maxima 1 + exp(-2) = 1.14). Two neighbours: 10 voxels
    # apart with sigma 1.5 (midpoint 2 exp(-25 / 4.5) = 0.008): background between them.
    one = _blob((16, 16, 40), [(8, 8, 5), (8, 8, 11)], 3.0)
    two = _blob((16, 16, 40), [(8, 8, 22), (8, 8, 32)], 1.5)
    fg = np.maximum(one, two)
    coords = [[5, 8, 8], [11, 8, 8], [22, 8, 8], [32, 8, 8]]  # x y z
    scores = [float(fg[8, 8, int(c[0])]) for c in coords]
    picks = Picks(["a", "a", "b", "b"], coords, scores=scores)
    kept = merge_saddle_picks(picks, fg, ratio=0.6, max_distance=12.0)
    assert sorted(kept.coords[:, 0].tolist()) in ([5.0, 22.0, 32.0], [11.0, 22.0, 32.0])
    # A stricter ratio keeps both maxima of the elongated particle; a short reach merges none.
    assert len(merge_saddle_picks(picks, fg, ratio=1.01)) == 4
    assert len(merge_saddle_picks(picks, torch.from_numpy(fg), 0.6, max_distance=5.0)) == 4


def test_refine_centres_moves_a_wall_maximum_to_the_centre_of_a_hollow_particle() -> None:
    # A spherical shell (inner radius 3, outer 6) centred off-grid: its centroid is the centre,
    # while any maximum of its foreground lies in the wall, 3-6 voxels away.
    centre = np.array([20.3, 18.0, 17.6])  # (z, y, x)
    grid = np.stack(np.meshgrid(*[np.arange(40)] * 3, indexing="ij"), axis=-1)
    r = np.linalg.norm(grid - centre, axis=-1)
    fg = ((r >= 3) & (r <= 6)).astype(np.float32)
    wall = [17.6 + 4.5, 18.0, 20.3]  # (x, y, z)
    picks = Picks(["shell", "other"], [wall, [5.0, 5.0, 5.0]], angles=[[1, 2, 3]] * 2,
                  scores=[0.9, 0.1])  # fmt: skip
    out = refine_centres(picks, fg, {"shell": 9.0}, iterations=5)
    # Flat-kernel mean shift on a symmetric shell converges to its centre (up to the rounding
    # of the ball's centre to a voxel and the shell's own voxelisation).
    assert out.coords[0] == pytest.approx(centre[::-1], abs=0.15)
    # A class without a radius stays, and so do classes, angles and scores.
    assert out.coords[1].tolist() == [5.0, 5.0, 5.0]
    assert list(out.class_ids) == ["shell", "other"]
    np.testing.assert_array_equal(out.angles, picks.angles)
    np.testing.assert_array_equal(out.scores, picks.scores)
    # No foreground in the ball: unchanged; no iterations: unchanged.
    empty = refine_centres(picks, np.zeros_like(fg), {"shell": 9.0})
    np.testing.assert_array_equal(empty.coords, picks.coords)
    np.testing.assert_array_equal(refine_centres(picks, fg, {"shell": 9.0}, 0).coords,
                                  picks.coords)  # fmt: skip
    with pytest.raises(ValueError, match="Z, Y, X"):
        refine_centres(picks, fg[0], {"shell": 9.0})


def test_drop_converged_keeps_the_better_of_two_picks_on_one_particle() -> None:
    # A big particle (radius 8) touching a small one (radius 3): their centres are 11 apart,
    # the sum of the radii. Two picks converged on the big one 2 voxels apart, the worse first.
    picks = Picks(
        ["big", "big", "small", "other"],
        [[10.0, 10, 10], [12.0, 10, 10], [21.0, 10, 10], [21.5, 10, 10]],
        angles=[[1, 2, 3], [4, 5, 6], [7, 8, 9], [0, 0, 0]],
        scores=[0.5, 0.9, 0.4, 0.8],
    )
    radii = {"big": 8.0, "small": 3.0}
    out = drop_converged(picks, radii)
    # The better big pick stays; the small particle is 9 > 3 from it and stays; "other" has no
    # radius (0) and is never dropped, nor does it drop the small one beside it.
    assert out.coords[:, 0].tolist() == [12.0, 21.0, 21.5]
    assert list(out.class_ids) == ["big", "small", "other"]
    np.testing.assert_array_equal(out.angles, [[4, 5, 6], [7, 8, 9], [0, 0, 0]])
    np.testing.assert_array_equal(out.scores, [0.9, 0.4, 0.8])
    # The limit is factor x the smaller radius: at 3.1 x, the small one (9 < 9.3) goes too.
    assert drop_converged(picks, radii, 3.1).coords[:, 0].tolist() == [12.0, 21.5]
    # factor 0 keeps everything; without scores, the earlier pick wins.
    assert len(drop_converged(picks, radii, 0.0)) == 4
    unscored = Picks(["big", "big"], [[10.0, 10, 10], [12.0, 10, 10]])
    assert drop_converged(unscored, radii).coords[:, 0].tolist() == [10.0]
