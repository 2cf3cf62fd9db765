"""Network candidates in star files: cryoposeTopKIndices + cryoposeGridOrder round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cryopose.errors import InputError
from cryopose.geometry.healpix import grid_size, so3_healpix_grid
from cryopose.io.particles import ParticleTable, read_particles, write_particles
from cryopose.pose.candidates import (
    GRID_ORDER_COLUMN,
    TOPK_COLUMN,
    Candidates,
    table_candidates,
    with_candidate_columns,
)


def _table(n: int) -> ParticleTable:
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in range(n)],
            "rlnAngleRot": np.linspace(0.0, 90.0, n),
            "rlnAngleTilt": np.full(n, 45.0),
            "rlnAnglePsi": np.zeros(n),
            "rlnImagePixelSize": np.full(n, 2.0),
            "rlnVoltage": np.full(n, 300.0),
        }
    )
    return ParticleTable(particles=particles, optics=None, blocks={}, particles_block="")


def test_round_trip_through_a_star_file(tmp_path: Path) -> None:
    n, k, order = 7, 10, 3
    indices = torch.randint(0, grid_size(order), (n, k), generator=torch.Generator().manual_seed(0))
    table = with_candidate_columns(_table(n), indices, order)
    write_particles(table, tmp_path / "c.star")
    text = (tmp_path / "c.star").read_text()
    assert ",".join(str(v) for v in indices[0].tolist()) in text  # one token, no spaces
    back = read_particles(tmp_path / "c.star")
    candidates = table_candidates(back)
    assert candidates is not None and candidates.k == k
    assert torch.equal(candidates.indices, indices)
    assert torch.equal(candidates.order, torch.full((n,), order))
    # The rotations are the grid's (independent path: the grid's matrices by index).
    expected = so3_healpix_grid(order, torch.float64)[indices[2:5, :4]]
    torch.testing.assert_close(candidates.rotations(slice(2, 5), 4), expected)
    # Subsets keep rows; the rest of the table is untouched.
    assert torch.equal(candidates.subset(np.array([1, 3])).indices, indices[[1, 3]])
    assert back.particles["rlnAngleRot"].tolist() == table.particles["rlnAngleRot"].tolist()
    assert table_candidates(_table(n)) is None


def test_single_and_uneven_candidate_lists(tmp_path: Path) -> None:
    one = with_candidate_columns(_table(3), torch.tensor([[4], [5], [6]]), 1)
    write_particles(one, tmp_path / "one.star")
    back = table_candidates(read_particles(tmp_path / "one.star"))  # an integer column
    assert back is not None and back.indices.tolist() == [[4], [5], [6]]
    uneven = _table(2)
    uneven.particles[TOPK_COLUMN] = ["1,2,3", "9"]
    uneven.particles[GRID_ORDER_COLUMN] = [2, 1]
    c = table_candidates(uneven)
    assert c is not None and c.indices.tolist() == [[1, 2, 3], [9, 9, 9]]
    rot = c.rotations(slice(0, 2))  # one grid order per row
    torch.testing.assert_close(rot[1, 0], so3_healpix_grid(1, torch.float64)[9])
    torch.testing.assert_close(rot[0, 2], so3_healpix_grid(2, torch.float64)[3])


def test_bad_candidates_name_row_and_column() -> None:
    table = _table(3)
    table.particles[TOPK_COLUMN] = ["1,2", "3,x", "5,6"]
    table.particles[GRID_ORDER_COLUMN] = 1
    with pytest.raises(InputError, match=r"row 2, column cryoposeTopKIndices.*'3,x'"):
        table_candidates(table)
    table.particles[TOPK_COLUMN] = ["1,2", "3,4", "5,576"]
    with pytest.raises(InputError, match=r"row 3, .*576 is outside the order-1 grid"):
        table_candidates(table)
    table.particles[GRID_ORDER_COLUMN] = [1, 1.5, 1]
    with pytest.raises(InputError, match=r"row 2, column cryoposeGridOrder.*grid order"):
        table_candidates(table)
    del table.particles[GRID_ORDER_COLUMN]
    with pytest.raises(InputError, match="expected a cryoposeGridOrder column"):
        table_candidates(table)
    with pytest.raises(ValueError, match="expected indices"):
        Candidates(torch.zeros(3, 2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))
