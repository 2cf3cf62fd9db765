"""Pre-training batches simulated on the fly from a reference map, matched to the real data.

A few thousand pre-aligned particles are far too few for an Image2Sphere network to learn
poses on a CPU: measured on 1u6g (32 px network input, one thread), a network that sees the
same 2,000 noisy particles again and again memorises them, while one that sees a fresh
projection at every step reaches a 10 deg median error on held-out noiseless projections after
about 10,000 images (3 minutes). This module supplies those fresh projections, simulated like
the user's particles so that what the network learns transfers to them:

- poses uniform on SO(3); in-plane shifts and CTF parameters (defocus U/V/angle, phase
  shift, B-factor, voltage, Cs, amplitude contrast) copied from randomly drawn rows of the
  real particle table, so their distributions are the data's;
- Gaussian noise at a signal-to-noise ratio (signal variance inside the particle's disc over
  noise variance, as :func:`cryopose.simulate.simulate_particles` defines it) that starts high
  and falls geometrically to the target during the first part of pre-training (a curriculum:
  at SNR 0.1 from the first step the loss barely moves for minutes);
- the target SNR either given or estimated from the real particles by
  :func:`estimate_snr` (least-squares fit of each image to its projection);
- the same :func:`cryopose.data.preprocess.preprocess` as the real images.

Each item of :class:`SimulatedParticles` is a whole :class:`~cryopose.data.ParticleBatch`
(``DataLoader(batch_size=None)``), drawn from a generator seeded by (seed, epoch, item), so an
epoch is reproducible and a resumed run continues with the same draws.

>>> import torch
>>> from cryopose.training.simulated import snr_schedule
>>> [round(snr_schedule(p, 0.1, 1.0, 0.5), 3) for p in (0.0, 0.25, 0.5, 1.0)]
[1.0, 0.316, 0.1, 0.1]
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from cryopose.data.dataset import ParticleBatch, ParticlesDataset
from cryopose.data.preprocess import PreprocessConfig, preprocess
from cryopose.errors import InputError
from cryopose.geometry.rotations import random_rotations
from cryopose.imaging.ctf import ctf_2d
from cryopose.imaging.masks import circular_mask
from cryopose.imaging.projection import Projector
from cryopose.imaging.resample import fourier_resize, window_centred
from cryopose.io.particles import ParticleTable

__all__ = ["SimulatedParticles", "estimate_snr", "match_map_to_data", "snr_schedule"]

# Particles whose clean projections calibrate the signal variance.
_CALIBRATION = 256


def snr_schedule(progress: float, target: float, start: float | None, ramp: float) -> float:
    """SNR of the curriculum at a point of pre-training.

    Parameters
    ----------
    progress
        Fraction of pre-training done, in ``[0, 1]``.
    target
        Final SNR.
    start
        SNR at ``progress = 0``; ``None`` (or not above ``target``): ``target`` throughout.
    ramp
        Fraction of pre-training over which the SNR falls geometrically from ``start`` to
        ``target``; after it, ``target``.

    Returns
    -------
    float
        ``start * (target / start) ** min(progress / ramp, 1)``.
    """
    if start is None or start <= target or ramp <= 0:
        return target
    t = min(max(progress / ramp, 0.0), 1.0)
    return float(start * (target / start) ** t)


def match_map_to_data(
    volume: torch.Tensor, map_angpix: float, angpix: float, box: int
) -> torch.Tensor:
    """Resample a cubic map to the particles' pixel size and window it to their box.

    Parameters
    ----------
    volume
        ``(D, D, D)`` map.
    map_angpix
        Its pixel size in Angstrom.
    angpix, box
        The particles' pixel size (Angstrom) and box (pixels).

    Returns
    -------
    torch.Tensor
        ``(box, box, box)`` float32 map at ``angpix``.
    """
    if volume.dim() != 3 or len(set(volume.shape)) != 1:
        raise InputError(None, f"expected a cubic (D, D, D) map, got {tuple(volume.shape)}")
    vol = volume.to(torch.float32)
    d = int(vol.shape[0])
    if abs(map_angpix - angpix) > 1e-4 * angpix:
        vol = fourier_resize(vol, max(round(d * map_angpix / angpix), 2), ndim=3)
    if int(vol.shape[0]) != box:
        vol = window_centred(vol, box, ndim=3)
    return vol.contiguous()


def _table_ctf(table: ParticleTable) -> dict[str, torch.Tensor] | None:
    return table.ctf_parameters() if table.has_ctf else None


def _ctf_rows(
    ctf: dict[str, torch.Tensor] | None, rows: torch.Tensor, box: int, angpix: float
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor] | None]:
    """CTF images ``(b, box, box // 2 + 1)`` and parameters of the given table rows."""
    if ctf is None:
        return None, None
    p = {k: v[rows] for k, v in ctf.items()}
    image = ctf_2d(
        (box, box),
        angpix,
        p["defocus_u"],
        p["defocus_v"],
        p["defocus_angle"],
        p["voltage"],
        p["cs"],
        p["amplitude_contrast"],
        phase_shift=p["phase_shift"],
        bfactor=p["bfactor"],
    )
    return image.to(torch.float32), p


def _disc_variance(images: torch.Tensor, disc: torch.Tensor) -> torch.Tensor:
    """``(b,)`` variance of each ``(b, N, N)`` image over the pixels of the boolean disc."""
    values = images[:, disc]
    return values.var(dim=1)


def estimate_snr(
    table: ParticleTable,
    volume: torch.Tensor,
    radius_px: float,
    n: int = _CALIBRATION,
    seed: int = 0,
) -> float:
    """SNR of real particles, from their fit to projections of a map at their poses.

    For each of up to ``n`` particles the clean projection ``p`` (pose, shift and CTF from
    the table) is fitted to the image ``x`` by least squares inside the particle's disc,
    ``x ~ a p + b``; the SNR is ``mean var(a p) / mean var(x - a p - b)`` over the disc. Poses
    that are slightly wrong or a map at lower resolution than the data underestimate the
    signal, so this is a lower bound of the SNR the simulator should use.

    Parameters
    ----------
    table
        Particles with poses.
    volume
        ``(D, D, D)`` map at the particles' pixel size and box (:func:`match_map_to_data`).
    radius_px
        Particle radius in pixels (the disc of the statistics).
    n
        Particles used (a random subset when there are more).
    seed
        Seed of the subset.

    Returns
    -------
    float
        The estimated SNR (> 0).

    Raises
    ------
    InputError
        Particles without poses, or images with no measurable signal.
    """
    if not table.has_poses:
        raise InputError(table.path, "estimating the SNR needs particles with poses")
    data = ParticlesDataset(table)
    total = len(data)
    gen = np.random.default_rng(seed)
    rows = np.sort(gen.choice(total, size=min(n, total), replace=False))
    box = int(volume.shape[-1])
    angpix = float(table.angpix()[0])
    images = torch.stack([data.raw_image(int(i)) for i in rows]).to(torch.float64)
    if tuple(images.shape[-2:]) != (box, box):
        raise InputError(
            table.path, f"expected {box} px particles to match the map, got {images.shape[-1]}"
        )
    index = torch.from_numpy(rows)
    R = table.rotations(torch.float64)[index]
    shifts = table.shifts_angst(torch.float64)[index]
    ctf, _ = _ctf_rows(_table_ctf(table), index, box, angpix)
    clean = Projector(volume).project(R, shifts, angpix, ctf=ctf).to(torch.float64)
    disc = circular_mask(box, radius_px).bool()
    x = images[:, disc]
    p = clean[:, disc]
    x = x - x.mean(dim=1, keepdim=True)
    p = p - p.mean(dim=1, keepdim=True)
    a = (x * p).sum(1) / (p * p).sum(1).clamp_min(1e-30)
    signal = (a[:, None] * p).var(dim=1).mean()
    noise = (x - a[:, None] * p).var(dim=1).mean()
    snr = float(signal / noise.clamp_min(1e-30))
    if not math.isfinite(snr) or snr <= 0:
        raise InputError(table.path, "could not measure any signal in the particles' images")
    return snr


class SimulatedParticles(Dataset[ParticleBatch]):
    """Fresh particle batches projected from a map, imaged like a real particle table.

    Parameters
    ----------
    volume
        ``(D, D, D)`` map at the particles' pixel size and box (:func:`match_map_to_data`).
    table
        The real particles: pixel size, box, and the rows whose CTF and shifts are copied.
    preprocess_config
        Preprocessing of the network's input (the one used for the real particles).
    radius_px
        Particle radius in pixels (disc of the SNR definition).
    batch_size
        Particles per item.
    batches_per_epoch
        Items per epoch (the dataset's length).
    epochs
        Epochs of pre-training (for the SNR curriculum).
    snr
        Target SNR.
    snr_start
        SNR at the start of the curriculum; ``None``: ``snr`` throughout.
    ramp
        Fraction of pre-training over which the SNR falls to ``snr``.
    seed
        Seed of every draw.
    minutes
        Wall-clock budget of pre-training: the curriculum's progress is the larger of the
        fraction of items done and the fraction of this budget spent (so that a time-limited
        run reaches the target SNR); ``None``: items only.
    """

    def __init__(
        self,
        volume: torch.Tensor,
        table: ParticleTable,
        preprocess_config: PreprocessConfig,
        radius_px: float,
        batch_size: int,
        batches_per_epoch: int,
        epochs: int,
        snr: float,
        snr_start: float | None = None,
        ramp: float = 0.5,
        seed: int = 0,
        minutes: float | None = None,
    ) -> None:
        if not snr > 0:
            raise InputError(None, f"expected a positive pre-training SNR, got {snr}")
        if batch_size < 1 or batches_per_epoch < 1 or epochs < 1:
            raise InputError(None, "batch size, batches per epoch and epochs must be >= 1")
        self.angpix = float(table.angpix()[0])
        self.box = int(table.image_size()[0])
        if tuple(volume.shape) != (self.box,) * 3:
            raise InputError(
                None,
                f"expected a {self.box}^3 map at {self.angpix:.3f} A/px to simulate "
                f"{self.box} px particles, got shape {tuple(volume.shape)}",
            )
        self.projector = Projector(volume.to(torch.float32))
        self.preprocess_config = preprocess_config
        self.ctf = _table_ctf(table)
        self.shifts = table.shifts_angst(torch.float32)
        self.rows = len(table)
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.epochs = epochs
        self.snr = float(snr)
        self.snr_start = snr_start
        self.ramp = ramp
        self.seed = seed
        self.minutes = minutes
        self._started: float | None = None
        self.epoch = 0
        self.disc = circular_mask(self.box, radius_px).bool()
        self.signal_variance = self._calibrate()

    def _calibrate(self) -> float:
        """Mean signal variance in the disc of clean projections (CTF and shifts included)."""
        gen = torch.Generator().manual_seed(self.seed + 7919)
        n = min(_CALIBRATION, max(self.rows, 1) * 4)
        R = random_rotations(n, generator=gen)
        rows = torch.randint(self.rows, (n,), generator=gen)
        ctf, _ = _ctf_rows(self.ctf, rows, self.box, self.angpix)
        clean = self.projector.project(R, self.shifts[rows], self.angpix, ctf=ctf)
        return float(_disc_variance(clean.to(torch.float64), self.disc).mean())

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the draws (and curriculum SNR) of an epoch."""
        self.epoch = int(epoch)

    def snr_at(self, item: int) -> float:
        """Curriculum SNR of item ``item`` of the current epoch."""
        progress = (self.epoch * self.batches_per_epoch + item) / (
            self.epochs * self.batches_per_epoch
        )
        if self.minutes is not None:
            if self._started is None:
                self._started = time.monotonic()
            spent = (time.monotonic() - self._started) / (60.0 * self.minutes)
            progress = max(progress, spent)
        return snr_schedule(progress, self.snr, self.snr_start, self.ramp)

    def __getitem__(self, item: int) -> ParticleBatch:
        """Simulate batch ``item`` of the current epoch (``batch_size`` particles)."""
        if not 0 <= item < len(self):
            raise IndexError(f"batch {item} out of range for {len(self)} batches")
        seed = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + item
        gen = torch.Generator().manual_seed(seed % (2**63))
        b = self.batch_size
        R = random_rotations(b, generator=gen)
        rows = torch.randint(self.rows, (b,), generator=gen)
        shifts = self.shifts[rows]
        ctf, params = _ctf_rows(self.ctf, rows, self.box, self.angpix)
        clean = self.projector.project(R, shifts, self.angpix, ctf=ctf)
        sigma = math.sqrt(self.signal_variance / self.snr_at(item))
        images = clean + sigma * torch.randn(clean.shape, generator=gen)
        out = preprocess(images, params, self.angpix, self.preprocess_config)
        metadata: dict[str, Any] = {
            "index": torch.full((b,), -1, dtype=torch.int64),
            "angpix": torch.full((b,), out.angpix, dtype=torch.float64),
        }
        return ParticleBatch(
            particle_id=[f"simulated:{self.epoch}:{item}:{k}" for k in range(b)],
            image=out.images.to(torch.float32).contiguous(),
            rotation=R.to(torch.float32),
            shift_angst=shifts.to(torch.float32),
            confidence=torch.ones(b, dtype=torch.float32),
            metadata=metadata,
        )
