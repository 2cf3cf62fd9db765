"""Half sets and train/validation splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryopose.data.dataset import ParticlesDataset
from cryopose.data.splits import (
    half_set_indices,
    half_sets,
    random_half_sets,
    split_dataset,
    train_validation_split,
)
from cryopose.errors import InputError
from cryopose.io.particles import read_particles


def test_rln_random_subset_is_honoured(clean_star: Path) -> None:
    table = read_particles(clean_star)
    column = table.particles["rlnRandomSubset"].to_numpy()
    np.testing.assert_array_equal(half_sets(table, seed=99), column)
    np.testing.assert_array_equal(half_set_indices(table, 2), np.flatnonzero(column == 2))


def test_real_file_half_sets(data_dir: Path) -> None:
    table = read_particles(data_dir / "particles" / "relion31.star")
    # All five real particles are in RELION's half 1.
    assert half_set_indices(table, 1).tolist() == [0, 1, 2, 3, 4]
    assert half_set_indices(table, 2).tolist() == []


def test_random_half_sets_when_the_column_is_absent(clean_star: Path) -> None:
    table = read_particles(clean_star)
    table.particles = table.particles.drop(columns=["rlnRandomSubset"])
    a = half_sets(table, seed=4)
    np.testing.assert_array_equal(a, half_sets(table, seed=4))
    assert not np.array_equal(a, half_sets(table, seed=5))
    assert np.bincount(a).tolist() == [0, 24, 24]
    assert np.bincount(random_half_sets(7, 1)).tolist() == [0, 4, 3]
    h1, h2 = half_set_indices(table, 1, seed=4), half_set_indices(table, 2, seed=4)
    assert sorted(np.concatenate([h1, h2]).tolist()) == list(range(48))
    with pytest.raises(InputError):
        half_set_indices(table, 0)


def test_bad_random_subset_value_is_reported(clean_star: Path) -> None:
    table = read_particles(clean_star)
    table.particles.loc[5, "rlnRandomSubset"] = 3
    with pytest.raises(InputError, match="row 6"):
        half_sets(table)


def test_train_validation_split_within_a_half_set(clean_star: Path) -> None:
    table = read_particles(clean_star)
    half = half_set_indices(table, 1)
    train, val = train_validation_split(half, 0.25, seed=2)
    assert len(val) == round(0.25 * len(half)) and len(train) + len(val) == len(half)
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(half.tolist())
    again = train_validation_split(half, 0.25, seed=2)
    np.testing.assert_array_equal(again[1], val)
    assert not np.array_equal(train_validation_split(half, 0.25, seed=3)[1], val)
    with pytest.raises(InputError):
        train_validation_split(half, 1.0)


def test_split_dataset_gives_subsets(clean_star: Path) -> None:
    ds = ParticlesDataset(clean_star, half_set=2)
    train, val = split_dataset(ds, 0.2, seed=0)
    expected_train, expected_val = train_validation_split(len(ds), 0.2, seed=0)
    assert list(train.indices) == expected_train.tolist()
    assert list(val.indices) == expected_val.tolist()
    item = val[0]
    assert item.metadata["index"] == int(ds.indices[expected_val[0]])
    assert item.metadata["half_set"] == 2
