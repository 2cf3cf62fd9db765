"""Gold-standard half sets and train/validation splits, seeded and reproducible.

Half sets come from ``rlnRandomSubset`` (1 or 2) when the star file has it, as RELION's
gold-standard refinement assigns them; otherwise a seeded random permutation puts the first
``ceil(n / 2)`` particles of it in half 1 and the rest in half 2. A validation split is drawn
*within* a half set so that the two halves stay independent.

>>> import numpy as np
>>> halves = random_half_sets(7, seed=0)
>>> sorted(np.bincount(halves)[1:].tolist())
[3, 4]
>>> train, val = train_validation_split(np.arange(10), 0.2, seed=1)
>>> len(train), len(val), sorted(np.concatenate([train, val]).tolist()) == list(range(10))
(8, 2, True)
"""

from __future__ import annotations

from collections.abc import Sized
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
from torch.utils.data import Dataset, Subset

from cryopose.errors import InputError
from cryopose.io.particles import ParticleTable

__all__ = [
    "half_set_indices",
    "half_sets",
    "random_half_sets",
    "split_dataset",
    "train_validation_split",
]

T = TypeVar("T")


def random_half_sets(n: int, seed: int = 0) -> npt.NDArray[np.int64]:
    """Seeded random half sets: ``ceil(n / 2)`` ones and ``floor(n / 2)`` twos.

    Parameters
    ----------
    n
        Number of particles.
    seed
        Seed of the permutation.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int64 of 1 and 2.
    """
    order = np.random.default_rng(seed).permutation(n)
    out = np.full(n, 2, dtype=np.int64)
    out[order[: (n + 1) // 2]] = 1
    return out


def half_sets(table: ParticleTable, seed: int = 0) -> npt.NDArray[np.int64]:
    """Half set (1 or 2) of every particle: ``rlnRandomSubset``, else seeded random.

    Parameters
    ----------
    table
        The particles.
    seed
        Seed used only when the table has no ``rlnRandomSubset``.

    Returns
    -------
    numpy.ndarray
        ``(N,)`` int64.

    Raises
    ------
    InputError
        ``rlnRandomSubset`` holds a value other than 1 or 2 (row named).
    """
    if table.has_half_sets:
        return table.random_subset()
    return random_half_sets(len(table), seed)


def half_set_indices(table: ParticleTable, half_set: int, seed: int = 0) -> npt.NDArray[np.int64]:
    """Rows of the table in one half set, in file order.

    Parameters
    ----------
    table
        The particles.
    half_set
        1 or 2.
    seed
        Seed used only when the table has no ``rlnRandomSubset``.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` int64 row indices.
    """
    if half_set not in (1, 2):
        raise InputError(None, f"half set must be 1 or 2, got {half_set!r}")
    return np.flatnonzero(half_sets(table, seed) == half_set).astype(np.int64)


def train_validation_split(
    indices: npt.ArrayLike | int, validation_fraction: float, seed: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Seeded random split of indices into training and validation parts.

    Parameters
    ----------
    indices
        ``(n,)`` indices to split (e.g. one half set's rows), or ``n`` for ``range(n)``.
    validation_fraction
        Fraction in ``[0, 1)`` for validation; ``round(fraction * n)`` indices.
    seed
        Seed of the permutation.

    Returns
    -------
    tuple of numpy.ndarray
        ``(train, validation)``, each sorted ascending.
    """
    idx = np.arange(indices) if isinstance(indices, int) else np.asarray(indices, dtype=np.int64)
    if not 0.0 <= validation_fraction < 1.0:
        raise InputError(None, f"validation fraction must be in [0, 1), got {validation_fraction}")
    n_val = round(validation_fraction * len(idx))
    order = np.random.default_rng(seed).permutation(len(idx))
    val = np.sort(idx[order[:n_val]])
    train = np.sort(idx[order[n_val:]])
    return train.astype(np.int64), val.astype(np.int64)


def split_dataset(
    dataset: Dataset[T], validation_fraction: float, seed: int = 0
) -> tuple[Subset[T], Subset[T]]:
    """Training and validation :class:`torch.utils.data.Subset` of a dataset.

    Parameters
    ----------
    dataset
        Any sized dataset, e.g. a :class:`~cryopose.data.dataset.ParticlesDataset` of one
        half set.
    validation_fraction
        Fraction in ``[0, 1)`` for validation.
    seed
        Seed of the split.

    Returns
    -------
    tuple of Subset
        ``(train, validation)``.
    """
    if not isinstance(dataset, Sized):
        raise InputError(None, "split_dataset needs a dataset with a length")
    train, val = train_validation_split(len(dataset), validation_fraction, seed)
    return Subset(dataset, _as_list(train)), Subset(dataset, _as_list(val))


def _as_list(idx: npt.NDArray[np.int64]) -> list[Any]:
    return [int(i) for i in idx]
