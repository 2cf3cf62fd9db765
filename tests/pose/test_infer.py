"""Pose inference: equal to the network + poses_from_logits, halves swapped, RELION-readable."""

from __future__ import annotations

import subprocess
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

from cryopose.data import PreprocessConfig
from cryopose.data.preprocess import preprocess
from cryopose.errors import InputError
from cryopose.geometry import euler_to_matrix, grid_size, random_rotations
from cryopose.geometry.healpix import so3_healpix_grid
from cryopose.io.mrc import read_map
from cryopose.io.particles import ParticleTable, read_particles
from cryopose.models import (
    Image2Sphere,
    Image2SphereConfig,
    PoseModelSpec,
    poses_from_logits,
    save_pose_model,
)
from cryopose.models.tta import quarter_turn_logits
from cryopose.pose.candidates import table_candidates
from cryopose.pose.infer import infer_poses
from cryopose.pose.pruning import fit_directional_stats, load_directional_stats
from cryopose.simulate.particles import SimulationConfig, simulate_particles

ANGLES = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
CONFIG = Image2SphereConfig(image_size=16, encoder_width=4, sphere_features=4, s2_features=4,
                            lmax=3, output_order=2, activation_order=1)  # fmt: skip
PRE = PreprocessConfig(mask=True)


def _images(table: ParticleTable) -> list[tuple[Path, int]]:
    """Where every particle's image is (resolved stack path, index)."""
    return [(path.resolve(), index) for path, index in table.image_locations()]


@pytest.fixture(scope="module")
def star(tmp_path_factory: pytest.TempPathFactory) -> Path:
    volume, angpix = read_map(Path(__file__).parents[1] / "data" / "EMD-3197.map")
    cfg = SimulationConfig(n=22, box=16, snr=1.0, seed=2, chunk_size=8)
    return simulate_particles(volume, angpix, tmp_path_factory.mktemp("sim"), cfg, progress=False)


def _nets(seed: int) -> dict[int, Image2Sphere]:
    torch.manual_seed(seed)
    nets = {1: Image2Sphere(CONFIG).eval(), 2: Image2Sphere(CONFIG).eval()}
    # half1.pt gives all-zero logits: every particle it predicts has probability exactly 1/M.
    with torch.no_grad():
        nets[1].so3_conv.weight.zero_()
    return nets


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model")
    save_pose_model(folder, PoseModelSpec(CONFIG, PRE, "D2", (1, 2)), _nets(0))
    return folder


def _reference(star: Path, nets: dict[int, Image2Sphere], symmetry: str) -> dict[str, np.ndarray]:
    """The network and poses_from_logits on batch-preprocessed images, row by row."""
    table = read_particles(star)
    images = torch.stack(
        [torch.from_numpy(np.array(mrcfile.mmap(p, mode="r").data[i], dtype=np.float32))
         for p, i in table.image_locations()]
    )  # fmt: skip
    x = preprocess(images, None, float(table.angpix()[0]), PRE).images
    subset = table.random_subset()
    out: dict[str, list[np.ndarray]] = {"rot": [], "top1": [], "prob": [], "top10": [], "nb": []}
    with torch.no_grad():
        for row in range(len(table)):
            logits = nets[3 - int(subset[row])](x[row : row + 1])
            pred = poses_from_logits(logits, CONFIG.output_order, 5, symmetry)
            probs = np.sort(torch.softmax(logits.double(), -1).numpy()[0])[::-1]
            out["rot"].append(pred.averaged_rotation[0].numpy())
            out["top1"].append(pred.rotation[0].numpy())
            out["prob"].append(pred.probability.numpy())
            out["top10"].append(np.array([probs[:10].sum()]))
            out["nb"].append(pred.neighbourhood_probability.numpy())
    return {k: np.stack(v) if k in ("rot", "top1") else np.concatenate(v) for k, v in out.items()}


def test_equals_network_and_halves_are_swapped(star: Path, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred.star"
    result = infer_poses(star, model, out, batch_size=5, top_k=3, progress=False)
    ref = _reference(star, _nets(0), "D2")
    subset = read_particles(star).random_subset()
    # Rotations of particles predicted by the uniform half1.pt are ties broken arbitrarily.
    real = subset == 1
    np.testing.assert_allclose(result.averaged_rotations.numpy()[real], ref["rot"][real], atol=1e-6)
    np.testing.assert_allclose(result.top1_rotations.numpy()[real], ref["top1"][real], atol=1e-6)
    np.testing.assert_allclose(result.probability.numpy(), ref["prob"], atol=1e-6)
    np.testing.assert_allclose(result.top10_score.numpy(), ref["top10"], atol=1e-6)
    np.testing.assert_allclose(result.neighbourhood_probability.numpy(), ref["nb"], atol=1e-6)
    assert result.top_k_indices.shape == (22, 3)
    # Half swap: half-2 particles were predicted by half1.pt (uniform), half-1 ones were not.
    assert set(subset.tolist()) == {1, 2}
    np.testing.assert_array_equal(result.model_half.numpy(), 3 - subset)
    uniform = result.probability.numpy()[subset == 2]
    np.testing.assert_allclose(uniform, 1 / grid_size(2), rtol=1e-9)
    assert result.probability.numpy()[subset == 1].min() > 1.05 / grid_size(2)
    # The file: the averaged poses, the scores, every input column, input order.
    back = read_particles(out)
    written = euler_to_matrix(torch.from_numpy(back.particles[ANGLES].to_numpy()))
    np.testing.assert_allclose(written.numpy(), result.averaged_rotations.numpy(), atol=1e-9)
    np.testing.assert_allclose(back.particles["cryoposeTop10Score"], ref["top10"], atol=1e-6)
    np.testing.assert_allclose(
        back.particles["rlnMaxValueProbDistribution"], ref["prob"], atol=1e-6
    )
    source = read_particles(star).particles
    assert set(source.columns) <= set(back.particles.columns)
    # Image names resolve from the output's folder: the same images as the input's.
    assert _images(back) == _images(read_particles(star))
    np.testing.assert_array_equal(back.particles["rlnOriginXAngst"], source["rlnOriginXAngst"])
    assert "cryoposeDirectionalZScore" not in back.particles.columns  # no statistics yet
    # The top-k cells as refinement candidates: most probable first, the model's grid order.
    candidates = table_candidates(back)
    assert candidates is not None and candidates.order.tolist() == [2] * 22
    assert torch.equal(candidates.indices, result.top_k_indices)
    assert torch.equal(result.candidates.indices, result.top_k_indices)
    top1 = so3_healpix_grid(2, torch.float64)[result.top_k_indices[:, 0]]
    torch.testing.assert_close(top1, result.top1_rotations)


def test_batch_size_top1_and_full_model(star: Path, model: Path, tmp_path: Path) -> None:
    a = infer_poses(star, model, batch_size=22, progress=False)
    b = infer_poses(star, model, batch_size=3, progress=False, write_top1=True)
    torch.testing.assert_close(a.averaged_rotations, b.averaged_rotations, rtol=0, atol=1e-6)
    torch.testing.assert_close(b.rotations, b.top1_rotations)
    torch.testing.assert_close(a.rotations, a.averaged_rotations)
    folder = tmp_path / "full"
    save_pose_model(folder, PoseModelSpec(CONFIG, PRE, "C1", (0,)), {0: _nets(0)[2]})
    full = infer_poses(star, folder, progress=False)
    assert full.model_half.tolist() == [0] * 22
    # half2.pt alone predicts the half-1 particles identically; now it predicts all of them.
    rows = a.model_half == 2
    torch.testing.assert_close(full.top1_rotations[rows], a.top1_rotations[rows])
    torch.testing.assert_close(full.probability[rows], a.probability[rows], rtol=0, atol=1e-9)
    assert float(full.probability[~rows].min()) > 1.05 / grid_size(2)  # not the uniform model


def test_directional_zscores_use_the_predicting_models_statistics(
    star: Path, model: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "with_stats"
    save_pose_model(folder, PoseModelSpec(CONFIG, PRE, "D2", (1, 2)), _nets(0))
    gen = torch.Generator().manual_seed(4)
    for half in (1, 2):
        R = random_rotations(200, generator=gen, dtype=torch.float64)
        score = 1e-4 * half * (1 + torch.rand(200, generator=gen, dtype=torch.float64))
        torch.save({"pred_rotations": R, "true_rotations": R, "max_probability": score,
                    "top10_score": score}, folder / f"validation_half{half}.pt")  # fmt: skip
    fit_directional_stats(folder, min_count=5)
    result = infer_poses(star, folder, tmp_path / "z.star", progress=False)
    stats = load_directional_stats(folder)
    assert stats is not None and result.zscore is not None
    for half in (1, 2):
        rows = result.model_half == half
        z = stats.halves[half].zscores(result.averaged_rotations[rows], result.top10_score[rows])
        torch.testing.assert_close(result.zscore[rows], z)
        other = stats.halves[3 - half].zscores(
            result.averaged_rotations[rows], result.top10_score[rows]
        )
        assert not torch.allclose(z, other)
    back = read_particles(tmp_path / "z.star").particles["cryoposeDirectionalZScore"]
    np.testing.assert_allclose(back, result.zscore.numpy(), rtol=1e-12)


def test_relion_reads_the_output(star: Path, model: Path, tmp_path: Path, relion: None) -> None:
    out = tmp_path / "pred.star"
    result = infer_poses(star, model, out, progress=False)
    subprocess.run(["relion_star_handler", "--i", str(out), "--o", str(tmp_path / "x.star")],
                   check=True, capture_output=True, cwd=tmp_path)  # fmt: skip
    back = read_particles(tmp_path / "x.star")
    # RELION writes 6 significant digits.
    torch.testing.assert_close(back.rotations(torch.float64), result.rotations, rtol=0, atol=2e-5)
    np.testing.assert_allclose(
        back.particles["cryoposeTop10Score"], result.top10_score.numpy(), rtol=1e-5
    )
    source = read_particles(star).particles
    assert set(source.columns) <= set(back.particles.columns)
    # Image names resolve from the output's folder: the same images as the input's.
    assert _images(back) == _images(read_particles(star))
    # RELION keeps the candidate columns as they were.
    candidates = table_candidates(back)
    assert candidates is not None and torch.equal(candidates.indices, result.top_k_indices)


def test_bad_model_folders_and_boxes_name_the_file(star: Path, model: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing.*config.json: expected a cryopose pose model"):
        infer_poses(star, tmp_path / "missing", progress=False)
    folder = tmp_path / "one_half"
    save_pose_model(folder, PoseModelSpec(CONFIG, PRE, "C1", (1, 2)), {1: _nets(0)[1]})
    with pytest.raises(InputError, match=r"half2.pt: missing the weights of half 2"):
        infer_poses(star, folder, progress=False)
    big = Image2SphereConfig.from_dict(CONFIG.to_dict() | {"image_size": 24})
    folder = tmp_path / "big"
    save_pose_model(folder, PoseModelSpec(big, PRE, "C1", (0,)), {0: Image2Sphere(big)})
    with pytest.raises(InputError, match=rf"{star}: row 1.*16 px.*expects 24 px"):
        infer_poses(star, folder, progress=False)


def test_quarter_turn_ensemble(star: Path, model: Path) -> None:
    table = read_particles(star)
    images = torch.stack(
        [torch.from_numpy(np.array(mrcfile.mmap(p, mode="r").data[i], dtype=np.float32))
         for p, i in table.image_locations()]
    )  # fmt: skip
    x = preprocess(images, None, float(table.angpix()[0]), PRE).images
    real = table.random_subset() == 1  # predicted by half2.pt (half1.pt is uniform)
    with torch.no_grad():
        fused = quarter_turn_logits(_nets(0)[2], x[real], CONFIG.output_order, turns=4)
    expected = poses_from_logits(fused, CONFIG.output_order, 5, "D2")
    four = infer_poses(star, model, batch_size=4, progress=False, turns=4)
    one = infer_poses(star, model, batch_size=4, progress=False)
    np.testing.assert_allclose(four.probability[real], expected.probability, rtol=1e-5)
    np.testing.assert_allclose(four.averaged_rotations[real], expected.averaged_rotation, atol=1e-5)
    assert not torch.allclose(four.probability[real], one.probability[real])
    with pytest.raises(InputError, match="turns must be one of"):
        infer_poses(star, model, progress=False, turns=3)
