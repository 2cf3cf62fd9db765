"""U-Net segmentation: tiled inference, loss, patches, model folder."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cryopose.errors import InputError
from cryopose.io.picks import Picks
from cryopose.models.unet3d import UNet3D, UNet3DConfig
from cryopose.tomo.picker import (
    PickerSpec,
    _judged_candidates,
    best_threshold,
    load_picker,
    name_picks,
    save_picker,
    unet_probabilities,
)
from cryopose.tomo.segmentation import (
    PatchDataset,
    TomogramLabels,
    augment_rotations,
    blend_window,
    predict_tiled,
    segmentation_loss,
    tile_starts,
)


def _small_rf_model(n_classes: int = 3) -> nn.Module:
    """Two 3^3 convolutions: receptive-field radius 2, translation-equivariant."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv3d(4, n_classes, 3, padding=1)
    )


def test_tiled_equals_whole_volume_when_margin_covers_receptive_field() -> None:
    model = _small_rf_model()
    vol = torch.randn(21, 30, 27, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        whole = model(vol[None, None]).softmax(1)[0]
    tiled = predict_tiled(model, vol, 3, tile=12, overlap=6, margin=2)
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=1e-5)
    # With no margin the seams see the zero padding of tile edges: not exact any more.
    seams = predict_tiled(model, vol, 3, tile=12, overlap=6, margin=0)
    assert float((seams - whole).abs().max()) > 1e-3


def test_tiled_unet_equals_whole_volume_in_one_tile() -> None:
    net = UNet3D(UNet3DConfig(width=4, depth=2, n_classes=5)).eval()
    vol = torch.randn(13, 16, 18, generator=torch.Generator().manual_seed(2))
    padded = torch.nn.functional.pad(vol, [0, 0, 0, 0, 0, 1])  # z to a multiple of 2
    with torch.no_grad():
        whole = net(padded[None, None]).softmax(1)[0, :, :13]
    tiled = predict_tiled(net, vol, 5, tile=64, overlap=8, divisor=net.divisor)
    torch.testing.assert_close(tiled, whole, atol=1e-6, rtol=1e-5)
    assert torch.allclose(tiled.sum(0), torch.ones(13, 16, 18))


def test_tiled_unet_is_exact_with_margin_beyond_its_receptive_field() -> None:
    # depth 2: radius 2 + 2 * 2 + 2 (pool/up alignment) + 2 = 10 < margin 12, tile starts even.
    net = UNet3D(UNet3DConfig(width=2, depth=2, n_classes=2)).eval()
    vol = torch.randn(8, 8, 80, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        whole = net(vol[None, None]).softmax(1)[0]
    tiled = predict_tiled(net, vol, 2, tile=40, overlap=28, margin=12, divisor=2, batch_size=3)
    torch.testing.assert_close(tiled, whole, atol=1e-5, rtol=1e-4)


def test_flip_averaged_tiles_are_the_mean_of_flipped_whole_volumes() -> None:
    model = _small_rf_model()
    vol = torch.randn(21, 30, 27, generator=torch.Generator().manual_seed(5))
    views = augment_rotations()
    with torch.no_grad():
        by_hand = sum(
            model(vol.flip(list(v))[None, None]).softmax(1)[0].flip([d + 1 for d in v])
            if v
            else model(vol[None, None]).softmax(1)[0]
            for v in views
        )
    assert isinstance(by_hand, torch.Tensor)
    averaged = predict_tiled(model, vol, 3, tile=12, overlap=6, margin=2, flips=views)
    torch.testing.assert_close(averaged, by_hand / 4, atol=1e-6, rtol=1e-5)
    plain = predict_tiled(model, vol, 3, tile=12, overlap=6, margin=2)
    assert float((averaged - plain).abs().max()) > 1e-3  # the views do differ
    # Averaged over a group of rotations, the prediction rotates with the volume.
    turned = predict_tiled(model, vol.flip([0, 2]), 3, tile=12, overlap=6, margin=2, flips=views)
    torch.testing.assert_close(turned, averaged.flip([1, 3]), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="flips"):
        predict_tiled(model, vol, 3, flips=[(3,)])


def test_unet_probabilities_follow_the_specs_flips() -> None:
    net = UNet3D(UNet3DConfig(width=2, depth=2, n_classes=3)).eval()
    spec = PickerSpec(
        net.config, ("1bxn", "3j9i"), {"1bxn": 100.0, "3j9i": 800.0}, tile=16, overlap=8
    )
    vol = torch.randn(12, 20, 18, generator=torch.Generator().manual_seed(6))
    plain = unet_probabilities(vol, spec, net)
    kw = {"tile": 16, "overlap": 8, "divisor": net.divisor}
    torch.testing.assert_close(plain, predict_tiled(net, vol, 3, **kw))
    flipped = unet_probabilities(vol, replace(spec, test_time_flips=True), net)
    by_views = predict_tiled(net, vol, 3, flips=augment_rotations(), **kw)
    torch.testing.assert_close(flipped, by_views)
    assert float((flipped - plain).abs().max()) > 1e-4


def test_tile_starts_and_window() -> None:
    assert tile_starts(10, 16, 8) == [0]
    assert tile_starts(40, 16, 12) == [0, 12, 24]
    assert tile_starts(41, 16, 12) == [0, 12, 24, 25]
    w = blend_window(8, 4, 1, low_edge=False, high_edge=True)
    torch.testing.assert_close(
        w, torch.tensor([0, 1 / 3, 2 / 3, 1, 1, 1, 1, 1.0], dtype=torch.float64)
    )
    # Two neighbours overlapping by 4: weights over the overlap sum to a positive value.
    lo = blend_window(8, 4, 1, low_edge=True, high_edge=False)[4:]
    hi = blend_window(8, 4, 1, low_edge=False, high_edge=True)[:4]
    assert bool(((lo + hi) > 0).all())


def test_loss_is_zero_for_perfect_prediction_and_matches_dice() -> None:
    target = torch.randint(0, 3, (2, 4, 4, 4), generator=torch.Generator().manual_seed(4))
    perfect = 1e4 * torch.nn.functional.one_hot(target, 3).movedim(-1, 1).float()
    assert float(segmentation_loss(perfect, target, ce_weight=0.0, eps=0.0)) == pytest.approx(0.0)
    # Uniform prediction: soft Dice of class c = 2 (n_c / 3) / (N / 3 + n_c), by hand.
    logits = torch.zeros(2, 3, 4, 4, 4)
    n = target.numel()
    dice = [
        2 * (int((target == c).sum()) / 3) / (n / 3 + int((target == c).sum())) for c in range(3)
    ]
    expected = 1 - sum(dice) / 3 + torch.log(torch.tensor(3.0)).item()
    got = segmentation_loss(logits, target, ce_weight=1.0, eps=0.0)
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_augmentations_keep_the_wedge_axes() -> None:
    rots = augment_rotations()
    # Only flips (no axis swaps): the y tilt axis and the z beam stay put; pairs keep the hand.
    assert rots == [(), (0, 1), (0, 2), (1, 2)]
    assert all(len(r) % 2 == 0 for r in rots)
    assert len(augment_rotations(mirror=True)) == 8


def test_patches_centre_particles_and_respect_region() -> None:
    vol = torch.arange(40 * 40 * 40, dtype=torch.float32).reshape(40, 40, 40)
    labels = torch.zeros(40, 40, 40, dtype=torch.uint8)
    labels[18:21, 30:33, 18:21] = 2
    t = TomogramLabels(
        "t", vol, labels, torch.tensor([[19, 31, 19]]), torch.tensor([2]), torch.tensor([27])
    )
    weights = torch.tensor([0.0, 1.0, 1.0])
    data = PatchDataset([t], (16, 16, 16), 20, (0.0, 1.0), weights, p_particle=1.0, augment=False)
    for i in range(len(data)):
        x, y = data[i]
        assert x.shape == (1, 16, 16, 16) and y.shape == (16, 16, 16)
        assert int((y == 2).sum()) == 27  # the whole particle is inside every patch
    held_out = PatchDataset([t], (16, 16, 16), 10, (0.0, 0.5), weights, 1.0, augment=False)
    for i in range(len(held_out)):
        x, _ = held_out[i]
        y_start = int(x[0, 0, 0, 0]) // 40 % 40
        assert y_start + 16 <= 20  # patches stay in the first half of y
    with pytest.raises(InputError, match="too small"):
        PatchDataset([t], (48, 16, 16), 1, (0.0, 1.0), weights)


def test_model_folder_round_trip_weights_only(tmp_path: Path) -> None:
    net = UNet3D(UNet3DConfig(width=2, depth=2, n_classes=3))
    spec = PickerSpec(net.config, ("1bxn", "3j9i"), {"1bxn": 100.0, "3j9i": 800.0})
    save_picker(tmp_path, spec, net)
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(state) == set(net.state_dict())
    loaded_spec, loaded = load_picker(tmp_path)
    assert loaded_spec == spec
    x = torch.randn(1, 1, 8, 8, 8)
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    assert loaded_spec.min_voxels() == {1: 25, 2: 200}
    # Centre refinement and the cascade's smoothing are kept; an old config without them
    # gets the defaults; a negative refinement radius is named.
    tuned = replace(
        spec, cascade_sigma=1.5, refine_radius=1.0, refine_iterations=2,
        classify_refined=False, converge_factor=0.5, cascade_saddle_ratio=0.6,
        test_time_flips=True,
    )  # fmt: skip
    save_picker(tmp_path, tuned, net)
    assert load_picker(tmp_path)[0] == tuned
    config = json.loads((tmp_path / "config.json").read_text())
    for key in ("cascade_sigma", "refine_radius", "refine_iterations", "classify_refined",
                "converge_factor", "cascade_saddle_ratio", "test_time_flips"):  # fmt: skip
        config.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(config))
    old = load_picker(tmp_path)[0]
    assert (old.cascade_sigma, old.refine_radius, old.refine_iterations) == (None, 1.5, 3)
    assert (old.classify_refined, old.converge_factor, old.cascade_saddle_ratio) == (True, 1.0, 0.0)
    assert not old.test_time_flips
    (tmp_path / "config.json").write_text(json.dumps({**config, "refine_radius": -1}))
    with pytest.raises(InputError, match=r"config\.json.*refine_radius -1"):
        load_picker(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "converge_factor": -2}))
    with pytest.raises(InputError, match=r"config\.json.*converge_factor -2"):
        load_picker(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert spec.class_radius()["3j9i"] == pytest.approx((3 * 800 / (4 * math.pi)) ** (1 / 3))
    (tmp_path / "model.pt").write_bytes(b"truncated")  # torch.load: IndexError, not InputError
    with pytest.raises(InputError, match=r"model\.pt.*unreadable"):
        load_picker(tmp_path)
    (tmp_path / "config.json").write_text('{"format": 1}')
    with pytest.raises(InputError, match=r"config\.json"):
        load_picker(tmp_path)


def test_foreground_dice_term_by_hand() -> None:
    target = torch.randint(0, 3, (2, 4, 4, 4), generator=torch.Generator().manual_seed(5))
    logits = torch.zeros(2, 3, 4, 4, 4)  # P(background) = 1/3: foreground probability 2/3
    n, n_fg = target.numel(), int((target > 0).sum())
    fg_dice = 2 * (2 / 3) * n_fg / ((2 / 3) * n + n_fg)
    base = segmentation_loss(logits, target, ce_weight=0.0, eps=0.0)
    got = segmentation_loss(logits, target, ce_weight=0.0, eps=0.0, fg_weight=2.0)
    assert float(got - base) == pytest.approx(2.0 * (1 - fg_dice), rel=1e-5)


def test_best_threshold_maximises_f1_by_hand() -> None:
    scores = torch.tensor([0.6, 0.9, 0.5, 0.8, 0.7])
    hits = torch.tensor([True, True, False, True, False])
    # Kept from the top, 4 true particles: F1 = 0.4, 0.667, 0.571, 0.75 (k=4), 0.667.
    got = best_threshold(scores, hits, 4)
    assert got["f1"] == pytest.approx(0.75)
    assert got["threshold"] == pytest.approx(0.55)
    assert (got["tp"], got["fp"], got["fn"]) == (3.0, 1.0, 1.0)
    assert best_threshold(scores[:0], hits[:0], 4, default=0.3)["threshold"] == 0.3


def test_best_threshold_within_a_tolerance_keeps_more_picks() -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    hits = torch.tensor([True, True, False, False, True])
    # Kept from the top, 3 true particles: F1 = 0.5, 0.8 (k=2), 0.667, 0.571, 0.75 (k=5).
    assert best_threshold(scores, hits, 3)["threshold"] == pytest.approx(0.75)
    assert best_threshold(scores, hits, 3, tolerance=0.04)["threshold"] == pytest.approx(0.75)
    got = best_threshold(scores, hits, 3, tolerance=0.06)
    assert got["threshold"] == pytest.approx(0.25)  # halfway to 0 below the lowest
    assert got["f1"] == pytest.approx(0.75)
    assert (got["tp"], got["fp"], got["fn"]) == (3.0, 2.0, 0.0)


def test_best_threshold_keeping_every_pick_stops_halfway_to_the_lowest_judged_score() -> None:
    scores = torch.tensor([0.9, 0.8, 0.6])
    hits = torch.tensor([True, True, True])
    # Every pick is a hit, so all are kept; nothing below 0.4 was scored.
    assert best_threshold(scores, hits, 3)["threshold"] == pytest.approx(0.3)
    got = best_threshold(scores, hits, 3, lowest=0.4)
    assert got["threshold"] == pytest.approx(0.5)
    assert (got["tp"], got["fp"], got["fn"]) == (3.0, 0.0, 0.0)
    # A lower pick still decides when there is one.
    more = best_threshold(torch.tensor([0.9, 0.5]), torch.tensor([True, False]), 1, lowest=0.4)
    assert more["threshold"] == pytest.approx(0.7)


def test_cascade_judges_the_best_candidates_up_to_max_factor_times_those_above_plus_ten() -> None:
    # 2 above the threshold 0.5, 20 below it with distinct scores, shuffled.
    score = np.concatenate([[0.9, 0.7], np.linspace(0.45, 0.26, 20)])
    shuffled = np.random.default_rng(0).permutation(len(score))
    order, cut = _judged_candidates(score[shuffled], 0.5, 2.0)
    # 2 x 2 + 10 = 14 judged, the best first; the 15th best (0.45 - 12 x 0.01) is the cut.
    assert np.allclose(score[shuffled][order], np.sort(score)[::-1][:14])
    assert cut == pytest.approx(0.33)
    # 1 x 2 + 10 = 12: all judged, no cut.
    order, cut = _judged_candidates(score[:12], 0.5, 1.0)
    assert order.tolist() == list(range(12)) and cut is None


def test_name_picks_joins_two_maxima_of_one_particle_but_not_a_touching_small_one() -> None:
    # Foreground of a big ball (radius 6, class "big") touching a small one (radius 2.5,
    # "small") along x: centres 8.5 apart. Two peaks were found in the big one, 2 voxels either
    # side of its centre (no saddle merging), one on the small one 1 voxel off.
    z, y, x = np.mgrid[:32, :32, :40]
    big = ((x - 14) ** 2 + (y - 16) ** 2 + (z - 16) ** 2) <= 36
    small = ((x - 22.5) ** 2 + (y - 16) ** 2 + (z - 16) ** 2) <= 2.5**2
    prob = torch.zeros(3, 32, 32, 40)
    prob[1][torch.from_numpy(big)] = 1.0
    prob[2][torch.from_numpy(small)] = 1.0
    prob[0] = 1.0 - prob[1] - prob[2]
    spec = PickerSpec(
        UNet3DConfig(n_classes=3), ("big", "small"),
        {"big": 4 / 3 * math.pi * 6**3, "small": 4 / 3 * math.pi * 2.5**3},
    )  # fmt: skip
    picks = Picks(["big", "big", "small"], [[12.0, 16, 16], [16.0, 16, 16], [23.0, 16, 16]],
                  scores=[0.8, 0.9, 0.5])  # fmt: skip
    out = name_picks(torch.zeros(32, 32, 40), picks, prob, spec)
    # The two big picks converge on the big ball's centre and the better-scored one is kept;
    # the small ball stays. The big pick's ball (1.5 x 6 voxels) reaches into the small ball,
    # which pulls it towards x by at most the small ball's mass share: 65 / 970 x 8.5 = 0.57.
    assert list(out.class_ids) == ["big", "small"]
    assert 14.0 < out.coords[0, 0] < 14.57
    assert out.coords[0, 1:] == pytest.approx([16.0, 16.0])
    # The small one is pulled towards the big ball's edge by its own ball (1.5 x 2.5 voxels)
    # but stays inside the small ball, 7 voxels (more than 1 x its radius) from the big pick.
    assert abs(out.coords[1, 0] - 22.5) < 2.5 and out.coords[1, 0] - out.coords[0, 0] > 7
    assert out.scores.tolist() == [0.9, 0.5]
    # Without the drop both stay (a SHREC multiple hit); without refinement the two big picks,
    # 4 voxels apart (< 6), are still taken for one particle, at the better one's peak.
    assert len(name_picks(torch.zeros(1), picks, prob, replace(spec, converge_factor=0))) == 3
    unrefined = name_picks(torch.zeros(1), picks, prob, replace(spec, refine_radius=0))
    assert unrefined.coords[:, 0].tolist() == [16.0, 23.0]
