"""Class templates for template matching in tomograms: density, mask, filter and symmetry.

A :class:`Template` is one protein class at the tomogram's voxel size: its potential in a cubic
box (centre at index ``B // 2``, ``(z, y, x)``), a soft spherical mask, the radius of its
support and its point group. :func:`load_templates` builds them from the structures bundled
for the SHREC simulation (:func:`cryopose.simulate.tomogram.find_structures`), in the same
orientation convention as the simulator, so a matched rotation ``R`` means the particle is
``V(R^T (r - c))`` (:mod:`cryopose.simulate.tomogram`).

Fourier weighting (:func:`template_filter`): a template is compared with a tomogram only in
the band and the directions the tomogram measured:

* CTF: ``|CTF(k)|`` (RELION's CTF, :func:`cryopose.imaging.ctf.ctf_at_frequencies`, radial,
  defaults of the SHREC simulation: 300 kV, 3 um underfocus, Cs 2.7 mm, Q0 0.08) up to its
  first zero and 0 beyond. The magnitude because the simulated tilts are phase-flipped
  (protein bright); ``phase_flipped=False`` uses the signed CTF.
* Missing wedge: single-axis tilt about ``y`` over ``+-tilt_range``. The tilt at angle ``t``
  samples the central plane normal to its beam ``(sin t, 0, cos t)`` (x, y, z), so a
  frequency is measured when ``|kz| <= tan(tilt_range) |kx|``; the wedge around ``kz`` is 0.

Symmetry: five SHREC classes are symmetric (:data:`SHREC_SYMMETRY`: 1bxn D4, 3cf3 C6, 3j9i
D7, 2cg9 and 3h84 C2). :func:`symmetry_frame` finds the rotation ``Q`` that brings a
density's symmetry axes onto RELION's (n-fold along z, a 2-fold along x) from the inertia
tensor and a scan of self-correlations, and checks every group element; the template is
stored in that frame
(``V_s(r) = V(Q^T r)``) so that :func:`cryopose.geometry.symmetry.symmetry_group` applies, and
a rotation ``R`` found for ``V_s`` is the rotation ``R Q`` of the class density.

>>> import torch
>>> w = missing_wedge((8, 8, 8), 60.0)
>>> bool(w[0, 0, 0]), bool(w[3, 0, 0]), bool(w[0, 0, 3])  # DC, pure kz (missing), pure kx
(True, False, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from cryopose.errors import InputError
from cryopose.geometry.rotations import axis_angle_to_matrix
from cryopose.geometry.symmetry import symmetry_group
from cryopose.imaging.ctf import ctf_at_frequencies
from cryopose.imaging.fft import rfft_freq_grid
from cryopose.imaging.masks import spherical_mask
from cryopose.imaging.resample import rescale, window_centred

__all__ = [
    "DEFAULT_CTF",
    "SHREC_SYMMETRY",
    "CtfParams",
    "Template",
    "ctf_first_zero",
    "load_templates",
    "make_template",
    "missing_wedge",
    "normalise_under_mask",
    "rotate_volumes",
    "symmetry_frame",
    "template_filter",
]

#: Point groups of the SHREC classes that have one (the others are treated as C1): Rubisco
#: D4, p97 C6, the 20S proteasome D7, and the homodimers Hsp90 (2cg9) and Get3 (3h84) C2.
#: Each reaches a self-correlation of 0.98-0.99 in its frame at 1 nm; wrong groups 0.6-0.92.
SHREC_SYMMETRY: Mapping[str, str] = {
    "1bxn": "D4", "3cf3": "C6", "3j9i": "D7", "2cg9": "C2", "3h84": "C2",
}  # fmt: skip

#: Least correlation between a template and its copy rotated by a group element for the
#: symmetry to be used (trilinear resampling at 1 nm costs a few percent on exact symmetry).
SYMMETRY_MIN_CORRELATION = 0.95

_SUPPORT_FRACTION = 0.05  # of the maximum: where a class density's support ends


@dataclass(frozen=True)
class CtfParams:
    """CTF and tilt geometry of a tomogram (defaults: the SHREC simulation).

    Attributes
    ----------
    defocus_um
        Underfocus in micrometres (positive).
    voltage_kv, cs_mm, amplitude_contrast
        Microscope parameters (kV, mm, fraction).
    tilt_range
        Largest tilt in degrees; the missing wedge lies beyond it.
    phase_flipped
        Whether the tilts were phase-flipped before reconstruction (then ``|CTF|`` is used).
    """

    defocus_um: float = 3.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.08
    tilt_range: float = 60.0
    phase_flipped: bool = True


@dataclass(frozen=True)
class Template:
    """One class, ready for matching.

    Attributes
    ----------
    name
        Class id (PDB id).
    density
        ``(B, B, B)`` float32 potential ``(z, y, x)``, centre at ``B // 2``, in the symmetry
        frame (``density(r) = V(frame^T r)`` for the class density ``V``).
    mask
        ``(B, B, B)`` float32 soft sphere in [0, 1] around ``B // 2``.
    radius_px
        Radius of the support (voxels above 5 % of the maximum) around the centre, voxels.
    angpix
        Voxel size in Angstrom.
    symmetry
        Point group name (``"C1"`` when none is used).
    frame
        ``(3, 3)`` float64 rotation ``Q`` from the class density to ``density``.
    """

    name: str
    density: torch.Tensor
    mask: torch.Tensor
    radius_px: float
    angpix: float
    symmetry: str = "C1"
    frame: torch.Tensor | None = None

    @property
    def box(self) -> int:
        """Edge ``B`` of the template box, voxels."""
        return int(self.density.shape[-1])

    def frame_matrix(self) -> torch.Tensor:
        """``(3, 3)`` float64 ``Q`` (identity when no symmetry frame was applied)."""
        if self.frame is None:
            return torch.eye(3, dtype=torch.float64)
        return self.frame.to(torch.float64)

    def binned(self, factor: int) -> Template:
        """Return the same template at ``factor`` times the voxel size (Fourier cropping).

        Parameters
        ----------
        factor
            Integer binning factor >= 1.

        Returns
        -------
        Template
            Box ``B / factor`` (rounded to even), radius divided by ``factor``.
        """
        if factor == 1:
            return self
        small = rescale(self.density, self.angpix, self.angpix * factor, ndim=3)
        b = small.shape[-1]
        radius = self.radius_px / factor
        mask = _sphere_mask(b, radius)
        return replace(
            self,
            density=small.contiguous(),
            mask=mask,
            radius_px=radius,
            angpix=self.angpix * self.box / b,
        )


#: The SHREC simulation's CTF and tilt range.
DEFAULT_CTF = CtfParams()


def _sphere_mask(box: int, radius_px: float) -> torch.Tensor:
    """Mask 1 out to the support radius plus one voxel, cosine edge of two voxels."""
    return spherical_mask(box, radius_px + 1.0, soft_edge_px=2.0)


def _support_radius(density: torch.Tensor) -> float:
    """Largest distance (voxels) from ``B // 2`` of a voxel above 5 % of the maximum."""
    b = density.shape[-1]
    idx = (density > _SUPPORT_FRACTION * density.max()).nonzero().to(torch.float64)
    return float(torch.linalg.vector_norm(idx - b // 2, dim=1).max())


def _template_box(radius_px: float) -> int:
    """Even box holding the mask (radius + 3 voxels) with room for the filter's ringing."""
    return 2 * math.ceil(radius_px + 5.0)


# ----------------------------------------------------------------------------- rotation


def rotate_volumes(volume: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Rotate one cubic volume by many rotations about its centre ``B // 2`` (trilinear).

    Parameters
    ----------
    volume
        ``(B, B, B)`` ``(z, y, x)``.
    rotations
        ``(n, 3, 3)`` active rotations ``R`` on ``(x, y, z)`` column vectors.

    Returns
    -------
    torch.Tensor
        ``(n, B, B, B)`` with ``out_i(u) = volume(R_i^T u)`` (zero outside the box), the
        convention of :func:`cryopose.simulate.tomogram.rotate_density`.
    """
    b = volume.shape[-1]
    n = rotations.shape[0]
    rt = rotations.to(volume.device, volume.dtype).transpose(1, 2)
    # affine_grid works in normalised coordinates x_n = 2 i / (B - 1) - 1 (align_corners),
    # whose origin is (B - 1) / 2, not the centre B // 2: with a = 1 - 2 (B // 2) / (B - 1),
    # the source of x_n is R^T (x_n + a) - a.
    a = 1.0 - 2.0 * (b // 2) / (b - 1)
    shift = (rt - torch.eye(3, dtype=rt.dtype, device=rt.device)) @ rt.new_full((3, 1), a)
    grid = F.affine_grid(torch.cat([rt, shift], 2), [n, 1, b, b, b], align_corners=True)
    out = F.grid_sample(
        volume.expand(n, 1, b, b, b),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )
    return out[:, 0]


# ----------------------------------------------------------------------------- Fourier weights


def ctf_first_zero(angpix: float, ctf: CtfParams = DEFAULT_CTF) -> float:
    """Spatial frequency (1/A) of the first zero of the CTF, or Nyquist if it lies beyond.

    Parameters
    ----------
    angpix
        Voxel size in Angstrom (sets Nyquist, ``1 / (2 angpix)``).
    ctf
        Microscope parameters.

    Returns
    -------
    float
        First frequency ``k > 0`` where the CTF changes sign from its low-frequency sign,
        located to 1e-6 1/A.
    """
    nyquist = 0.5 / angpix
    k = torch.linspace(0.0, nyquist, 20001, dtype=torch.float64)
    c = _radial_ctf(k, ctf)
    sign0 = torch.sign(c[1])
    changed = (torch.sign(c[1:]) != sign0).nonzero()
    if changed.numel() == 0:
        return nyquist
    i = int(changed[0]) + 1
    return float(k[i - 1] + (k[i] - k[i - 1]) * c[i - 1].abs() / (c[i - 1].abs() + c[i].abs()))


def _radial_ctf(k: torch.Tensor, ctf: CtfParams) -> torch.Tensor:
    """RELION's CTF along the radius ``k`` (1/A), float64."""
    d = ctf.defocus_um * 1e4
    return ctf_at_frequencies(
        k, torch.zeros_like(k), d, d, 0.0, ctf.voltage_kv, ctf.cs_mm, ctf.amplitude_contrast
    ).to(torch.float64)


def missing_wedge(
    shape: Sequence[int], tilt_range: float, device: torch.device | str | None = None
) -> torch.Tensor:
    """Binary mask of the measured frequencies of a single-axis (``y``) tilt series.

    Parameters
    ----------
    shape
        Real-space ``(D, H, W)``.
    tilt_range
        Largest tilt in degrees (the series covers ``-tilt_range .. +tilt_range``).
    device
        Of the result.

    Returns
    -------
    torch.Tensor
        ``(D, H, W // 2 + 1)`` float32 in the rfft layout: 1 where ``|kz| <= tan(tilt_range)
        |kx|`` (and on the ``ky`` axis through DC), 0 in the wedge.
    """
    kz, _ky, kx = rfft_freq_grid(shape, device=device, dtype=torch.float64)
    measured = kz.abs() <= math.tan(math.radians(tilt_range)) * kx.abs() + 1e-12
    return measured.to(torch.float32)


def template_filter(
    shape: Sequence[int],
    angpix: float,
    ctf: CtfParams = DEFAULT_CTF,
    wedge: bool = True,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """CTF (to its first zero) times missing wedge, for templates in the tomogram's frame.

    Parameters
    ----------
    shape
        Real-space ``(D, H, W)`` of the box the filter is applied to.
    angpix
        Voxel size in Angstrom.
    ctf
        CTF and tilt range.
    wedge
        Include the missing wedge.
    device
        Of the result.

    Returns
    -------
    torch.Tensor
        ``(D, H, W // 2 + 1)`` float32: ``|CTF(|k|)|`` (signed when not phase-flipped) for
        ``|k|`` below the first zero, 0 beyond, times :func:`missing_wedge`.
    """
    kz, ky, kx = rfft_freq_grid(shape, angpix=angpix, device=device, dtype=torch.float64)
    k = torch.sqrt(kz * kz + ky * ky + kx * kx)
    c = _radial_ctf(k.reshape(-1), ctf).reshape(k.shape)
    if ctf.phase_flipped:
        c = c.abs()
    c = torch.where(k < ctf_first_zero(angpix, ctf), c, torch.zeros_like(c))
    out = c.to(torch.float32)
    if wedge:
        out = out * missing_wedge(shape, ctf.tilt_range, device=device)
    return out


def normalise_under_mask(volumes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance under a (soft) mask, times the mask (Roseman's ``T'``).

    Parameters
    ----------
    volumes
        ``(..., B, B, B)``.
    mask
        ``(B, B, B)`` weights ``M`` in [0, 1], ``p = sum M``.

    Returns
    -------
    torch.Tensor
        ``M (T - mu) / sigma`` with ``mu = sum(M T) / p``, ``sigma^2 = sum(M (T - mu)^2) / p``;
        then ``sum(T' f) / (p sigma_f)`` is the mask-weighted Pearson correlation of ``T``
        and ``f``. A constant volume gives zeros.
    """
    p = mask.sum()
    dims = (-3, -2, -1)
    mu = (volumes * mask).sum(dims, keepdim=True) / p
    centred = volumes - mu
    var = (mask * centred * centred).sum(dims, keepdim=True) / p
    return mask * centred / torch.sqrt(var).clamp(min=1e-12)


# ----------------------------------------------------------------------------- symmetry frame


def _self_correlation(volume: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """``(n,)`` Pearson correlation of ``volume`` with its rotated copies (whole box)."""
    rotated = rotate_volumes(volume, rotations.to(volume.dtype))
    a = (volume - volume.mean()).reshape(-1)
    b = rotated.reshape(rotations.shape[0], -1)
    b = b - b.mean(1, keepdim=True)
    norms = torch.linalg.vector_norm(b, dim=1) * torch.linalg.vector_norm(a) + 1e-30
    out: torch.Tensor = (b @ a) / norms
    return out


def _principal_axes(density: torch.Tensor) -> torch.Tensor:
    """``(3, 3)`` float64 eigenvectors (columns, x y z) of the inertia tensor about ``B // 2``."""
    b = density.shape[-1]
    u = torch.arange(b, dtype=torch.float64) - b // 2
    zz, yy, xx = torch.meshgrid(u, u, u, indexing="ij")
    pts = torch.stack([xx, yy, zz], -1).reshape(-1, 3)
    w = density.clamp(min=0.0).reshape(-1).to(torch.float64)
    cov = (pts * w[:, None]).T @ pts / w.sum()
    vecs: torch.Tensor = torch.linalg.eigh(cov).eigenvectors
    return vecs


def _axis_to_z(axis: torch.Tensor) -> torch.Tensor:
    """``(3, 3)`` float64 rotation taking the unit ``axis`` to ``z``: rows ``e_x, e_y, axis``."""
    a = axis / torch.linalg.vector_norm(axis)
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    if abs(float(a @ helper)) > 0.9:
        helper = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    ex = helper - (helper @ a) * a
    ex = ex / torch.linalg.vector_norm(ex)
    return torch.stack([ex, torch.linalg.cross(a, ex), a])


def _rz(angle: torch.Tensor) -> torch.Tensor:
    """``(..., 3, 3)`` rotations about z by ``angle`` radians."""
    return axis_angle_to_matrix(angle[..., None] * torch.tensor([0.0, 0.0, 1.0], dtype=angle.dtype))


def symmetry_frame(density: torch.Tensor, symmetry: str) -> tuple[torch.Tensor, float]:
    """Rotation ``Q`` that puts a density's symmetry axes on RELION's, and how well it fits.

    The n-fold axis is the principal axis of inertia whose copy rotated by ``2 pi / n`` agrees
    best with the density; for ``Dn`` a 2-fold perpendicular to it is then found by scanning
    its azimuth in 0.5 degree steps over ``[0, pi / n)``.

    Parameters
    ----------
    density
        ``(B, B, B)`` ``(z, y, x)``, centre at ``B // 2``.
    symmetry
        ``C<n>`` or ``D<n>`` (others raise).

    Returns
    -------
    Q, score
        ``(3, 3)`` float64 rotation with ``V_s(r) = density(Q^T r)`` symmetric under
        :func:`symmetry_group` ``(symmetry)``, and the least correlation between ``V_s``
        and its copy rotated by a group element (1 for exact symmetry and no resampling).
    """
    name = symmetry.strip().upper()
    if name[0] not in "CD" or not name[1:].isdigit():
        raise InputError(None, f"symmetry frames are found for Cn and Dn only, got {symmetry!r}")
    n = int(name[1:])
    vol = density.to(torch.float32)
    if n == 1 and name[0] == "C":
        return torch.eye(3, dtype=torch.float64), 1.0
    axes = _principal_axes(vol)
    frames = torch.stack([_axis_to_z(axes[:, i]) for i in range(3)])  # (3, 3, 3)
    turn = _rz(torch.tensor(2.0 * math.pi / n, dtype=torch.float64))
    # Rotation about the candidate axis a = Q^T z is Q^T Rz Q.
    cands = frames.transpose(1, 2) @ turn @ frames
    best = int(_self_correlation(vol, cands).argmax())
    q = frames[best]
    if name[0] == "D":
        phis = torch.arange(0.0, math.pi / n, math.radians(0.5), dtype=torch.float64)
        flips = _rz(phis) @ torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
        flips = flips @ _rz(-phis)  # 2-fold about (cos phi, sin phi, 0)
        corr = _self_correlation(vol, q.T @ flips @ q)
        phi = phis[int(corr.argmax())]
        q = _rz(-phi) @ q  # brings that 2-fold onto x
    group = symmetry_group(name)
    standard = rotate_volumes(vol, q[None].to(torch.float32))[0]
    score = float(_self_correlation(standard, group[1:]).min()) if len(group) > 1 else 1.0
    return q, score


# ----------------------------------------------------------------------------- building


def make_template(
    density: torch.Tensor,
    name: str,
    angpix: float,
    symmetry: str = "C1",
) -> Template:
    """Build a template from a class density (box padded, mask fitted, symmetry frame found).

    Parameters
    ----------
    density
        ``(B0, B0, B0)`` potential ``(z, y, x)``, centre at ``B0 // 2``.
    name
        Class id.
    angpix
        Voxel size in Angstrom.
    symmetry
        Point group; when :func:`symmetry_frame` cannot reach
        :data:`SYMMETRY_MIN_CORRELATION`, the template falls back to ``"C1"``.

    Returns
    -------
    Template
        Box ``2 ceil(radius + 5)`` voxels.
    """
    vol = density.to(torch.float32)
    radius = _support_radius(vol)
    box = max(_template_box(radius), vol.shape[-1] + vol.shape[-1] % 2)
    vol = window_centred(vol, box, ndim=3).contiguous()
    frame: torch.Tensor | None = None
    group = symmetry.strip().upper()
    if group != "C1":
        q, score = symmetry_frame(vol, group)
        if score >= SYMMETRY_MIN_CORRELATION:
            frame = q
            vol = rotate_volumes(vol, q[None].to(torch.float32))[0].contiguous()
        else:
            group = "C1"
    return Template(name, vol, _sphere_mask(box, radius), radius, angpix, group, frame)


def load_templates(
    classes: Sequence[str] | None = None,
    angpix: float = 10.0,
    structures_dir: str | Path | None = None,
    symmetries: Mapping[str, str] | None = None,
    assembly: str = "biological",
) -> list[Template]:
    """Templates of the bundled SHREC structures (or any folder of them) at ``angpix``.

    Parameters
    ----------
    classes
        Class ids; default every class found (:func:`cryopose.simulate.tomogram.find_structures`).
    angpix
        Voxel size of the tomogram, Angstrom (densities are computed at 10 A, then rescaled).
    structures_dir
        Folder of models and maps; default the bundled one.
    symmetries
        Class id -> point group; default :data:`SHREC_SYMMETRY` (a group the density does
        not show, as an asymmetric unit may not, falls back to C1: :func:`make_template`).
    assembly
        What a model contributes, as in the simulation
        (:func:`cryopose.simulate.tomogram.load_class_density`): ``"biological"`` or
        ``"deposited"``.

    Returns
    -------
    list of Template
        In class-index order.
    """
    from cryopose.simulate.tomogram import ANGPIX, find_structures, load_class_density

    syms = SHREC_SYMMETRY if symmetries is None else symmetries
    out = []
    for name, path in find_structures(structures_dir, classes).items():
        dens = load_class_density(path, name, assembly).density
        if abs(angpix - ANGPIX) > 1e-6:
            dens = rescale(dens, ANGPIX, angpix, ndim=3)
        out.append(make_template(dens, name, angpix, syms.get(name, "C1")))
    return out
