"""``cryopose evaluate`` and ``cryopose benchmark`` end to end on a tiny simulated entry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import cryopose.cli.benchmark
import cryopose.cli.evaluate  # noqa: F401  (registers the commands until main does)
from cryopose.cli.main import main
from cryopose.evaluation.benchmark_suite import BenchmarkEntry, make_benchmark_entries
from cryopose.io.particles import read_particles, write_particles


@pytest.fixture(scope="module")
def entry(tmp_path_factory: pytest.TempPathFactory) -> BenchmarkEntry:
    """A C1 entry with 120 particles of 32 px."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench")
    return make_benchmark_entries(out, ("C1",), n_particles=120, box=32, snr=1.0, seed=5)[0]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_evaluate_writes_a_report(
    entry: BenchmarkEntry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pred = read_particles(entry.star)
    pred.particles["rlnAnglePsi"] = pred.particles["rlnAnglePsi"] + 20.0
    pred_star = tmp_path / "pred.star"
    pred.particles["rlnImageName"] = [f"{i + 1:06d}@{p}" for p, i in pred.image_locations()]
    write_particles(pred, pred_star)
    out_dir = tmp_path / "report"
    args = ["evaluate", "--pred", str(pred_star), "--truth", str(entry.star), "-o", str(out_dir)]
    code, out, err = run([*args, "--mask", str(entry.mask)], capsys)
    assert code == 0, err
    assert f"report: {out_dir / 'report.json'}" in out
    saved = json.loads((out_dir / "report.json").read_text())
    # Psi off by 20 degrees about the viewing axis: a 20 degree rotation for every particle.
    assert saved["mean_error_deg"] == pytest.approx(20.0, abs=1e-4)
    assert saved["masked"] is True and saved["delta_fsc"] > 0
    assert (out_dir / "report.html").read_text().count("data:image/png;base64") == 2

    code, out, err = run([*args, "--json", "--type", "S2"], capsys)
    assert code == 0, err
    printed = json.loads(out)
    assert printed["prediction_type"] == "S2" and printed["mean_error_deg"] == pytest.approx(0.0)
    assert printed["delta_pcc"] == 0.0


def test_evaluate_rejects_bad_input(
    entry: BenchmarkEntry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    star = str(entry.star)
    code, _, err = run(
        ["evaluate", "--pred", star, "--truth", star, "--type", "R3", "-o", str(tmp_path)], capsys
    )
    assert code == 1 and "unknown prediction type 'R3'" in err
    half = read_particles(entry.star).subset(np.arange(10))
    write_particles(half, tmp_path / "few.star")
    code, _, err = run(
        ["evaluate", "--pred", str(tmp_path / "few.star"), "--truth", star, "-o", str(tmp_path)],
        capsys,
    )
    assert code == 1 and "no prediction for 110 ground-truth particle(s)" in err


def test_benchmark_prints_the_leaderboard(
    entry: BenchmarkEntry, capsys: pytest.CaptureFixture[str]
) -> None:
    root = entry.folder.parent
    args = ["benchmark", "-o", str(root), "--entries", "C1", "--n", "120", "--box", "32"]
    code, out, err = run([*args, "--snr", "1.0", "--seed", "5"], capsys)
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("| C1 |")]
    assert [line.split("|")[3].strip() for line in lines] == ["ground_truth", "random"]
    assert (root / "leaderboard.json").is_file()
