"""Segmentation -> picks: connected components on hand-made label volumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryopose.tomo.clustering import cluster_segmentation
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
