"""Cryo-EM preprocessing of particle images for networks, on batches ``(B, H, W)``.

Steps, in this order, each one switchable in :class:`PreprocessConfig`:

1. **rescale** to a target pixel size by Fourier cropping/padding
   (:func:`cryopose.imaging.rescale` rounding: the box becomes ``M = round(N * angpix /
   target)``, even for even N, and the pixel size reached, ``angpix * N / M``, is returned);
2. **background normalisation**: mean 0 and standard deviation 1 of the pixels farther than
   the particle radius from the centre ``N // 2`` (``relion_preprocess --norm``);
3. **CTF correction**: phase flipping with RELION's CTF (astigmatism and phase shift
   included), replacing the image (``"phase_flip"``) or as a second channel
   (``"concat_phase_flip"``); done at the rescaled sampling, which is exact below Nyquist
   because Fourier cropping and a Fourier-space sign flip commute;
4. **centre crop** (or zero-pad) to the final box, keeping the centre at ``N // 2``;
5. **Gaussian-filtered copies**: every channel filtered with each sigma (pixels of the output
   sampling; 0 is the unfiltered image), channel order ``[c0 s0, c0 s1, ..., c1 s0, ...]``;
6. **circular soft mask** of the particle radius (raised-cosine edge), last, so every channel
   is zero far from the particle.

The same function serves a ``Dataset`` (one image at a time) and a GPU user who preprocesses
after collation; the device follows the images.

>>> import torch
>>> images = torch.randn(4, 64, 64)
>>> config = PreprocessConfig(angpix=3.0, image_size=24, gaussian_sigmas_px=(0.0, 1.0))
>>> out = preprocess(images, None, 1.5, config)
>>> tuple(out.images.shape), out.angpix
((4, 2, 24, 24), 3.0)
>>> channel_names(config)
['image_s0', 'image_s1']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from cryopose.errors import InputError
from cryopose.imaging.ctf import ctf_2d, phase_flip
from cryopose.imaging.filters import gaussian_filter
from cryopose.imaging.masks import circular_mask
from cryopose.imaging.normalise import normalise_background
from cryopose.imaging.resample import fourier_resize, window_centred

__all__ = [
    "CTF_CORRECTIONS",
    "PreprocessConfig",
    "Preprocessed",
    "channel_names",
    "output_geometry",
    "preprocess",
]

CTF_CORRECTIONS = ("none", "phase_flip", "concat_phase_flip")
# RELION's default background circle (relion_preprocess, bg_radius < 0): diameter 75% of the box.
DEFAULT_RADIUS_FRACTION = 0.375
# CTF parameters that decide the sign of the CTF (B-factor and scale do not).
_CTF_SIGN_KEYS = (
    "defocus_u",
    "defocus_v",
    "defocus_angle",
    "voltage",
    "cs",
    "amplitude_contrast",
)


@dataclass(frozen=True)
class PreprocessConfig:
    """What :func:`preprocess` does (saved next to outputs via :meth:`to_dict`).

    Attributes
    ----------
    angpix
        Target pixel size in Angstrom (Fourier crop/pad); ``None`` keeps the input's.
    image_size
        Final box in pixels (centred crop or zero-pad after rescaling); ``None`` keeps the box.
    normalise
        Background normalisation to mean 0, standard deviation 1.
    particle_radius_angst
        Particle radius in Angstrom: background = pixels beyond it; the mask radius. ``None``:
        ``0.375 * image_size`` pixels (RELION's default background circle, 75% of the box).
    ctf_correction
        ``"none"``, ``"phase_flip"`` (replace the image) or ``"concat_phase_flip"`` (the
        image, then its phase-flipped copy, as two channels).
    mask
        Multiply by a circular mask of the particle radius.
    mask_soft_edge_px
        Width of the mask's raised-cosine edge, output pixels.
    gaussian_sigmas_px
        Gaussian filter sigmas (output pixels); one channel per sigma and input channel;
        ``(0.0,)`` for the plain image only.
    """

    angpix: float | None = None
    image_size: int | None = None
    normalise: bool = True
    particle_radius_angst: float | None = None
    ctf_correction: str = "none"
    mask: bool = False
    mask_soft_edge_px: float = 3.0
    gaussian_sigmas_px: tuple[float, ...] = (0.0,)

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> InputError:
            return InputError(
                None, f"{expected}, got {getattr(self, name)!r}", where=f"preprocess {name}"
            )

        if self.angpix is not None and not self.angpix > 0:
            raise bad("angpix", "expected a positive pixel size")
        if self.image_size is not None and self.image_size < 2:
            raise bad("image_size", "expected a box of at least 2 pixels")
        if self.particle_radius_angst is not None and not self.particle_radius_angst > 0:
            raise bad("particle_radius_angst", "expected a positive radius")
        if self.ctf_correction not in CTF_CORRECTIONS:
            raise bad("ctf_correction", f"expected one of {list(CTF_CORRECTIONS)}")
        if self.mask_soft_edge_px < 0:
            raise bad("mask_soft_edge_px", "expected a width >= 0")
        if not self.gaussian_sigmas_px or min(self.gaussian_sigmas_px) < 0:
            raise bad("gaussian_sigmas_px", "expected one or more sigmas >= 0")

    @property
    def needs_ctf(self) -> bool:
        """True when :func:`preprocess` needs CTF parameters."""
        return self.ctf_correction != "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`InputError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(None, f"unknown preprocessing settings {unknown}")
        kw = dict(values)
        if "gaussian_sigmas_px" in kw:
            kw["gaussian_sigmas_px"] = tuple(float(s) for s in kw["gaussian_sigmas_px"])
        return cls(**kw)


class Preprocessed(NamedTuple):
    """Preprocessed images and their pixel size.

    Attributes
    ----------
    images
        ``(B, C, S, S)`` float images, channels as :func:`channel_names`.
    angpix
        Pixel size of ``images`` in Angstrom.
    """

    images: torch.Tensor
    angpix: float


def _fourier_box(box: int, angpix: float, target: float | None) -> int:
    """Box after Fourier rescaling, rounded as :func:`cryopose.imaging.rescale` does."""
    if target is None:
        return box
    m = round(box * angpix / target)
    if box % 2 == 0 and m % 2 == 1:
        m += 1 if box * angpix / target > m else -1
    return max(m, 1)


def output_geometry(box: int, angpix: float, config: PreprocessConfig) -> tuple[int, int, float]:
    """Sizes and pixel size that :func:`preprocess` produces from ``box``-pixel images.

    Parameters
    ----------
    box
        Input box size N (square images).
    angpix
        Input pixel size in Angstrom.
    config
        Preprocessing settings.

    Returns
    -------
    tuple
        ``(M, S, angpix_out)``: the Fourier-rescaled box, the final box and its pixel size
        ``angpix * N / M`` in Angstrom.
    """
    m = _fourier_box(box, angpix, config.angpix)
    size = m if config.image_size is None else config.image_size
    return m, size, angpix * box / m


def particle_radius_px(config: PreprocessConfig, size: int, angpix_out: float) -> float:
    """Particle radius in output pixels (see :attr:`PreprocessConfig.particle_radius_angst`)."""
    if config.particle_radius_angst is None:
        return DEFAULT_RADIUS_FRACTION * size
    return config.particle_radius_angst / angpix_out


def channel_names(config: PreprocessConfig) -> list[str]:
    """Names of the output channels, in order (``image``/``phase_flipped``, then sigma index).

    Parameters
    ----------
    config
        Preprocessing settings.

    Returns
    -------
    list of str
        E.g. ``['image_s0', 'phase_flipped_s0']`` for ``concat_phase_flip`` and one sigma.
    """
    base = {
        "none": ["image"],
        "phase_flip": ["phase_flipped"],
        "concat_phase_flip": ["image", "phase_flipped"],
    }[config.ctf_correction]
    return [f"{b}_s{k}" for b in base for k in range(len(config.gaussian_sigmas_px))]


def _ctf_sign_source(
    ctf_params: Mapping[str, torch.Tensor | float] | None, batch: int
) -> dict[str, torch.Tensor]:
    if ctf_params is None:
        raise InputError(None, "CTF correction needs CTF parameters; none were given")
    missing = [k for k in _CTF_SIGN_KEYS if k not in ctf_params]
    if missing:
        raise InputError(None, f"CTF parameters {missing} are missing")
    out: dict[str, torch.Tensor] = {}
    for key in (*_CTF_SIGN_KEYS, "phase_shift"):
        value = torch.as_tensor(ctf_params.get(key, 0.0), dtype=torch.float64)
        if value.dim() > 1 or (value.dim() == 1 and value.shape[0] not in (1, batch)):
            raise InputError(
                None, f"CTF parameter {key} has shape {tuple(value.shape)}; expected ({batch},)"
            )
        out[key] = value.reshape(-1).expand(batch) if value.dim() else value.expand(batch)
    return out


def preprocess(
    images: torch.Tensor,
    ctf_params: Mapping[str, torch.Tensor | float] | None,
    angpix: float,
    config: PreprocessConfig,
) -> Preprocessed:
    """Preprocess a batch of particle images (see the module docstring for the steps).

    Parameters
    ----------
    images
        ``(B, N, N)`` or ``(N, N)`` real images (centre ``N // 2``).
    ctf_params
        Per-image RELION CTF parameters as :meth:`cryopose.io.ParticleTable.ctf_parameters`
        gives them (``defocus_u``, ``defocus_v`` in A, ``defocus_angle`` in degrees,
        ``voltage`` kV, ``cs`` mm, ``amplitude_contrast``, optional ``phase_shift`` degrees),
        tensors of shape ``(B,)`` or floats; only read when CTF correction is on.
    angpix
        Pixel size of ``images`` in Angstrom (one for the batch).
    config
        Preprocessing settings.

    Returns
    -------
    Preprocessed
        ``(B, C, S, S)`` images (``(1, C, S, S)`` for one input image) and the output pixel
        size in Angstrom.
    """
    if images.dim() == 2:
        images = images[None]
    if images.dim() != 3 or images.shape[-1] != images.shape[-2]:
        raise InputError(None, f"expected square images (B, N, N), got {tuple(images.shape)}")
    if not angpix > 0:
        raise InputError(None, f"expected a positive pixel size, got {angpix}")
    if not images.is_floating_point():
        images = images.float()
    batch, box = images.shape[0], images.shape[-1]
    m, size, angpix_out = output_geometry(box, angpix, config)
    radius = particle_radius_px(config, size, angpix_out)
    x = images if m == box else fourier_resize(images, m)
    if config.normalise:
        x = normalise_background(x, radius)
    channels: list[torch.Tensor] = []
    if config.ctf_correction in ("none", "concat_phase_flip"):
        channels.append(x)
    if config.needs_ctf:
        p = _ctf_sign_source(ctf_params, batch)
        ctf = ctf_2d(
            (m, m),
            angpix_out,
            p["defocus_u"],
            p["defocus_v"],
            p["defocus_angle"],
            p["voltage"],
            p["cs"],
            p["amplitude_contrast"],
            phase_shift=p["phase_shift"],
            device=x.device,
        )
        channels.append(phase_flip(x, ctf))
    y = torch.stack(channels, dim=1)  # (B, C0, M, M)
    if size != m:
        y = window_centred(y, size)
    filtered = [
        y if sigma == 0 else gaussian_filter(y, sigma) for sigma in config.gaussian_sigmas_px
    ]
    # (B, C0, n_sigma, S, S) -> (B, C0 * n_sigma, S, S): sigmas vary fastest.
    y = torch.stack(filtered, dim=2).reshape(batch, -1, size, size)
    if config.mask:
        y = y * circular_mask(size, radius, config.mask_soft_edge_px, y.device, y.dtype)
    return Preprocessed(y, float(angpix_out))
