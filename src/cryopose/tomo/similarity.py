"""How alike two protein classes look at a tomogram's resolution: the best-aligned correlation.

A classifier cannot tell two classes apart better than the data allow. At the resolution a
tomogram carries (about the CTF's first zero: 25 A at 300 kV and 3 um defocus), two proteins
of the same fold and mass look alike in every orientation, and no picker, learned or not, can
name them reliably. :func:`class_similarity` measures that: the normalised cross-correlation
of two class densities, both band-limited to the same frequency, maximised over the rotations
of one (a HEALPix SO(3) grid, :func:`cryopose.geometry.healpix.so3_healpix_grid`) and over all
shifts (by FFT)::

    s(a, b) = max_R max_t  <a, (R b)(. - t)> / (|a| |R b|)

The densities are compared as they are (no mean subtraction: outside the protein both are
zero, as the solvent-flattened potential is), so two Gaussian blobs of widths ``s1`` and ``s2``
give ``(2 s1 s2 / (s1^2 + s2^2))^(3/2)``. A density against a rotated copy of itself gives
1 less the grid's error, which :func:`class_similarity_table` reports as the "self" value of
each class so that a pair can be read against it. The rotated density is resampled
trilinearly, which widens fine features a little: turning a Gaussian of 2.5 voxels raises
its overlap with one of 3.5 voxels from 0.920 to 0.926 (turning the wider one: 0.920), so
values are good to about 0.01, the same for pairs as for the self values.

Example::

    from cryopose.tomo.templates import load_templates
    from cryopose.tomo.similarity import class_similarity

    a, b = load_templates(["1s3x", "3gl1"])
    print(class_similarity(a.density, b.density, angpix=a.angpix))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from cryopose.geometry.healpix import so3_healpix_grid
from cryopose.tomo.templates import DEFAULT_CTF, CtfParams, ctf_first_zero, rotate_volumes

__all__ = ["band_limit", "class_similarity", "class_similarity_table"]


def _pad_to(volume: torch.Tensor, box: int) -> torch.Tensor:
    """``volume`` ``(b, b, b)`` centred (``b // 2`` on ``box // 2``) in a zero ``(box,)*3``."""
    b = volume.shape[-1]
    out = volume.new_zeros((box, box, box))
    o = box // 2 - b // 2
    out[o : o + b, o : o + b, o : o + b] = volume
    return out


def band_limit(volume: torch.Tensor, angpix: float, max_freq: float) -> torch.Tensor:
    """Zero every Fourier component of ``volume`` above ``max_freq``.

    Parameters
    ----------
    volume
        ``(B, B, B)`` real.
    angpix
        Voxel size, Angstrom.
    max_freq
        Highest kept spatial frequency, 1/A.

    Returns
    -------
    torch.Tensor
        ``(B, B, B)`` real, the same dtype.
    """
    b = volume.shape[-1]
    f = torch.fft.fftfreq(b, d=angpix, dtype=torch.float64)
    k2 = f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2
    keep = (k2 <= max_freq**2).to(volume.dtype)
    out: torch.Tensor = torch.fft.ifftn(torch.fft.fftn(volume) * keep).real
    return out.to(volume.dtype)


def class_similarity(
    a: torch.Tensor,
    b: torch.Tensor,
    angpix: float,
    order: int = 2,
    max_freq: float | None = None,
    ctf: CtfParams = DEFAULT_CTF,
    batch: int = 256,
) -> float:
    """Best normalised cross-correlation of ``a`` with ``b`` over rotations of ``b`` and shifts.

    Parameters
    ----------
    a, b
        ``(Ba, Ba, Ba)`` and ``(Bb, Bb, Bb)`` densities ``(z, y, x)`` centred at ``B // 2``, at
        the same voxel size; non-negative outside the protein is expected, not required.
    angpix
        Voxel size, Angstrom.
    order
        HEALPix SO(3) grid order of the rotations of ``b`` (2: 4,608 rotations, about
        15 deg apart; every order halves the step and multiplies the cost by 8).
    max_freq
        Band limit of both, 1/A; default the first zero of ``ctf`` (what a tomogram carries
        with its phase right), capped at Nyquist.
    ctf
        Microscope parameters for the default band limit.
    batch
        Rotations correlated at a time (memory ``batch * (2 B)^3`` complex values).

    Returns
    -------
    float
        ``s(a, b)`` of the module docstring, in [-1, 1]; 1 for identical shapes.

    Raises
    ------
    ValueError
        Not cubic volumes, or a zero density after band-limiting.
    """
    for v in (a, b):
        if v.ndim != 3 or len(set(v.shape)) != 1:
            raise ValueError(f"expected cubic (B, B, B) densities, got {tuple(v.shape)}")
    k = ctf_first_zero(angpix, ctf) if max_freq is None else min(max_freq, 0.5 / angpix)
    # Twice the larger box, so that circular shifts never wrap one density onto the other.
    box = 2 * max(a.shape[-1], b.shape[-1])
    va = band_limit(_pad_to(a.to(torch.float32), box), angpix, k)
    vb = band_limit(_pad_to(b.to(torch.float32), box), angpix, k)
    na = va.norm()
    if float(na) == 0.0 or float(vb.norm()) == 0.0:
        raise ValueError("a density is zero after band-limiting; expected a protein density")
    fa = torch.fft.rfftn(va).conj()
    best = -1.0
    for rotations in torch.split(so3_healpix_grid(order, dtype=torch.float32), batch):
        rb = rotate_volumes(vb, rotations)  # (n, box, box, box)
        cc = torch.fft.irfftn(torch.fft.rfftn(rb, dim=(1, 2, 3)) * fa, s=va.shape, dim=(1, 2, 3))
        norm = na * rb.flatten(1).norm(dim=1)
        best = max(best, float((cc.flatten(1).amax(dim=1) / norm.clamp(min=1e-30)).max()))
    return best


def class_similarity_table(
    densities: dict[str, torch.Tensor],
    angpix: float,
    order: int = 2,
    max_freq: float | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[tuple[str, str], float]:
    """:func:`class_similarity` of every pair of classes, and of each class with itself.

    Parameters
    ----------
    densities
        Class name -> ``(B, B, B)`` density, all at ``angpix``.
    angpix, order, max_freq
        As :func:`class_similarity`.
    progress
        Called with one line per pair.

    Returns
    -------
    dict
        ``(name_i, name_j) -> s`` for ``i <= j`` in the order of ``densities``. The diagonal
        compares a class with a copy of itself turned by a rotation halfway between grid
        points (the grid's resolution floor: two classes at or above it look the same).
    """
    names: Sequence[str] = list(densities)
    # A turn about a skew axis by about half the grid's step: the worst a grid match can be.
    step = 2.0 * torch.pi / (6 * 2**order)
    axis = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    axis = axis / axis.norm()
    kx = torch.tensor(
        [[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]],
        dtype=torch.float64,
    )
    turn = torch.linalg.matrix_exp(0.5 * step * kx).to(torch.float32)[None]
    out: dict[tuple[str, str], float] = {}
    for i, x in enumerate(names):
        for y in names[i:]:
            other = densities[y] if y != x else rotate_volumes(densities[x], turn)[0]
            out[(x, y)] = class_similarity(densities[x], other, angpix, order, max_freq)
            if progress is not None:
                progress(f"{x} {y}: {out[(x, y)]:.3f}")
    return out
