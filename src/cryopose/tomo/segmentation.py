"""Learned picking, segmentation half: training patches, loss, Lightning module, tiled inference.

A 3D U-Net (:class:`cryopose.models.unet3d.UNet3D`) labels every voxel of a tomogram with one of
``1 + n_proteins`` classes (0 = background), as DeepFinder and SHREC 2020's UMC did;
:mod:`cryopose.tomo.clustering` turns the label volume into picks.

Targets
-------
Labels come from a SHREC model folder's ``class_mask.mrc`` (see
:mod:`cryopose.simulate.tomogram`): its value ``k`` is mapped to the model's class list through
the class names of ``simulation.json`` (``class_index``; without that file the SHREC order
:data:`cryopose.simulate.tomogram.DEFAULT_CLASSES`). Fiducials, vesicles and classes the model
does not know become background. With ``erode = e > 0`` the voxels of a particle that have
another particle (``occupancy_mask.mrc``) within ``e`` voxels are peeled
(:func:`erode_labels`), so that
touching neighbours are separated by background in the target and predicted components stay
apart, while isolated particles, small proteins included, keep their whole mask (DeepFinder
used spheres, UMC eroded masks, for the same reason).

Loss
----
:func:`segmentation_loss` = soft multi-class Tversky loss + ``ce_weight`` x cross-entropy. The
Tversky index of class ``c`` is ``(TP + eps) / (TP + alpha FP + beta FN + eps)`` with soft counts
``TP = sum p_c t_c``, ``FP = sum p_c (1 - t_c)``, ``FN = sum (1 - p_c) t_c`` over the batch,
``eps = 1``; the loss is one minus its mean over all classes. ``alpha = beta = 0.5`` is the
soft Dice loss; ``beta > alpha`` weighs misses more (helps small classes). Averaging over
classes, not voxels, keeps the 2 % of voxels that are small proteins from being drowned by
background; a class absent from the batch scores 1 only when its predicted mass is ~0, which
penalises hallucinations. The cross-entropy term gives well-scaled gradients early on, when
the soft Dice of a random network is flat. ``fg_weight`` adds a binary soft Dice of the
foreground (``1 - P(background)`` against ``target > 0``): localisation only needs the
foreground, and this term trains it while the twelve protein classes are still confused
(a network with the class terms alone still put 25 % of an unseen tomogram's voxels in the
foreground after 100 steps, and SHREC's benchmark scored its picks F1 0.000).

Augmentation and the missing wedge
----------------------------------
The tilt axis is ``y`` and the beam ``z``, so the missing wedge is the region of Fourier space
around the ``k_z`` axis in the ``k_x``-``k_z`` plane, extended along ``k_y``. A 90-degree rotation
about ``z`` swaps ``x`` and ``y`` and would put the wedge in the ``k_y``-``k_z`` plane, a geometry
that never occurs in real data, so it is not used. Flips of single axes keep the wedge but
mirror the proteins (a D-amino-acid world); the default augmentations are therefore the four
180-degree rotations about ``x``, ``y`` and ``z`` (pairs of flips: hand and wedge kept).
``mirror=True`` adds the four single/triple flips.

Tiled inference
---------------
:func:`predict_tiled` runs the network on overlapping tiles and blends their softmax
probabilities with a window that is 0 within ``margin`` voxels of an interior tile edge and
ramps linearly to 1 across the rest of the overlap (no taper at the volume's borders). Batch
norm in evaluation mode makes the U-Net translation-equivariant for shifts by multiples of its
divisor, so when ``margin`` is at least the network's receptive-field radius the blended
result equals whole-volume inference exactly; with a smaller margin (the default, for speed)
the seams differ slightly. With ``flips`` each tile is also run in flipped views (the
wedge-keeping rotations of training) and the probabilities averaged: averaging over a group of
rotations makes the prediction rotate with the tomogram.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from cryopose.errors import InputError
from cryopose.io.mrc import read_map
from cryopose.io.picks import read_picks
from cryopose.models.unet3d import UNet3D, UNet3DConfig
from cryopose.simulate.tomogram import DEFAULT_CLASSES

__all__ = [
    "PatchDataset",
    "SegmentationModule",
    "TomogramLabels",
    "augment_rotations",
    "blend_window",
    "erode_labels",
    "load_tomogram_labels",
    "n_tiles",
    "normalise",
    "predict_tiled",
    "segmentation_loss",
    "tile_starts",
]


# ----------------------------------------------------------------------------- data


def normalise(volume: torch.Tensor) -> torch.Tensor:
    """Per-tomogram normalisation: ``(volume - mean) / std`` over every voxel.

    Parameters
    ----------
    volume
        ``(Z, Y, X)`` tomogram.

    Returns
    -------
    torch.Tensor
        float32 of the same shape, mean 0 and standard deviation 1.
    """
    v = volume.to(torch.float32)
    mean = v.mean(dtype=torch.float64)
    std = v.std().clamp(min=1e-12)
    return ((v - mean) / std).to(torch.float32)


@dataclass
class TomogramLabels:
    """One training tomogram in memory.

    Attributes
    ----------
    name
        Folder it came from.
    volume
        ``(Z, Y, X)`` float32 normalised reconstruction.
    labels
        ``(Z, Y, X)`` uint8 model class index per voxel (0 background), eroded if asked.
    centres
        ``(n, 3)`` int64 particle centres ``(z, y, x)`` of the model's classes.
    classes
        ``(n,)`` int64 model class index (``1..n_classes-1``) of each centre.
    voxels
        ``(n,)`` int64 target voxels of each particle (after erosion).
    """

    name: str
    volume: torch.Tensor
    labels: torch.Tensor
    centres: torch.Tensor
    classes: torch.Tensor
    voxels: torch.Tensor


def _shift(x: torch.Tensor, axis: int, step: int, fill: int) -> torch.Tensor:
    """``x`` shifted by ``step`` voxels along ``axis``, ``fill`` entering at the border."""
    out = torch.full_like(x, fill)
    n = x.shape[axis]
    src = x.narrow(axis, max(0, -step), n - abs(step))
    out.narrow(axis, max(0, step), n - abs(step)).copy_(src)
    return out


def erode_labels(occupancy: torch.Tensor, distance: int) -> torch.Tensor:
    """Separate neighbouring objects: peel object voxels that have another object nearby.

    Parameters
    ----------
    occupancy
        ``(Z, Y, X)`` int object labels, 0 background.
    distance
        A voxel of object ``k`` is removed when a voxel of another object lies within
        ``distance`` voxels along every axis (a ``(2 distance + 1)^3`` cube). Contacts with
        background or the volume border are kept, so isolated particles keep their whole
        shape and small proteins do not vanish; the gap between two neighbours grows by about
        ``2 * distance`` voxels, enough for a blurry prediction to keep them apart.

    Returns
    -------
    torch.Tensor
        ``(Z, Y, X)`` bool mask of the surviving object voxels.
    """
    occ = occupancy.cpu().numpy().astype(np.int64)
    size = 2 * distance + 1
    big = int(occ.max(initial=0)) + 1  # above every label (and exact as a float cval)
    highest = ndimage.maximum_filter(occ, size=size, mode="constant", cval=0)
    lowest = ndimage.minimum_filter(
        np.where(occ > 0, occ, big), size=size, mode="constant", cval=big
    )
    alone = (highest == occ) & (lowest == occ)
    return torch.from_numpy(alone & (occ > 0))


def _class_map(folder: Path, class_names: Sequence[str]) -> dict[int, int]:
    """``class_mask`` value -> model class index, from ``simulation.json`` when present."""
    sim = folder / "simulation.json"
    if sim.is_file():
        try:
            index: dict[str, int] = json.loads(sim.read_text())["class_index"]
        except (KeyError, ValueError) as exc:
            raise InputError(sim, f"expected a JSON object with 'class_index' ({exc})") from exc
    else:
        index = {name: i + 1 for i, name in enumerate(DEFAULT_CLASSES)}
    wanted = {n.lower(): i + 1 for i, n in enumerate(class_names)}
    return {int(v): wanted.get(k.lower(), 0) for k, v in index.items()}


def load_tomogram_labels(
    folder: str | Path, class_names: Sequence[str], erode: int = 0
) -> TomogramLabels:
    """Read a SHREC model folder into a :class:`TomogramLabels`.

    Parameters
    ----------
    folder
        Holds ``reconstruction.mrc``, ``class_mask.mrc``, ``occupancy_mask.mrc``,
        ``particle_locations.txt`` and optionally ``simulation.json``.
    class_names
        The model's protein classes; class ``class_names[i]`` is model index ``i + 1``.
    erode
        Erosion steps of each particle's target (module docstring).

    Returns
    -------
    TomogramLabels
        Normalised volume, labels, particle centres and classes.

    Raises
    ------
    InputError
        Missing files or volumes of different shapes.
    """
    folder = Path(folder)
    for name in ("reconstruction.mrc", "class_mask.mrc", "occupancy_mask.mrc"):
        if not (folder / name).is_file():
            raise InputError(folder / name, "missing; expected a SHREC model folder")
    volume, _ = read_map(folder / "reconstruction.mrc")
    mask, _ = read_map(folder / "class_mask.mrc")
    occ, _ = read_map(folder / "occupancy_mask.mrc")
    if mask.shape != volume.shape or occ.shape != volume.shape:
        raise InputError(
            folder / "class_mask.mrc",
            f"shape {tuple(mask.shape)} / occupancy {tuple(occ.shape)} differ from the "
            f"reconstruction's {tuple(volume.shape)}",
        )
    mapping = _class_map(folder, class_names)
    lut = torch.zeros(max([*mapping, 0]) + 1, dtype=torch.int64)
    for k, v in mapping.items():
        lut[k] = v
    raw = mask.round().to(torch.int64).clamp(0, len(lut) - 1)
    labels = lut[raw]
    occupancy = occ.round().to(torch.int64)
    picks = read_picks(folder / "particle_locations.txt")
    model_index = {n.lower(): i + 1 for i, n in enumerate(class_names)}
    rows = [i for i, c in enumerate(picks.class_ids) if c.lower() in model_index]
    centres = torch.from_numpy(np.rint(picks.coords[rows][:, ::-1].copy())).to(torch.int64)
    classes = torch.tensor(
        [model_index[picks.class_ids[i].lower()] for i in rows], dtype=torch.int64
    )
    # Only the model's particles count as objects: background stays background after erosion.
    occupancy = torch.where(labels > 0, occupancy, 0)
    alive = erode_labels(occupancy, erode) if erode > 0 else occupancy > 0
    labels = torch.where(alive, labels, 0)
    counts = torch.bincount(torch.where(alive, occupancy, 0).flatten(), minlength=len(picks) + 1)
    voxels = counts[torch.tensor(rows, dtype=torch.int64) + 1]
    return TomogramLabels(
        name=str(folder),
        volume=normalise(volume),
        labels=labels.to(torch.uint8),
        centres=centres,
        classes=classes,
        voxels=voxels,
    )


def augment_rotations(mirror: bool = False) -> list[tuple[int, ...]]:
    """Axis sets to flip (dims of a ``(Z, Y, X)`` volume) for the wedge-keeping augmentations.

    Parameters
    ----------
    mirror
        Also include the hand-changing flips (single axes and all three).

    Returns
    -------
    list of tuple of int
        Identity ``()``, the 180-degree rotations about x ``(0, 1)``, y ``(0, 2)`` and z
        ``(1, 2)``, and with ``mirror`` ``(0,)``, ``(1,)``, ``(2,)``, ``(0, 1, 2)``.
    """
    out: list[tuple[int, ...]] = [(), (0, 1), (0, 2), (1, 2)]
    if mirror:
        out += [(0,), (1,), (2,), (0, 1, 2)]
    return out


class PatchDataset(torch.utils.data.Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Random cubic patches of tomograms with their labels, class-balanced.

    A patch is centred (with a jitter of up to a quarter patch) on a particle with probability
    ``p_particle``; the particle's class is drawn with probability proportional to
    ``class_weights`` (larger for small/rare classes), then a particle of that class uniformly.
    Otherwise the patch is anywhere. Patches stay inside ``region`` (a range of ``y``), which
    keeps training and validation patches apart.

    Parameters
    ----------
    tomograms
        Training volumes and labels.
    patch
        ``(pz, py, px)`` patch shape.
    length
        Patches per epoch.
    region
        ``(y_start, y_stop)`` fraction of ``Y`` (0..1) patches must lie in.
    class_weights
        ``(n_classes,)`` sampling weight per model class (index 0 unused).
    p_particle
        Probability of a particle-centred patch.
    augment
        Random wedge-keeping rotations (:func:`augment_rotations`).
    mirror
        Also mirror (hand-changing flips).
    seed
        Seed; with ``augment=False`` item ``i`` is the same patch every epoch (validation).
    """

    def __init__(
        self,
        tomograms: Sequence[TomogramLabels],
        patch: tuple[int, int, int],
        length: int,
        region: tuple[float, float],
        class_weights: torch.Tensor,
        p_particle: float = 0.8,
        augment: bool = True,
        mirror: bool = False,
        seed: int = 0,
    ) -> None:
        self.tomograms = list(tomograms)
        self.patch = patch
        self.length = length
        self.region = region
        self.class_weights = class_weights.to(torch.float64)
        self.p_particle = p_particle
        self.augment = augment
        self.rotations = augment_rotations(mirror)
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        for t in self.tomograms:
            lo, hi = self._y_range(t)
            if any(s < p for s, p in zip(t.volume.shape, patch, strict=True)) or hi <= lo:
                raise InputError(
                    t.name,
                    f"tomogram {tuple(t.volume.shape)} too small for patches {patch} in the "
                    f"y range {region}",
                )

    def __len__(self) -> int:
        return self.length

    def _y_range(self, t: TomogramLabels) -> tuple[int, int]:
        """Return the allowed ``y`` corners ``[lo, hi)`` inside the region."""
        n = t.volume.shape[1]
        lo = round(self.region[0] * n)
        hi = round(self.region[1] * n) - self.patch[1] + 1
        return lo, hi

    def _corner(self, t: TomogramLabels, g: torch.Generator) -> tuple[int, int, int]:
        """Corner ``(z, y, x)`` of a patch of tomogram ``t``."""
        lo_y, hi_y = self._y_range(t)
        highs = [t.volume.shape[0] - self.patch[0], hi_y - 1, t.volume.shape[2] - self.patch[2]]
        lows = [0, lo_y, 0]
        inside = (t.centres[:, 1] >= lo_y + self.patch[1] // 4) & (
            t.centres[:, 1] < hi_y + self.patch[1] - self.patch[1] // 4
        )
        if float(torch.rand(1, generator=g)) < self.p_particle and bool(inside.any()):
            classes = t.classes[inside]
            w = torch.zeros_like(self.class_weights)
            present = torch.unique(classes)
            w[present] = self.class_weights[present]
            c = int(torch.multinomial(w, 1, generator=g))
            which = torch.nonzero(inside).flatten()[classes == c]
            k = int(which[int(torch.randint(len(which), (1,), generator=g))])
            jitter = torch.randint(-(self.patch[0] // 4), self.patch[0] // 4 + 1, (3,), generator=g)
            centre = t.centres[k] + jitter
            corner = [int(centre[i]) - self.patch[i] // 2 for i in range(3)]
        else:
            corner = [
                int(torch.randint(lows[i], highs[i] + 1, (1,), generator=g)) for i in range(3)
            ]
        return (
            min(max(corner[0], lows[0]), highs[0]),
            min(max(corner[1], lows[1]), highs[1]),
            min(max(corner[2], lows[2]), highs[2]),
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(1, pz, py, px)`` float32 patch and ``(pz, py, px)`` int64 labels."""
        g = (
            self._generator
            if self.augment
            else torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        )
        t = self.tomograms[int(torch.randint(len(self.tomograms), (1,), generator=g))]
        z, y, x = self._corner(t, g)
        pz, py, px = self.patch
        vol = t.volume[z : z + pz, y : y + py, x : x + px]
        lab = t.labels[z : z + pz, y : y + py, x : x + px].to(torch.int64)
        if self.augment:
            dims = self.rotations[int(torch.randint(len(self.rotations), (1,), generator=g))]
            if dims:
                vol, lab = vol.flip(dims), lab.flip(dims)
        return vol.unsqueeze(0).contiguous(), lab.contiguous()


# ----------------------------------------------------------------------------- loss


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    beta: float = 0.5,
    ce_weight: float = 1.0,
    eps: float = 1.0,
    fg_weight: float = 0.0,
) -> torch.Tensor:
    """Soft multi-class Tversky loss plus weighted cross-entropy (module docstring).

    Parameters
    ----------
    logits
        ``(B, C, D, H, W)`` class logits.
    target
        ``(B, D, H, W)`` int64 class indices in ``0..C-1``.
    alpha, beta
        Tversky weights of false positives and false negatives (0.5, 0.5: soft Dice).
    ce_weight
        Weight of the mean voxel cross-entropy added to the Tversky loss.
    eps
        Smoothing added to numerator and denominator, in voxels.
    fg_weight
        Weight of a binary soft Dice loss of the foreground (``1 - P(background)`` against
        ``target > 0``): what localisation needs, learnt even while the protein classes are
        still confused with each other.

    Returns
    -------
    torch.Tensor
        Scalar loss; 0 for a perfect, infinitely confident prediction (without cross-entropy).
    """
    n_classes = logits.shape[1]
    prob = logits.softmax(dim=1)
    onehot = F.one_hot(target, n_classes).movedim(-1, 1).to(prob.dtype)
    dims = (0, 2, 3, 4)
    tp = (prob * onehot).sum(dims)
    fp = (prob * (1 - onehot)).sum(dims)
    fn = ((1 - prob) * onehot).sum(dims)
    tversky = (tp + eps) / (tp + alpha * fp + beta * fn + eps)
    loss = 1.0 - tversky.mean()
    if ce_weight:
        loss = loss + ce_weight * F.cross_entropy(logits, target)
    if fg_weight:
        fg = 1.0 - prob[:, 0]
        truth = (target > 0).to(prob.dtype)
        dice = (2 * (fg * truth).sum() + eps) / (fg.sum() + truth.sum() + eps)
        loss = loss + fg_weight * (1.0 - dice)
    return loss


# ----------------------------------------------------------------------------- Lightning


class SegmentationModule(L.LightningModule):
    """Lightning wrapper: Adam, :func:`segmentation_loss`, validation foreground Dice.

    Parameters
    ----------
    network
        Architecture of the U-Net to train.
    lr
        Adam learning rate.
    alpha, beta, ce_weight, fg_weight
        Loss parameters (:func:`segmentation_loss`).
    """

    def __init__(
        self,
        network: UNet3DConfig,
        lr: float = 1e-3,
        alpha: float = 0.5,
        beta: float = 0.5,
        ce_weight: float = 1.0,
        fg_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.net = UNet3D(network)
        self.lr = lr
        self.alpha, self.beta, self.ce_weight = alpha, beta, ce_weight
        self.fg_weight = fg_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 1, D, H, W)`` -> ``(B, C, D, H, W)`` logits."""
        out: torch.Tensor = self.net(x)
        return out

    def _loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self.net(x)
        loss = segmentation_loss(
            logits, y, self.alpha, self.beta, self.ce_weight, fg_weight=self.fg_weight
        )
        return loss, logits

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        """One optimisation step; logs ``train_loss``."""
        loss, _ = self._loss(batch)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=batch[0].shape[0])
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        """Log ``val_loss``, ``val_fg_dice`` (foreground vs background) and ``val_class_acc``."""
        loss, logits = self._loss(batch)
        pred = logits.argmax(1)
        y = batch[1]
        fg_pred, fg_true = pred > 0, y > 0
        inter = (fg_pred & fg_true).sum()
        dice = 2 * inter / (fg_pred.sum() + fg_true.sum()).clamp(min=1)
        acc = (pred[fg_true] == y[fg_true]).float().mean() if bool(fg_true.any()) else dice * 0
        n = batch[0].shape[0]
        self.log("val_loss", loss, batch_size=n)
        self.log("val_fg_dice", dice.float(), batch_size=n)
        self.log("val_class_acc", acc, batch_size=n)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """Adam over the U-Net's parameters."""
        return torch.optim.Adam(self.net.parameters(), lr=self.lr)


# ----------------------------------------------------------------------------- tiled inference


def tile_starts(n: int, tile: int, step: int) -> list[int]:
    """Return the starts of tiles of length ``tile`` covering ``0..n-1`` with stride ``step``.

    The last tile ends at ``n`` (it may overlap its neighbour more); ``n <= tile`` gives
    ``[0]``. With ``n``, ``tile`` and ``step`` multiples of a divisor, so are all starts.
    """
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile, step))
    return [*starts, n - tile]


def blend_window(
    tile: int, overlap: int, margin: int, low_edge: bool, high_edge: bool
) -> torch.Tensor:
    """``(tile,)`` blending weights along one axis.

    0 for the first ``margin`` voxels after an interior tile edge, then a linear ramp reaching
    1 at ``overlap`` voxels from it; flat (1) at a side that is a volume border
    (``low_edge`` / ``high_edge``).
    """
    if overlap <= margin:
        return torch.ones(tile, dtype=torch.float64)
    i = torch.arange(tile, dtype=torch.float64)
    ramp = ((i - margin + 1) / (overlap - margin)).clamp(0.0, 1.0)
    w = torch.ones(tile, dtype=torch.float64)
    if not low_edge:
        w = torch.minimum(w, ramp)
    if not high_edge:
        w = torch.minimum(w, ramp.flip(0))
    return w


def _tiles(
    shape: Sequence[int], tile: Sequence[int], overlap: int
) -> Iterator[tuple[tuple[int, int, int], tuple[bool, ...], tuple[bool, ...]]]:
    """Tile corners with, per axis, whether the tile touches the low / high volume border."""
    per_axis = [tile_starts(n, t, t - overlap) for n, t in zip(shape, tile, strict=True)]
    for z in per_axis[0]:
        for y in per_axis[1]:
            for x in per_axis[2]:
                corner = (z, y, x)
                low = tuple(c == 0 for c in corner)
                high = tuple(c + t >= n for c, t, n in zip(corner, tile, shape, strict=True))
                yield corner, low, high


def predict_tiled(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    volume: torch.Tensor,
    n_classes: int,
    tile: int = 64,
    overlap: int = 16,
    margin: int | None = None,
    divisor: int = 1,
    batch_size: int = 1,
    device: str | torch.device = "cpu",
    advance: Callable[[int], None] | None = None,
    flips: Sequence[Sequence[int]] = ((),),
) -> torch.Tensor:
    """Class probabilities of a whole tomogram from overlapping tiles (module docstring).

    Parameters
    ----------
    model
        Maps ``(B, 1, d, h, w)`` to ``(B, n_classes, d, h, w)`` logits; used in ``eval`` mode
        without gradients.
    volume
        ``(Z, Y, X)`` normalised tomogram (CPU); it is zero-padded at the high ends to a
        multiple of ``divisor`` (zero = the mean after :func:`normalise`).
    n_classes
        Output channels.
    tile
        Tile edge (rounded up to a multiple of ``divisor``; shrunk to the padded volume).
    overlap
        Voxels shared by neighbouring tiles (rounded up to a multiple of ``divisor``).
    margin
        Voxels next to an interior tile edge that get weight 0; default ``overlap // 4``.
        Must be below ``overlap / 2`` so every voxel keeps a positive total weight.
    divisor
        Shape multiple the model needs (:attr:`UNet3D.divisor`).
    batch_size
        Tiles per forward pass.
    device
        Where the model runs; tiles stream there and back, the accumulators stay on the CPU.
    advance
        Called with the number of tiles done after each batch.
    flips
        Test-time augmentation: each tile's probabilities are the mean over these views, a view
        being the axes (dims of ``(Z, Y, X)``) flipped before the network and back after it;
        ``augment_rotations()`` gives the four wedge-keeping rotations of training (4x the
        time). The default ``((),)`` is one plain pass.

    Returns
    -------
    torch.Tensor
        ``(n_classes, Z, Y, X)`` float32 probabilities (summing to 1 over classes). Memory:
        ``n_classes + 1`` float32 volumes.
    """
    dev = torch.device(device)
    views = [tuple(int(d) for d in view) for view in flips]
    if not views or any(d not in (0, 1, 2) for view in views for d in view):
        raise ValueError(f"flips {flips!r}: expected views made of the axes 0, 1, 2")
    shape_in = tuple(volume.shape)
    padded = [math.ceil(n / divisor) * divisor for n in shape_in]
    tile_d = math.ceil(tile / divisor) * divisor
    ov = math.ceil(overlap / divisor) * divisor
    tiles = [min(tile_d, n) for n in padded]
    mg = ov // 4 if margin is None else margin
    for n, t in zip(padded, tiles, strict=True):
        if n > t and ov >= t:
            raise ValueError(f"overlap {ov} must be smaller than the tile {t}")
        if n > t and 2 * mg >= max(ov, 1):
            raise ValueError(f"margin {mg} must be below half the overlap {ov}")
    vol = F.pad(
        volume.to(torch.float32),
        [0, padded[2] - shape_in[2], 0, padded[1] - shape_in[1], 0, padded[0] - shape_in[0]],
    )
    acc = torch.zeros((n_classes, *padded), dtype=torch.float32)
    weight = torch.zeros(padded, dtype=torch.float32)
    was_training = model.training if isinstance(model, nn.Module) else False
    if isinstance(model, nn.Module):
        model.eval()
    pending: list[tuple[tuple[int, int, int], torch.Tensor]] = []

    def flush() -> None:
        x = torch.stack(
            [
                vol[c[0] : c[0] + tiles[0], c[1] : c[1] + tiles[1], c[2] : c[2] + tiles[2]]
                for c, _ in pending
            ]
        )
        x = x.unsqueeze(1).to(dev)
        prob = torch.zeros((len(pending), n_classes, *tiles), dtype=torch.float32)
        with torch.no_grad():
            for view in views:
                dims = [d + 2 for d in view]  # past the batch and channel dims
                p = model(x.flip(dims) if dims else x).softmax(dim=1)
                prob += (p.flip(dims) if dims else p).to("cpu", torch.float32)
        prob /= len(views)
        for (c, w), p in zip(pending, prob, strict=True):
            sl = (
                slice(c[0], c[0] + tiles[0]),
                slice(c[1], c[1] + tiles[1]),
                slice(c[2], c[2] + tiles[2]),
            )
            acc[(slice(None), *sl)] += p * w
            weight[sl] += w
        if advance is not None:
            advance(len(pending))
        pending.clear()

    try:
        for corner, low, high in _tiles(padded, tiles, ov):
            axes = [
                blend_window(t, ov, mg, lo, hi) for t, lo, hi in zip(tiles, low, high, strict=True)
            ]
            w = (axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]).to(
                torch.float32
            )
            pending.append((corner, w))
            if len(pending) >= batch_size:
                flush()
        if pending:
            flush()
    finally:
        if isinstance(model, nn.Module) and was_training:
            model.train()
    out = acc / weight.clamp(min=1e-12)
    return out[:, : shape_in[0], : shape_in[1], : shape_in[2]].contiguous()


def n_tiles(shape: Sequence[int], tile: int, overlap: int, divisor: int = 1) -> int:
    """Count the tiles :func:`predict_tiled` runs for a volume of ``shape``."""
    padded = [math.ceil(n / divisor) * divisor for n in shape]
    tile_d = math.ceil(tile / divisor) * divisor
    ov = math.ceil(overlap / divisor) * divisor
    tiles = [min(tile_d, n) for n in padded]
    return math.prod(len(tile_starts(n, t, t - ov)) for n, t in zip(padded, tiles, strict=True))
