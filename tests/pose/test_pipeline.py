"""PosePipeline / run_pipeline end to end with a tiny trained model: columns, pruning, errors.

The model is trained (validated on its own training particles) on 16 clean 16 px particles of
1s3x and then run on those particles, so the network's poses are a few degrees off (its
HEALPix order 2 grid) and the local refinement against the simulated map has something to
polish. The reference for z-scores and network poses is :func:`infer_poses` called directly;
for the refinement, the true poses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.data import PreprocessConfig
from cryopose.errors import InputError
from cryopose.geometry.distance import angular_error
from cryopose.imaging.resample import window_centred
from cryopose.io.mrc import read_map, write_map
from cryopose.io.particles import ParticleTable, read_particles
from cryopose.models import Image2SphereConfig
from cryopose.pose.candidates import encode_indices
from cryopose.pose.infer import InferenceResult, infer_poses
from cryopose.pose.pipeline import PipelineConfig, PosePipeline, run_pipeline
from cryopose.pose.refine import RefineConfig
from cryopose.simulate.particles import SimulationConfig, simulate_from_structure
from cryopose.training import TrainConfig, train_pose_model

N = 16
STRUCTURE = Path(__file__).resolve().parents[1] / "data" / "structures" / "1s3x.pdb.gz"
# Noise-free images have no background noise to normalise by.
PRE = PreprocessConfig(image_size=16, normalise=False)
TINY = Image2SphereConfig(
    image_size=16, encoder_width=4, sphere_features=8, s2_features=8, lmax=4,
    activation_order=1, output_order=2,
)  # fmt: skip
TRAIN = TrainConfig(
    batch_size=16, max_epochs=32, learning_rate=2e-2, label_smoothing=0.0, augment=False,
    half_sets=False, device="cpu", early_stopping_patience=None, validate_on_train=True,
    gradient_clip=None, keep_checkpoints=False,
)  # fmt: skip
# The particles carry no CTF.
REFINE = RefineConfig(ctf=False)
NEW_COLUMNS = {
    "rlnMaxValueProbDistribution",
    "cryoposeTop10Score",
    "cryoposeNeighbourhoodProbability",
    "cryoposeDirectionalZScore",
    "cryoposeRefineCC",
    "cryoposeRefineScore",
    "cryoposeRefinePeakZ",
    "cryoposeRefineZScore",
    "cryoposeTopKIndices",
    "cryoposeGridOrder",
    "cryoposeRefineCandidate",
}


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 clean, centred, CTF-free particles of 1s3x, 16 px at 6 A/px (+ ground_truth.mrc)."""
    config = SimulationConfig(
        n=N, snr=None, ctf=False, shift_sigma_angst=0.0, shift_max_angst=0.0, seed=3
    )
    return simulate_from_structure(
        STRUCTURE, 6.0, 16, tmp_path_factory.mktemp("sim"), config, resolution=12.0,
        progress=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def model(star: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "m"
    train_pose_model(star, folder, TINY, PRE, config=TRAIN, progress=False)
    return folder


@pytest.fixture(scope="module")
def network(star: Path, model: Path) -> InferenceResult:
    # As many top-k cells as the pipeline asks for (its refinement candidates).
    return infer_poses(star, model, top_k=RefineConfig().candidates, progress=False)


def _names(table: ParticleTable) -> list[str]:
    return [str(n) for n in table.particles["rlnImageName"]]


def test_run_pipeline_keeps_columns_refines_and_reports_timings(
    star: Path, model: Path, network: InferenceResult, tmp_path: Path
) -> None:
    out = tmp_path / "out.star"
    reference = star.parent / "ground_truth.mrc"
    summary = run_pipeline(star, model, reference, out, PipelineConfig(refine=REFINE))
    source, back = read_particles(star), read_particles(out)
    # Every input column, every row in input order, plus scores and refinement columns.
    assert set(source.particles.columns) | NEW_COLUMNS <= set(back.particles.columns)
    assert _names(back) == _names(source)
    np.testing.assert_array_equal(
        back.particles["cryoposeIsJunk"], source.particles["cryoposeIsJunk"]
    )
    assert network.zscore is not None
    np.testing.assert_allclose(
        back.particles["cryoposeDirectionalZScore"], network.zscore, atol=1e-9
    )
    np.testing.assert_allclose(
        back.particles["rlnMaxValueProbDistribution"], network.probability, atol=1e-9
    )
    cc = back.particles["cryoposeRefineCC"].to_numpy()
    score = back.particles["cryoposeRefineScore"].to_numpy()
    assert (cc > 0.5).all() and (cc <= 1.0 + 1e-6).all()
    assert ((score > 0) & (score < 1)).all()
    # Refinement polishes the network's poses: measured against the true poses.
    truth = source.rotations(torch.float64)
    before = angular_error(truth, network.rotations)
    after = angular_error(truth, back.rotations(torch.float64))
    reach = before < 8.0  # within the +-6 (+-2) degree local search
    print(
        f"pipeline: median error network {float(before.median()):.2f} deg -> refined "
        f"{float(after.median()):.2f}; within reach ({int(reach.sum())}/{N}) "
        f"{float(before[reach].median()):.2f} -> {float(after[reach].median()):.2f}"
    )
    assert float(after.median()) < 0.5 * float(before.median())
    assert int(reach.sum()) >= N // 4 and float(after[reach].median()) < 2.0
    # The search started from the network's top-k cells where one matched better.
    assert back.particles["cryoposeTopKIndices"].tolist() == encode_indices(network.top_k_indices)
    start = back.particles["cryoposeRefineCandidate"].to_numpy(dtype=np.int64)
    assert ((start >= 0) & (start <= 100)).all()
    # Timings: in the summary, in the json beside the star file, and consistent.
    assert summary["n_input"] == N and summary["n_kept"] == N
    assert summary["inference_s"] > 0 and summary["refinement_s"] > 0
    total = summary["inference_s"] + summary["refinement_s"]
    assert summary["particles_per_second"] == pytest.approx(N / total)
    written = json.loads((tmp_path / "out_pipeline.json").read_text())
    assert written["n_kept"] == N and written["config"]["refine"]["ctf"] is False
    assert written["particles_per_second"] == pytest.approx(summary["particles_per_second"])


def test_threshold_keeps_exactly_the_rows_at_or_above_it(
    star: Path, model: Path, network: InferenceResult
) -> None:
    assert network.zscore is not None
    z = network.zscore.numpy()
    s = np.sort(z)
    t = 0.5 * (s[N // 3] + s[N // 3 + 1])  # between two z-scores: no ties at the threshold
    pipeline = PosePipeline(model, None, PipelineConfig(threshold=float(t), refine=None))
    table = read_particles(star)
    kept = pipeline(table)
    expected = np.flatnonzero(z >= t)
    assert len(expected) == N - N // 3 - 1
    assert _names(kept) == [_names(table)[i] for i in expected]
    np.testing.assert_allclose(kept.particles["cryoposeDirectionalZScore"], z[expected], atol=1e-9)
    t_ = pipeline.timings
    assert (t_.n_in, t_.n_kept) == (N, len(expected))
    assert t_.inference_s > 0 and t_.refinement_s == 0.0
    assert "cryoposeRefineCC" not in kept.particles.columns


def test_junk_fraction_drops_the_lowest_zscores_of_each_call(
    star: Path, model: Path, network: InferenceResult
) -> None:
    assert network.zscore is not None
    z = network.zscore.numpy()
    pipeline = PosePipeline(model, None, PipelineConfig(junk_fraction=0.25, refine=None))
    table = read_particles(star)
    kept = pipeline(table)
    dropped = set(np.argsort(z, kind="stable")[: N // 4].tolist())
    assert _names(kept) == [n for i, n in enumerate(_names(table)) if i not in dropped]
    # A second call (a streamed file) drops a quarter of its own particles; timings add up.
    half = pipeline(table.subset(np.arange(N // 2)))
    assert len(half) == N // 2 - round(0.25 * (N // 2))
    assert (pipeline.timings.n_in, pipeline.timings.n_kept) == (N + N // 2, len(kept) + len(half))


def test_refine_score_prunes_after_refining_every_particle(star: Path, model: Path) -> None:
    reference = star.parent / "ground_truth.mrc"
    table = read_particles(star)
    everything = PosePipeline(model, reference, PipelineConfig(refine=REFINE))(table)
    peak = everything.particles["cryoposeRefinePeakZ"].to_numpy(dtype=np.float64)
    refine_z = everything.particles["cryoposeRefineZScore"].to_numpy(dtype=np.float64)
    med = np.median(peak)
    expected_z = (peak - med) / (1.4826 * np.median(np.abs(peak - med)))
    np.testing.assert_allclose(refine_z, expected_z, atol=1e-9)
    config = PipelineConfig(score="cryoposeRefineZScore", junk_fraction=0.25, refine=REFINE)
    pipeline = PosePipeline(model, reference, config)
    kept = pipeline(table)
    dropped = set(np.argsort(refine_z, kind="stable")[: N // 4].tolist())
    assert _names(kept) == [n for i, n in enumerate(_names(table)) if i not in dropped]
    assert (pipeline.timings.n_in, pipeline.timings.n_kept) == (N, N - N // 4)
    assert pipeline.timings.refinement_s > 0
    with pytest.raises(InputError, match="needs a reference map"):
        PosePipeline(model, None, config)
    with pytest.raises(InputError, match="unknown pruning score"):
        PipelineConfig(score="rlnClassNumber")
    with pytest.raises(InputError, match="needs refinement settings"):
        PipelineConfig(score="cryoposeRefineZScore", refine=None)


def test_quarter_turn_ensemble_reaches_the_pipeline(star: Path, model: Path) -> None:
    table = read_particles(star)
    kept = PosePipeline(model, None, PipelineConfig(refine=None, tta=4))(table)
    direct = infer_poses(table, model, progress=False, turns=4)
    np.testing.assert_allclose(kept.rotations(torch.float64), direct.rotations, atol=1e-9)
    plain = infer_poses(table, model, progress=False)
    assert not np.allclose(kept.particles["rlnMaxValueProbDistribution"], plain.probability)
    with pytest.raises(InputError, match=r"tta must be one of \(1, 2, 4\), got 3"):
        PipelineConfig(tta=3)


def test_bad_input_fails_early_and_names_the_file(star: Path, model: Path, tmp_path: Path) -> None:
    reference = star.parent / "ground_truth.mrc"
    with pytest.raises(InputError, match=r"nowhere.*config\.json"):
        PosePipeline(tmp_path / "nowhere", reference)
    with pytest.raises(InputError, match=r"missing\.mrc: reference map not found"):
        PosePipeline(model, tmp_path / "missing.mrc")
    with pytest.raises(InputError, match="not both"):
        PipelineConfig(threshold=0.0, junk_fraction=0.1)
    # Pruning needs the validation statistics saved with the model.
    bare = tmp_path / "bare"
    shutil.copytree(model, bare, ignore=shutil.ignore_patterns("validation_half*", "directional*"))
    with pytest.raises(InputError, match=rf"{bare.name}: pruning needs directional statistics"):
        PosePipeline(bare, None, PipelineConfig(threshold=0.0))
    PosePipeline(bare, None, PipelineConfig())  # without pruning it is fine
    # A reference map of another box: named with the star file and both geometries.
    volume, angpix = read_map(reference)
    small = tmp_path / "small.mrc"
    write_map(small, window_centred(volume, 12, ndim=3), angpix=angpix)
    table = read_particles(star).subset(np.arange(4))
    with pytest.raises(
        InputError, match=r"small\.mrc: map box 12 at 6\.000 A/px vs particles box 16"
    ):
        PosePipeline(model, small, PipelineConfig(refine=REFINE))(table)


def test_each_pixel_size_gets_its_own_reference_check(
    star: Path, model: Path, tmp_path: Path
) -> None:
    # Streamed files may differ in pixel size: the map checked (and cached) for the first
    # must not be used silently for the second.
    pipeline = PosePipeline(model, star.parent / "ground_truth.mrc", PipelineConfig(refine=REFINE))
    table = read_particles(star).subset(np.arange(4))
    assert len(pipeline(table)) == 4
    optics = table.optics.copy() if table.optics is not None else None
    assert optics is not None
    optics["rlnImagePixelSize"] = 5.0
    blocks = dict(table.blocks)
    blocks["optics"] = optics
    other = dataclasses.replace(table, optics=optics, blocks=blocks)
    assert float(other.angpix()[0]) == 5.0
    with pytest.raises(
        InputError,
        match=r"ground_truth\.mrc: map box 16 at 6\.000 A/px vs particles box 16 at 5\.000",
    ):
        pipeline(other)


def test_stream_cli_prunes_by_the_refinement_score(
    star: Path, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cryopose stream --score cryoposeRefineZScore`` keeps what the pipeline keeps."""
    from cryopose.cli.main import main

    # The same particles with a CTF (the stream reconstructs with it).
    config = SimulationConfig(
        n=N, snr=None, ctf=True, shift_sigma_angst=0.0, shift_max_angst=0.0, seed=3
    )
    watch = tmp_path / "watch"
    sim = simulate_from_structure(
        STRUCTURE, 6.0, 16, watch, config, resolution=12.0, progress=False
    )
    reference = tmp_path / "ground_truth.mrc"
    shutil.move(watch / "ground_truth.mrc", reference)
    (watch / "STOP").touch()
    out = tmp_path / "live"
    args = ["stream", str(watch), "--model", str(model), "--reference", str(reference),
            "-o", str(out), "--score", "cryoposeRefineZScore", "--junk-fraction", "0.25",
            "--poll-seconds", "0.05", "--settle-seconds", "0"]  # fmt: skip
    assert main(args) == 0
    streamed = read_particles(out / "particles.star")
    pruning = PipelineConfig(score="cryoposeRefineZScore", junk_fraction=0.25)
    expected = PosePipeline(model, reference, pruning)(read_particles(sim))
    assert len(streamed) == N - N // 4
    # The stream writes absolute stack paths.
    assert [n.replace(f"{watch}/", "") for n in _names(streamed)] == _names(expected)
    capsys.readouterr()
    assert main([*args, "--tta", "3"]) == 1  # --tta reaches the pipeline's settings
    assert "tta must be one of (1, 2, 4), got 3" in capsys.readouterr().err


def test_pipeline_cli_writes_particles_maps_and_timings(
    star: Path, model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cryopose pipeline`` = run_pipeline + half-map reconstruction, in another folder."""
    from cryopose.cli.main import main
    from cryopose.evaluation.fsc import resolution_at
    from cryopose.pose.reconstruct import reconstruct_particles

    reference = star.parent / "ground_truth.mrc"
    out = tmp_path / "run"
    args = ["pipeline", str(star), "--model", str(model), "--reference", str(reference),
            "-o", str(out), "--threads", "1", "--no-refine"]  # fmt: skip
    assert main(args) == 0
    assert main([*args[:-1]]) == 0  # with refinement, over the same folder
    kept = read_particles(out / "particles.star")
    expected = PosePipeline(model, reference, PipelineConfig(refine=REFINE))(read_particles(star))
    # Image names resolve from the output folder (RELION: relative to the star file).
    relative = os.path.relpath(star.parent, out)
    assert _names(kept) == [
        f"{n.split('@')[0]}@{relative}/{n.split('@')[1]}" for n in _names(expected)
    ]
    torch.testing.assert_close(kept.rotations(torch.float64), expected.rotations(torch.float64))
    summary = json.loads((out / "pipeline.json").read_text())
    assert summary["n_input"] == N and summary["n_kept"] == N and summary["symmetry"] == "C1"
    assert summary["total_s"] >= summary["inference_s"] + summary["refinement_s"]
    # The half maps of the refined poses are about as good as those of the true poses (FSC
    # 0.5: at 0.143 both reach Nyquist); the summary reports the unfiltered half maps' FSC.
    fsc_json = json.loads((out / "map_fsc.json").read_text())
    assert fsc_json["resolution_fsc_0.5"] == pytest.approx(summary["resolution_fsc_0.5"])
    truth = reconstruct_particles(
        read_particles(star), halves=True, regularisation="tau2", show_progress=False
    )
    assert truth.fsc is not None
    best = resolution_at(truth.fsc, 16, 6.0, 0.5)
    ours = float(fsc_json["resolution_fsc_0.5"])
    print(f"pipeline CLI: half-map FSC 0.5 {ours:.1f} A (true poses {best:.1f} A)")
    assert ours <= best + 3.0
    assert read_map(out / "map.mrc")[0].shape == (16, 16, 16)
    # --tta reaches the pipeline's settings (checked before any work).
    capsys.readouterr()
    assert main([*args, "--tta", "3"]) == 1
    assert "tta must be one of (1, 2, 4), got 3" in capsys.readouterr().err
