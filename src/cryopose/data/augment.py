"""Pose-aware augmentation of particle images: every geometric change updates the labels.

Image axes are RELION's: ``x`` is the column index, ``y`` the row index, both measured from
the box centre ``N // 2``. An *in-plane rotation by angle t* moves image content from +x
towards +y (counter-clockwise when the image is drawn with y pointing up, as RELION and
``matplotlib.imshow(origin="lower")`` draw it; clockwise on a screen whose rows run down)::

    rotated(p) = image(Q(t)^T p),   Q(t) = [[cos t, -sin t], [sin t, cos t]]

Label updates (derived in the module notes below, checked by projecting a map in
``tests/dataset/test_augment.py``):

- rotation by ``t``: ``R' = Rz(t) @ R`` with ``Rz(t) = [[Q(t), 0], [0, 1]]`` (in RELION's
  Euler angles this is ``psi' = psi - t``) and origin ``o' = Q(t) @ o``;
- shift of the content by ``d`` pixels: ``o' = o - d * angpix`` (RELION's origin sign: the
  particle centre sits at minus the origin);
- zoom by ``z`` (content magnified about the centre): pose unchanged, ``o' = z * o`` in
  Angstrom of the *nominal* pixel size (the effective pixel size becomes ``angpix / z``).

Derivation: a particle at pose ``A`` is ``I(p) = int V(A^T (p, w)) dw``. Then
``I(Q^T p) = int V(A^T Rz^T (p, w)) dw`` because ``Rz^T (p, w) = (Q^T p, w)``, which is the
projection at ``Rz @ A``. The content centred at ``-o / angpix`` moves to
``Q (-o) / angpix``, i.e. the new origin is ``Q o``.

>>> import torch
>>> img = torch.zeros(1, 8, 8)
>>> img[0, 4, 6] = 1.0  # x = +2 (column 6), y = 0 (row 4)
>>> out = rot90_images(img, 1)  # a quarter turn from +x towards +y
>>> [int(i) for i in divmod(int(out.argmax()), 8)]  # row (y), column (x): y = +2
[6, 4]
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from cryopose.imaging.shift import shift_images

__all__ = [
    "AugmentConfig",
    "Augmented",
    "Augmenter",
    "erase_rectangle",
    "in_plane_rotation",
    "rot90_images",
    "rotate_images",
    "rotate_labels",
    "shift_labels",
    "zoom_images",
    "zoom_labels",
]


def in_plane_rotation(
    angle_rad: torch.Tensor | float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Rotation ``Rz(t)`` about the viewing axis that turns +x towards +y.

    Parameters
    ----------
    angle_rad
        Angle ``t`` in radians, float or tensor of any shape ``S``.
    dtype
        Dtype of the result when ``angle_rad`` is a float.

    Returns
    -------
    torch.Tensor
        ``(*S, 3, 3)`` matrices ``[[c, -s, 0], [s, c, 0], [0, 0, 1]]``.
    """
    t = angle_rad if isinstance(angle_rad, torch.Tensor) else torch.tensor(angle_rad, dtype=dtype)
    c, s = torch.cos(t), torch.sin(t)
    zero, one = torch.zeros_like(t), torch.ones_like(t)
    rows = [
        torch.stack([c, -s, zero], dim=-1),
        torch.stack([s, c, zero], dim=-1),
        torch.stack([zero, zero, one], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def rotate_labels(
    rotation: torch.Tensor, shift_angst: torch.Tensor, angle_rad: torch.Tensor | float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the pose and origin after rotating the image content by ``angle_rad``.

    Parameters
    ----------
    rotation
        ``(..., 3, 3)`` RELION rotation matrices ``A``.
    shift_angst
        ``(..., 2)`` RELION origins (x, y) in Angstrom.
    angle_rad
        In-plane angle ``t`` (radians, +x towards +y), float or tensor of the batch shape.

    Returns
    -------
    tuple of torch.Tensor
        ``(Rz(t) @ A, Q(t) @ o)``.
    """
    rz = in_plane_rotation(torch.as_tensor(angle_rad, dtype=rotation.dtype)).to(rotation.device)
    new_rotation = rz @ rotation
    q = rz[..., :2, :2].to(shift_angst.dtype)
    new_shift = (q @ shift_angst[..., None])[..., 0]
    return new_rotation, new_shift


def shift_labels(
    shift_angst: torch.Tensor, shift_px: torch.Tensor, angpix: float | torch.Tensor
) -> torch.Tensor:
    """Return the origin after moving the image content by ``shift_px`` pixels.

    Parameters
    ----------
    shift_angst
        ``(..., 2)`` RELION origins (x, y) in Angstrom.
    shift_px
        ``(..., 2)`` content displacement (x, y) in pixels, as :func:`shift_images` takes it.
    angpix
        Pixel size in Angstrom.

    Returns
    -------
    torch.Tensor
        ``(..., 2)`` origins ``o - d * angpix`` (the content sits at minus the origin).
    """
    return shift_angst - shift_px.to(shift_angst.dtype) * angpix


def zoom_labels(shift_angst: torch.Tensor, factor: float | torch.Tensor) -> torch.Tensor:
    """Return the origin (nominal pixel size) after magnifying the content by ``factor``.

    Parameters
    ----------
    shift_angst
        ``(..., 2)`` origins in Angstrom.
    factor
        Magnification ``z`` (> 1 enlarges), float or tensor of the batch shape.

    Returns
    -------
    torch.Tensor
        ``(..., 2)`` origins ``z * o``.
    """
    z = torch.as_tensor(factor, dtype=shift_angst.dtype, device=shift_angst.device)
    return shift_angst * z[..., None] if z.dim() else shift_angst * z


def _flatten_batch(images: torch.Tensor, batch: torch.Size) -> tuple[torch.Tensor, torch.Size]:
    """Reshape ``(*batch, *rest, H, W)`` to ``(prod(batch), prod(rest), H, W)``."""
    if images.shape[: len(batch)] != batch:
        raise ValueError(
            f"parameters of shape {tuple(batch)} do not lead the image shape {tuple(images.shape)}"
        )
    h, w = images.shape[-2:]
    b = math.prod(batch)
    return images.reshape(b, -1, h, w), images.shape


def _sample(images: torch.Tensor, matrix: torch.Tensor, mode: str) -> torch.Tensor:
    """Resample images at ``src = M p`` (``p`` offsets from ``N // 2``); ``M`` is ``(..., 2, 2)``.

    ``M`` has batch shape ``S`` leading the images' shape ``(*S, ..., H, W)``; samples outside
    the box are zero.
    """
    if images.dim() < 2:
        raise ValueError(f"expected images (..., H, W), got shape {tuple(images.shape)}")
    batch = matrix.shape[:-2]
    x, shape = _flatten_batch(images, batch)
    h, w = shape[-2:]
    dtype = x.dtype
    dev = x.device
    ys = torch.arange(h, device=dev, dtype=dtype) - h // 2
    xs = torch.arange(w, device=dev, dtype=dtype) - w // 2
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    p = torch.stack([gx, gy], dim=-1)  # (H, W, 2) as (x, y)
    m = matrix.reshape(-1, 2, 2).to(dev, dtype)
    src = torch.einsum("bij,hwj->bhwi", m, p)
    # grid_sample, align_corners=True: -1 and +1 are the centres of the first and last pixel.
    grid = torch.stack(
        [
            (src[..., 0] + w // 2) * (2.0 / max(w - 1, 1)) - 1.0,
            (src[..., 1] + h // 2) * (2.0 / max(h - 1, 1)) - 1.0,
        ],
        dim=-1,
    )
    out = F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=True)
    return out.reshape(shape)


def rotate_images(
    images: torch.Tensor, angle_rad: torch.Tensor | float, mode: str = "bicubic"
) -> torch.Tensor:
    """Rotate image content about the box centre ``N // 2`` by ``angle_rad`` (+x towards +y).

    Parameters
    ----------
    images
        ``(*S, ..., H, W)`` real images; channels between ``S`` and ``(H, W)`` rotate alike.
    angle_rad
        Radians; a float, or a tensor of batch shape ``S`` (one angle per image).
    mode
        ``"bicubic"``, ``"bilinear"`` or ``"nearest"`` interpolation. Content rotated in from
        outside the box is zero.

    Returns
    -------
    torch.Tensor
        Images of the input shape: ``out(p) = images(Q(t)^T p)``.
    """
    t = torch.as_tensor(angle_rad, dtype=torch.float64)
    c, s = torch.cos(t), torch.sin(t)
    q_transpose = torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)
    return _sample(images, q_transpose, mode)


def zoom_images(
    images: torch.Tensor, factor: torch.Tensor | float, mode: str = "bicubic"
) -> torch.Tensor:
    """Magnify image content about ``N // 2`` by ``factor`` (> 1 enlarges).

    Parameters
    ----------
    images
        ``(*S, ..., H, W)``.
    factor
        Float, or tensor of batch shape ``S``.
    mode
        Interpolation, as in :func:`rotate_images`.

    Returns
    -------
    torch.Tensor
        ``out(p) = images(p / factor)``, input shape.
    """
    z = torch.as_tensor(factor, dtype=torch.float64)
    eye = torch.eye(2, dtype=torch.float64)
    return _sample(images, eye / z[..., None, None], mode)


def rot90_images(images: torch.Tensor, k: int) -> torch.Tensor:
    """Rotate by ``k`` quarter turns (+x towards +y) about ``N // 2``, exactly (a permutation).

    ``torch.rot90`` turns about the array centre ``(N - 1) / 2``; for even boxes a one-pixel
    periodic roll moves the turning point to ``N // 2``, so no pixel value changes.

    Parameters
    ----------
    images
        ``(..., N, N)`` square images.
    k
        Number of quarter turns (any integer, taken modulo 4).

    Returns
    -------
    torch.Tensor
        ``(..., N, N)``, equal to :func:`rotate_images` by ``k * pi / 2`` up to the pixels
        that wrap around the box edge.
    """
    h, w = images.shape[-2:]
    if h != w:
        raise ValueError(f"rot90 needs square images, got {h}x{w}")
    k = k % 4
    # rot90 over dims (y, x) turns from y towards x; ours turns from x towards y.
    out = torch.rot90(images, -k, dims=(-2, -1))
    if h % 2 == 0 and k:
        # Turning about m = (N-1)/2 instead of c = N/2 leaves a shift (I - Q)(c - m).
        half = (0.5, 0.5)
        ang = k * math.pi / 2.0
        co, si = round(math.cos(ang)), round(math.sin(ang))
        dx = round(half[0] - (co * half[0] - si * half[1]))
        dy = round(half[1] - (si * half[0] + co * half[1]))
        out = torch.roll(out, shifts=(dy, dx), dims=(-2, -1))
    return out


def erase_rectangle(
    image: torch.Tensor,
    top: int,
    left: int,
    height: int,
    width: int,
    fill: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """Replace a rectangle of every channel with ``fill`` (random erasing).

    Parameters
    ----------
    image
        ``(..., H, W)``.
    top, left, height, width
        Rectangle in pixels (rows ``top:top+height``, columns ``left:left+width``).
    fill
        Value, or a tensor broadcastable to ``(..., height, width)``.

    Returns
    -------
    torch.Tensor
        A copy with the rectangle replaced.
    """
    out = image.clone()
    out[..., top : top + height, left : left + width] = fill
    return out


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of the random augmentations (each applied independently).

    Geometric ones (and their label updates) run in this order: 90-degree turns, rotation,
    zoom, shift; then noise and erasing, which leave the labels alone.

    Attributes
    ----------
    p_rot90
        Probability of a random number (1-3) of exact quarter turns.
    p_rotate
        Probability of a rotation by an angle uniform in ``[-max_angle_deg, max_angle_deg]``.
    max_angle_deg
        Largest in-plane rotation, degrees.
    p_shift
        Probability of a shift; each component uniform in ``[-max_shift_px, max_shift_px]``.
    max_shift_px
        Largest shift in pixels of the (preprocessed) image; Fourier shift, periodic.
    p_zoom
        Probability of a magnification uniform in ``zoom_range``.
    zoom_range
        ``(min, max)`` magnification (small: e.g. 0.95 to 1.05).
    p_noise
        Probability of adding Gaussian noise of standard deviation uniform in ``noise_std``
        (image units; 1 is the background level after normalisation).
    noise_std
        ``(min, max)`` noise standard deviation.
    p_erase
        Probability of replacing one rectangle with noise of the image's mean and std.
    erase_area
        ``(min, max)`` fraction of the image area erased.
    mode
        Interpolation of rotations and zooms: ``"bicubic"`` or ``"bilinear"``.
    """

    p_rot90: float = 0.5
    p_rotate: float = 0.5
    max_angle_deg: float = 180.0
    p_shift: float = 0.5
    max_shift_px: float = 2.0
    p_zoom: float = 0.0
    zoom_range: tuple[float, float] = (0.95, 1.05)
    p_noise: float = 0.0
    noise_std: tuple[float, float] = (0.0, 0.5)
    p_erase: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.1)
    mode: str = "bicubic"

    def __post_init__(self) -> None:
        for name in ("p_rot90", "p_rotate", "p_shift", "p_zoom", "p_noise", "p_erase"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
        for name in ("zoom_range", "noise_std", "erase_area"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi:
                raise ValueError(f"{name} must be (min, max) with 0 <= min <= max, got {lo, hi}")
        if self.zoom_range[0] <= 0 or self.erase_area[1] > 1:
            raise ValueError("zoom factors must be > 0 and erased area fractions <= 1")
        if self.max_shift_px < 0 or self.max_angle_deg < 0:
            raise ValueError("max_shift_px and max_angle_deg must be >= 0")
        if self.mode not in ("bicubic", "bilinear"):
            raise ValueError(f"mode must be 'bicubic' or 'bilinear', got {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class Augmented(NamedTuple):
    """An augmented image with its updated labels and what was done to it.

    Attributes
    ----------
    image
        ``(C, H, W)``.
    rotation
        ``(3, 3)`` updated RELION rotation matrix.
    shift_angst
        ``(2,)`` updated origin in Angstrom.
    applied
        ``rot90_k`` (int), ``angle_deg``, ``zoom``, ``shift_px`` ((x, y)), ``noise_std``,
        ``erased`` (bool): the identity values when a step was skipped.
    """

    image: torch.Tensor
    rotation: torch.Tensor
    shift_angst: torch.Tensor
    applied: dict[str, Any]


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator, dtype=torch.float64))


def _happens(p: float, generator: torch.Generator) -> bool:
    return p > 0 and float(torch.rand((), generator=generator, dtype=torch.float64)) < p


class Augmenter:
    """Random pose-aware augmentation of one particle (image and labels).

    Every random number comes from the generator passed in, so a dataset that seeds one
    generator per (epoch, particle) gets the same augmentation with any number of workers.

    Parameters
    ----------
    config
        What to do and how often; defaults to ``AugmentConfig()``.

    Examples
    --------
    >>> import torch
    >>> aug = Augmenter(AugmentConfig(p_rot90=1.0, p_rotate=0.0, p_shift=0.0))
    >>> out = aug(torch.randn(1, 16, 16), torch.eye(3), torch.zeros(2), 2.0,
    ...           torch.Generator().manual_seed(0))
    >>> k = out.applied["rot90_k"]
    >>> bool(torch.allclose(out.rotation, in_plane_rotation(k * torch.pi / 2), atol=1e-6))
    True
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = AugmentConfig() if config is None else config

    def __repr__(self) -> str:
        return f"Augmenter({self.config!r})"

    def __call__(
        self,
        image: torch.Tensor,
        rotation: torch.Tensor,
        shift_angst: torch.Tensor,
        angpix: float,
        generator: torch.Generator,
    ) -> Augmented:
        """Augment one particle.

        Parameters
        ----------
        image
            ``(C, H, W)`` (all channels transformed alike), square.
        rotation
            ``(3, 3)`` RELION rotation matrix.
        shift_angst
            ``(2,)`` RELION origin (x, y) in Angstrom.
        angpix
            Pixel size of ``image`` in Angstrom.
        generator
            CPU generator supplying every random draw.

        Returns
        -------
        Augmented
            The new image and labels.
        """
        cfg = self.config
        applied: dict[str, Any] = {
            "rot90_k": 0,
            "angle_deg": 0.0,
            "zoom": 1.0,
            "shift_px": (0.0, 0.0),
            "noise_std": 0.0,
            "erased": False,
        }
        if _happens(cfg.p_rot90, generator):
            k = int(torch.randint(1, 4, (), generator=generator))
            image = rot90_images(image, k)
            rotation, shift_angst = rotate_labels(rotation, shift_angst, k * math.pi / 2.0)
            applied["rot90_k"] = k
        if _happens(cfg.p_rotate, generator):
            angle = _uniform(-cfg.max_angle_deg, cfg.max_angle_deg, generator)
            image = rotate_images(image, math.radians(angle), cfg.mode)
            rotation, shift_angst = rotate_labels(rotation, shift_angst, math.radians(angle))
            applied["angle_deg"] = angle
        if _happens(cfg.p_zoom, generator):
            z = _uniform(*cfg.zoom_range, generator)
            image = zoom_images(image, z, cfg.mode)
            shift_angst = zoom_labels(shift_angst, z)
            applied["zoom"] = z
        if _happens(cfg.p_shift, generator):
            d = (
                _uniform(-cfg.max_shift_px, cfg.max_shift_px, generator),
                _uniform(-cfg.max_shift_px, cfg.max_shift_px, generator),
            )
            d_t = torch.tensor(d, dtype=image.dtype)
            image = shift_images(image, d_t)
            shift_angst = shift_labels(shift_angst, d_t, angpix)
            applied["shift_px"] = d
        if _happens(cfg.p_noise, generator):
            std = _uniform(*cfg.noise_std, generator)
            noise = torch.randn(image.shape, generator=generator, dtype=image.dtype)
            image = image + std * noise
            applied["noise_std"] = std
        if _happens(cfg.p_erase, generator):
            image = self._erase(image, generator)
            applied["erased"] = True
        return Augmented(image, rotation, shift_angst, applied)

    def _erase(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        h, w = image.shape[-2:]
        area = _uniform(*self.config.erase_area, generator) * h * w
        aspect = math.exp(_uniform(math.log(0.5), math.log(2.0), generator))
        eh = max(1, min(h, round(math.sqrt(area * aspect))))
        ew = max(1, min(w, round(math.sqrt(area / aspect))))
        top = int(torch.randint(0, h - eh + 1, (), generator=generator))
        left = int(torch.randint(0, w - ew + 1, (), generator=generator))
        # Noise with the image's own statistics hides the rectangle's edges from the network.
        mean = image.mean(dim=(-2, -1), keepdim=True)
        std = image.std(dim=(-2, -1), keepdim=True)
        noise = torch.randn((*image.shape[:-2], eh, ew), generator=generator, dtype=image.dtype)
        return erase_rectangle(image, top, left, eh, ew, mean + std * noise)
