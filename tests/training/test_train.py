"""train_pose_model end to end on tiny simulated particles (16 px, output order 1-2)."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.data import PreprocessConfig
from cryopose.errors import InputError
from cryopose.geometry.distance import angular_error
from cryopose.geometry.healpix import nearest_grid_index, so3_healpix_grid
from cryopose.io.particles import read_particles
from cryopose.models import Image2SphereConfig, load_pose_model
from cryopose.training import TrainConfig, train_pose_model

# Noise-free images have no background noise to normalise by.
PRE = PreprocessConfig(image_size=16, normalise=False)
TINY = Image2SphereConfig(
    image_size=16, encoder_width=4, sphere_features=8, s2_features=8, lmax=4,
    activation_order=1, output_order=2,
)  # fmt: skip
QUIET = TrainConfig(
    batch_size=16, max_epochs=2, augment=False, half_sets=False, device="cpu",
    early_stopping_patience=None, validation_fraction=0.25,
)  # fmt: skip


def _log(model_dir: Path) -> list[dict[str, str]]:
    with open(model_dir / "train_log.csv") as handle:
        return list(csv.DictReader(handle))


def test_tiny_model_overfits_64_particles(clean_star: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(
        QUIET, batch_size=32, learning_rate=2e-2, max_epochs=60, label_smoothing=0.0,
        validate_on_train=True, gradient_clip=None,
    )  # fmt: skip
    result = train_pose_model(clean_star, tmp_path / "m", TINY, PRE, config=config, progress=False)
    half = result.halves[0]
    # Reference: the error of the true poses' own grid cells (order 2 quantisation).
    R = read_particles(clean_star).rotations(torch.float64)
    cells = so3_healpix_grid(2, torch.float64)[nearest_grid_index(R, 2)]
    quantisation = float(angular_error(R, cells).median())
    print(f"overfit: median {half.best_median_deg:.2f} deg, quantisation {quantisation:.2f}")
    assert half.best_median_deg <= quantisation + 1.0
    # The saved validation statistics are those of the saved (best) weights.
    stats = torch.load(tmp_path / "m" / "validation_half0.pt", weights_only=True)
    assert float(stats["angular_error_deg"].median()) == pytest.approx(half.best_median_deg)
    independent = angular_error(stats["true_rotations"].double(), stats["pred_rotations"].double())
    assert float(independent.median()) == pytest.approx(half.best_median_deg, abs=1e-3)
    assert torch.equal(stats["true_rotations"], R.float()[stats["rows"]])


def test_lr_halves_on_plateau_and_early_stopping_stops(clean_star: Path, tmp_path: Path) -> None:
    # A learning rate too small to change any prediction (but above ReduceLROnPlateau's eps):
    # every epoch after the first is a plateau. ReduceLROnPlateau(patience=0) halves after
    # each; early stopping (patience 2) stops after epoch 3 although 10 were allowed.
    config = dataclasses.replace(
        QUIET, learning_rate=1e-6, min_lr=0.0, lr_patience=0, early_stopping_patience=2,
        max_epochs=10, threads=1,
    )  # fmt: skip
    threads = torch.get_num_threads()
    result = train_pose_model(clean_star, tmp_path / "m", TINY, PRE, config=config, progress=False)
    assert torch.get_num_threads() == threads  # the thread setting is restored
    rows = _log(tmp_path / "m")
    assert [float(r["lr"]) for r in rows] == pytest.approx([1e-6, 5e-7, 2.5e-7], rel=1e-9)
    assert len({r["val_median_deg"] for r in rows}) == 1
    assert result.halves[0].epochs == 3
    assert result.halves[0].stopped_early


def test_finetuning_starts_at_the_rate_pretraining_ended_with(
    clean_star: Path, tmp_path: Path
) -> None:
    # As above, a rate too small to change predictions: every pre-training epoch after the
    # first is a plateau and halves it (the log holds the rate after each epoch's step: 1e-6,
    # 5e-7, 2.5e-7). Fine-tuning must go on at 2.5e-7 (and halve again on its own plateaus),
    # not restart at 1e-6.
    config = dataclasses.replace(
        QUIET, learning_rate=1e-6, min_lr=0.0, lr_patience=0, max_epochs=2, threads=1,
        pretrain_epochs=3, pretrain_particles=32,
    )  # fmt: skip
    model = tmp_path / "m"
    train_pose_model(
        clean_star, model, TINY, PRE, config=config, progress=False,
        pretrain_map=clean_star.parent / "ground_truth.mrc",
    )  # fmt: skip
    rows = _log(model)
    lrs = {
        stage: [float(r["lr"]) for r in rows if r["stage"] == stage]
        for stage in ("pretrain", "half0")
    }
    assert lrs["pretrain"] == pytest.approx([1e-6, 5e-7, 2.5e-7], rel=1e-9)
    assert lrs["half0"] == pytest.approx([2.5e-7, 1.25e-7], rel=1e-9)
    extra = load_pose_model(model)[0].extra
    assert extra["finetune_learning_rate"] == pytest.approx(2.5e-7, rel=1e-9)


def test_resume_continues_from_last_checkpoint(clean_star: Path, tmp_path: Path) -> None:
    config = dataclasses.replace(QUIET, augment=True, learning_rate=1e-2)
    straight = train_pose_model(
        clean_star, tmp_path / "a", TINY, PRE, config=config, progress=False
    )
    one = dataclasses.replace(config, max_epochs=1)
    first = train_pose_model(clean_star, tmp_path / "b", TINY, PRE, config=one, progress=False)
    ckpt = tmp_path / "b" / "checkpoints" / "half0" / "last.ckpt"
    assert first.halves[0].epochs == 1 and ckpt.is_file()
    resumed = train_pose_model(clean_star, tmp_path / "b", TINY, PRE, config=config, progress=False)
    assert resumed.halves[0].epochs == 2
    assert [r["epoch"] for r in _log(tmp_path / "b")] == ["0.0", "1.0"]
    # Epoch 2 started from epoch 1's weights, optimiser and data order: the two-step run and
    # the interrupted-then-resumed one end with the same weights and the same history.
    a = torch.load(tmp_path / "a" / "checkpoints" / "half0" / "last.ckpt", weights_only=False)
    b = torch.load(ckpt, weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-5, atol=1e-6)
    assert _log(tmp_path / "a")[1]["train_loss"] == pytest.approx(
        _log(tmp_path / "b")[1]["train_loss"]
    )
    assert straight.halves[0].best_median_deg == pytest.approx(resumed.halves[0].best_median_deg)


def test_half_sets_train_on_their_own_half_only(ctf_star: Path, tmp_path: Path) -> None:
    pre = PreprocessConfig(image_size=16, ctf_correction="concat_phase_flip", mask=True)
    net = dataclasses.replace(TINY, in_channels=2, output_order=1)
    config = dataclasses.replace(QUIET, max_epochs=1, half_sets=True, augment=True)
    result = train_pose_model(ctf_star, tmp_path / "m", net, pre, "C2", config, progress=False)
    subset = read_particles(ctf_star).random_subset()
    seen: list[np.ndarray] = []
    for half in (1, 2):
        r = result.halves[half]
        rows = np.concatenate([r.train_rows, r.validation_rows])
        assert set(rows.tolist()) == set(np.flatnonzero(subset == half).tolist())
        assert not set(r.train_rows.tolist()) & set(r.validation_rows.tolist())
        seen.append(rows)
        stats = torch.load(tmp_path / "m" / f"validation_half{half}.pt", weights_only=True)
        n = len(r.validation_rows)
        assert stats["pred_rotations"].shape == stats["true_rotations"].shape == (n, 3, 3)
        assert sorted(stats["rows"].tolist()) == sorted(r.validation_rows.tolist())
        p, top10 = stats["max_probability"], stats["top10_score"]
        assert bool(((p > 0) & (p <= top10) & (top10 <= 1 + 1e-6)).all())
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    spec, nets = load_pose_model(tmp_path / "m")
    assert spec.halves == (1, 2) and spec.symmetry == "C2" and spec.preprocess == pre
    # Weights only: a state dict of tensors, about the size of the parameters.
    for half in (1, 2):
        state = torch.load(tmp_path / "m" / f"half{half}.pt", weights_only=True)
        assert set(state) == {k for k, _ in nets[half].named_parameters()}
        size = (tmp_path / "m" / f"half{half}.pt").stat().st_size
        assert result.weight_bytes[half] == size
        assert result.parameter_bytes <= size <= result.parameter_bytes + 16_384
    differ = any(
        not torch.equal(a, b)
        for a, b in zip(nets[1].state_dict().values(), nets[2].state_dict().values(), strict=True)
    )
    assert differ


def test_cosine_schedule_follows_the_stage_progress(clean_star: Path, tmp_path: Path) -> None:
    # Pre-training: 32 simulated particles per epoch, batches of 16 -> 2 steps per epoch, 4 in
    # all. The log holds the rate of each epoch's last step, whose progress is steps done
    # before it over all steps: 1/4 and 3/4. Fine-tuning restarts at finetune_lr_factor x the
    # rate: 48 training particles (64 x 0.75) -> 3 steps per epoch, last steps at 2/6 and 5/6.
    lr, floor = 1e-3, 1e-5
    config = dataclasses.replace(
        QUIET, learning_rate=lr, min_lr=floor, lr_schedule="cosine", finetune_lr_factor=0.1,
        max_epochs=2, threads=1, pretrain_epochs=2, pretrain_particles=32,
    )  # fmt: skip
    model = tmp_path / "m"
    train_pose_model(
        clean_star, model, TINY, PRE, config=config, progress=False,
        pretrain_map=clean_star.parent / "ground_truth.mrc",
    )  # fmt: skip
    rows = _log(model)

    def cosine(start: float, p: float) -> float:  # the half-cosine written out
        return floor + (start - floor) * (1 + np.cos(np.pi * p)) / 2

    pre = [float(r["lr"]) for r in rows if r["stage"] == "pretrain"]
    fine = [float(r["lr"]) for r in rows if r["stage"] == "half0"]
    assert pre == pytest.approx([cosine(lr, 0.25), cosine(lr, 0.75)], rel=1e-6)
    assert fine == pytest.approx([cosine(0.1 * lr, 2 / 6), cosine(0.1 * lr, 5 / 6)], rel=1e-6)
    assert load_pose_model(model)[0].extra["finetune_learning_rate"] == pytest.approx(1e-4)


def test_unknown_lr_schedule_is_rejected() -> None:
    with pytest.raises(InputError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(InputError, match="finetune_lr_factor"):
        TrainConfig(finetune_lr_factor=0.0)
