"""Offline benchmark suite: symmetric entries in RELION's frame, leaderboard, CESPED layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cryopose.evaluation.benchmark_suite import (
    _entry_map,
    load_cesped_entry,
    make_benchmark_entries,
    run_benchmark,
)
from cryopose.geometry.symmetry import symmetry_group
from cryopose.imaging.projection import Projector
from cryopose.io.particles import read_particles, write_particles
from cryopose.simulate.poses import uniform_poses


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A benchmark folder with a tiny C1 entry (200 particles, 32 px) and one method."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench")
    entry = make_benchmark_entries(out, ("C1",), n_particles=200, box=32, snr=1.0)[0]
    table = entry.table()
    # A method that is right up to a 15 degree turn about z after every pose.
    turn = torch.tensor(
        [[math.cos(0.26), -math.sin(0.26), 0], [math.sin(0.26), math.cos(0.26), 0], [0, 0, 1]],
        dtype=torch.float64,
    )
    table.set_rotations(table.rotations(torch.float64) @ turn)
    (out / "predictions" / "near").mkdir(parents=True)
    write_particles(table, out / "predictions" / "near" / "C1.star")
    return out


@pytest.mark.parametrize("name", ["C6", "D4"])
def test_entry_maps_are_symmetric_in_relions_frame(name: str) -> None:
    torch.set_num_threads(1)
    volume, angpix, info = _entry_map(name, 32)
    assert info["frame_error_deg"] < 3.0
    # Projections at A and at the equivalent poses A @ g must be the same images.
    R = uniform_poses(4, torch.Generator().manual_seed(1)).to(torch.float64)
    G = symmetry_group(info["symmetry"])
    projector = Projector(volume)
    zero = torch.zeros(4, 2)
    ref = projector.project(R.float(), zero, angpix).flatten(1)
    for g in G[1:]:
        img = projector.project((R @ g).float(), zero, angpix).flatten(1)
        corr = torch.nn.functional.cosine_similarity(
            ref - ref.mean(1, keepdim=True), img - img.mean(1, keepdim=True)
        )
        assert float(corr.min()) > 0.995
    # A rotation outside the group (15 degrees about z) changes the images.
    c, s = math.cos(math.radians(15)), math.sin(math.radians(15))
    turn = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)
    img = projector.project((R @ turn).float(), zero, angpix).flatten(1)
    corr = torch.nn.functional.cosine_similarity(
        ref - ref.mean(1, keepdim=True), img - img.mean(1, keepdim=True)
    )
    assert float(corr.min()) < 0.98


def test_leaderboard_ranks_ground_truth_first_and_random_last(bench: Path) -> None:
    stamp = (bench / "C1" / "particles.star").stat().st_mtime_ns
    rows = run_benchmark(bench, ("C1",), n_particles=200, box=32, snr=1.0)
    # The complete entry was reused, not simulated again.
    assert (bench / "C1" / "particles.star").stat().st_mtime_ns == stamp
    assert [r.method for r in rows] == ["ground_truth", "near", "random"]
    assert [r.rank for r in rows] == [1, 2, 3]
    gt, near, rnd = rows
    assert gt.mean_error_deg == pytest.approx(0.0, abs=1e-6) and gt.delta_fsc == 0.0
    assert near.mean_error_deg == pytest.approx(math.degrees(0.26), abs=1e-4)
    # Uniformly random rotations: mean error (pi/2 + 2/pi) rad = 126.5 deg for C1.
    assert rnd.mean_error_deg == pytest.approx(126.5, abs=6.0)
    assert gt.delta_pcc > near.delta_pcc > rnd.delta_pcc
    assert 0 < near.delta_fsc < rnd.delta_fsc
    saved = json.loads((bench / "leaderboard.json").read_text())
    assert [r["method"] for r in saved] == ["ground_truth", "near", "random"]
    table = (bench / "leaderboard.md").read_text()
    assert table.count("| C1 |") == 3
    info = json.loads((bench / "C1" / "entry.json").read_text())
    assert info["symmetry"] == "C1" and info["n_particles"] == 200
    subsets = read_particles(bench / "C1" / "particles.star").random_subset()
    assert sorted(np.bincount(subsets)[1:].tolist()) == [100, 100]


def test_cesped_layout_is_read(bench: Path, tmp_path: Path) -> None:
    table = read_particles(bench / "C1" / "particles.star")
    halves = table.random_subset()
    folder = tmp_path / "TEST"
    folder.mkdir()
    for k in (0, 1):
        part = table.subset(halves == k + 1)
        part.particles["rlnImageName"] = [f"{i + 1:06d}@{p}" for p, i in part.image_locations()]
        part = part.subset(np.arange(len(part)))
        part.particles = part.particles.drop(columns=["rlnRandomSubset"])
        part.blocks[part.particles_block] = part.particles
        write_particles(part, folder / f"particles_{k}.star")
    (folder / "info_0.json").write_text(json.dumps({"symmetry": "c1"}))
    entry = load_cesped_entry(folder)
    assert entry.symmetry == "C1" and entry.name == "TEST"
    merged = entry.table()
    assert len(merged) == len(table)
    assert merged.random_subset().tolist() == [1] * int((halves == 1).sum()) + [2] * int(
        (halves == 2).sum()
    )
