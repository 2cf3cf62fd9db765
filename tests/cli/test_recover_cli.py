"""``cryopose recover train|run|evaluate`` end to end on a tiny simulated problem."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch

from cryopose.cli.main import main
from cryopose.geometry import euler_to_matrix, matrix_to_quaternion
from cryopose.io.mrc import read_map
from cryopose.recovery import e_or
from cryopose.simulate.particles import SimulationConfig, simulate_particles

ANGLES = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _quaternions(star: Path) -> torch.Tensor:
    """Quaternions straight from the file (starfile + Euler matrices), sorted by image name."""
    df = starfile.read(star)["particles"].sort_values("rlnImageName")
    return matrix_to_quaternion(euler_to_matrix(torch.from_numpy(df[ANGLES].to_numpy())))


def test_train_run_evaluate(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    map_path = data_dir / "EMD-3197.map"
    volume, angpix = read_map(map_path)
    cfg = SimulationConfig(n=40, box=20, snr=None, ctf=False, shift_sigma_angst=0.0, seed=5)
    star = simulate_particles(volume, angpix, tmp_path / "sim", cfg, progress=False)
    model = tmp_path / "model"
    code, out, err = run(
        ["recover", "train", "--map", str(map_path), "-o", str(model), "--box", "16",
         "--max-steps", "3", "--batch-size", "4", "--snr", "1.0"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "3 steps" in out
    config = json.loads((model / "config.json").read_text())
    assert config["train"]["box"] == 16 and config["train"]["snr"] == 1.0
    assert config["derived"]["angpix"] == pytest.approx(angpix)
    pred = star.parent / "recovered.star"
    code, out, err = run(
        ["recover", "run", str(star), "--model", str(model), "-o", str(pred),
         "--steps", "30", "--restarts", "1", "--batch-size", "1024", "--polish-rounds", "0"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "40 orientations" in out
    before = starfile.read(star)["particles"]
    after = starfile.read(pred)["particles"]
    assert list(after.columns) == list(before.columns)
    for column in before.columns:
        if column not in ANGLES:
            assert (after[column].to_numpy() == before[column].to_numpy()).all(), column
    assert not np.allclose(after[ANGLES].to_numpy(), before[ANGLES].to_numpy())

    code, out, err = run(["recover", "evaluate", str(star), str(pred), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    expected = e_or(_quaternions(star), _quaternions(pred))
    assert result["e_or_deg"] == pytest.approx(expected, abs=1e-6)
    assert result["n"] == 40 and result["fsc"] is None

    # Identical poses: E_OR and the map-frame error are 0; with --map, the FSC is reported.
    code, out, err = run(
        ["recover", "evaluate", str(star), str(star), "--map", str(map_path)], capsys
    )
    assert code == 0, err
    lines = dict(line.split(": ", 1) for line in out.strip().splitlines())
    assert float(lines["E_OR (O(4) alignment)"].split()[0]) < 1e-3
    assert float(lines["mean error after map rotation"].split()[0]) < 1e-3
    assert "FSC to the true map" in lines


def test_train_needs_one_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["recover", "train", "-o", str(tmp_path / "m")], capsys)
    assert code == 1
    assert "exactly one of --map and --structure" in err


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("train", "run", "evaluate"):
        code, out, _ = run(["recover", command, "--help"], capsys)
        assert code == 0
        assert "Example: cryopose recover" in out
