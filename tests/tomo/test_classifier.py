"""Crop classifier of picks: crops, training on two separable shapes, files, reclassification."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from cryopose.errors import InputError
from cryopose.io.picks import Picks
from cryopose.tomo.classifier import (
    CLASSIFIER_CONFIG,
    ClassifierTrainConfig,
    CropClassifier,
    CropClassifierConfig,
    CropClassifierEnsemble,
    background_centres,
    classify_picks,
    combine_crop_classifiers,
    ema_update,
    extract_crops,
    load_crop_classifier,
    save_crop_classifier,
    train_crop_classifier,
    zero_tiny,
)
from cryopose.tomo.segmentation import TomogramLabels


def test_extract_crops_matches_slicing_and_pads_with_zeros() -> None:
    vol = torch.arange(20 * 21 * 22, dtype=torch.float32).reshape(20, 21, 22)
    centres = torch.tensor([[10, 10, 11], [0, 0, 0]])
    crops = extract_crops(vol, centres, 6)
    assert crops.shape == (2, 6, 6, 6)
    # Centre c spans c - 3 .. c + 2 on each axis.
    assert torch.equal(crops[0], vol[7:13, 7:13, 8:14])
    assert torch.equal(crops[1][3:, 3:, 3:], vol[0:3, 0:3, 0:3])
    assert float(crops[1][:3].abs().sum()) == 0.0


def _two_shape_tomogram(seed: int, n: int = 40) -> TomogramLabels:
    """Balls (class 1, radius 2) and bars (class 2, 7 x 1 x 1) on a grid, in noise."""
    g = np.random.default_rng(seed)
    side = 12 * int(np.ceil(np.sqrt(n)))
    vol = g.normal(0.0, 0.5, (16, side, side)).astype(np.float32)
    z, y, x = np.mgrid[-3:4, -3:4, -3:4]
    ball = (z**2 + y**2 + x**2 <= 4).astype(np.float32)
    bar = ((abs(z) <= 3) & (y == 0) & (x == 0)).astype(np.float32)
    centres, classes = [], []
    for i in range(n):
        cz, cy, cx = 8, 6 + 12 * (i // (side // 12)), 6 + 12 * (i % (side // 12))
        k = 1 + int(g.integers(2))
        vol[cz - 3 : cz + 4, cy - 3 : cy + 4, cx - 3 : cx + 4] += 2.0 * (ball if k == 1 else bar)
        centres.append((cz, cy, cx))
        classes.append(k)
    zeros = torch.zeros(vol.shape, dtype=torch.uint8)
    return TomogramLabels(
        f"shapes{seed}", torch.from_numpy(vol), zeros, torch.tensor(centres),
        torch.tensor(classes), torch.ones(n, dtype=torch.int64),
    )  # fmt: skip


def test_classifier_learns_two_shapes_and_reclassifies_picks(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    train = [_two_shape_tomogram(1), _two_shape_tomogram(2)]
    config = CropClassifierConfig(n_classes=2, crop=12, width=4)
    settings = ClassifierTrainConfig(steps=150, batch_size=16, lr=5e-3, jitter=1, eval_every=50)
    net, history = train_crop_classifier(train, 2, config, settings)
    assert [h["step"] for h in history] == [50.0, 100.0, 150.0]
    assert max(h["val_accuracy"] for h in history) >= 0.9
    # Unseen tomogram: picks with wrong classes are renamed from their crops.
    test = _two_shape_tomogram(3)
    coords = test.centres.flip(1).double() + torch.tensor([1.0, 0.0, -1.0])  # x y z, off by 1
    picks = Picks(["wrong"] * len(coords), coords, scores=torch.linspace(1, 0, len(coords)))
    names = ("ball", "bar")
    out = classify_picks(test.volume, picks, net, names)
    truth = np.asarray(names)[test.classes.numpy() - 1]
    assert np.mean(out.class_ids == truth) >= 0.9
    assert np.array_equal(out.coords, picks.coords) and np.array_equal(out.scores, picks.scores)
    # Files: weights only, same predictions after loading.
    save_crop_classifier(tmp_path, net, names, history, settings)
    loaded = load_crop_classifier(tmp_path)
    assert loaded is not None
    again = classify_picks(test.volume, picks, loaded[0], loaded[1])
    assert loaded[1] == list(names) and np.array_equal(again.class_ids, out.class_ids)


def test_background_centres_keep_away_from_particles() -> None:
    t = _two_shape_tomogram(1)
    labels = t.labels.clone()
    labels[:, :12, :12] = 1  # a labelled block: no centre within 2 voxels of it
    t = TomogramLabels(t.name, t.volume, labels, t.centres, t.classes, t.voxels)
    bg = background_centres(t, 200, 5.0, torch.Generator().manual_seed(0))
    assert bg.shape == (200, 3) and bg.dtype == torch.int64
    assert len(torch.unique(bg, dim=0)) >= 190  # not one place over and over
    assert torch.cdist(bg.double(), t.centres.double()).min() >= 5.0
    assert not ((bg[:, 1] < 14) & (bg[:, 2] < 14)).any()
    assert (bg >= 0).all() and (bg < torch.tensor(t.volume.shape)).all()
    # The first half sits on local maxima of the smoothed volume.
    smooth = torch.from_numpy(ndimage.gaussian_filter(t.volume.numpy(), 1.5))
    local_max = ndimage.maximum_filter(smooth.numpy(), size=3, mode="constant", cval=-np.inf)
    z, y, x = bg[:100].T
    assert np.array_equal(smooth.numpy()[z, y, x], local_max[z, y, x])


def test_background_output_vetoes_picks_of_empty_places(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    train = [_two_shape_tomogram(1), _two_shape_tomogram(2)]
    config = CropClassifierConfig(n_classes=2, crop=12, width=4, background=True)
    settings = ClassifierTrainConfig(
        steps=200, batch_size=16, lr=5e-3, jitter=1, eval_every=100, background_distance=5.0
    )
    net, history = train_crop_classifier(train, 2, config, settings)
    assert net.head.out_features == 3 and max(h["val_accuracy"] for h in history) >= 0.85
    # Unseen tomogram: particles keep their (right) classes, empty places are dropped.
    test = _two_shape_tomogram(3)
    empty = background_centres(test, 40, 5.0, torch.Generator().manual_seed(1))
    centres = torch.cat([test.centres, empty])
    coords = centres.flip(1).double()  # x y z
    scores = torch.linspace(1, 0, len(coords))
    picks = Picks(["?"] * len(coords), coords, scores=scores)
    out = classify_picks(test.volume, picks, net, ("ball", "bar"))
    kept = {tuple(c) for c in out.coords.astype(int).tolist()}
    particles = {tuple(c) for c in test.centres.flip(1).tolist()}
    # Measured: all 40 particles kept, 37 of 40 empty places dropped; bounds with margin.
    assert len(kept & particles) >= 36 and len(kept - particles) <= 8
    order = [i for i, c in enumerate(coords.int().tolist()) if tuple(c) in kept]
    assert out.scores == pytest.approx(scores.numpy()[order])  # survivors keep their scores
    # The flag is saved with the weights.
    save_crop_classifier(tmp_path, net, ("ball", "bar"), history, settings)
    loaded = load_crop_classifier(tmp_path)
    assert loaded is not None and loaded[0].config.background


def test_missing_and_malformed_classifier_files(tmp_path: Path) -> None:
    assert load_crop_classifier(tmp_path) is None
    (tmp_path / CLASSIFIER_CONFIG).write_text("{not json")
    with pytest.raises(InputError, match=CLASSIFIER_CONFIG):
        load_crop_classifier(tmp_path)
    save_crop_classifier(tmp_path, CropClassifier(CropClassifierConfig(3, 8, 2)), "abc")
    (tmp_path / "classifier.pt").write_bytes(b"truncated")
    with pytest.raises(InputError, match=r"classifier\.pt"):
        load_crop_classifier(tmp_path)


def test_bad_classifier_settings_are_rejected() -> None:
    with pytest.raises(InputError, match="multiple of 4"):
        CropClassifierConfig(n_classes=2, crop=10)
    with pytest.raises(InputError, match="classes"):
        train_crop_classifier([_two_shape_tomogram(1)], 3, CropClassifierConfig(2, 12, 4))
    with pytest.raises(InputError, match="background_fraction"):
        ClassifierTrainConfig(background_fraction=1.0)


class _Interrupt(Exception):
    """Stands in for Ctrl-C or a killed job."""


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_interrupted_training_resumes_to_the_same_weights(tmp_path: Path, ema: float) -> None:
    torch.set_num_threads(1)
    train = [_two_shape_tomogram(1), _two_shape_tomogram(2)]
    config = CropClassifierConfig(n_classes=2, crop=12, width=4, background=True)
    settings = ClassifierTrainConfig(steps=60, batch_size=8, jitter=1, eval_every=20, ema=ema)
    whole, whole_history = train_crop_classifier(train, 2, config, settings)

    ckpt = tmp_path / "classifier.ckpt"
    lines: list[str] = []

    def stop_at_40(line: str) -> None:
        lines.append(line)
        if line.startswith("classifier step 40:"):
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_crop_classifier(train, 2, config, settings, log=stop_at_40, checkpoint=ckpt)
    assert ckpt.is_file()  # written at step 20; the interrupt came before step 40's write
    resumed, history = train_crop_classifier(
        train, 2, config, settings, log=lines.append, checkpoint=ckpt
    )
    assert any(line.startswith("classifier resumed at step 20") for line in lines)
    assert [h["step"] for h in history] == [20.0, 40.0, 60.0]
    drop = "elapsed_s"
    assert [{k: v for k, v in h.items() if k != drop} for h in history] == [
        {k: v for k, v in h.items() if k != drop} for h in whole_history
    ]
    for name, value in whole.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    # Another time budget is accepted, and said, since it bends the learning-rate schedule.
    lines.clear()
    again, _ = train_crop_classifier(
        train, 2, config, settings, max_minutes=90, log=lines.append, checkpoint=ckpt
    )
    assert "classifier time budget none when checkpointed, now 90 min" in "\n".join(lines)
    for name, value in whole.state_dict().items():  # finished: nothing more is trained
        assert torch.equal(again.state_dict()[name], value), name
    # A checkpoint of other settings is refused, naming the file.
    with pytest.raises(InputError, match=r"classifier\.ckpt.*other settings"):
        train_crop_classifier(train, 2, config, replace(settings, lr=1e-4), checkpoint=ckpt)
    ckpt.write_bytes(b"truncated")
    with pytest.raises(InputError, match=r"classifier\.ckpt.*unreadable"):
        train_crop_classifier(train, 2, config, settings, checkpoint=ckpt)


def test_ema_update_is_the_geometric_average_and_copies_counters() -> None:
    average = {"w": torch.zeros(2, 3), "n": torch.tensor(0)}
    for k in range(1, 4):  # values 1, 2, 3 at decay 0.5: ((0 * .5 + 1 * .5) * .5 + 1) * .5 + 1.5
        ema_update(average, {"w": torch.full((2, 3), float(k)), "n": torch.tensor(k)}, 0.5)
    assert torch.allclose(average["w"], torch.full((2, 3), 2.125))
    assert int(average["n"]) == 3
    with pytest.raises(InputError, match="ema"):
        ClassifierTrainConfig(ema=1.0)


def test_averaged_weights_are_the_ones_returned() -> None:
    torch.set_num_threads(1)
    train = [_two_shape_tomogram(1), _two_shape_tomogram(2)]
    config = CropClassifierConfig(n_classes=2, crop=12, width=4)
    plain = ClassifierTrainConfig(steps=40, batch_size=8, jitter=1, eval_every=40)
    raw, _ = train_crop_classifier(train, 2, config, plain)
    averaged, history = train_crop_classifier(train, 2, config, replace(plain, ema=0.9))
    # Same optimiser path (the average does not feed back), different returned weights.
    w = "head.weight"
    assert not torch.allclose(raw.state_dict()[w], averaged.state_dict()[w])
    assert len(history) == 1 and 0.0 <= history[0]["val_accuracy"] <= 1.0


def test_zero_tiny_zeroes_only_values_below_the_cut() -> None:
    tiny32 = torch.finfo(torch.float32).tiny  # 1.18e-38, the smallest normal float32
    a = torch.tensor([1e-40, -1e-40, tiny32, -1e-25, 2e-20, 0.5, 0.0], dtype=torch.float32)
    assert a[0] != 0 and a[0].abs() < tiny32  # stored as a subnormal, not flushed already
    b = torch.tensor([1e-310, 1e-21, 1e-19], dtype=torch.float64)
    ints = torch.tensor([0, 1, 2])
    zero_tiny([a, b, ints, torch.empty(0)])
    expected = torch.tensor([0.0, 0.0, 0.0, 0.0, 2e-20, 0.5, 0.0], dtype=torch.float32)
    assert torch.equal(a, expected)
    assert torch.equal(b, torch.tensor([0.0, 0.0, 1e-19], dtype=torch.float64))
    assert torch.equal(ints, torch.tensor([0, 1, 2]))
    c = torch.tensor([1e-5, 1e-3])
    zero_tiny([c], below=1e-4)
    assert torch.equal(c, torch.tensor([0.0, 1e-3]))


def test_loading_zeroes_subnormal_weights_written_by_older_training(tmp_path: Path) -> None:
    net = CropClassifier(CropClassifierConfig(3, 8, 2))
    weight = net.head.weight
    with torch.no_grad():
        weight[0, 0] = 1e-40  # a channel that weight decay shrank for thousands of steps
    kept = weight.detach().clone()
    save_crop_classifier(tmp_path, net, "abc")
    loaded = load_crop_classifier(tmp_path)
    assert loaded is not None
    head = loaded[0].head.weight.detach()
    assert float(head[0, 0]) == 0.0
    assert torch.equal(head[1:], kept[1:])


def test_full_resolution_blocks_round_trip_and_older_files_load_with_one(tmp_path: Path) -> None:
    deep = CropClassifier(CropClassifierConfig(3, 8, 2, full_res_blocks=2))
    convs = [m for m in deep.features.modules() if isinstance(m, torch.nn.Conv3d)]
    shallow = CropClassifier(CropClassifierConfig(3, 8, 2, full_res_blocks=1))
    assert (
        len(convs)
        == len([m for m in shallow.features.modules() if isinstance(m, torch.nn.Conv3d)]) + 2
    )
    # the extra block sees the crop before pooling: its output keeps the crop's edge
    first_pool = next(i for i, m in enumerate(deep.features) if isinstance(m, torch.nn.MaxPool3d))
    assert deep.features[:first_pool](torch.zeros(1, 1, 8, 8, 8)).shape == (1, 2, 8, 8, 8)
    assert first_pool == 2
    save_crop_classifier(tmp_path, deep, "abc")
    loaded = load_crop_classifier(tmp_path)
    assert loaded is not None and loaded[0].config.full_res_blocks == 2
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded[0](x), deep.eval()(x))
    # a classifier.json written before the option existed describes one block
    save_crop_classifier(tmp_path, shallow, "abc")
    path = tmp_path / CLASSIFIER_CONFIG
    data = json.loads(path.read_text())
    del data["network"]["full_res_blocks"]
    path.write_text(json.dumps(data))
    old = load_crop_classifier(tmp_path)
    assert old is not None and old[0].config.full_res_blocks == 1
    with pytest.raises(InputError, match="full_res_blocks"):
        CropClassifierConfig(3, 8, 2, full_res_blocks=0)


class _CentreMean(CropClassifier):
    """Two classes from the mean of the crop's central 2^3 voxels (unchanged by the flips)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.config.crop // 2
        m = x[:, 0, h - 1 : h + 1, h - 1 : h + 1, h - 1 : h + 1].mean(dim=(1, 2, 3))
        return torch.stack([10 * m, -10 * m], dim=1)


def test_shift_augmentation_averages_the_pick_and_its_six_neighbours() -> None:
    net = _CentreMean(CropClassifierConfig(2, 8, 1))
    volume = torch.zeros(16, 16, 16)
    c = 8
    volume[c, c, c] = 0.1  # in the central block of the pick and of its +z, +y, +x neighbours
    for axis in range(3):  # each only in the central block of one -1 neighbour
        far = [c, c, c]
        far[axis] -= 2
        volume[tuple(far)] = -100.0
    picks = Picks(["?"], np.array([[c, c, c]], dtype=float), scores=np.array([1.0]))
    # Alone, the pick's crop says "a" (p = 0.562). With the shifts: 4 x 0.562 for "a" against
    # 4 x 0.438 + 3 x 1.0 for "b".
    assert list(classify_picks(volume, picks, net, ("a", "b"), shifts=False).class_ids) == ["a"]
    assert list(classify_picks(volume, picks, net, ("a", "b")).class_ids) == ["b"]


def test_a_second_centre_per_pick_is_averaged_with_the_pick() -> None:
    net = _CentreMean(CropClassifierConfig(2, 8, 1))
    volume = torch.zeros(16, 16, 16)
    volume[8, 8, 4] = 0.4  # central-block mean 0.05: p(a) = sigmoid(1.0) = 0.731 at x = 4
    volume[8, 8, 11] = -0.1  # -0.0125: p(a) = sigmoid(-0.25) = 0.438 at x = 11
    volume[8, 2, 11] = -0.8  # -0.1: p(a) = sigmoid(-2) = 0.119 at (11, 2, 8)
    at = np.array([[4.0, 8, 8], [4.0, 8, 8]])
    picks = Picks(["?", "?"], at, angles=[[1, 2, 3], [4, 5, 6]], scores=[1.0, 0.5])

    def named(second: list[list[float]] | None) -> list[str]:
        out = classify_picks(volume, picks, net, ("a", "b"), shifts=False, also_at=second)
        np.testing.assert_array_equal(out.coords, at)  # the reported centre is the pick's
        np.testing.assert_array_equal(out.angles, picks.angles)
        return list(out.class_ids)

    assert named(None) == ["a", "a"]
    # (0.731 + 0.438) / 2 = 0.585: still "a"; (0.731 + 0.119) / 2 = 0.425: "b", which neither
    # crop alone at the pick says and the second alone says more strongly.
    assert named([[11.0, 8, 8], [11.0, 2, 8]]) == ["a", "b"]
    alone = Picks(["?"], [[11.0, 8, 8]], scores=[1.0])
    assert list(classify_picks(volume, alone, net, ("a", "b"), shifts=False).class_ids) == ["b"]
    with pytest.raises(ValueError, match="also_at"):
        classify_picks(volume, picks, net, ("a", "b"), also_at=[[1.0, 2, 3]])


def _seeded(config: CropClassifierConfig, seed: int) -> CropClassifier:
    torch.manual_seed(seed)
    return CropClassifier(config).eval()


def test_ensemble_averages_the_members_probabilities() -> None:
    a = _seeded(CropClassifierConfig(n_classes=3, crop=12, width=4, background=True), 0)
    b = _seeded(CropClassifierConfig(3, crop=12, width=4, background=True, full_res_blocks=1), 1)
    ensemble = CropClassifierEnsemble([a, b]).eval()
    x = torch.randn(5, 1, 12, 12, 12)
    with torch.no_grad():
        mean = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
        out = torch.softmax(ensemble(x), 1)
    assert out.shape == (5, 4) and ensemble.config == a.config
    assert torch.allclose(out, mean, atol=1e-6)
    # Two copies of one network: the ensemble names picks exactly as the network does.
    t = _two_shape_tomogram(3)
    coords = t.centres.flip(1).double()
    picks = Picks(["x"] * len(coords), coords, scores=torch.linspace(1, 0, len(coords)))
    names = ("ball", "bar", "cone")
    one = classify_picks(t.volume, picks, a, names)
    twice = classify_picks(t.volume, picks, CropClassifierEnsemble([a, a]), names)
    assert list(twice.class_ids) == list(one.class_ids)
    assert np.array_equal(twice.coords, one.coords)


def test_ensemble_members_must_share_classes_and_crop() -> None:
    a = _seeded(CropClassifierConfig(n_classes=3, crop=12, width=4), 0)
    with pytest.raises(InputError, match="at least 2"):
        CropClassifierEnsemble([a])
    for other in (
        CropClassifierConfig(n_classes=2, crop=12, width=4),
        CropClassifierConfig(n_classes=3, crop=16, width=4),
        CropClassifierConfig(n_classes=3, crop=12, width=4, background=True),
    ):
        with pytest.raises(InputError, match="share"):
            CropClassifierEnsemble([a, _seeded(other, 1)])


def test_combined_classifiers_are_written_and_loaded_as_an_ensemble(tmp_path: Path) -> None:
    names = ("ball", "bar")
    a = _seeded(CropClassifierConfig(n_classes=2, crop=12, width=4), 0)
    b = _seeded(CropClassifierConfig(n_classes=2, crop=12, width=8, full_res_blocks=1), 1)
    settings = ClassifierTrainConfig(steps=7, seed=3)
    save_crop_classifier(tmp_path / "a", a, names, [{"step": 7.0, "elapsed_s": 2.0}], settings)
    save_crop_classifier(tmp_path / "b", b, names)
    combined = combine_crop_classifiers(tmp_path / "a", [tmp_path / "a", tmp_path / "b"])
    loaded = load_crop_classifier(tmp_path / "a")
    assert loaded is not None and loaded[1] == list(names)
    assert isinstance(loaded[0], CropClassifierEnsemble) and len(loaded[0].members) == 2
    x = torch.randn(3, 1, 12, 12, 12)
    with torch.no_grad():
        assert torch.allclose(loaded[0](x), combined(x), atol=1e-6)
    written = json.loads((tmp_path / "a" / CLASSIFIER_CONFIG).read_text())
    members = written["members"]
    assert [m["network"]["width"] for m in members] == [4, 8]
    assert members[0]["train"]["seed"] == 3 and members[0]["history"][0]["elapsed_s"] == 2.0
    assert members[1]["train"] is None
    # An ensemble combined with one more classifier: its members are taken one by one.
    save_crop_classifier(tmp_path / "c", a, names)
    three = combine_crop_classifiers(tmp_path / "d", [tmp_path / "a", tmp_path / "c"])
    assert len(three.members) == 3
    reloaded = load_crop_classifier(tmp_path / "d")
    assert reloaded is not None and isinstance(reloaded[0], CropClassifierEnsemble)
    assert len(reloaded[0].members) == 3


def test_combining_rejects_other_classes_and_missing_classifiers(tmp_path: Path) -> None:
    a = _seeded(CropClassifierConfig(n_classes=2, crop=12, width=4), 0)
    save_crop_classifier(tmp_path / "a", a, ("ball", "bar"))
    save_crop_classifier(tmp_path / "b", a, ("ball", "cone"))
    with pytest.raises(InputError, match="differ") as info:
        combine_crop_classifiers(tmp_path / "a", [tmp_path / "a", tmp_path / "b"])
    assert str(tmp_path / "b") in str(info.value)
    with pytest.raises(InputError, match="missing") as info:
        combine_crop_classifiers(tmp_path / "a", [tmp_path / "a", tmp_path / "none"])
    assert str(tmp_path / "none") in str(info.value)


def test_tomograms_may_come_from_a_generator_read_once() -> None:
    torch.set_num_threads(1)
    config = CropClassifierConfig(n_classes=2, crop=12, width=4, background=True)
    settings = ClassifierTrainConfig(steps=20, batch_size=8, jitter=1, eval_every=10)
    seen: list[int] = []

    def lazily() -> Iterator[TomogramLabels]:
        for seed in (1, 2):
            seen.append(seed)
            yield _two_shape_tomogram(seed)

    listed, _ = train_crop_classifier(
        [_two_shape_tomogram(1), _two_shape_tomogram(2)], 2, config, settings
    )
    streamed, history = train_crop_classifier(lazily(), 2, config, settings)
    assert seen == [1, 2] and len(history) == 2  # each tomogram loaded once
    # The same split, background crops and steps: the same weights.
    for a, b in zip(listed.state_dict().values(), streamed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(InputError, match="at least one training tomogram"):
        train_crop_classifier(iter([]), 2, config, settings)
