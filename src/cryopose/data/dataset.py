"""``ParticlesDataset``: RELION particles as a PyTorch dataset (CESPED-style).

Each item is a :class:`ParticleItem`: the (preprocessed, optionally augmented) image
``(C, H, W)`` float32, the pose label as a RELION rotation matrix ``(3, 3)``, the origin
``(rlnOriginXAngst, rlnOriginYAngst)`` in Angstrom with RELION's sign (the particle centre
sits at minus the origin), a confidence (``rlnMaxValueProbDistribution``, 1 when absent),
and metadata. :func:`collate` stacks items into a :class:`ParticleBatch` for ``DataLoader``.

Stacks are memory-mapped and opened lazily in the process that reads them, so the dataset
works with ``DataLoader(num_workers > 0)``; memory does not grow with the number of
particles. Random augmentation draws from a generator seeded by ``(seed, epoch, row)``, so
the batches do not depend on the number of workers; call :meth:`ParticlesDataset.set_epoch`
each epoch for new draws.

Example usage::

    from torch.utils.data import DataLoader
    from cryopose.data.dataset import ParticlesDataset, collate
    from cryopose.data.preprocess import PreprocessConfig
    data = ParticlesDataset("particles.star", preprocess=PreprocessConfig(angpix=3.0,
                            image_size=96, ctf_correction="concat_phase_flip"), half_set=1)
    for batch in DataLoader(data, batch_size=64, num_workers=4, collate_fn=collate):
        batch.image, batch.rotation, batch.shift_angst  # (64, 2, 96, 96), (64, 3, 3), (64, 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch.utils.data import Dataset

from cryopose.data.augment import Augmenter
from cryopose.data.preprocess import PreprocessConfig
from cryopose.data.preprocess import preprocess as run_preprocess
from cryopose.data.splits import half_set_indices, half_sets
from cryopose.errors import InputError
from cryopose.geometry.symmetry import symmetry_group
from cryopose.io.mrc import StackCache
from cryopose.io.particles import ParticleTable, read_particles

__all__ = ["ParticleBatch", "ParticleItem", "ParticlesDataset", "collate"]


class ParticleItem(NamedTuple):
    """One particle as the dataset gives it.

    Attributes
    ----------
    particle_id
        ``rlnImageName`` (``"000012@stack.mrcs"``).
    image
        ``(C, H, W)`` float32.
    rotation
        ``(3, 3)`` float32 RELION rotation matrix (NaN when the file has no angles).
    shift_angst
        ``(2,)`` float32 origin (x, y) in Angstrom, RELION's sign (zeros when absent).
    confidence
        ``()`` float32: ``rlnMaxValueProbDistribution``, else 1.
    metadata
        ``index`` (row in the dataset's table), ``optics_group``, ``angpix`` (of ``image``),
        ``half_set``, and ``defocus_u``, ``defocus_v``, ``defocus_angle`` when the table has
        CTF parameters.
    """

    particle_id: str
    image: torch.Tensor
    rotation: torch.Tensor
    shift_angst: torch.Tensor
    confidence: torch.Tensor
    metadata: dict[str, Any]


class ParticleBatch(NamedTuple):
    """Items stacked by :func:`collate` (batch size B).

    Attributes
    ----------
    particle_id
        B names.
    image
        ``(B, C, H, W)``.
    rotation
        ``(B, 3, 3)``.
    shift_angst
        ``(B, 2)``.
    confidence
        ``(B,)``.
    metadata
        Each key: a ``(B,)`` tensor for numbers (int64 or float64), else a list.
    """

    particle_id: list[str]
    image: torch.Tensor
    rotation: torch.Tensor
    shift_angst: torch.Tensor
    confidence: torch.Tensor
    metadata: dict[str, Any]


def collate(items: Sequence[ParticleItem]) -> ParticleBatch:
    """Stack particle items into a batch (``DataLoader(collate_fn=collate)``).

    Parameters
    ----------
    items
        Items of equal image shape.

    Returns
    -------
    ParticleBatch
        Tensors stacked along a new first axis; numeric metadata as tensors.
    """
    if not items:
        raise ValueError("cannot collate an empty list of particles")
    metadata: dict[str, Any] = {}
    for key in items[0].metadata:
        values = [item.metadata[key] for item in items]
        if all(isinstance(v, bool | int) for v in values):
            metadata[key] = torch.tensor(values, dtype=torch.int64)
        elif all(isinstance(v, int | float) for v in values):
            metadata[key] = torch.tensor(values, dtype=torch.float64)
        else:
            metadata[key] = values
    return ParticleBatch(
        particle_id=[item.particle_id for item in items],
        image=torch.stack([item.image for item in items]),
        rotation=torch.stack([item.rotation for item in items]),
        shift_angst=torch.stack([item.shift_angst for item in items]),
        confidence=torch.stack([item.confidence for item in items]),
        metadata=metadata,
    )


def _numbers(table: ParticleTable, column: str) -> npt.NDArray[np.float64]:
    """Return a particle column as float64; InputError names the first non-number row."""
    values = pd.to_numeric(table.particles[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(np.isnan(values))
    if bad.size:
        i = int(bad[0])
        raise InputError(
            table.path,
            f"expected a number, found {table.particles[column].iloc[i]!r}",
            f"block data_{table.particles_block}, row {i + 1}, column {column}",
        )
    return values


def _item_seed(seed: int, epoch: int, row: int) -> int:
    """Seed for one particle's augmentation, independent of worker and order."""
    return int(np.random.SeedSequence([seed, epoch, row]).generate_state(1, np.uint64)[0] >> 1)


class ParticlesDataset(Dataset[ParticleItem]):
    """RELION particles (star file + mrcs stacks) as a map-style PyTorch dataset.

    Parameters
    ----------
    particles
        A particle star file (RELION 3.0 or 3.1+) or a :class:`~cryopose.io.ParticleTable`.
    particles_dir
        Folder holding the stacks, tried first when resolving ``rlnImageName`` (only used
        when ``particles`` is a path; a table keeps its own).
    preprocess
        Preprocessing applied to each image; ``None`` gives the raw image as one channel.
    augment
        Pose-aware augmentation applied after preprocessing; ``None`` for none.
    half_set
        1 or 2: only that gold-standard half (``rlnRandomSubset``, else a random half seeded
        by ``seed``); ``None``: every particle.
    symmetry
        Point group of the particle (``"C1"``, ``"D7"``...), for symmetry-aware losses and
        metrics; its matrices are :attr:`symmetry_matrices`.
    seed
        Seed of the random half sets and of the augmentation.
    max_open_stacks
        Stacks kept open per process.

    Attributes
    ----------
    table
        The whole particle table (all rows, also when ``half_set`` selects some).
    indices
        ``(n,)`` rows of ``table`` that the dataset serves, in file order.
    symmetry_matrices
        ``(|G|, 3, 3)`` float32 rotations ``g``; the poses equivalent to ``A`` are ``A @ g``.

    Raises
    ------
    InputError
        Missing stacks (named with the row), CTF correction without CTF columns, a bad
        symmetry name or half set.
    """

    def __init__(
        self,
        particles: str | Path | ParticleTable,
        particles_dir: str | Path | None = None,
        preprocess: PreprocessConfig | None = None,
        augment: Augmenter | None = None,
        half_set: int | None = None,
        symmetry: str = "C1",
        seed: int = 0,
        max_open_stacks: int = 64,
    ) -> None:
        if isinstance(particles, ParticleTable):
            self.table = particles
        else:
            self.table = read_particles(particles, particles_dir)
        table = self.table
        self.preprocess_config = preprocess
        self.augmenter = augment
        self.symmetry = symmetry
        self.symmetry_matrices = symmetry_group(symmetry).to(torch.float32)
        self.seed = seed
        self.epoch = 0
        n = len(table)
        self.indices: npt.NDArray[np.int64] = (
            np.arange(n, dtype=np.int64)
            if half_set is None
            else half_set_indices(table, half_set, seed)
        )
        # Resolved once: a missing stack fails here, naming its row, not inside a worker.
        self._locations = table.image_locations()
        self._names: list[str] = table.particles["rlnImageName"].astype(str).tolist()
        self._angpix = table.angpix()
        self._rotations = (
            table.rotations(torch.float32)
            if table.has_poses
            else torch.full((n, 3, 3), math.nan, dtype=torch.float32)
        )
        self._shifts = table.shifts_angst(torch.float32)
        self._confidence = self._confidences()
        self._half_sets = half_sets(table, seed)
        self._optics_groups = self._optics_group_column()
        self._ctf: dict[str, torch.Tensor] | None = None
        if table.has_ctf:
            self._ctf = table.ctf_parameters()
        elif preprocess is not None and preprocess.needs_ctf:
            raise InputError(
                table.path,
                f"ctf_correction={preprocess.ctf_correction!r} needs CTF columns "
                "(rlnDefocusU, rlnDefocusV, rlnDefocusAngle, rlnVoltage, "
                "rlnSphericalAberration, rlnAmplitudeContrast)",
                f"block data_{table.particles_block}",
            )
        self._stacks = StackCache(max_open_stacks)

    # ------------------------------------------------------------------ setup helpers

    def _confidences(self) -> torch.Tensor:
        column = "rlnMaxValueProbDistribution"
        if column not in self.table.particles.columns:
            return torch.ones(len(self.table), dtype=torch.float32)
        return torch.from_numpy(_numbers(self.table, column)).to(torch.float32)

    def _optics_group_column(self) -> npt.NDArray[np.int64]:
        column = "rlnOpticsGroup"
        if column not in self.table.particles.columns:
            return np.ones(len(self.table), dtype=np.int64)
        return _numbers(self.table, column).astype(np.int64)

    # ------------------------------------------------------------------ dataset protocol

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation draws of an epoch (call before iterating)."""
        self.epoch = int(epoch)

    def raw_image(self, i: int) -> torch.Tensor:
        """Return the stored image ``(H, W)`` float32 of item ``i`` (no preprocessing)."""
        path, index = self._locations[int(self.indices[i])]
        return self._stacks.get(path)[index]

    def __getitem__(self, i: int) -> ParticleItem:
        """Return particle ``i`` of the dataset (row ``indices[i]`` of the table)."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"particle {i} out of range for {len(self)} particles")
        row = int(self.indices[i])
        image = self.raw_image(i)
        angpix = float(self._angpix[row])
        rotation = self._rotations[row]
        shift = self._shifts[row]
        if self.preprocess_config is None:
            image = image[None]
        else:
            ctf = None if self._ctf is None else {k: v[row : row + 1] for k, v in self._ctf.items()}
            image, angpix = run_preprocess(image, ctf, angpix, self.preprocess_config)
            image = image[0]
        if self.augmenter is not None:
            generator = torch.Generator().manual_seed(_item_seed(self.seed, self.epoch, row))
            image, rotation, shift, _ = self.augmenter(image, rotation, shift, angpix, generator)
        return ParticleItem(
            particle_id=self._names[row],
            image=image.to(torch.float32).contiguous(),
            rotation=rotation.to(torch.float32),
            shift_angst=shift.to(torch.float32),
            confidence=self._confidence[row],
            metadata=self._metadata(row, angpix),
        )

    def preprocessed_batch(self, positions: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Images of several items, preprocessed together (for inference: no augmentation).

        The same images as ``self[i].image`` for ``i`` in ``positions`` (preprocessing works
        on each image alone), at a fraction of the cost: one Fourier resize, normalisation
        and CTF for the batch instead of one per particle.

        Parameters
        ----------
        positions
            Item positions (``0 <= i < len(self)``).

        Returns
        -------
        images, rows
            ``(B, C, S, S)`` float32 images and ``(B,)`` int64 rows of :attr:`table`.

        Raises
        ------
        ValueError
            On a dataset with augmentation (items are then drawn one by one).
        """
        if self.augmenter is not None:
            raise ValueError("preprocessed_batch is for datasets without augmentation")
        pos = np.asarray(positions, dtype=np.int64)
        rows = self.indices[pos]
        raw = torch.stack([self.raw_image(int(i)) for i in pos])
        if self.preprocess_config is None:
            return raw[:, None].to(torch.float32).contiguous(), torch.from_numpy(rows)
        angpix = self._angpix[rows]
        parts: dict[int, torch.Tensor] = {}
        # One call per pixel size (preprocessing takes one pixel size per batch).
        for value in np.unique(angpix):
            group = np.flatnonzero(angpix == value)
            ctf = None if self._ctf is None else {k: v[rows[group]] for k, v in self._ctf.items()}
            images, _ = run_preprocess(raw[group], ctf, float(value), self.preprocess_config)
            for j, image in zip(group.tolist(), images, strict=True):
                parts[j] = image
        out = torch.stack([parts[j] for j in range(len(pos))])
        return out.to(torch.float32).contiguous(), torch.from_numpy(rows)

    def _metadata(self, row: int, angpix: float) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "index": row,
            "optics_group": int(self._optics_groups[row]),
            "angpix": angpix,
            "half_set": int(self._half_sets[row]),
        }
        if self._ctf is not None:
            for key in ("defocus_u", "defocus_v", "defocus_angle"):
                meta[key] = float(self._ctf[key][row])
        return meta

    # ------------------------------------------------------------------ conveniences

    def rows(self) -> ParticleTable:
        """Return the table restricted to the dataset's rows (e.g. to write predictions)."""
        return self.table.subset(self.indices)

    def close(self) -> None:
        """Release the memory-mapped stacks of this process."""
        self._stacks.close()

    def __repr__(self) -> str:
        source = self.table.path if self.table.path is not None else "<table>"
        return (
            f"ParticlesDataset({str(source)!r}, {len(self)} particles, symmetry={self.symmetry!r})"
        )
