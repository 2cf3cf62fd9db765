"""``cryopose tomo train`` and ``tomo pick`` end to end: a U-Net overfits one tiny tomogram."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import cryopose.cli.tomo  # noqa: F401  (registers the tomo commands)
from cryopose.cli.main import main
from cryopose.errors import InputError
from cryopose.evaluation.shrec import evaluate_picks, load_truth
from cryopose.io.mrc import read_map
from cryopose.io.picks import Picks, read_picks
from cryopose.models.unet3d import UNet3D
from cryopose.simulate.tomogram import simulate_tomogram
from cryopose.tomo.classifier import (
    AnyCropClassifier,
    ClassifierTrainConfig,
    CropClassifierEnsemble,
    classify_picks,
    load_crop_classifier,
)
from cryopose.tomo.clustering import drop_converged
from cryopose.tomo.picker import (
    UNCAPPED_STEPS,
    PickerSpec,
    calibrate_cascade,
    load_picker,
    pick_segmented,
    pick_tomogram,
    refine_picks,
    segment_tomogram,
)
from cryopose.tomo.segmentation import normalise, predict_tiled


def _named_then_refined(
    volume: torch.Tensor,
    spec: PickerSpec,
    net: UNet3D,
    classifier: tuple[AnyCropClassifier, list[str]],
) -> tuple[Picks, Picks]:
    """The U-Net's unrefined picks of ``spec`` (tile 32), and them named by the classifier from
    crops at the pick and at its refined centre, refined by their new class, converged ones
    dropped: what ``tomo pick`` must write."""
    unet = pick_tomogram(volume, replace(spec, refine_radius=0.0, converge_factor=0.0), net, 32)
    prob = predict_tiled(
        net, normalise(volume), spec.network.n_classes, 32, spec.overlap, divisor=net.divisor
    )
    moved = refine_picks(unet, prob, spec).coords
    named = classify_picks(normalise(volume), unet, *classifier, also_at=moved)
    refined = refine_picks(named, prob, spec)
    return unet, drop_converged(refined, spec.class_radius(), spec.converge_factor)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("unet")
    tomo = simulate_tomogram(
        root / "tomo", size=48, thickness=32, seed=3, snr=1.0, n_particles=8,
        classes=["1bxn", "3j9i"], n_fiducials=0, n_vesicles=0, progress=False,
    )  # fmt: skip
    model = root / "model"
    args = ["tomo", "train", str(tomo), "-o", str(model), "--epochs", "9"]
    args += ["--steps-per-epoch", "10", "--batch-size", "2", "--patch", "32", "--width", "8"]
    args += ["--depth", "2", "--lr", "3e-3", "--val-fraction", "0"]
    assert main(args) == 0
    return tomo, model


def test_train_writes_a_weights_only_model(trained: tuple[Path, Path]) -> None:
    _, model = trained
    config = json.loads((model / "config.json").read_text())
    assert config["network"]["n_classes"] == 13 and len(config["history"]) == 9
    # The post-processing and its threshold were calibrated on the training tomogram.
    assert config["method"] in ("peaks", "components") and 0 < config["threshold"] < 1
    assert config["calibration"]["f1"] >= 0.8, config["calibration"]
    assert torch.load(model / "model.pt", weights_only=True)
    assert (model / "checkpoints" / "last.ckpt").is_file()
    spec, net = load_picker(model)
    assert spec.class_names[0] == "1bxn" and not net.training


def test_pick_finds_the_training_particles(trained: tuple[Path, Path], tmp_path: Path) -> None:
    tomo, model = trained
    out = tmp_path / "picks.txt"
    assert main(["tomo", "pick", str(tomo / "reconstruction.mrc"), "--model", str(model),
                 "-o", str(out), "--tile", "32"]) == 0  # fmt: skip
    result = evaluate_picks(read_picks(out), load_truth(tomo))
    assert result.tp + result.fn == 6
    # Measured: F1 1.0 (6 of 6, classes right); a bound with margin for other BLAS/CPUs.
    assert result.f1 >= 0.8, result.to_dict()


def test_resume_continues_from_the_checkpoint(trained: tuple[Path, Path]) -> None:
    tomo, model = trained
    args = ["tomo", "train", str(tomo), "-o", str(model), "--epochs", "10"]
    args += ["--steps-per-epoch", "1", "--batch-size", "1", "--patch", "32", "--val-fraction", "0"]
    assert main(args) == 0
    history = json.loads((model / "config.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, 11))


def test_train_passes_the_sampling_and_loss_options(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    tomo, _ = trained
    model = tmp_path / "model"
    args = ["tomo", "train", str(tomo), "-o", str(model), "--epochs", "1"]
    args += ["--steps-per-epoch", "1", "--batch-size", "1", "--patch", "32", "--width", "4"]
    args += ["--depth", "2", "--val-fraction", "0", "--fg-weight", "2.5", "--class-power", "0"]
    args += ["--p-particle", "0.6", "--mirror"]
    assert main(args) == 0
    train = json.loads((model / "config.json").read_text())["train"]
    assert (train["fg_weight"], train["class_power"]) == (2.5, 0.0)
    assert (train["p_particle"], train["mirror"]) == (0.6, True)


def test_pick_rejects_a_missing_model(trained: tuple[Path, Path], tmp_path: Path) -> None:
    tomo, _ = trained
    code = main(["tomo", "pick", str(tomo / "reconstruction.mrc"), "--model", str(tmp_path),
                 "-o", str(tmp_path / "p.txt")])  # fmt: skip
    assert code != 0


def test_classifier_minutes_adds_a_classifier_that_names_the_picks(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    tomo, _ = trained
    model = tmp_path / "model"
    args = ["tomo", "train", str(tomo), "-o", str(model), "--epochs", "1"]
    args += ["--steps-per-epoch", "1", "--batch-size", "1", "--patch", "32", "--width", "4"]
    args += ["--depth", "2", "--val-fraction", "0", "--classifier-minutes", "0.05"]
    assert main(args) == 0
    loaded = load_crop_classifier(model)
    assert loaded is not None and loaded[1] == list(load_picker(model)[0].class_names)
    written = json.loads((model / "classifier.json").read_text())
    assert written["history"]
    # The training state kept for resuming is removed once the classifier is written.
    assert (model / "checkpoints").is_dir()
    assert not (model / "checkpoints" / "classifier.ckpt").exists()
    # A time budget alone is not cut short by the default 5,000-step limit.
    assert written["train"]["steps"] == UNCAPPED_STEPS > ClassifierTrainConfig().steps
    # tomo pick names its picks with the classifier: the U-Net's picks, renamed.
    out = tmp_path / "picks.txt"
    volume = read_map(tomo / "reconstruction.mrc")[0]
    assert main(["tomo", "pick", str(tomo / "reconstruction.mrc"), "--model", str(model),
                 "-o", str(out), "--tile", "32"]) == 0  # fmt: skip
    spec, net = load_picker(model)
    unet, renamed = _named_then_refined(volume, spec, net, loaded)
    picked = read_picks(out)
    assert list(picked.class_ids) == list(renamed.class_ids)
    assert picked.coords == pytest.approx(renamed.coords)
    assert renamed.coords != pytest.approx(unet.coords)  # the centres were refined


def test_train_rejects_a_classifier_step_limit_below_one(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tomo, _ = trained
    code = main(["tomo", "train", str(tomo), "-o", str(tmp_path / "m"),
                 "--classifier-steps", "0"])  # fmt: skip
    assert code != 0 and "classifier steps must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_train_rejects_a_bad_classifier_architecture_before_training(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tomo, _ = trained
    code = main(["tomo", "train", str(tomo), "-o", str(tmp_path / "m"),
                 "--classifier-steps", "5", "--classifier-crop", "18"])  # fmt: skip
    assert code != 0 and "crop must be a multiple of 4" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    code = main(["tomo", "train", str(tomo), "-o", str(tmp_path / "m"),
                 "--classifier-steps", "5", "--classifier-full-res-blocks", "0"])  # fmt: skip
    assert code != 0 and "full_res_blocks must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_train_rejects_negative_classifier_minutes(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tomo, _ = trained
    code = main(["tomo", "train", str(tomo), "-o", str(tmp_path / "m"),
                 "--classifier-minutes", "-1"])  # fmt: skip
    assert code != 0 and "classifier minutes" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


# Lightning notes that the copied checkpoint was written in another folder (harmless here).
@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
def test_classifier_background_vetoes_picks_at_a_recalibrated_threshold(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    tomo, trained_model = trained
    # Resuming the fixture's finished training adds a background classifier to its U-Net.
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    done = len(json.loads((model / "config.json").read_text())["history"])  # 9, or more
    args = ["tomo", "train", str(tomo), "-o", str(model), "--epochs", str(done)]
    args += ["--steps-per-epoch", "10", "--batch-size", "2", "--patch", "32", "--width", "8"]
    # A step limit, not a time limit: the same classifier on a slow machine as on a fast one.
    args += ["--depth", "2", "--val-fraction", "0", "--classifier-steps", "30"]
    assert main([*args, "--classifier-background", "--classifier-crop", "20"]) == 0
    loaded = load_crop_classifier(model)
    assert loaded is not None and loaded[0].config.background
    assert loaded[0].config.crop == 20
    classifier = json.loads((model / "classifier.json").read_text())
    assert (classifier["train"]["steps"], classifier["history"][-1]["step"]) == (30, 30)
    spec, net = load_picker(model)
    config = json.loads((model / "config.json").read_text())
    assert config["cascade_threshold"] == spec.cascade_threshold is not None
    assert spec.calibration["cascade_threshold"] == spec.cascade_threshold
    assert {"cascade_f1", "cascade_tp", "cascade_fp", "cascade_fn"} <= set(spec.calibration)
    # tomo pick: the U-Net's picks above the cascade threshold, renamed or vetoed.
    out = tmp_path / "picks.txt"
    volume = read_map(tomo / "reconstruction.mrc")[0]
    assert main(["tomo", "pick", str(tomo / "reconstruction.mrc"), "--model", str(model),
                 "-o", str(out), "--tile", "32"]) == 0  # fmt: skip
    assert spec.cascade_threshold is not None and spec.cascade_sigma is not None
    assert {f"cascade_f1_sigma{s:g}" for s in (1.0, 1.5, 2.0)} <= set(spec.calibration)
    cascade = replace(
        spec, threshold=spec.cascade_threshold, sigma=spec.cascade_sigma,
        saddle_ratio=spec.cascade_saddle_ratio,
    )  # fmt: skip
    unet, expected = _named_then_refined(volume, cascade, net, loaded)
    picked = read_picks(out)
    assert 0 < len(picked) <= len(unet)
    assert list(picked.class_ids) == list(expected.class_ids)
    assert picked.coords == pytest.approx(expected.coords)
    # One segmentation picked twice, as the benchmark does: with the classifier it is what
    # tomo pick wrote, without it the U-Net's own picks.
    normalised, prob = segment_tomogram(volume, spec, net, 32)
    again = pick_segmented(normalised, prob, spec, loaded)
    assert list(again.class_ids) == list(expected.class_ids)
    assert again.coords == pytest.approx(expected.coords)
    own = pick_tomogram(volume, spec, net, 32)
    assert pick_segmented(normalised, prob, spec).coords == pytest.approx(own.coords)


def test_cascade_needs_a_classifier_with_a_background_output(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tomo, model = trained
    with pytest.raises(InputError, match="background output"):
        calibrate_cascade(model, [tomo])
    code = main(["tomo", "train", str(tomo), "-o", str(tmp_path / "m"),
                 "--classifier-background"])  # fmt: skip
    assert code != 0 and "classifier minutes" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
def test_cascade_is_calibrated_on_the_tomograms_asked_for(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    tomo, trained_model = trained
    other = simulate_tomogram(
        tmp_path / "other", size=48, thickness=32, seed=11, snr=1.0, n_particles=4,
        classes=["1bxn", "3j9i"], n_fiducials=0, n_vesicles=0, progress=False,
    )  # fmt: skip
    n_other, n_train = len(load_truth(other).class_ids), len(load_truth(tomo).class_ids)
    assert n_other != n_train  # which tomogram calibrated shows in the counts
    model = tmp_path / "model"
    shutil.copytree(trained_model, model)
    done = len(json.loads((model / "config.json").read_text())["history"])
    args = ["tomo", "train", str(tomo), "-o", str(model), "--epochs", str(done)]
    args += ["--steps-per-epoch", "10", "--batch-size", "2", "--patch", "32", "--width", "8"]
    args += ["--depth", "2", "--val-fraction", "0", "--classifier-steps", "30"]
    args += ["--classifier-background", "--classifier-crop", "20", "--calibrate", str(other)]
    assert main([*args, "--classifier-full-res-blocks", "2"]) == 0
    loaded = load_crop_classifier(model)
    assert loaded is not None and loaded[0].config.full_res_blocks == 2
    calibration = load_picker(model)[0].calibration
    assert calibration["cascade_tp"] + calibration["cascade_fn"] == n_other
    # The same as calibrating the trained folder on that tomogram afterwards.
    again = calibrate_cascade(model, [other])
    assert again.cascade_threshold == pytest.approx(calibration["cascade_threshold"])
    # Candidates are judged only down to floor x the picker's threshold, and the threshold
    # never falls below the candidates judged (it used to go halfway to 0 when all were kept).
    spec = load_picker(model)[0]
    high = calibrate_cascade(model, [other], floor=1.0, max_factor=0.0)
    assert high.cascade_threshold is not None and high.cascade_threshold > spec.threshold


def test_calibration_tomograms_are_checked_before_training(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tomo, _ = trained
    base = ["tomo", "train", str(tomo), "-o", str(tmp_path / "m"), "--classifier-steps", "5"]
    assert main([*base, "--calibrate", str(tomo)]) != 0
    assert "background output" in capsys.readouterr().err
    missing = tmp_path / "nowhere"
    assert main([*base, "--classifier-background", "--calibrate", str(missing)]) != 0
    assert str(missing / "reconstruction.mrc") in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
def test_ensemble_averages_two_classifiers_and_recalibrates(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tomo, trained_model = trained
    models = []
    for blocks in ("1", "2"):  # two classifiers of other depths on copies of one U-Net
        model = tmp_path / f"model{blocks}"
        shutil.copytree(trained_model, model)
        done = len(json.loads((model / "config.json").read_text())["history"])
        args = ["tomo", "train", str(tomo), "-o", str(model), "--epochs", str(done)]
        args += ["--steps-per-epoch", "10", "--batch-size", "2", "--patch", "32", "--width", "8"]
        args += ["--depth", "2", "--val-fraction", "0", "--classifier-steps", "30"]
        args += ["--classifier-background", "--classifier-crop", "20"]
        assert main([*args, "--classifier-full-res-blocks", blocks]) == 0
        models.append(model)
    # With a background output the threshold must be recalibrated: no tomograms, no ensemble.
    assert main(["tomo", "ensemble", str(models[0]), str(models[1])]) != 0
    assert "calibration tomograms" in capsys.readouterr().err
    assert load_crop_classifier(models[0])[0].config.full_res_blocks == 1  # type: ignore[index]
    code = main(["tomo", "ensemble", str(models[0]), str(models[1]), "--calibrate", str(tomo)])
    assert code == 0
    loaded = load_crop_classifier(models[0])
    assert loaded is not None and isinstance(loaded[0], CropClassifierEnsemble)
    assert [m.config.full_res_blocks for m in loaded[0].members] == [1, 2]  # type: ignore[union-attr]
    written = json.loads((models[0] / "classifier.json").read_text())
    assert [m["history"][-1]["step"] for m in written["members"]] == [30, 30]
    spec, net = load_picker(models[0])
    assert spec.cascade_threshold is not None
    # The threshold is the ensemble's, as calibrating the folder again gives.
    again = calibrate_cascade(models[0], [tomo])
    assert again.cascade_threshold == pytest.approx(spec.cascade_threshold)
    # tomo pick names (or vetoes) the picks with the averaged probabilities.
    out = tmp_path / "picks.txt"
    volume = read_map(tomo / "reconstruction.mrc")[0]
    assert main(["tomo", "pick", str(tomo / "reconstruction.mrc"), "--model", str(models[0]),
                 "-o", str(out), "--tile", "32"]) == 0  # fmt: skip
    assert spec.cascade_threshold is not None and spec.cascade_sigma is not None
    cascade = replace(
        spec, threshold=spec.cascade_threshold, sigma=spec.cascade_sigma,
        saddle_ratio=spec.cascade_saddle_ratio,
    )  # fmt: skip
    _, expected = _named_then_refined(volume, cascade, net, loaded)
    picked = read_picks(out)
    assert list(picked.class_ids) == list(expected.class_ids)
    assert picked.coords == pytest.approx(expected.coords)
