"""``cryopose demo`` end to end on a tiny budget (small box, few particles, seconds of training).

Accuracy is not asserted here (the budget is far too small to learn poses); the test checks
that every output exists and is readable, that the summary's numbers are finite and in range,
and that they agree with the same numbers recomputed independently from the written files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.cli.main import main
from cryopose.evaluation.angular import pose_errors
from cryopose.io.mrc import read_map
from cryopose.io.particles import read_particles

BOX, ANGPIX, N_APO, N_LIGAND = 32, 6.0, 64, 40
ARGS = [
    "--minutes", "0.08", "--n-apo", str(N_APO), "--n-ligand", str(N_LIGAND), "--box", str(BOX),
    "--angpix", str(ANGPIX), "--image-size", "16", "--seed", "1",
]  # fmt: skip


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object], str]:
    out = tmp_path_factory.mktemp("demo") / "out"
    code = main(["demo", "-o", str(out), *ARGS])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    return out, summary, (out / "report.md").read_text()


def test_every_output_is_written(demo_run: tuple[Path, dict[str, object], str]) -> None:
    out, summary, report = demo_run
    outputs = summary["outputs"]
    assert isinstance(outputs, dict)
    for path in outputs.values():
        assert Path(path).exists(), path
    for name in (
        "demo.json", "apo_truth.mrc", "ligand_truth.mrc", "apo_map.mrc", "ligand_map.mrc",
        "ligand_half1.mrc", "ligand_half2.mrc", "ligand_true_poses_map.mrc", "difference.mrc",
        "fsc.png", "errors.png", "model/config.json", "ligand/ligand_picked.star",
        "ligand/ligand_network.star", "ligand/ligand_refined.star",
    ):  # fmt: skip
        assert (out / name).is_file(), name
    for name in ("apo_map.mrc", "ligand_map.mrc", "difference.mrc"):
        volume, angpix = read_map(out / name)
        assert volume.shape == (BOX, BOX, BOX)
        assert angpix == pytest.approx(ANGPIX)
        assert bool(torch.isfinite(volume).all()) and float(volume.std()) > 0
    assert (out / "fsc.png").read_bytes()[:4] == b"\x89PNG"
    assert report.startswith("# cryopose demo")
    assert "ROC AUC" in report and "Ligand in the difference map" in report


def test_summary_numbers_are_sane(demo_run: tuple[Path, dict[str, object], str]) -> None:
    _, s, _ = demo_run
    pruning, maps, ligand = s["pruning"], s["maps"], s["ligand"]
    assert isinstance(pruning, dict) and isinstance(maps, dict) and isinstance(ligand, dict)
    n_junk = round(0.1 * N_LIGAND)
    assert pruning["n_junk"] == n_junk
    assert pruning["n_kept"] == N_LIGAND - n_junk
    assert 0.0 <= pruning["roc_auc"] <= 1.0
    for part in ("network", "refined"):
        errors = s[part]
        assert isinstance(errors, dict)
        assert 0.0 <= errors["median_deg"] <= 180.0
        assert 0.0 <= errors["within_5_deg"] <= errors["within_10_deg"] <= 1.0
        assert errors["particles_per_second"] > 0
    for key in (
        "ligand_half_map_resolution_0.143_A", "true_poses_half_map_resolution_0.143_A",
        "fsc_vs_true_poses_resolution_0.5_A",
    ):  # fmt: skip
        assert 2 * ANGPIX - 1e-6 <= maps[key] <= BOX * ANGPIX + 1e-6, key
    assert -1.0 <= maps["pcc_vs_true_poses_map"] <= 1.0
    for kind in ("refined_poses", "true_poses", "apo_half_maps_control"):
        assert np.isfinite(ligand[kind]["site_sigma"]), kind
        assert 0.0 <= ligand[kind]["peak_distance_to_site_angst"] <= BOX * ANGPIX * 3**0.5
    minutes = s["minutes_total"]
    assert isinstance(minutes, float) and minutes > 0


def test_summary_errors_match_the_star_files(
    demo_run: tuple[Path, dict[str, object], str],
) -> None:
    """The demo's error numbers, recomputed from its star files with pose_errors."""
    out, s, _ = demo_run
    truth = read_particles(out / "ligand" / "particles.star")
    good = truth.subset(truth.particles["cryoposeIsJunk"].to_numpy() == 0)
    picked = read_particles(out / "ligand" / "ligand_picked.star")
    assert "rlnAngleRot" not in picked.particles and "cryoposeIsJunk" not in picked.particles
    network = read_particles(out / "ligand" / "ligand_network.star")
    network = network.subset(truth.particles["cryoposeIsJunk"].to_numpy() == 0)
    e_net = pose_errors(good, network).summary()
    assert isinstance(s["network"], dict)
    assert e_net["n"] == N_LIGAND - round(0.1 * N_LIGAND)
    assert e_net["median_deg"] == pytest.approx(s["network"]["median_deg"], abs=1e-3)
    assert e_net["within_10_deg"] == pytest.approx(s["network"]["within_10_deg"])
    refined = read_particles(out / "ligand" / "ligand_refined.star")
    names = set(good.particles["rlnImageName"])
    refined_good = refined.subset(refined.particles["rlnImageName"].isin(names).to_numpy())
    e_ref = pose_errors(good, refined_good).summary()
    assert isinstance(s["refined"], dict)
    assert e_ref["n"] == s["refined"]["n"]
    assert e_ref["median_deg"] == pytest.approx(s["refined"]["median_deg"], abs=1e-3)
