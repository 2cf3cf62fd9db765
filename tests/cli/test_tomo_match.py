"""``cryopose tomo match`` end to end on a small tomogram with two planted particles."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch

from cryopose.cli.main import main
from cryopose.geometry.rotations import random_rotations
from cryopose.io.mrc import write_map
from cryopose.io.picks import read_picks
from cryopose.simulate.tomogram import (
    euler_zxz_to_matrix,
    find_structures,
    load_class_density,
    rotate_density,
)

CENTRES = ((14, 20, 18), (26, 36, 44))  # z y x of the two 3j9i particles


@pytest.fixture(scope="module")
def tomogram(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    gen = torch.Generator().manual_seed(11)
    dens = load_class_density(find_structures(None, ["3j9i"])["3j9i"], "3j9i").density
    rots = random_rotations(2, generator=gen, dtype=torch.float64)
    vol = 0.5 * torch.randn((40, 56, 60), generator=gen)
    b = dens.shape[-1]
    for centre, rot in zip(CENTRES, rots, strict=True):
        sl = tuple(slice(c - b // 2, c - b // 2 + b) for c in centre)
        vol[sl] += rotate_density(dens, rot.float())
    path = tmp_path_factory.mktemp("match") / "tomo.mrc"
    write_map(path, vol, 10.0)
    return path, rots


def test_match_writes_valid_picks(
    tomogram: tuple[Path, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, rots = tomogram
    out = tmp_path / "picks.txt"
    code = main(["tomo", "match", str(path), "-o", str(out), "--classes", "3j9i"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote" in captured.out
    picks = read_picks(out)
    assert picks.angles is not None
    assert len(picks) == 2
    assert set(picks.class_ids.tolist()) == {"3j9i"}
    found = sorted(tuple(int(v) for v in xyz) for xyz in picks.coords)
    assert found == sorted((x, y, z) for z, y, x in CENTRES)
    # The written angles give the planted rotations modulo the D7 symmetry of the class.
    for xyz, angles in zip(picks.coords, picks.angles, strict=True):
        k = [i for i, (z, y, x) in enumerate(CENTRES) if (x, y, z) == tuple(int(v) for v in xyz)]
        rot = euler_zxz_to_matrix(torch.tensor(angles, dtype=torch.float64))
        assert _error_deg_d7(rot, rots[k[0]]) < 10.0
    # Scores sidecar: same picks, strongest first.
    scored = read_picks(out.with_suffix(".star"))
    np.testing.assert_allclose(scored.coords, picks.coords)
    assert scored.scores is not None
    assert list(scored.scores) == sorted(scored.scores, reverse=True)
    assert scored.scores[-1] > 6.0
    table = starfile.read(out.with_suffix(".star"))
    assert {"cryoposeRotZ1", "cryoposeRotX", "cryoposeRotZ2"} <= set(table.columns)
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["classes"]["3j9i"]["symmetry"] == "D7"
    assert record["n_picks"] == 2


def _error_deg_d7(a: torch.Tensor, b: torch.Tensor) -> float:
    """Least angle between ``a`` and ``b g`` over the class's D7 group, in the class frame."""
    from cryopose.tomo.templates import load_templates

    template = load_templates(["3j9i"])[0]
    q = template.frame_matrix()
    from cryopose.geometry.symmetry import symmetry_group

    # Symmetry of the class density V: g_V = Q^T g Q (the template holds V(Q^T r)).
    group = q.T @ symmetry_group("D7") @ q
    cos = (torch.einsum("ij,gij->g", a, b @ group) - 1.0) / 2.0
    return math.degrees(math.acos(float(cos.clamp(-1.0, 1.0).max())))


def test_match_top_mode_and_bad_mode(
    tomogram: tuple[Path, torch.Tensor], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = tomogram
    out = tmp_path / "top.txt"
    args = ["tomo", "match", str(path), "-o", str(out), "--classes", "3j9i", "--mode", "top"]
    code = main([*args, "--n-per-class", "3"])
    assert code == 0, capsys.readouterr().err
    picks = read_picks(out)
    assert len(picks) == 3  # TM-T keeps N per class, whatever their scores
    code = main(["tomo", "match", str(path), "-o", str(out), "--mode", "best"])
    assert code == 1
    assert "mode must be" in capsys.readouterr().err
