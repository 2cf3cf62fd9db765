"""``cryopose refine`` end to end on simulated particles with perturbed poses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import torch

import cryopose.cli.refine  # noqa: F401  (registers the command until cli.main does)
from cryopose.cli.main import main
from cryopose.geometry.distance import geodesic_distance
from cryopose.geometry.healpix import grid_size, nearest_grid_index
from cryopose.geometry.rotations import axis_angle_to_matrix
from cryopose.io.particles import read_particles, write_particles
from cryopose.pose.candidates import with_candidate_columns
from cryopose.simulate.particles import SimulationConfig, simulate_from_structure

BOX = 40
ANGPIX = 2.5
STRUCTURE = Path(__file__).resolve().parents[1] / "data" / "structures" / "1s3x.pdb.gz"


@pytest.fixture(scope="module")
def perturbed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """12 clean particles whose poses are turned by 5 degrees; (perturbed star, true star)."""
    folder = tmp_path_factory.mktemp("sim")
    config = SimulationConfig(n=12, snr=None, seed=21, particles_per_micrograph=4)
    truth = simulate_from_structure(STRUCTURE, ANGPIX, BOX, folder, config, progress=False)
    table = read_particles(truth)
    g = torch.Generator().manual_seed(0)
    axes = torch.randn(len(table), 3, generator=g, dtype=torch.float64)
    axes = axes / torch.linalg.vector_norm(axes, dim=-1, keepdim=True)
    turn = axis_angle_to_matrix(axes * math.radians(5.0))
    table.set_rotations(turn @ table.rotations(torch.float64))
    star = folder / "perturbed.star"
    write_particles(table, star)
    return star, truth


def test_refine_cli(
    perturbed: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    star, truth = perturbed
    out = tmp_path / "refined.star"
    reference = str(truth.parent / "ground_truth.mrc")
    argv = ["refine", str(star), "--reference", reference, "-o", str(out)]
    code = main([*argv, "--batch-size", "5", "--max-shift", "6", "--symmetry", "C1"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "median pose change" in printed and "particles/s" in printed
    refined = read_particles(out, particles_dir=truth.parent)
    true_rot = read_particles(truth).rotations(torch.float64)
    error = torch.rad2deg(geodesic_distance(true_rot, refined.rotations(torch.float64)))
    assert float(error.median()) <= 1.5
    assert {"cryoposeRefineCC", "cryoposeRefineScore"} <= set(refined.particles.columns)
    summary = json.loads((tmp_path / "refined_refine.json").read_text())
    assert summary["config"]["fine"] is True and summary["n_local_poses"] == [33, 33]
    # The printed median change is the 5-degree perturbation undone (within the residual).
    change = summary["summary"]["median_angle_change_deg"]
    assert f"median pose change {change:.2f} deg" in printed and 3.5 < change < 6.5


def test_refine_cli_mismatched_map(
    perturbed: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    star, _ = perturbed
    small = tmp_path / "small.mrc"
    with mrcfile.new(small) as m:
        m.set_data(np.zeros((32, 32, 32), dtype=np.float32))
        m.voxel_size = ANGPIX
    code = main(["refine", str(star), "--reference", str(small), "-o", str(tmp_path / "o.star")])
    assert code == 1
    err = capsys.readouterr().err
    assert "map box 32 at 2.500 A/px vs particles box 40 at 2.500 A/px" in err
    assert str(small) in err and str(star) in err
    assert not (tmp_path / "o.star").exists()


def test_refine_cli_starts_from_the_star_candidates(
    perturbed: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Poses 40 degrees off with the true pose's grid cell as the 2nd of 3 candidates."""
    _, truth = perturbed
    table = read_particles(truth)
    true_rot = table.rotations(torch.float64)
    n = len(table)
    g = torch.Generator().manual_seed(3)
    axes = torch.randn(n, 3, generator=g, dtype=torch.float64)
    axes = axes / torch.linalg.vector_norm(axes, dim=-1, keepdim=True)
    table.set_rotations(axis_angle_to_matrix(axes * math.radians(40.0)) @ true_rot)
    indices = torch.randint(0, grid_size(3), (n, 3), generator=g)
    indices[:, 1] = nearest_grid_index(true_rot, 3)
    star = tmp_path / "far.star"
    write_particles(with_candidate_columns(table, indices, 3), star)
    reference = str(truth.parent / "ground_truth.mrc")
    errors = {}
    for k in ("3", "0"):
        out = tmp_path / f"refined{k}.star"
        argv = ["refine", str(star), "--reference", reference, "-o", str(out), "--candidates", k]
        assert main([*argv, "--particles-dir", str(truth.parent)]) == 0
        printed = capsys.readouterr().out
        assert ("4 starts, 33 + 33 local poses" in printed) == (k == "3")
        refined = read_particles(out, particles_dir=truth.parent).rotations(torch.float64)
        errors[k] = torch.rad2deg(geodesic_distance(true_rot, refined))
    assert float(errors["3"].max()) < 2.0 and float(errors["0"].min()) > 25.0
