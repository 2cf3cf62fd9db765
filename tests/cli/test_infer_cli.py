"""``cryopose infer``, ``evaluate-poses`` and ``prune`` end to end on a tiny simulated set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cryopose.cli.evaluate_poses
import cryopose.cli.infer
import cryopose.cli.prune  # noqa: F401  (registers the commands)
from cryopose.cli.main import main
from cryopose.data import PreprocessConfig
from cryopose.evaluation.angular import pose_errors
from cryopose.geometry import random_rotations
from cryopose.io.mrc import read_map
from cryopose.io.particles import read_particles
from cryopose.models import Image2Sphere, Image2SphereConfig, PoseModelSpec, save_pose_model
from cryopose.pose.candidates import table_candidates
from cryopose.pose.infer import infer_poses
from cryopose.simulate.particles import SimulationConfig, simulate_particles

CONFIG = Image2SphereConfig(image_size=16, encoder_width=4, sphere_features=4, s2_features=4,
                            lmax=2, output_order=1, activation_order=1)  # fmt: skip


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_infer_evaluate_prune(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    volume, angpix = read_map(data_dir / "EMD-3197.map")
    cfg = SimulationConfig(n=20, box=16, snr=1.0, seed=7)
    star = simulate_particles(volume, angpix, tmp_path / "sim", cfg, progress=False)
    model = tmp_path / "model"
    torch.manual_seed(1)
    spec = PoseModelSpec(CONFIG, PreprocessConfig(), "C1", (1, 2))
    save_pose_model(model, spec, {1: Image2Sphere(CONFIG), 2: Image2Sphere(CONFIG)})
    gen = torch.Generator().manual_seed(2)
    for half in (1, 2):
        R = random_rotations(100, generator=gen, dtype=torch.float64)
        s = 2e-2 * (1 + torch.rand(100, generator=gen, dtype=torch.float64))
        torch.save({"pred_rotations": R, "true_rotations": R, "max_probability": s,
                    "top10_score": s}, model / f"validation_half{half}.pt")  # fmt: skip

    pred = tmp_path / "pred.star"
    code, out, err = run(
        ["infer", str(star), "--model", str(model), "-o", str(pred), "--batch-size", "7",
         "--top-k", "4"], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "20 poses, directional z-scores" in out
    library = infer_poses(star, model, progress=False)
    back = read_particles(pred)
    np.testing.assert_allclose(back.rotations(torch.float64), library.rotations, atol=1e-6)
    candidates = table_candidates(back)  # --top-k cells, the model's grid order
    assert candidates is not None and candidates.k == 4 and candidates.order.tolist() == [1] * 20
    assert torch.equal(candidates.indices, library.top_k_indices[:, :4])
    assert library.zscore is not None
    z = library.zscore.numpy()
    np.testing.assert_allclose(back.particles["cryoposeDirectionalZScore"], z, atol=1e-5)

    plot = tmp_path / "h.png"
    code, out, err = run(
        ["evaluate-poses", str(star), str(pred), "--symmetry", "D2", "--json", "--plot", str(plot)],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary == pytest.approx(pose_errors(star, pred, "D2").summary())
    assert set(summary) == {"mean_deg", "weighted_mean_deg", "median_deg", "within_5_deg",
                            "within_10_deg", "n", "shift_error_angst"}  # fmt: skip
    assert summary["n"] == 20 and summary["shift_error_angst"] == pytest.approx(0.0)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    code, out, err = run(["evaluate-poses", str(star), str(star)], capsys)
    assert code == 0, err
    assert "median angular error" in out and "0.000 deg" in out

    clean = tmp_path / "clean.star"
    code, out, err = run(["prune", str(pred), "-o", str(clean), "--junk-fraction", "0.25"], capsys)
    assert code == 0, err
    kept = read_particles(clean).particles
    assert len(kept) == 15 and "kept 15 of 20" in out
    assert kept["cryoposeDirectionalZScore"].min() > np.sort(z)[4]
    code, out, err = run(["prune", str(pred), "-o", str(clean), "--threshold", "0"], capsys)
    assert code == 0 and f"kept {int((z >= 0).sum())} of 20" in out

    code, _, err = run(["infer", str(star), "--model", str(tmp_path / "nope"), "-o", "x.star"],
                       capsys)  # fmt: skip
    assert code == 1 and "nope/config.json" in err
    code, _, err = run(["prune", str(star), "-o", str(clean), "--threshold", "0"], capsys)
    assert code == 1 and f"{star}: no column cryoposeDirectionalZScore" in err

    pred4 = tmp_path / "pred4.star"
    code, out, err = run(["infer", str(star), "--model", str(model), "-o", str(pred4),
                          "--tta", "4"], capsys)  # fmt: skip
    assert code == 0, err
    four = infer_poses(star, model, progress=False, turns=4)
    np.testing.assert_allclose(read_particles(pred4).rotations(torch.float64), four.rotations,
                               atol=1e-6)  # fmt: skip
    assert not np.allclose(four.probability, library.probability)
    code, _, err = run(["infer", str(star), "--model", str(model), "-o", str(pred4),
                        "--tta", "3"], capsys)  # fmt: skip
    assert code == 1 and "turns must be one of (1, 2, 4), got 3" in err
