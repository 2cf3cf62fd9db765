"""``cryopose train`` end to end on a tiny simulated star file (16 px, CTF, pre-training)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import starfile
import torch

import cryopose.cli.train  # noqa: F401  (registers the command until main does)
from cryopose.cli.main import main
from cryopose.models import load_pose_model
from cryopose.simulate.particles import SimulationConfig, simulate_from_structure


def test_train_cli_with_pretraining(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = SimulationConfig(n=32, snr=1.0, shift_sigma_angst=0.0, seed=4)
    star = simulate_from_structure(
        data_dir / "structures" / "1s3x.pdb.gz", 6.0, 16, tmp_path / "sim", config,
        resolution=12.0, progress=False,
    )  # fmt: skip
    model = tmp_path / "model"
    code = main(
        ["train", str(star), "-o", str(model), "--image-size", "16", "--max-epochs", "1",
         "--output-order", "1", "--lmax", "2", "--encoder-width", "4", "--batch-size", "8",
         "--device", "cpu", "--pretrain-map", str(tmp_path / "sim" / "ground_truth.mrc"),
         "--pretrain-particles", "24", "--pretrain-epochs", "1", "--symmetry", "C1",
         "--patience", "0", "--lr-patience", "2", "--lr-schedule", "cosine"]
    )  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "half 1: 1 epochs" in out and "half 2: 1 epochs" in out
    # Off a terminal: one readable line per epoch.
    assert "pretrain epoch 1: loss" in err and "half2 epoch 1: loss" in err
    spec, nets = load_pose_model(model)
    assert spec.halves == (1, 2) and sorted(nets) == [1, 2]
    # CTF columns -> image + phase-flipped channels; the whole 16 px box at 6 A/px.
    assert spec.network.in_channels == 2 and spec.preprocess.ctf_correction == "concat_phase_flip"
    assert spec.preprocess.angpix == pytest.approx(6.0)
    with open(model / "train_log.csv") as handle:
        stages = [row["stage"] for row in csv.DictReader(handle)]
    assert stages == ["pretrain", "half1", "half2"]
    assert "pre-training: 1 epochs" in out
    # Particles are simulated on the fly (nothing written); the SNR is measured on the data,
    # which was simulated at SNR 1 from the same map.
    assert not (model / "pretrain_data").exists()
    extra = json.loads((model / "config.json").read_text())["extra"]
    assert 0.5 < extra["pretrain_snr"] < 1.5
    # --patience 0: no early stopping (the whole budget is used); --lr-patience is kept.
    assert extra["train"]["early_stopping_patience"] is None
    assert extra["train"]["lr_patience"] == 2
    assert extra["train"]["lr_schedule"] == "cosine"
    assert (model / "checkpoints" / "half1" / "last.ckpt").is_file()
    assert torch.load(model / "half1.pt", weights_only=True)


def test_train_cli_rejects_particles_without_poses(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = SimulationConfig(n=4, snr=1.0, ctf=False, seed=4)
    star = simulate_from_structure(
        data_dir / "structures" / "1s3x.pdb.gz", 6.0, 16, tmp_path / "sim", config,
        progress=False,
    )  # fmt: skip
    blocks = starfile.read(star, always_dict=True)
    blocks["particles"] = blocks["particles"].drop(
        columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    )
    no_poses = tmp_path / "sim" / "no_poses.star"
    starfile.write(blocks, no_poses)
    code = main(["train", str(no_poses), "-o", str(tmp_path / "m"), "--image-size", "16"])
    _, err = capsys.readouterr()
    assert code != 0
    assert "poses" in err and "no_poses.star" in err
    assert not (tmp_path / "m" / "config.json").exists()


def test_train_cli_rejects_a_negative_patience(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    star = tmp_path / "particles.star"  # never read: the options are checked first
    code = main(["train", str(star), "-o", str(tmp_path / "m"), "--patience", "-2"])
    _, err = capsys.readouterr()
    assert code != 0
    assert "early_stopping_patience" in err and "-2" in err


def test_train_cli_rejects_an_unknown_lr_schedule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    star = tmp_path / "particles.star"  # never read: the options are checked first
    code = main(["train", str(star), "-o", str(tmp_path / "m"), "--lr-schedule", "step"])
    _, err = capsys.readouterr()
    assert code != 0
    assert "lr_schedule" in err and "cosine" in err
