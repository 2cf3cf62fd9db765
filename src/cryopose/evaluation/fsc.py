"""Map metrics: Fourier shell correlation, resolution, real-space correlation, CESPED deltas.

Shells follow RELION: a Fourier voxel at radius ``r`` (in voxels of a cubic box ``N``) belongs to
shell ``round(r)``; shells ``0 .. N // 2`` are reported (corners beyond Nyquist are ignored) and
shell ``i`` has spatial frequency ``i / (N * angpix)``. Shell 0 is set to 1 as RELION does.

>>> import torch
>>> v = torch.randn(16, 16, 16)
>>> bool(torch.allclose(fsc(v, v), torch.ones(9, dtype=torch.float64)))
True
>>> round(resolution_at(torch.tensor([1.0, 0.9, 0.5, 0.1, 0.0]), box=8, angpix=2.0), 3)
5.532
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryopose._atomic import atomic_path
from cryopose.errors import InputError
from cryopose.geometry._healpix_nest import pix2vec_nest

__all__ = [
    "CespedMetrics",
    "DirectionalResolution",
    "cesped_deltas",
    "conical_fsc",
    "directional_resolution",
    "fsc",
    "hemisphere_directions",
    "pcc",
    "plot_fsc",
    "resolution_at",
    "shell_frequencies",
    "shell_resolutions",
]


def _check_pair(map1: torch.Tensor, map2: torch.Tensor, mask: torch.Tensor | None) -> None:
    if map1.ndim != 3 or map1.shape != map2.shape:
        raise InputError(
            None,
            f"expected two maps of equal (D,H,W) shape, got "
            f"{tuple(map1.shape)} and {tuple(map2.shape)}",
        )
    if len(set(map1.shape)) != 1:
        raise InputError(None, f"expected a cubic map, got {tuple(map1.shape)}")
    if mask is not None and mask.shape != map1.shape:
        raise InputError(
            None, f"mask shape {tuple(mask.shape)} differs from map shape {tuple(map1.shape)}"
        )


def _shells(box: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Shell index ``(N, N, N//2+1)`` of every rfft voxel and its Hermitian multiplicity.

    Columns ``0 < kx < N/2`` stand for themselves and their (absent) Friedel mates, so they
    count twice; this makes the rfft sums equal the full-FFT sums.
    """
    f = torch.fft.fftfreq(box, d=1.0 / box, device=device).to(torch.float64)
    fx = torch.arange(box // 2 + 1, device=device, dtype=torch.float64)
    r = torch.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2)
    shell = torch.round(r).long()
    mult = torch.full_like(fx, 2.0)
    mult[0] = 1.0
    if box % 2 == 0:
        mult[-1] = 1.0
    return shell, mult.expand_as(r)


def _masked_rffts(
    map1: torch.Tensor, map2: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, N, N // 2 + 1)`` complex128 rffts of both ``(N, N, N)`` maps, masked first."""
    a = map1.to(torch.float64)
    b = map2.to(device=a.device, dtype=torch.float64)
    if mask is not None:
        m = mask.to(device=a.device, dtype=torch.float64)
        a, b = a * m, b * m
    return torch.fft.rfftn(a), torch.fft.rfftn(b)


def fsc(map1: torch.Tensor, map2: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Fourier shell correlation between two cubic maps.

    Parameters
    ----------
    map1, map2
        ``(N, N, N)`` real maps.
    mask
        Optional ``(N, N, N)`` real-space mask (soft or binary) multiplied into both maps first
        (the "masked FSC"; not corrected for mask-induced correlation).

    Returns
    -------
    torch.Tensor
        ``(N // 2 + 1,)`` float64 FSC per shell ``round(|k|)``, shell 0 (DC) set to 1.
    """
    _check_pair(map1, map2, mask)
    fa, fb = _masked_rffts(map1, map2, mask)
    box = map1.shape[0]
    shell, mult = _shells(box, fa.device)
    n = box // 2 + 1
    keep = shell < n
    idx = shell[keep]
    w = mult[keep]

    def shell_sum(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n, dtype=torch.float64, device=fa.device).index_add_(0, idx, w * x)

    num = shell_sum((fa * fb.conj()).real[keep])
    den = torch.sqrt(shell_sum(fa.abs()[keep] ** 2) * shell_sum(fb.abs()[keep] ** 2))
    out = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
    out[0] = 1.0
    return out


def hemisphere_directions(order: int = 1) -> torch.Tensor:
    """Return unit vectors (x, y, z) of the HEALPix pixel centres of one hemisphere.

    HEALPix centres come in antipodal pairs; a double cone around ``d`` is the one around
    ``-d``, so one of each pair is kept (``z > 0``, and on the equator ``y > 0`` or
    ``y == 0, x > 0``). Order 1 (nside 2): 24 directions about 29 degrees apart.

    Returns
    -------
    torch.Tensor
        ``(6 * 4**order, 3)`` float64.
    """
    if order < 0:
        raise InputError(None, f"expected a HEALPix order >= 0, got {order}")
    nside = 2**order
    x, y, z = pix2vec_nest(nside, np.arange(12 * nside * nside))
    v = np.stack([x, y, z], axis=-1)
    eps = 1e-9
    keep = (z > eps) | ((np.abs(z) <= eps) & ((y > eps) | ((np.abs(y) <= eps) & (x > 0))))
    return torch.from_numpy(np.ascontiguousarray(v[keep]))


def conical_fsc(
    map1: torch.Tensor,
    map2: torch.Tensor,
    directions: torch.Tensor,
    half_angle_deg: float = 20.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Directional (conical) FSC: the FSC restricted to Fourier voxels in a cone per direction.

    For each unit direction ``d`` the shell sums of :func:`fsc` only count Fourier voxels
    ``k != 0`` with ``|k . d| >= |k| cos(half_angle)``: the double cone around ``d`` (a cone
    and its Friedel mate, so the rfft multiplicities stay exact). Directions are (x, y, z)
    in the map's frame, where a ``(D, H, W)`` map is indexed ``[z, y, x]``; a map whose
    information is missing along ``d`` (e.g. views concentrated around the viewing direction
    ``d``: every central slice is nearly perpendicular to it) has a low FSC in the cone
    around ``d``. On even boxes the Nyquist shell's cones are approximate: a sample at
    ``+-N / 2`` is one aliased sample, taken at the sign the rfft gives it.

    Parameters
    ----------
    map1, map2
        ``(N, N, N)`` real maps.
    directions
        ``(K, 3)`` directions (x, y, z), normalised here.
    half_angle_deg
        Half opening angle of the cones in degrees, in ``(0, 90]`` (90: the plain FSC).
    mask
        Optional ``(N, N, N)`` real-space mask multiplied into both maps first.

    Returns
    -------
    torch.Tensor
        ``(K, N // 2 + 1)`` float64; shell 0 set to 1, a shell with no voxel in a cone NaN.
    """
    _check_pair(map1, map2, mask)
    if directions.ndim != 2 or directions.shape[-1] != 3:
        raise InputError(None, f"expected (K, 3) directions, got {tuple(directions.shape)}")
    if not 0.0 < half_angle_deg <= 90.0:
        raise InputError(
            None, f"expected a cone half angle in (0, 90] degrees, got {half_angle_deg}"
        )
    fa, fb = _masked_rffts(map1, map2, mask)
    box = map1.shape[0]
    n = box // 2 + 1
    shell, mult = _shells(box, fa.device)
    f = torch.fft.fftfreq(box, d=1.0 / box, device=fa.device).to(torch.float64)
    fx = torch.arange(n, device=fa.device, dtype=torch.float64)
    # (x, y, z) frequency of every rfft voxel: dim 2 is x, dim 1 is y, dim 0 is z.
    shape = (box, box, n)
    k = torch.stack(
        [
            fx[None, None, :].expand(shape),
            f[None, :, None].expand(shape),
            f[:, None, None].expand(shape),
        ],
        dim=-1,
    )
    keep = (shell < n) & (shell > 0)
    k, idx, w = k[keep], shell[keep], mult[keep]
    cross = w * (fa * fb.conj()).real[keep]
    pa, pb = w * fa.abs()[keep] ** 2, w * fb.abs()[keep] ** 2
    d = directions.to(device=fa.device, dtype=torch.float64)
    d = d / torch.linalg.vector_norm(d, dim=-1, keepdim=True)
    cos_k = (k @ d.T).abs() / torch.linalg.vector_norm(k, dim=-1, keepdim=True)  # (M, K)
    inside = (cos_k >= math.cos(math.radians(half_angle_deg)) - 1e-12).to(torch.float64)
    n_dir = d.shape[0]
    # Flat (direction, shell) bins: voxel m of cone j goes to bin j * n + shell[m].
    bins = (idx[:, None] + n * torch.arange(n_dir, device=fa.device)[None, :]).reshape(-1)

    def cone_sum(x: torch.Tensor) -> torch.Tensor:
        flat = (inside * x[:, None]).reshape(-1)
        total = torch.zeros(n_dir * n, dtype=torch.float64, device=fa.device)
        return total.index_add_(0, bins, flat).reshape(n_dir, n)

    num = cone_sum(cross)
    den = torch.sqrt(cone_sum(pa) * cone_sum(pb))
    count = cone_sum(torch.ones_like(cross))
    ratio = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
    out = torch.where(count > 0, ratio, math.nan)
    out[:, 0] = 1.0
    return out


@dataclass(frozen=True)
class DirectionalResolution:
    """FSC resolution per direction (:func:`directional_resolution`).

    Attributes
    ----------
    directions
        ``(K, 3)`` unit directions (x, y, z).
    curves
        ``(K, N // 2 + 1)`` conical FSC curves (NaN: shell without voxels in the cone).
    resolutions
        ``(K,)`` resolution in Angstrom at the threshold in each cone.
    threshold
        FSC threshold used.
    """

    directions: torch.Tensor
    curves: torch.Tensor
    resolutions: torch.Tensor
    threshold: float

    @property
    def anisotropy(self) -> float:
        """Worst over best directional resolution (1: isotropic)."""
        return float(self.resolutions.max() / self.resolutions.min())

    @property
    def spread_angst(self) -> float:
        """Worst minus best directional resolution in Angstrom."""
        return float(self.resolutions.max() - self.resolutions.min())

    @property
    def worst_direction(self) -> torch.Tensor:
        """``(3,)`` direction of the worst resolution."""
        return self.directions[int(torch.argmax(self.resolutions))]


def directional_resolution(
    map1: torch.Tensor,
    map2: torch.Tensor,
    angpix: float,
    directions: torch.Tensor | None = None,
    half_angle_deg: float = 20.0,
    threshold: float = 0.143,
    mask: torch.Tensor | None = None,
) -> DirectionalResolution:
    """Resolution of two maps in cones around many directions: the map's anisotropy.

    Each direction's :func:`conical_fsc` curve (shells without voxels in the cone take the
    value of the shell below) goes through :func:`resolution_at`.

    Parameters
    ----------
    map1, map2
        ``(N, N, N)`` maps (half maps, or a map and a reference).
    angpix
        Voxel size in Angstrom.
    directions
        ``(K, 3)`` directions; ``None``: :func:`hemisphere_directions` of order 1 (24).
    half_angle_deg, mask
        See :func:`conical_fsc`.
    threshold
        FSC threshold (0.143 for half maps, 0.5 against a reference).
    """
    dirs = hemisphere_directions(1) if directions is None else directions.to(torch.float64)
    dirs = dirs / torch.linalg.vector_norm(dirs, dim=-1, keepdim=True)
    curves = conical_fsc(map1, map2, dirs, half_angle_deg, mask).cpu()
    filled = curves.clone()
    for i in range(1, filled.shape[1]):
        gap = torch.isnan(filled[:, i])
        filled[gap, i] = filled[gap, i - 1]
    box = map1.shape[-1]
    res = torch.tensor(
        [resolution_at(c, box, angpix, threshold) for c in filled], dtype=torch.float64
    )
    return DirectionalResolution(dirs.cpu(), curves, res, threshold)


def shell_frequencies(box: int, angpix: float) -> torch.Tensor:
    """Spatial frequency ``(N // 2 + 1,)`` of each shell in 1/Angstrom: ``i / (N * angpix)``."""
    if box < 2 or angpix <= 0:
        raise InputError(None, f"need box >= 2 and angpix > 0, got {box}, {angpix}")
    return torch.arange(box // 2 + 1, dtype=torch.float64) / (box * angpix)


def shell_resolutions(box: int, angpix: float) -> torch.Tensor:
    """Resolution ``(N // 2 + 1,)`` of each shell in Angstrom (``inf`` for shell 0)."""
    freq = shell_frequencies(box, angpix)
    return torch.where(freq > 0, 1.0 / torch.where(freq > 0, freq, 1.0), math.inf)


def resolution_at(
    fsc_curve: torch.Tensor, box: int, angpix: float, threshold: float = 0.143
) -> float:
    """Resolution in Angstrom where the FSC first drops below ``threshold``.

    The crossing is interpolated linearly in spatial frequency between the last shell at or
    above the threshold and the first shell below it (as CESPED and most packages do), scanning
    from shell 1. If the curve never drops below, the Nyquist resolution ``2 * angpix`` is
    returned; if shell 1 is already below, the resolution of shell 1 (``N * angpix``).
    """
    curve = torch.as_tensor(fsc_curve, dtype=torch.float64).cpu()
    freq = shell_frequencies(box, angpix)
    if curve.shape != freq.shape:
        raise InputError(
            None,
            f"fsc_curve has shape {tuple(curve.shape)}, expected ({box // 2 + 1},) for box {box}",
        )
    below = torch.nonzero(curve[1:] < threshold).flatten()
    if below.numel() == 0:
        return 2.0 * angpix
    i = int(below[0]) + 1
    if i == 1:
        return float(1.0 / freq[1])
    f0, f1 = float(freq[i - 1]), float(freq[i])
    c0, c1 = float(curve[i - 1]), float(curve[i])
    f = f0 + (c0 - threshold) / (c0 - c1) * (f1 - f0)
    return 1.0 / f


def pcc(map1: torch.Tensor, map2: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Pearson correlation of two maps over voxels, weighted by ``mask`` when given.

    With a binary mask this is the ordinary Pearson correlation of the voxels inside it; a soft
    mask weights each voxel by its value (weighted means and covariances).
    """
    if map1.shape != map2.shape:
        raise InputError(None, f"maps differ in shape: {tuple(map1.shape)} and {tuple(map2.shape)}")
    a = map1.to(torch.float64).flatten()
    b = map2.to(device=a.device, dtype=torch.float64).flatten()
    if mask is None:
        w = torch.ones_like(a)
    else:
        if mask.shape != map1.shape:
            raise InputError(
                None, f"mask shape {tuple(mask.shape)} differs from map shape {tuple(map1.shape)}"
            )
        w = mask.to(device=a.device, dtype=torch.float64).flatten()
    if float(w.sum()) <= 0:
        raise InputError(None, "mask is empty")
    w = w / w.sum()
    da, db = a - (w * a).sum(), b - (w * b).sum()
    cov = (w * da * db).sum()
    den = torch.sqrt((w * da * da).sum() * (w * db * db).sum())
    return float(cov / den) if float(den) > 0 else 0.0


@dataclass(frozen=True)
class CespedMetrics:
    """Gold-standard map metrics of CESPED (Sanchez-Garcia et al., ``evaluateEntry.py``).

    ``GT`` maps come from ground-truth (consensus) poses, ``V`` maps from predicted poses; each
    as half maps ``*0``, ``*1`` and their average. Resolutions in Angstrom.

    Attributes
    ----------
    gt_pcc, gt_resolution
        PCC and FSC resolution between the ground-truth half maps (GT0, GT1): the reference.
    half2half_pcc, half2half_resolution
        The same between the predicted-pose half maps (V0, V1).
    map_vs_gt_pcc, map_vs_gt_resolution
        The same between the predicted-pose map V and the ground-truth map GT.
    delta_pcc
        ``map_vs_gt_pcc - gt_pcc`` (predicted minus ground truth; 0 is perfect, < 0 worse).
    relative_pcc_drop
        CESPED's ``cor_diff = (gt_pcc - map_vs_gt_pcc) / gt_pcc``.
    delta_resolution
        CESPED's ``res_diff = map_vs_gt_resolution - gt_resolution`` (> 0 is worse).
    delta_resolution_fraction
        CESPED's ``res_percent_diff = (1/gt_res - 1/map_vs_gt_res) / (0.5 / angpix)``: the lost
        frequency as a fraction of Nyquist.
    """

    threshold: float
    gt_pcc: float
    gt_resolution: float
    half2half_pcc: float
    half2half_resolution: float
    map_vs_gt_pcc: float
    map_vs_gt_resolution: float
    delta_pcc: float
    relative_pcc_drop: float
    delta_resolution: float
    delta_resolution_fraction: float


def cesped_deltas(
    pred_half1: torch.Tensor,
    pred_half2: torch.Tensor,
    gt_half1: torch.Tensor,
    gt_half2: torch.Tensor,
    angpix: float,
    mask: torch.Tensor | None = None,
    threshold: float = 0.143,
) -> CespedMetrics:
    """CESPED's reconstruction metrics from predicted-pose and ground-truth half maps.

    CESPED evaluates three pairs: (GT0, GT1) gives the attainable agreement, (V0, V1) the
    self-consistency of the predicted poses and (V, GT) with ``V = (V0 + V1) / 2`` and
    ``GT = (GT0 + GT1) / 2`` how close the predicted-pose map is to the ground truth. The deltas
    compare (V, GT) with (GT0, GT1): a perfect predictor reproduces GT, so (V, GT) agrees at
    least as well as two independent GT halves and the deltas are ~0 (the FSC of a map with a
    map sharing its particles is slightly optimistic; CESPED accepts that). With ``mask``, PCC
    and FSC use it (CESPED's masked numbers).

    Parameters
    ----------
    pred_half1, pred_half2, gt_half1, gt_half2
        ``(N, N, N)`` half maps (same box and pixel size).
    angpix
        Pixel size in Angstrom.
    mask
        Optional ``(N, N, N)`` mask.
    threshold
        FSC threshold for the resolutions.
    """
    box = pred_half1.shape[-1]
    v = (pred_half1 + pred_half2) / 2
    gt = (gt_half1 + gt_half2) / 2
    gt_pcc = pcc(gt_half1, gt_half2, mask)
    gt_res = resolution_at(fsc(gt_half1, gt_half2, mask), box, angpix, threshold)
    hh_pcc = pcc(pred_half1, pred_half2, mask)
    hh_res = resolution_at(fsc(pred_half1, pred_half2, mask), box, angpix, threshold)
    vg_pcc = pcc(v, gt, mask)
    vg_res = resolution_at(fsc(v, gt, mask), box, angpix, threshold)
    return CespedMetrics(
        threshold=threshold,
        gt_pcc=gt_pcc,
        gt_resolution=gt_res,
        half2half_pcc=hh_pcc,
        half2half_resolution=hh_res,
        map_vs_gt_pcc=vg_pcc,
        map_vs_gt_resolution=vg_res,
        delta_pcc=vg_pcc - gt_pcc,
        relative_pcc_drop=(gt_pcc - vg_pcc) / gt_pcc if gt_pcc != 0 else math.nan,
        delta_resolution=vg_res - gt_res,
        delta_resolution_fraction=(1 / gt_res - 1 / vg_res) / (0.5 / angpix),
    )


def plot_fsc(
    curves: dict[str, tuple[torch.Tensor, torch.Tensor]],
    path: str | Path,
    thresholds: tuple[float, ...] = (0.143, 0.5),
    title: str | None = None,
) -> Path:
    """Plot FSC curves against spatial frequency and write a PNG atomically.

    Parameters
    ----------
    curves
        ``{label: (freq, fsc)}`` with ``freq`` in 1/Angstrom (see :func:`shell_frequencies`) and
        ``fsc`` of the same length.
    path
        Output ``.png``.
    thresholds
        Horizontal reference lines.
    title
        Optional figure title.

    Returns
    -------
    Path
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 4.0), dpi=100)
    ax = fig.add_subplot()
    for label, (freq, curve) in curves.items():
        f = torch.as_tensor(freq).cpu().numpy()
        c = torch.as_tensor(curve).cpu().numpy()
        if f.shape != c.shape:
            raise InputError(None, f"curve {label!r}: freq {f.shape} and fsc {c.shape} differ")
        ax.plot(f, c, label=label)
    for t in thresholds:
        ax.axhline(t, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    ax.set_ylim(-0.1, 1.05)
    if title:
        ax.set_title(title)
    if curves:
        ax.legend()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    return out
