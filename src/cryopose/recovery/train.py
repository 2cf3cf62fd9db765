"""Train the Siamese distance estimator on projection pairs simulated from a map.

Every step draws ``batch_size`` fresh pairs of poses (:func:`sample_rotation_pairs`),
projects the map at both poses (Fourier slice, :class:`~cryopose.imaging.Projector`), applies
the augmentations (origins, CTF, noise), standardises each image, and regresses
``d_hat`` on the target ``d_q`` with the mean squared error (rad^2) and Adam. At the end a
calibration map (``d_hat`` -> mean ``d_q``, :func:`calibrate`) is fitted on fresh pairs and
stored with the weights.

**Uniform targets.** Pairs of independent uniform rotations have distances with density
``(1 - cos d) / pi`` on ``[0, pi]``: small distances, the ones recovery needs most, would be
rare. Instead the second pose is drawn at a chosen distance from the first:
``R2 = R1 @ exp(d [u]_x)`` with ``u`` a uniform axis and ``d`` uniform on ``[0, pi]``; the
relative rotation ``R1^T R2`` has angle ``d``, so ``d_q(R1, R2) = d`` exactly and targets are
uniform. The axis is not drawn uniformly, though: with probability ``tilt_fraction`` its
direction in the lab frame, ``R1 u``, lies in the image (xy) plane, so the pair differs by a
tilt of the viewing direction. Rotations about the viewing axis only rotate the image, which
the network learns early; tilts change the projection itself, and an undertrained network
takes projections tilted by 60-180 deg for near neighbours (measured on 5j0n after 1,000
steps: 12% of the 20 nearest estimated neighbours were more than 60 deg away, 84% of
them about lab axes within 12 deg of the image plane). The targets stay uniform, since
``d`` is drawn independently of the axis. The default is 0 (uniform axes): with 0.5, 800
steps gave slightly worse near neighbours than uniform axes (43% vs 48% of the 10 nearest
estimated neighbours within 30 deg, 1,000 random orientations of 5j0n).

For a point group ``G`` the target is ``min over g in G of d_q(R1 g, R2)`` (poses ``A`` and
``A g`` give the same images), which is no longer uniform; then 8 candidates per pair are
drawn as above and importance-resampled with weights ``1 / density(target)`` (32-bin
histogram), which makes the targets uniform on ``[0, max]`` except close to the largest
distance, where too few candidates exist (the density of random pairs vanishes
at the corners of the asymmetric unit).

**All pairs of a batch.** The encoder is the cost of a step; the distances are nearly free.
With ``all_pairs`` (default) the loss covers all ``2B (2B - 1) / 2`` pairs of the ``2B``
images of a step (64 pairs drawn -> 8,128 pairs regressed), not only the ``B`` drawn ones.
Cross pairs have the density of random pairs, so every pair is weighted by ``1 / count`` of
its bin in a 32-bin histogram of the batch's targets (:func:`all_pairs_targets`), which makes
the weighted targets uniform again: the drawn pairs fill the short distances, the weights
spread the loss evenly over all of them.

**Noise.** ``snr`` is the lowest signal-to-noise ratio trained on, defined as in
:mod:`cryopose.simulate.particles`: the mean variance of clean images inside the particle
disc over ``sigma^2``. With ``noise_mix`` each image gets its own ``sigma`` uniform in
``[0, sigma(snr)]``, so one network serves every noise level up to that one (and noiseless
data).

**Files** in the model folder (everything needed to resume or to use the network)::

    config.json      TrainConfig, network and derived numbers (pixel size, box, noise sigma)
    volume.mrc       the map as trained on (resampled to angpix, windowed to box)
    checkpoint.pt    weights, optimiser, step, RNG state, loss history, calibration knots
                     (torch.save of tensors)
    metrics.json     validation on fixed pairs: Spearman rank correlation, mean |error|

A second call with the same settings resumes from ``checkpoint.pt``; ``max_steps`` counts
steps over all calls and ``max_minutes`` bounds the wall time of each call. Checkpoints hold
tensors and numbers only and load with ``torch.load(weights_only=True)``.

Example usage::

    from cryopose.io.mrc import read_map
    volume, angpix = read_map("map.mrc")
    train_distance_network(volume, angpix, "model", TrainConfig(box=48, snr=0.1))
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cryopose._atomic import atomic_path
from cryopose._progress import progress as progress_reporter
from cryopose.errors import InputError
from cryopose.geometry.distance import angular_error, geodesic_distance
from cryopose.geometry.rotations import axis_angle_to_matrix, random_rotations
from cryopose.geometry.symmetry import symmetry_group
from cryopose.imaging.ctf import ctf_2d
from cryopose.imaging.masks import circular_mask
from cryopose.imaging.projection import Projector
from cryopose.imaging.resample import rescale, window_centred
from cryopose.io.mrc import read_map, write_map
from cryopose.models.siamese import SiameseConfig, SiameseDistance, standardise
from cryopose.simulate.particles import estimate_radius_px

__all__ = [
    "DistanceModel",
    "TrainConfig",
    "TrainResult",
    "all_pairs_targets",
    "calibrate",
    "load_distance_model",
    "prepare_volume",
    "sample_rotation_pairs",
    "spearman",
    "train_distance_network",
]

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
VOLUME_FILE = "volume.mrc"
METRICS_FILE = "metrics.json"

# Settings that may change between a run and its resumption.
_RESUMABLE = {"max_steps", "max_minutes", "checkpoint_seconds"}
# Candidates per pair for importance resampling under a point group.
_OVERSAMPLE = 8
_BINS = 32


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in ``config.json``).

    Attributes
    ----------
    box
        Image box in pixels the network sees.
    angpix
        Pixel size in Angstrom of the images; ``None``: the map's.
    snr
        Lowest signal-to-noise ratio of the training images (module docstring); ``None``:
        noiseless.
    noise_mix
        Draw each image's noise sigma uniformly in ``[0, sigma(snr)]`` (else always
        ``sigma(snr)``).
    ctf
        Multiply projections by a random RELION CTF (augmentation).
    defocus_range
        ``(min, max)`` defocus in Angstrom, uniform, no astigmatism.
    voltage, cs, amplitude_contrast
        kV, mm, fraction.
    shift_sigma_angst
        Standard deviation of the random origins in Angstrom (0: centred images).
    symmetry
        Point group of the map; targets are the minimum distance over it.
    tilt_fraction
        Fraction of pairs whose relative rotation is about an axis in the image plane (a
        tilt of the viewing direction; module docstring).
    all_pairs
        Regress every pair of the ``2 batch_size`` images of a step, weighted to uniform
        distances (module docstring), instead of the ``batch_size`` drawn pairs only.
    batch_size
        Pairs drawn per step.
    lr
        Adam learning rate.
    max_steps
        Stop after this many steps in total (over resumed runs); ``None``: no limit.
    max_minutes
        Stop after this much wall time in this call; ``None``: no limit.
    checkpoint_seconds
        Save a checkpoint at least this often.
    validation_pairs
        Fixed pairs scored in ``metrics.json`` at the end.
    seed
        Seed of every random draw.
    network
        Architecture of the Siamese network.
    """

    box: int = 48
    angpix: float | None = None
    snr: float | None = None
    noise_mix: bool = True
    ctf: bool = False
    defocus_range: tuple[float, float] = (5000.0, 25000.0)
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    shift_sigma_angst: float = 0.0
    symmetry: str = "C1"
    tilt_fraction: float = 0.0
    all_pairs: bool = True
    batch_size: int = 64
    lr: float = 1e-3
    max_steps: int | None = None
    max_minutes: float | None = 20.0
    checkpoint_seconds: float = 60.0
    validation_pairs: int = 512
    seed: int = 0
    network: SiameseConfig = field(default_factory=SiameseConfig)

    def validate(self) -> None:
        """Raise :class:`InputError` for settings that cannot be trained."""

        def bad(name: str, expected: str) -> InputError:
            return InputError(None, f"{expected}, got {getattr(self, name)!r}", f"config {name}")

        if self.box < 8:
            raise bad("box", "expected a box of at least 8 pixels")
        if self.angpix is not None and not self.angpix > 0:
            raise bad("angpix", "expected a positive pixel size")
        if self.snr is not None and not self.snr > 0:
            raise bad("snr", "expected a positive SNR or None")
        if self.batch_size < 2 or not self.lr > 0 or self.validation_pairs < 2:
            raise bad("batch_size", "expected batch_size, validation_pairs >= 2 and lr > 0")
        if self.max_steps is None and self.max_minutes is None:
            raise bad("max_steps", "expected max_steps or max_minutes (training must end)")
        if not 0 <= self.tilt_fraction <= 1:
            raise bad("tilt_fraction", "expected a fraction in [0, 1]")
        if self.shift_sigma_angst < 0:
            raise bad("shift_sigma_angst", "expected a non-negative shift sigma")
        symmetry_group(self.symmetry)  # raises InputError naming a bad group

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists, the network a nested dict)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["defocus_range"] = list(self.defocus_range)
        out["network"] = self.network.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`InputError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(None, f"unknown training settings {unknown}", "config")
        kw = dict(values)
        if "defocus_range" in kw:
            kw["defocus_range"] = tuple(kw["defocus_range"])
        if "network" in kw:
            kw["network"] = SiameseConfig.from_dict(kw["network"])
        return cls(**kw)


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train_distance_network`.

    Attributes
    ----------
    model_dir
        The model folder.
    steps
        Steps done in total (over resumed runs).
    losses
        ``(steps,)`` mini-batch MSE (rad^2) of every step (weighted over all pairs with
        ``all_pairs``).
    spearman
        Spearman rank correlation of ``d_hat`` and ``d_q`` on the validation pairs.
    mean_abs_error_deg
        Mean ``|d_hat - d_q|`` in degrees on the validation pairs.
    """

    model_dir: Path
    steps: int
    losses: torch.Tensor
    spearman: float
    mean_abs_error_deg: float


@dataclass
class DistanceModel:
    """A trained distance network with the image geometry it expects.

    Attributes
    ----------
    network
        The Siamese network (in eval mode).
    box
        Box in pixels of its input images.
    angpix
        Pixel size in Angstrom of its input images.
    symmetry
        Point group its targets were minimised over.
    config
        The training settings.
    calibration
        ``(2, K)`` knots ``(d_hat, d)`` of the monotone map from network output to distance
        (:func:`calibrate`), or ``None`` for a checkpoint without one.
    """

    network: SiameseDistance
    box: int
    angpix: float
    symmetry: str
    config: TrainConfig
    calibration: torch.Tensor | None = None


def prepare_volume(
    volume: torch.Tensor, angpix: float, box: int, angpix_out: float | None
) -> tuple[torch.Tensor, float]:
    """Pad a map to a cube, resample it to ``angpix_out`` and window it to ``box``.

    Parameters
    ----------
    volume
        ``(D, H, W)`` map; a non-cubic map is zero-padded (centred) to its largest side.
    angpix
        Its voxel size in Angstrom.
    box
        Output box in voxels.
    angpix_out
        Output voxel size in Angstrom; ``None`` keeps ``angpix``.

    Returns
    -------
    volume : torch.Tensor
        ``(box, box, box)`` float32.
    angpix : float
        Voxel size reached (Fourier resampling rounds the box, see
        :func:`cryopose.imaging.resample.rescale`).
    """
    if volume.dim() != 3:
        raise InputError(None, f"map of shape {tuple(volume.shape)}; expected (D, H, W)", "map")
    vol = volume.to(torch.float32)
    side = max(vol.shape)
    if len(set(vol.shape)) != 1:
        cube = torch.zeros((side, side, side), dtype=vol.dtype)
        d, h, w = vol.shape
        cube[
            side // 2 - d // 2 : side // 2 - d // 2 + d,
            side // 2 - h // 2 : side // 2 - h // 2 + h,
            side // 2 - w // 2 : side // 2 - w // 2 + w,
        ] = vol
        vol = cube
    apix = float(angpix)
    if angpix_out is not None and abs(angpix_out - apix) > 1e-6 * apix:
        vol = rescale(vol, apix, angpix_out, ndim=3)
        apix = apix * side / int(vol.shape[0])
    return window_centred(vol, box, ndim=3).contiguous(), apix


def sample_rotation_pairs(
    n: int,
    generator: torch.Generator,
    symmetry: str = "C1",
    dtype: torch.dtype = torch.float64,
    tilt_fraction: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pose pairs whose orientation distances are uniformly distributed.

    Parameters
    ----------
    n
        Number of pairs.
    generator
        CPU torch generator.
    symmetry
        Point group; targets are ``min over g of d_q(R1 g, R2)`` (see the module docstring).
    dtype
        Floating dtype of the results.
    tilt_fraction
        Probability that the relative rotation's axis lies in the lab xy plane (a tilt of
        the viewing direction) rather than in a uniform direction; the distances are
        independent of it.

    Returns
    -------
    R1, R2 : torch.Tensor
        ``(n, 3, 3)`` RELION rotation matrices.
    target : torch.Tensor
        ``(n,)`` distances in radians, uniform on ``[0, pi]`` (C1) or on ``[0, max]``.
    """
    group = symmetry_group(symmetry).to(dtype)
    m = n if group.shape[0] == 1 else _OVERSAMPLE * n
    R1 = random_rotations(m, generator, dtype=dtype)
    axis = torch.randn(m, 3, generator=generator, dtype=dtype)
    tilt = torch.rand(m, generator=generator) < tilt_fraction
    axis[tilt, 2] = 0.0
    axis = axis / torch.linalg.vector_norm(axis, dim=-1, keepdim=True)
    # The pair is R2 = R1 exp(d [u]x) = exp(d [R1 u]x) R1: the lab-frame axis is R1 u.
    axis[tilt] = (R1[tilt].transpose(-1, -2) @ axis[tilt, :, None])[..., 0]
    d = math.pi * torch.rand(m, generator=generator, dtype=dtype)
    R2 = R1 @ axis_angle_to_matrix(axis * d[:, None])
    if group.shape[0] == 1:
        return R1, R2, d
    target = torch.deg2rad(angular_error(R1, R2, group))
    hi = float(target.max()) * (1 + 1e-9)
    bins = (target / hi * _BINS).long().clamp_max(_BINS - 1)
    counts = torch.bincount(bins, minlength=_BINS).to(dtype)
    pick = torch.multinomial(1.0 / counts[bins], n, replacement=False, generator=generator)
    return R1[pick], R2[pick], target[pick]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation of two ``(n,)`` samples (ties broken by order)."""

    def ranks(v: torch.Tensor) -> torch.Tensor:
        r = torch.empty_like(v, dtype=torch.float64)
        r[torch.argsort(v)] = torch.arange(v.shape[0], dtype=torch.float64)
        return r - r.mean()

    rx, ry = ranks(x), ranks(y)
    return float((rx * ry).sum() / torch.sqrt((rx * rx).sum() * (ry * ry).sum()))


class _PairSimulator:
    """Projections of pose pairs with the augmentations of a :class:`TrainConfig`."""

    def __init__(self, volume: torch.Tensor, angpix: float, config: TrainConfig) -> None:
        self.config = config
        self.angpix = angpix
        self.box = int(volume.shape[-1])
        self.projector = Projector(volume)
        self.radius = estimate_radius_px(volume)
        self.mask = circular_mask(self.box, self.radius).bool()
        gen = torch.Generator().manual_seed(config.seed + 7919)
        clean = self._clean(random_rotations(256, gen, dtype=torch.float64), gen)
        self.signal_variance = float(clean[:, self.mask].var(dim=1, correction=0).mean())
        self.sigma = 0.0 if config.snr is None else math.sqrt(self.signal_variance / config.snr)

    def _clean(self, R: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        c, n = self.config, R.shape[0]
        shifts = None
        if c.shift_sigma_angst > 0:
            shifts = c.shift_sigma_angst * torch.randn(n, 2, generator=gen, dtype=torch.float64)
        ctf = None
        if c.ctf:
            lo, hi = c.defocus_range
            df = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
            ctf = ctf_2d(
                (self.box, self.box), self.angpix, df, df, 0.0, c.voltage, c.cs,
                c.amplitude_contrast,
            )  # fmt: skip
        return self.projector.project(R, shifts, self.angpix, ctf=ctf)

    def images(self, R: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``(N, 1, box, box)`` standardised, augmented projections at poses ``R``."""
        img = self._clean(R, gen)
        if self.sigma > 0:
            n = R.shape[0]
            scale = torch.rand(n, generator=gen) if self.config.noise_mix else torch.ones(n)
            noise = torch.randn(img.shape, generator=gen, dtype=img.dtype)
            img = img + (self.sigma * scale.to(img.dtype))[:, None, None] * noise
        return standardise(img.to(torch.float32))[:, None]

    def batch(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(2n, 1, box, box)`` images (first halves, then partners) and ``(n,)`` targets."""
        images, _, target = self.posed_batch(n, gen)
        return images, target

    def posed_batch(
        self, n: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """As :meth:`batch`, with the ``(2n, 3, 3)`` poses of the images in the middle."""
        R1, R2, target = sample_rotation_pairs(
            n, gen, self.config.symmetry, tilt_fraction=self.config.tilt_fraction
        )
        R = torch.cat([R1, R2])
        return self.images(R, gen), R, target.to(torch.float32)


def all_pairs_targets(R: torch.Tensor, symmetry: str = "C1") -> tuple[torch.Tensor, torch.Tensor]:
    """Distances of every pair of a batch of poses, and weights that make them uniform.

    Parameters
    ----------
    R
        ``(m, 3, 3)`` poses.
    symmetry
        Point group; distances are the minimum over it.

    Returns
    -------
    target : torch.Tensor
        ``(m (m - 1) / 2,)`` float32 distances in radians of the pairs ``triu_indices(m, m, 1)``.
    weight : torch.Tensor
        ``(m (m - 1) / 2,)`` float32 weights summing to 1, ``1 / count`` of the pair's bin in a
        32-bin histogram of the targets on ``[0, max]``: every occupied bin weighs the same,
        so the weighted targets are uniformly distributed.
    """
    m = R.shape[0]
    i, j = torch.triu_indices(m, m, 1)
    group = symmetry_group(symmetry).to(R.dtype)
    if group.shape[0] == 1:
        target = geodesic_distance(R[i], R[j])
    else:
        target = torch.deg2rad(angular_error(R[i], R[j], group))
    hi = float(target.max()) * (1 + 1e-9) + 1e-12
    bins = (target / hi * _BINS).long().clamp_max(_BINS - 1)
    counts = torch.bincount(bins, minlength=_BINS).to(target.dtype)
    weight = 1.0 / counts[bins]
    weight = weight / weight.sum()
    return target.to(torch.float32), weight.to(torch.float32)


def _all_pairs_loss(
    net: SiameseDistance, images: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Weighted MSE of ``d_hat`` over every pair of a batch (one encoder pass)."""
    f = nn.functional.normalize(net.embed(images), dim=-1)
    i, j = torch.triu_indices(f.shape[0], f.shape[0], 1, device=f.device)
    d_hat = math.pi * (1.0 - (f[i] * f[j]).sum(-1)) / 2.0
    return torch.sum(weight * (d_hat - target) ** 2)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _read_config(model_dir: Path) -> tuple[TrainConfig, dict[str, Any]]:
    path = model_dir / CONFIG_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return TrainConfig.from_dict(data["train"]), dict(data["derived"])
    except FileNotFoundError as err:
        raise InputError(path, "missing; expected a model folder from 'recover train'") from err
    except (ValueError, KeyError, TypeError) as err:
        raise InputError(path, f"not a cryopose distance-model config: {err}") from err


def _check_resumable(model_dir: Path, config: TrainConfig) -> None:
    old, _ = _read_config(model_dir)
    a = {k: v for k, v in old.to_dict().items() if k not in _RESUMABLE}
    b = {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE}
    changed = sorted(k for k in a if a[k] != b.get(k))
    if changed:
        raise InputError(
            model_dir / CONFIG_FILE,
            f"settings {changed} differ from the checkpoint's; expected the same settings "
            "to resume (or a new output folder)",
        )


def _save_checkpoint(
    path: Path,
    net: SiameseDistance,
    opt: torch.optim.Optimizer,
    step: int,
    gen: torch.Generator,
    losses: list[float],
    calibration: torch.Tensor | None = None,
) -> None:
    state: dict[str, Any] = {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "step": step,
        "generator": gen.get_state(),
        "losses": torch.tensor(losses, dtype=torch.float32),
    }
    if calibration is not None:
        state["calibration"] = calibration
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _calibrate_centring(
    net: SiameseDistance, sim: _PairSimulator, config: TrainConfig, device: str | torch.device
) -> None:
    """Set the feature centring's running statistics to exact averages over fresh images.

    During training they are exponential averages over recent batches and lag behind the
    weights; inference (eval mode) uses them, so they are recomputed with the final weights.
    """
    centre = net.centre
    momentum = centre.momentum
    centre.reset_running_stats()
    centre.momentum = None  # cumulative average over the calibration batches
    gen = torch.Generator().manual_seed(config.seed + 15485863)
    net.train()
    with torch.no_grad():
        for _ in range(8):
            images, _ = sim.batch(config.batch_size, gen)
            net.embed(images.to(device))
    centre.momentum = momentum


def calibrate(d_hat: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Map network outputs to distances, piecewise linearly through ``knots``.

    Parameters
    ----------
    d_hat
        ``(...)`` network outputs in radians.
    knots
        ``(2, K)``: increasing ``d_hat`` values and the non-decreasing distances they map to;
        outside the first and last knot the map is constant.

    Returns
    -------
    torch.Tensor
        ``(...)`` calibrated distances in radians, dtype of ``d_hat``.
    """
    x, y = knots[0].to(d_hat), knots[1].to(d_hat)
    k = torch.searchsorted(x, d_hat.contiguous()).clamp(1, x.shape[0] - 1)
    x0, x1, y0, y1 = x[k - 1], x[k], y[k - 1], y[k]
    t = ((d_hat - x0) / (x1 - x0).clamp_min(1e-12)).clamp(0.0, 1.0)
    return y0 + t * (y1 - y0)


def _fit_calibration(
    net: SiameseDistance, sim: _PairSimulator, config: TrainConfig, pairs: int = 4096
) -> torch.Tensor:
    """``(2, 34)`` knots: mean ``d_hat`` and mean target in 32 quantile bins of ``d_hat``.

    Fresh pairs (uniform targets); the knot distances are made non-decreasing (running
    maximum) and ``(0, 0)``, ``(pi, max)`` are added so that the map covers ``[0, pi]``.
    The network's outputs are compressed (measured on 5j0n: about 0.7 d for d > 40 deg), and
    recovery fits distances, not ranks, so it uses the calibrated ones.
    """
    gen = torch.Generator().manual_seed(config.seed + 1299709)
    preds, targets = [], []
    net.eval()
    with torch.no_grad():
        for _ in range(0, pairs, 256):
            images, target = sim.batch(256, gen)
            b = 256
            preds.append(net(images[:b], images[b:]).to(torch.float64))
            targets.append(target.to(torch.float64))
    net.train()
    d_hat, d = torch.cat(preds), torch.cat(targets)
    order = torch.argsort(d_hat)
    x = torch.stack([c.mean() for c in d_hat[order].chunk(_BINS)])
    y = torch.cummax(torch.stack([c.mean() for c in d[order].chunk(_BINS)]), 0).values
    zero, top = torch.zeros(1, dtype=x.dtype), torch.full((1,), math.pi, dtype=x.dtype)
    x = torch.cat([zero, x, torch.maximum(top, x[-1:] + 1e-6)])
    y = torch.cat([zero, y, torch.maximum(y[-1:], top if config.symmetry == "C1" else y[-1:])])
    return torch.stack([x, y]).to(torch.float32)


def _validate(
    net: SiameseDistance, sim: _PairSimulator, config: TrainConfig
) -> tuple[float, float]:
    """Spearman correlation and mean |error| (degrees) on fixed validation pairs."""
    gen = torch.Generator().manual_seed(config.seed + 104729)
    preds, targets = [], []
    net.eval()
    with torch.no_grad():
        for start in range(0, config.validation_pairs, config.batch_size):
            n = min(config.batch_size, config.validation_pairs - start)
            images, target = sim.batch(n, gen)
            preds.append(net(images[:n], images[n:]))
            targets.append(target)
    net.train()
    d_hat, d = torch.cat(preds), torch.cat(targets)
    return spearman(d_hat, d), math.degrees(float((d_hat - d).abs().mean()))


def train_distance_network(
    volume: torch.Tensor,
    angpix: float,
    model_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> TrainResult:
    """Train (or resume training) a Siamese distance network on projections of a map.

    Parameters
    ----------
    volume
        ``(D, H, W)`` map (z, y, x), origin at the centre; padded to a cube if needed.
    angpix
        Its voxel size in Angstrom.
    model_dir
        Output folder (see the module docstring for its files).
    config
        Training settings; default ``TrainConfig()``.
    resume
        Continue from ``model_dir/checkpoint.pt`` when present (settings must match, except
        ``max_steps``, ``max_minutes`` and ``checkpoint_seconds``); ``False`` starts over.
    device
        Device of the network (images are simulated on the CPU).
    progress
        Report progress (a bar on a terminal, else log lines).

    Returns
    -------
    TrainResult

    Raises
    ------
    InputError
        For invalid settings, or when resuming with different settings.
    """
    cfg = TrainConfig() if config is None else config
    cfg.validate()
    out = Path(model_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / CHECKPOINT_FILE
    resuming = resume and checkpoint.exists()
    if resuming:
        _check_resumable(out, cfg)
        vol, apix = read_map(out / VOLUME_FILE)
    else:
        vol, apix = prepare_volume(volume, angpix, cfg.box, cfg.angpix)
        write_map(out / VOLUME_FILE, vol, apix)
    sim = _PairSimulator(vol, apix, cfg)
    derived = {
        "angpix": apix,
        "box": cfg.box,
        "particle_radius_px": sim.radius,
        "signal_variance": sim.signal_variance,
        "noise_sigma": sim.sigma,
    }
    _write_json(out / CONFIG_FILE, {"train": cfg.to_dict(), "derived": derived})

    torch.manual_seed(cfg.seed)  # weight initialisation
    net = SiameseDistance(cfg.network).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    losses: list[float] = []
    step = 0
    if resuming:
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step = int(state["step"])
        losses = [float(v) for v in state["losses"]]
    start = last_save = time.monotonic()
    budget = math.inf if cfg.max_minutes is None else 60.0 * cfg.max_minutes
    total = cfg.max_steps
    net.train()
    with progress_reporter(
        "training distance network", total, enabled=progress, unit="steps"
    ) as advance:
        while (total is None or step < total) and time.monotonic() - start < budget:
            images, R, target = sim.posed_batch(cfg.batch_size, gen)
            images, target = images.to(device), target.to(device)
            if cfg.all_pairs:
                all_target, weight = all_pairs_targets(R, cfg.symmetry)
                loss = _all_pairs_loss(net, images, all_target.to(device), weight.to(device))
            else:
                d_hat = net(images[: cfg.batch_size], images[cfg.batch_size :])
                loss = torch.mean((d_hat - target) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % 10 == 0:  # without a step limit the reporter logs every call
                advance(10)
            if time.monotonic() - last_save >= cfg.checkpoint_seconds:
                _save_checkpoint(checkpoint, net, opt, step, gen, losses)
                last_save = time.monotonic()
    _calibrate_centring(net, sim, cfg, device)
    calibration = _fit_calibration(net, sim, cfg)
    _save_checkpoint(checkpoint, net, opt, step, gen, losses, calibration)
    rho, mae = _validate(net, sim, cfg)
    tail = losses[-min(len(losses), 100) :]
    _write_json(
        out / METRICS_FILE,
        {
            "steps": step,
            "validation_spearman": rho,
            "validation_mean_abs_error_deg": mae,
            "validation_pairs": cfg.validation_pairs,
            "train_loss_last_100": sum(tail) / max(len(tail), 1),
        },
    )
    return TrainResult(out, step, torch.tensor(losses), rho, mae)


def load_distance_model(model_dir: str | Path, device: str | torch.device = "cpu") -> DistanceModel:
    """Load the network of a model folder written by :func:`train_distance_network`.

    Parameters
    ----------
    model_dir
        The model folder.
    device
        Device to load the weights on.

    Returns
    -------
    DistanceModel
        The network in eval mode with its box, pixel size and symmetry.

    Raises
    ------
    InputError
        When ``config.json`` or ``checkpoint.pt`` is missing or unreadable.
    """
    folder = Path(model_dir)
    cfg, derived = _read_config(folder)
    path = folder / CHECKPOINT_FILE
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        net = SiameseDistance(cfg.network).to(device)
        net.load_state_dict(state["model"])
    except FileNotFoundError as err:
        raise InputError(path, "missing; expected a checkpoint from 'recover train'") from err
    except (RuntimeError, KeyError, ValueError) as err:
        raise InputError(path, f"not a distance-network checkpoint: {err}") from err
    net.eval()
    calibration = state.get("calibration")
    return DistanceModel(
        net, int(derived["box"]), float(derived["angpix"]), cfg.symmetry, cfg, calibration
    )
