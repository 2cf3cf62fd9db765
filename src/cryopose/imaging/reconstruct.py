"""3D reconstruction by direct Fourier inversion (back-projection of central slices).

The map is recovered the way RELION's ``BackProjector`` does it: every particle image is
centred, Fourier transformed, multiplied by its CTF and inserted as a central slice into a
padded 3D Fourier grid with trilinear weights, while CTF^2 is accumulated the same way in a
weight grid. :meth:`FourierReconstructor.finalize` symmetrises both grids (point groups),
divides them (with a regulariser), transforms back, crops the padding and corrects for the
trilinear kernel.

Conventions (DESIGN.md): an image at pose ``A`` (RELION matrix) has the Fourier transform
``F_V(A^T k)``, so its 2D frequency ``k = (kx, ky, 0)`` is inserted at ``A^T k``. With a point
group ``G`` (poses ``A g`` are equivalent) every slice is inserted once and the accumulators
are symmetrised before the division, ``S(k) = sum_g acc(g k)`` (RELION's
``BackProjector::symmetrise``); that equals inserting every slice at ``(A g)^T k`` for all
``g``, up to one extra trilinear interpolation (none for operators that map grid points onto
grid points, such as those of C2, C4, D2, D4, T and O). A particle's content sits at minus its
origin (``rlnOriginXAngst/YAngst``), so the image is translated by ``+origin`` before
insertion. Real-space origins are at ``N // 2``.

Only the accumulators are kept (memory does not grow with the number of particles); they can
be merged (half maps -> full map) and saved/restored (``state_dict``) to resume streaming.

>>> import torch
>>> rec = FourierReconstructor(box=16, angpix=2.0)
>>> rec.insert(torch.zeros(3, 16, 16), torch.eye(3).expand(3, 3, 3))
>>> rec.finalize().shape
torch.Size([16, 16, 16])
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np
import torch

from cryopose.errors import InputError

__all__ = ["FourierReconstructor", "reconstruct", "reconstruct_halves"]

Regularisation = Literal["relion", "wiener", "tau2"]

# float32 accumulators: measured against relion_reconstruct the maps agree as well as with
# float64 (tests/imaging/test_reconstruct.py), at half the memory and twice the scatter speed.
_DEFAULT_DTYPE = torch.float32
# Grid points processed at once when the accumulators are symmetrised (bounds memory).
_CHUNK = 1 << 19
# Slice samples scattered at once (their 8 corners' temporaries stay in cache).
_SPLAT_SAMPLES = 1 << 15
# Operators whose entries are all within this of -1, 0 or 1 map grid points onto grid points.
_INTEGER_TOL = 1e-6


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside the block (restored afterwards).

    Insertion is hundreds of small tensor operations; with two threads every one of them
    waits at a barrier for the other thread, which on a busy machine is often descheduled.
    Measured on the shared 2-core box (1,000 particles, 64 px, CTF): 0.8 s on one thread,
    8.8 s on two. relion_reconstruct 3.1 is single-threaded as well.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _symmetry_operators(
    symmetry: str | torch.Tensor, device: torch.device
) -> tuple[str, torch.Tensor]:
    """Point-group operators ``(|G|, 3, 3)`` (float64) for a name or an explicit tensor."""
    if isinstance(symmetry, torch.Tensor):
        ops = symmetry.to(device=device, dtype=torch.float64)
        if ops.ndim != 3 or ops.shape[-2:] != (3, 3):
            raise InputError(None, f"expected symmetry operators (G,3,3), got {tuple(ops.shape)}")
        return "custom", ops
    name = symmetry.strip().upper()
    if name == "C1":
        return name, torch.eye(3, dtype=torch.float64, device=device)[None]
    # Imported here so that C1 reconstruction works without the symmetry module.
    from cryopose.geometry.symmetry import symmetry_group

    ops = torch.as_tensor(symmetry_group(name), dtype=torch.float64).to(device)
    return name, ops


def _slice_frequencies(
    box: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frequency of every Friedel pair of an image inside the resolution sphere.

    Returns
    -------
    kxy
        ``(M, 2)`` float64 (kx, ky) in cycles per box with ``|k| <= box / 2`` (RELION's
        ``r_max = ori_size / 2``) and ``kx > 0``, or ``kx = 0`` and ``ky >= 0``. Each pair
        ``{k, -k}`` is listed once: the 3D grid stores only ``x >= 0`` and ``-k`` is implied
        by Hermitian symmetry. For even boxes the pairs at ``|k| = N/2`` on the axes are
        included (their DFT value is the one at ``-N/2``).
    src
        ``(M,)`` long: flat index of each frequency in the ``(box, box // 2 + 1)`` rfft.
    mult
        ``(M,)`` float64 multiplicity: 1, and 1/2 at DC, whose Friedel mate is itself (the
        Hermitian completion of the ``x = 0`` plane in :meth:`FourierReconstructor.finalize`
        counts every sample there twice).
    """
    half = box // 2
    r = torch.arange(-half, half + 1, device=device)
    ky, kx = torch.meshgrid(r, r, indexing="ij")
    keep = (kx * kx + ky * ky) <= (box / 2) ** 2
    keep &= (kx > 0) | ((kx == 0) & (ky >= 0))
    kx, ky = kx[keep], ky[keep]
    src = (ky % box) * (box // 2 + 1) + kx
    mult = torch.where((kx == 0) & (ky == 0), 0.5, 1.0).to(torch.float64)
    return torch.stack([kx, ky], dim=-1).to(torch.float64), src, mult


def _soft_mask_outside(vol: torch.Tensor, width: float = 3.0) -> torch.Tensor:
    """RELION's ``softMaskOutsideMap``: blend voxels beyond radius ``N / 2`` into the background.

    Voxels with ``r >= N/2 + width`` are set to the (raised-cosine weighted) mean of the region
    outside ``N/2``; a raised cosine of ``width`` voxels joins the two. The corners of the box
    hold no reconstructed signal (the Fourier data fill a sphere) but collect high-frequency
    errors; measured here, without this step the FSC against the true map at 0.8 Nyquist fell
    from 0.99 to 0.78.
    """
    n = vol.shape[-1]
    radius = n / 2
    g = torch.arange(n, device=vol.device, dtype=vol.dtype) - n // 2
    r = torch.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)
    edge = 0.5 + 0.5 * torch.cos(math.pi * (radius + width - r) / width)
    bg_w = torch.where(r < radius, 0.0, torch.where(r > radius + width, 1.0, edge))
    if float(bg_w.sum()) == 0:
        return vol
    bg = (bg_w * vol).sum() / bg_w.sum()
    return (1 - bg_w) * vol + bg_w * bg


def _gridding_correction(box: int, pad_box: int, device: torch.device) -> torch.Tensor:
    """Real-space ``(box, box, box)`` factor sinc^2(x / P) per axis of the trilinear kernel.

    Trilinear insertion convolves the padded Fourier grid with a separable triangle of width
    two samples, i.e. multiplies the padded real-space map by ``prod_i sinc^2(x_i / P)``.
    RELION (``griddingCorrect``) divides by the radial ``sinc^2(r / P)``; the separable form is
    the exact transform of the kernel actually used.
    """
    x = (torch.arange(box, device=device, dtype=torch.float64) - box // 2) / pad_box
    s = torch.sinc(x) ** 2
    return s[:, None, None] * s[None, :, None] * s[None, None, :]


class FourierReconstructor:
    """Streaming direct-Fourier-inversion reconstructor with CTF and point-group symmetry.

    Parameters
    ----------
    box
        Image (and map) size ``N`` in pixels; images are ``(N, N)``.
    angpix
        Pixel size in Angstrom (converts shifts in Angstrom to pixels).
    pad_factor
        Oversampling of the 3D Fourier grid (``P = round(pad_factor * N)``); 2 as in RELION.
    symmetry
        Point-group name (``"C1"``, ``"C4"``, ``"D2"``, ... with RELION conventions, through
        :func:`cryopose.geometry.symmetry.symmetry_group`) or an explicit ``(|G|, 3, 3)``
        tensor of operators ``g`` (poses ``A g`` are equivalent to ``A``). Applied in
        :meth:`finalize`; insertion costs the same for every group.
    device
        Where the accumulators live; inputs are moved there.
    dtype
        Real dtype of the accumulators (``float32`` default, ``float64`` for very long sums).

    Notes
    -----
    The accumulators (memory ``~ 1.5 P^3`` real numbers, independent of the number of
    particles) are one real tensor ``(3, Z, Y, X)`` holding ``Re data``, ``Im data`` and
    ``weight``, with ``data[k] = sum_i w_i CTF_i X_i`` and ``weight[k] = sum_i w_i CTF_i^2``
    spread with trilinear weights. Only the half space ``kx >= 0`` is stored, centred: grid
    index ``(z + c, y + c, x)`` holds frequency ``(x, y, z)`` in padded-grid units, with
    ``c = centre``; it reaches the sampled sphere's rim without wrapping, so no index needs a
    modulo. Samples are inserted once per Friedel pair (flipped to ``x >= 0``); the ``x = 0``
    plane is completed with the mirrored conjugate in :meth:`finalize`.
    """

    def __init__(
        self,
        box: int,
        angpix: float,
        pad_factor: float = 2.0,
        symmetry: str | torch.Tensor = "C1",
        device: torch.device | str | None = None,
        dtype: torch.dtype = _DEFAULT_DTYPE,
    ) -> None:
        if box < 2:
            raise InputError(None, f"box must be >= 2 pixels, got {box}")
        if angpix <= 0:
            raise InputError(None, f"angpix must be > 0 Angstrom, got {angpix}")
        if pad_factor < 1:
            raise InputError(None, f"pad_factor must be >= 1, got {pad_factor}")
        if dtype not in (torch.float32, torch.float64):
            raise InputError(None, f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.box = int(box)
        self.angpix = float(angpix)
        self.pad_factor = float(pad_factor)
        self.pad_box = round(self.pad_factor * self.box)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        self.symmetry, self.operators = _symmetry_operators(symmetry, self.device)
        # Samples reach radius R = N/2 * pad; trilinear corners one voxel further (+1 margin
        # for rounding of the float coordinates).
        reach = self.box / 2 * self.pad_factor
        self.centre = math.ceil(reach) + 1
        side = 2 * self.centre + 2
        self._shape = (side, side, math.floor(reach) + 3)
        self._acc = torch.zeros((3, *self._shape), dtype=dtype, device=self.device)
        self.n_inserted = 0
        kxy, src, mult = _slice_frequencies(self.box, self.device)
        self._kxy, self._src, self._mult = kxy.to(dtype), src, mult.to(dtype)
        sz, sy = self._shape[1] * self._shape[2], self._shape[2]
        corners = [dz * sz + dy * sy + dx for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]
        numel = 3 * self._shape[0] * sz
        # int32 flat indices halve the index traffic of the scatter when the grid allows.
        self._index_dtype = torch.int32 if numel < 2**31 else torch.int64
        self._corners = torch.tensor(corners, dtype=self._index_dtype, device=self.device)

    @property
    def data(self) -> torch.Tensor:
        """``(Z, Y, X)`` complex data accumulator (a copy; layout in the class notes)."""
        return torch.complex(self._acc[0], self._acc[1])

    @property
    def weight(self) -> torch.Tensor:
        """``(Z, Y, X)`` real weight accumulator (a view; layout in the class notes)."""
        return self._acc[2]

    # ------------------------------------------------------------------ insertion
    def insert(
        self,
        images: torch.Tensor,
        rotations: torch.Tensor,
        shifts_angst: torch.Tensor | None = None,
        ctf: torch.Tensor | None = None,
        weights: torch.Tensor | None = None,
    ) -> None:
        """Back-project a batch of particle images.

        Parameters
        ----------
        images
            ``(B, N, N)`` real images, origin at ``N // 2``.
        rotations
            ``(B, 3, 3)`` RELION pose matrices ``A``.
        shifts_angst
            ``(B, 2)`` RELION origins (``rlnOriginXAngst``, ``rlnOriginYAngst``) in Angstrom;
            the image is translated by ``+origin`` (content sits at ``-origin``).
        ctf
            ``(B, N, N // 2 + 1)`` CTF values in ``torch.fft.rfft2`` layout (not fftshifted).
            ``None`` means CTF = 1 (the weight grid then counts samples).
        weights
            ``(B,)`` per-particle weights (e.g. figure of merit); ``None`` means 1.
        """
        n = self.box
        if images.ndim != 3 or images.shape[-2:] != (n, n):
            raise InputError(None, f"expected images (B,{n},{n}), got {tuple(images.shape)}")
        b = images.shape[0]
        if rotations.shape != (b, 3, 3):
            raise InputError(None, f"expected rotations ({b},3,3), got {tuple(rotations.shape)}")
        if shifts_angst is not None and shifts_angst.shape != (b, 2):
            raise InputError(
                None, f"expected shifts_angst ({b},2), got {tuple(shifts_angst.shape)}"
            )
        if ctf is not None and ctf.shape != (b, n, n // 2 + 1):
            raise InputError(None, f"expected ctf ({b},{n},{n // 2 + 1}), got {tuple(ctf.shape)}")
        if weights is not None and weights.shape != (b,):
            raise InputError(None, f"expected weights ({b},), got {tuple(weights.shape)}")
        if b == 0:
            return
        with _one_thread():
            self._insert(images, rotations, shifts_angst, ctf, weights)
        self.n_inserted += b

    def _insert(
        self,
        images: torch.Tensor,
        rotations: torch.Tensor,
        shifts_angst: torch.Tensor | None,
        ctf: torch.Tensor | None,
        weights: torch.Tensor | None,
    ) -> None:
        """:meth:`insert` after the checks."""
        n, b = self.box, images.shape[0]
        dev, work = self.device, self.dtype
        ft = torch.fft.rfft2(images.to(device=dev, dtype=work)).flatten(1)[:, self._src]
        # The FFT origin is index 0, the image origin N // 2: translating by t - N//2 (t the
        # +origin shift in pixels) multiplies the DFT by exp(-2 pi i k.(t - N//2) / N). One
        # phase factor replaces the ifftshift copy.
        t = torch.full((b, 2), -float(n // 2), dtype=work, device=dev)
        if shifts_angst is not None:
            t = t + shifts_angst.to(device=dev, dtype=work) / self.angpix
        phase = (-2.0 * math.pi / n) * (t @ self._kxy.T)
        amp = self._mult.expand(b, -1)
        wts = amp
        if ctf is not None:
            c = ctf.to(device=dev, dtype=work).flatten(1)[:, self._src]
            amp = amp * c
            wts = amp * c
        if weights is not None:
            w = weights.to(device=dev, dtype=work)[:, None]
            amp, wts = amp * w, wts * w
        vals = ft * torch.polar(torch.ones_like(phase), phase)
        re, im = vals.real * amp, vals.imag * amp
        wts = wts.expand(b, -1)
        pos = self._positions(rotations)
        # Scatter a few particles at a time: the (8, b, M) temporaries then stay in cache.
        step = max(1, _SPLAT_SAMPLES // self._kxy.shape[0])
        for i in range(0, b, step):
            sl = slice(i, i + step)
            self._splat(pos[:, sl], re[sl], im[sl], wts[sl])

    def _positions(self, rotations: torch.Tensor) -> torch.Tensor:
        """3D positions ``(3, B, M)`` (x, y, z) in padded-grid units of every slice sample."""
        # A^T k with kz = 0: only the first two columns of A^T matter.
        rt = rotations.to(device=self.device, dtype=torch.float64).transpose(-1, -2)[..., :2]
        rt = (self.pad_factor * rt).to(self.dtype)  # (B, 3, 2)
        return torch.einsum("bij,mj->ibm", rt, self._kxy)

    def _splat(
        self, pos: torch.Tensor, re: torch.Tensor, im: torch.Tensor, wts: torch.Tensor
    ) -> None:
        """Trilinear scatter-add of data ``re + i im`` and weights ``wts`` ``(B, M)`` at ``pos``."""
        # Friedel: the sample at -q carries conj(value); store whichever has x >= 0.
        sign = torch.where(pos[0] < 0, -1.0, 1.0).to(self.dtype)
        pos = pos * sign
        im = im * sign
        base = torch.floor(pos)
        frac = pos - base
        c = self.centre
        ny, nx = self._shape[1], self._shape[2]
        bi = base.to(self._index_dtype)
        flat = ((bi[2] + c) * ny + (bi[1] + c)) * nx + bi[0]
        fx, fy, fz = frac.unbind(0)
        gx, gy = 1 - fx, 1 - fy
        wyx = torch.stack([gy * gx, gy * fx, fy * gx, fy * fx])  # (4, B, M), x fastest
        tri = torch.cat([(1 - fz) * wyx, fz * wyx])  # (8, B, M) in self._corners order
        index = (flat + self._corners[:, None, None]).flatten()
        acc = self._acc.view(3, -1)
        for ch, v in enumerate((re, im, wts)):
            acc[ch].index_add_(0, index, (tri * v).flatten())

    # ------------------------------------------------------------------ symmetrisation
    def _hermitian_completed(self) -> torch.Tensor:
        """Copy the accumulators, adding to the ``x = 0`` plane its mirrored conjugate.

        In the full grid a sample near ``x = 0`` also spreads its Friedel mate onto that
        plane at ``(0, -y, -z)``; inserting each pair once leaves that part out (RELION's
        ``enforceHermitianSymmetry``).
        """
        acc = self._acc.clone()
        m = 2 * self.centre + 1  # indices 0..2c: coordinate i - c <-> mirrored 2c - i
        plane = acc[:, :m, :m, 0]
        mirrored = plane.flip(1, 2) * torch.tensor([1.0, -1.0, 1.0], dtype=acc.dtype)[:, None, None]
        acc[:, :m, :m, 0] = plane + mirrored
        return acc

    def _interpolate(self, acc: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Trilinear values ``(3, K)`` (Re, Im, weight) of the Hermitian grid at ``q`` (3, K)."""
        # The trilinear interpolant of a Hermitian grid is Hermitian: read -q, conjugate.
        sign = torch.where(q[0] < 0, -1.0, 1.0).to(q.dtype)
        q = q * sign
        c = self.centre
        ny, nx = self._shape[1], self._shape[2]
        flat_acc = acc.view(3, -1)
        base = torch.floor(q)
        fx, fy, fz = (q - base).unbind(0)
        bi = base.to(torch.int64)
        flat = ((bi[2] + c) * ny + (bi[1] + c)) * nx + bi[0]
        wx, wy, wz = (1 - fx, fx), (1 - fy, fy), (1 - fz, fz)
        out = torch.zeros((3, q.shape[1]), dtype=acc.dtype, device=acc.device)
        corners = [(dz, dy, dx) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]
        for (dz, dy, dx), offset in zip(corners, self._corners.tolist(), strict=True):
            out += flat_acc.index_select(1, flat + offset) * (wz[dz] * wy[dy] * wx[dx])
        out[1] *= sign
        return out

    def _full_grid(self, acc: torch.Tensor) -> torch.Tensor:
        """Expand the Hermitian half grid to ``(3, S, S, S)``, coordinates ``-c .. c``."""
        c = self.centre
        m = 2 * c + 1
        half = acc[:, :m, :m, : c + 1]
        conj = torch.tensor([1.0, -1.0, 1.0], dtype=acc.dtype, device=acc.device)
        mirror = half[..., 1:].flip(1, 2, 3) * conj[:, None, None, None]
        return torch.cat([mirror, half], dim=3)

    def _symmetrise_permutations(self, acc: torch.Tensor) -> torch.Tensor:
        """``sum_g acc(g k)`` on the half grid for signed-permutation operators (exact).

        ``g`` permutes and negates coordinates, so ``acc(g k)`` is the full grid with axes
        permuted and flipped: a strided copy, no interpolation.
        """
        c = self.centre
        full = self._full_grid(acc)
        total = torch.zeros_like(full[..., c:])
        for g in self.operators.round().to(torch.int64).tolist():
            # (g k)_j = s_j k_perm[j]; coordinate j (x, y, z) is tensor dim 3 - j.
            perm = [row.index(next(v for v in row if v != 0)) for row in g]
            signs = [sum(row) for row in g]
            inv = [perm.index(i) for i in range(3)]
            view = full.permute(0, 3 - inv[2], 3 - inv[1], 3 - inv[0])
            # Flip output coordinate i where the source coordinate j = inv[i] is negated.
            flips = [3 - i for i in range(3) if signs[inv[i]] < 0]
            # x flipped: x >= 0 of the result is x <= 0 of the view
            part = view[..., : c + 1] if 3 in flips else view[..., c:]
            total += part.flip(flips) if flips else part
        out = torch.zeros_like(acc)
        out[:, : 2 * c + 1, : 2 * c + 1, : c + 1] = total
        return out

    def _rfft_grids(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Symmetrised data and weight on the ``(P, P, P // 2 + 1)`` rfft grid, and ``inside``.

        Only voxels inside the sampled sphere (``r < round(N / 2 * pad)``, RELION's
        ``r_max``) are filled: ``S(k) = sum_g acc(g k)``, by trilinear interpolation in
        general and by permuting axes for operators that map grid points onto grid points.
        """
        p = self.pad_box
        radius = self._radius()
        inside = radius < round(self.box / 2 * self.pad_factor)
        f = torch.fft.fftfreq(p, d=1.0 / p, device=self.device).to(torch.int64)
        zz, yy, xx = torch.nonzero(inside, as_tuple=True)
        c = self.centre
        ny, nx = self._shape[1], self._shape[2]
        acc = self._hermitian_completed()
        ops = self.operators
        identity = torch.eye(3, dtype=ops.dtype, device=ops.device)
        gather = len(ops) == 1 and bool((ops[0] - identity).abs().max() < _INTEGER_TOL)
        if not gather and bool(((ops - ops.round()).abs() < _INTEGER_TOL).all()):
            acc = self._symmetrise_permutations(acc)
            gather = True
        if gather:
            idx = ((f[zz] + c) * ny + (f[yy] + c)) * nx + xx
            total = acc.view(3, -1).index_select(1, idx)
        else:
            k = torch.stack([xx, f[yy], f[zz]]).to(acc.dtype)  # (3, K) integer (x, y, z)
            g_all = ops.to(acc.dtype)
            total = torch.zeros((3, k.shape[1]), dtype=acc.dtype, device=self.device)
            for start in range(0, k.shape[1], _CHUNK):
                kc = k[:, start : start + _CHUNK]
                for g in g_all:
                    total[:, start : start + _CHUNK] += self._interpolate(acc, g @ kc)
        cdtype = torch.complex128 if acc.dtype == torch.float64 else torch.complex64
        data = torch.zeros(inside.shape, dtype=cdtype, device=self.device)
        weight = torch.zeros(inside.shape, dtype=acc.dtype, device=self.device)
        data[inside] = torch.complex(total[0], total[1])
        weight[inside] = total[2]
        return data, weight, inside

    # ------------------------------------------------------------------ combination
    def _check_compatible(self, box: int, pad_box: int, symmetry: str, ops: torch.Tensor) -> None:
        if (box, pad_box) != (self.box, self.pad_box):
            raise InputError(
                None,
                f"accumulators differ: box/padded box {box}/{pad_box}, "
                f"expected {self.box}/{self.pad_box}",
            )
        if symmetry != self.symmetry or ops.shape != self.operators.shape:
            raise InputError(
                None, f"accumulators differ: symmetry {symmetry}, expected {self.symmetry}"
            )

    def merge(self, other: FourierReconstructor) -> None:
        """Add ``other``'s accumulators to this one (e.g. two half sets -> the full set)."""
        self._check_compatible(other.box, other.pad_box, other.symmetry, other.operators)
        self._acc += other._acc.to(device=self.device, dtype=self.dtype)
        self.n_inserted += other.n_inserted

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: geometry, symmetry operators and accumulators."""
        return {
            "box": self.box,
            "angpix": self.angpix,
            "pad_factor": self.pad_factor,
            "pad_box": self.pad_box,
            "symmetry": self.symmetry,
            "operators": self.operators.clone(),
            "data": self.data,
            "weight": self.weight.clone(),
            "n_inserted": self.n_inserted,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore accumulators saved by :meth:`state_dict` (geometry must match)."""
        missing = {"box", "pad_box", "symmetry", "operators", "data", "weight", "n_inserted"}
        missing -= set(state)
        if missing:
            raise InputError(None, f"state_dict lacks {sorted(missing)}")
        self._check_compatible(
            int(state["box"]), int(state["pad_box"]), str(state["symmetry"]), state["operators"]
        )
        for key in ("data", "weight"):
            if tuple(state[key].shape) != self._shape:
                raise InputError(
                    None,
                    f"state_dict {key} has shape {tuple(state[key].shape)}, expected {self._shape}",
                )
        data = torch.as_tensor(state["data"]).to(self.device)
        self._acc[0] = data.real
        self._acc[1] = data.imag
        self._acc[2] = torch.as_tensor(state["weight"]).to(self.device)
        self.n_inserted = int(state["n_inserted"])

    # ------------------------------------------------------------------ inversion
    def _radius(self) -> torch.Tensor:
        """``(P, P, P//2+1)`` frequency radius in padded-grid units (rfft layout)."""
        p = self.pad_box
        f = torch.fft.fftfreq(p, d=1.0 / p, device=self.device).to(torch.float64)
        fx = torch.arange(p // 2 + 1, device=self.device, dtype=torch.float64)
        return torch.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx[None, None, :] ** 2)

    def _shell_mean(self, values: torch.Tensor, shell: torch.Tensor, n_shells: int) -> torch.Tensor:
        """Mean of ``values`` over voxels of each shell index (rfft voxels counted once)."""
        total = torch.zeros(n_shells, dtype=values.dtype, device=self.device)
        count = torch.zeros(n_shells, dtype=values.dtype, device=self.device)
        total.index_add_(0, shell, values)
        count.index_add_(0, shell, torch.ones_like(values))
        return total / count.clamp_min(1)

    def finalize(
        self,
        regularisation: Regularisation = "relion",
        wiener_constant: float = 0.0,
        fsc_curve: torch.Tensor | None = None,
        tau2_fudge: float = 1.0,
        whole_map: bool = False,
        mask_outside: bool = True,
    ) -> torch.Tensor:
        """Divide data by (weight + regulariser), inverse FFT, crop, gridding-correct.

        Parameters
        ----------
        regularisation
            How the Fourier division ``F = sum(CTF X) / (sum CTF^2 + R)`` is regularised:

            ``"relion"``
                ``R = 0`` and the denominator is floored at 1/1000 of its shell average, as
                RELION's ``BackProjector::reconstruct`` does with ``--skip_gridding`` (RELION
                by default replaces the floor by 10 Pipe-Menon gridding iterations).
            ``"wiener"``
                ``R = wiener_constant``: the Wiener filter of the "seeds" paper, eq. 2,
                ``F = sum(CTF X) / (sum CTF^2 + 1/SNR)`` with a constant ``1/SNR`` in the units of
                the weight grid (sum of CTF^2 times trilinear weights).
            ``"tau2"``
                RELION's MAP term from an FSC curve (``updateSSNRarrays`` + ``reconstruct``
                with ``do_map``): per shell ``SSNR = FSC / (1 - FSC)`` (FSC clamped to
                [0.001, 0.999]; for a map from both halves, ``whole_map=True`` first maps
                ``FSC -> sqrt(2 FSC / (1 + FSC))``) and ``R = <weight>_shell / (tau2_fudge * SSNR)``
                i.e. ``1/tau2`` with ``tau2 = SSNR * sigma2`` in weight units. Shells are
                ``round(r / pad_factor)`` as in RELION.
        wiener_constant
            ``1/SNR`` for ``"wiener"``.
        fsc_curve
            ``(N // 2 + 1,)`` FSC between half maps for ``"tau2"`` (as
            :func:`cryopose.evaluation.fsc.fsc` computes it).
        tau2_fudge
            RELION's ``--tau2_fudge`` (higher trusts the data more).
        whole_map
            For ``"tau2"``: the accumulators hold both halves (RELION's
            ``is_whole_instead_of_half``).
        mask_outside
            Blend the corners beyond radius ``N / 2`` into the background with a 3-voxel raised
            cosine before the gridding correction, as RELION's ``windowToOridimRealSpace`` does.

        Returns
        -------
        torch.Tensor
            ``(N, N, N)`` float32 map ``(D, H, W)``, origin at ``N // 2``, on the accumulators'
            device, in the intensity units of the images (projections of it reproduce them).
        """
        p, n = self.pad_box, self.box
        with _one_thread():
            data, weight, inside = self._rfft_grids()  # RELION: r^2 < ROUND(r_max * pad)^2
        radius = self._radius()
        n_shells = n // 2 + 1
        floor_shell = torch.floor(radius / self.pad_factor).long().clamp_max(n_shells - 1)
        denom = weight.clone()
        if regularisation == "wiener":
            if wiener_constant < 0:
                raise InputError(None, f"wiener_constant must be >= 0, got {wiener_constant}")
            denom = denom + wiener_constant
        elif regularisation == "tau2":
            denom = denom + self._tau2_term(
                weight, radius, inside, fsc_curve, tau2_fudge, whole_map
            )
        elif regularisation != "relion":
            raise InputError(
                None,
                f"unknown regularisation {regularisation!r}, expected 'relion', 'wiener' or 'tau2'",
            )
        shell_in = floor_shell[inside]
        avg = self._shell_mean(weight[inside], shell_in, n_shells)
        denom = torch.maximum(denom, avg[floor_shell] / 1000.0)
        safe = inside & (denom > 0)
        ft = torch.where(safe, data / torch.where(safe, denom, 1.0), 0.0)
        vol = torch.fft.irfftn(ft, s=(p, p, p), dim=(-3, -2, -1))
        vol = torch.fft.fftshift(vol, dim=(-3, -2, -1))
        start = p // 2 - n // 2
        vol = vol[start : start + n, start : start + n, start : start + n]
        if mask_outside:
            vol = _soft_mask_outside(vol)
        corrected: torch.Tensor = vol / _gridding_correction(n, p, self.device).to(vol.dtype)
        return corrected.to(torch.float32)

    def _tau2_term(
        self,
        weight: torch.Tensor,
        radius: torch.Tensor,
        inside: torch.Tensor,
        fsc_curve: torch.Tensor | None,
        tau2_fudge: float,
        whole_map: bool,
    ) -> torch.Tensor:
        """RELION's ``1 / tau2`` regulariser per voxel (see :meth:`finalize`)."""
        n_shells = self.box // 2 + 1
        if fsc_curve is None or fsc_curve.shape != (n_shells,):
            got = None if fsc_curve is None else tuple(fsc_curve.shape)
            raise InputError(
                None, f"regularisation 'tau2' needs fsc_curve ({n_shells},), got {got}"
            )
        if tau2_fudge <= 0:
            raise InputError(None, f"tau2_fudge must be > 0, got {tau2_fudge}")
        shell = torch.round(radius / self.pad_factor).long().clamp_max(n_shells - 1)
        mean_w = self._shell_mean(weight[inside], shell[inside], n_shells)
        f = fsc_curve.to(device=self.device, dtype=torch.float64).clamp_min(0.001)
        if whole_map:
            f = torch.sqrt(2 * f / (f + 1))
        f = f.clamp_max(0.999)
        ssnr = tau2_fudge * f / (1 - f)
        return (mean_w / ssnr)[shell].to(weight.dtype)


def _fsc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """FSC ``(N // 2 + 1,)`` over shells ``round(|k|)``, shell 0 set to 1.

    The same definition as :func:`cryopose.evaluation.fsc.fsc` (tested equal); repeated here
    because ``imaging`` must not import the higher ``evaluation`` layer.
    """
    n = a.shape[-1]
    fa, fb = torch.fft.rfftn(a.to(torch.float64)), torch.fft.rfftn(b.to(torch.float64))
    f = torch.fft.fftfreq(n, d=1.0 / n, device=a.device).to(torch.float64)
    fx = torch.arange(n // 2 + 1, device=a.device, dtype=torch.float64)
    shell = torch.round(torch.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + fx**2)).long()
    # rfft columns 0 < kx < N/2 stand for their Friedel mates too
    mult = torch.full_like(fx, 2.0)
    mult[0] = 1.0
    if n % 2 == 0:
        mult[-1] = 1.0
    keep = shell <= n // 2
    idx, w = shell[keep], mult.expand_as(shell.double())[keep]

    def ssum(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n // 2 + 1, dtype=torch.float64, device=a.device).index_add_(
            0, idx, w * x[keep]
        )

    num = ssum((fa * fb.conj()).real)
    den = torch.sqrt(ssum(fa.abs() ** 2) * ssum(fb.abs() ** 2))
    out = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 0.0)
    out[0] = 1.0
    return out


def _batches(n: int, size: int) -> Sequence[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _as_tensor(x: torch.Tensor | np.ndarray[Any, Any], sl: slice) -> torch.Tensor:
    """Slice first, convert second: memory-mapped stacks are read one batch at a time."""
    part = x[sl]
    return part if isinstance(part, torch.Tensor) else torch.as_tensor(np.asarray(part))


def _insert_all(
    rec: FourierReconstructor,
    images: torch.Tensor | np.ndarray[Any, Any],
    rotations: torch.Tensor,
    shifts_angst: torch.Tensor | None,
    ctf: torch.Tensor | None,
    weights: torch.Tensor | None,
    batch_size: int,
    select: torch.Tensor | None = None,
) -> None:
    """Insert (a selection of) a stack in batches; ``select`` is a boolean ``(N,)`` mask."""
    n = len(images)
    for sl in _batches(n, batch_size):
        idx = torch.arange(sl.start, sl.stop)
        if select is not None:
            idx = idx[select[sl]]
            if idx.numel() == 0:
                continue
        imgs = _as_tensor(images, sl)[idx - sl.start]
        rec.insert(
            imgs,
            rotations[idx],
            None if shifts_angst is None else shifts_angst[idx],
            None if ctf is None else ctf[idx],
            None if weights is None else weights[idx],
        )


def reconstruct(
    images: torch.Tensor | np.ndarray[Any, Any],
    rotations: torch.Tensor,
    shifts_angst: torch.Tensor | None = None,
    ctf: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    symmetry: str | torch.Tensor = "C1",
    batch_size: int = 256,
    *,
    angpix: float,
    pad_factor: float = 2.0,
    regularisation: Regularisation = "relion",
    wiener_constant: float = 0.0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Reconstruct a map from a particle stack in one call (streams in batches).

    Parameters
    ----------
    images
        ``(N, H, W)`` tensor or array (a ``numpy.memmap`` is read batch by batch).
    rotations, shifts_angst, ctf, weights
        As in :meth:`FourierReconstructor.insert`, for all ``N`` particles.
    symmetry
        Point-group name or ``(|G|, 3, 3)`` operators.
    batch_size
        Images inserted per batch (memory ~ ``batch_size * |G| * H * W`` samples).
    angpix
        Pixel size in Angstrom.
    pad_factor, regularisation, wiener_constant, device
        See :class:`FourierReconstructor` and :meth:`FourierReconstructor.finalize`.

    Returns
    -------
    torch.Tensor
        ``(H, H, H)`` float32 map.
    """
    rec = FourierReconstructor(images.shape[-1], angpix, pad_factor, symmetry, device)
    _insert_all(rec, images, rotations, shifts_angst, ctf, weights, batch_size)
    return rec.finalize(regularisation=regularisation, wiener_constant=wiener_constant)


def reconstruct_halves(
    images: torch.Tensor | np.ndarray[Any, Any],
    rotations: torch.Tensor,
    subsets: torch.Tensor,
    shifts_angst: torch.Tensor | None = None,
    ctf: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    symmetry: str | torch.Tensor = "C1",
    batch_size: int = 256,
    *,
    angpix: float,
    pad_factor: float = 2.0,
    regularisation: Regularisation = "relion",
    wiener_constant: float = 0.0,
    tau2_fudge: float = 1.0,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gold-standard half maps, the full map and the FSC between the halves.

    Parameters
    ----------
    subsets
        ``(N,)`` integers 1 or 2 (``rlnRandomSubset``).
    regularisation
        ``"relion"`` or ``"wiener"`` apply to all three maps. ``"tau2"`` first reconstructs
        unregularised halves, takes their FSC, then regularises each half with it and the full
        map with it as a whole map (RELION's gold-standard MAP step).
    others
        As in :func:`reconstruct`.

    Returns
    -------
    half1, half2, full, fsc_curve
        Three ``(H, H, H)`` float32 maps and the ``(H // 2 + 1,)`` FSC between the returned
        half maps (no mask).
    """
    subsets = torch.as_tensor(subsets)
    if subsets.shape != (len(images),) or not bool(((subsets == 1) | (subsets == 2)).all()):
        raise InputError(None, f"subsets must be ({len(images)},) with values 1 or 2")
    box = images.shape[-1]
    halves = []
    for k in (1, 2):
        rec = FourierReconstructor(box, angpix, pad_factor, symmetry, device)
        _insert_all(rec, images, rotations, shifts_angst, ctf, weights, batch_size, subsets == k)
        halves.append(rec)
    full = FourierReconstructor(box, angpix, pad_factor, symmetry, device)
    for h in halves:
        full.merge(h)
    if regularisation == "tau2":
        raw = [h.finalize("relion") for h in halves]
        curve = _fsc(raw[0], raw[1])
        kw: dict[str, Any] = {"fsc_curve": curve, "tau2_fudge": tau2_fudge}
        h1, h2 = (h.finalize("tau2", **kw) for h in halves)
        whole = full.finalize("tau2", whole_map=True, **kw)
    else:
        h1, h2 = (h.finalize(regularisation, wiener_constant) for h in halves)
        whole = full.finalize(regularisation, wiener_constant)
    return h1, h2, whole, _fsc(h1, h2)
