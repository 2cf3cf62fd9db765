"""Fourier-slice projection of a volume, as RELION's ``relion_project`` computes it.

The image of a volume ``V`` at pose ``A`` (RELION rotation matrix, DESIGN.md) is the
projection along z of the rotated volume, ``image(x, y) = sum_z V(A^T (x, y, z))``, whose
Fourier transform is the central slice ``F_V(A^T (kx, ky, 0))``. Like RELION's ``Projector``
we zero-pad the volume by ``pad_factor``, divide it by the sinc^2 apodisation of trilinear
interpolation (gridding correction), take its rfft once, then for each pose sample the slice
at the frequencies of the ``D x D`` image by trilinear interpolation. Frequencies beyond
Nyquist (``|k| > 0.5`` cycles/pixel) are set to zero, as RELION does. Images are then shifted
(phase ramp) and multiplied by the CTF in Fourier space before the inverse transform.

Pixel values are line integrals in voxel units (sum over z), the same scale as
``relion_project``. The origin of volume and images is index ``N // 2`` for even and odd N.
For odd boxes ``relion_project`` puts the projected centre one pixel away from ``N // 2``
(measured in ``tests/imaging/test_projection.py``); cryopose keeps it at ``N // 2``.

>>> import torch
>>> vol = torch.zeros(16, 16, 16)
>>> vol[8, 8, 8] = 1.0
>>> img = project(vol, torch.eye(3)[None])
>>> tuple(img.shape), round(float(img.sum()), 4)
((1, 16, 16), 1.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cryopose.imaging.fft import irfftn_centred, rfft_freq_grid
from cryopose.imaging.shift import fourier_shift_rfft, origin_to_image_shift

__all__ = ["Projector", "project"]


def _sinc2_gridding(size: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Separable sinc^2 apodisation of trilinear interpolation on a ``size^3`` box."""
    x = (torch.arange(size, device=device, dtype=torch.float64) - size // 2) / size
    s = torch.sinc(x) ** 2
    return (s[:, None, None] * s[None, :, None] * s[None, None, :]).to(dtype)


def _complex_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


class Projector:
    """Projections of one volume at many poses, reusing its padded Fourier transform.

    Parameters
    ----------
    volume
        Real ``(D, D, D)`` volume (z, y, x), origin at ``D // 2``; even or odd D. Float64
        volumes are projected in float64, anything else in float32.
    pad_factor
        Oversampling of the Fourier transform (RELION's ``--pad``, default 2). The padded
        box is ``P = round(D * pad_factor)`` voxels.

    Attributes
    ----------
    size : int
        Box size D of the volume and of the images.
    padded_size : int
        P.

    Examples
    --------
    >>> import torch
    >>> from cryopose.geometry.euler import euler_to_matrix
    >>> proj = Projector(torch.randn(24, 24, 24))
    >>> rots = euler_to_matrix(torch.tensor([[10.0, 20.0, 30.0], [0.0, 90.0, 0.0]]))
    >>> tuple(proj.project(rots).shape)
    (2, 24, 24)
    """

    def __init__(self, volume: torch.Tensor, pad_factor: float = 2.0) -> None:
        if volume.dim() != 3 or len(set(volume.shape)) != 1:
            raise ValueError(f"volume must be cubic (D, D, D), got shape {tuple(volume.shape)}")
        if pad_factor < 1.0:
            raise ValueError(f"pad_factor must be >= 1, got {pad_factor}")
        self.dtype = torch.float64 if volume.dtype == torch.float64 else torch.float32
        self.device = volume.device
        d = int(volume.shape[0])
        p = max(round(d * pad_factor), d)
        self.size = d
        self.padded_size = p
        padded = torch.zeros((p, p, p), dtype=self.dtype, device=self.device)
        lo = p // 2 - d // 2  # keeps the origin D // 2 at P // 2
        padded[lo : lo + d, lo : lo + d, lo : lo + d] = volume.to(self.dtype)
        padded = padded / _sinc2_gridding(p, self.device, self.dtype)
        f = torch.fft.rfftn(torch.fft.ifftshift(padded), dim=(-3, -2, -1))
        f = torch.view_as_real(torch.fft.fftshift(f, dim=(-3, -2)))  # (P, P, P//2+1, 2)
        # One extra z and y plane, copies of the first: the DFT is periodic there, and this
        # lets interpolation reach the +Nyquist edge (index P) without wrapping logic.
        f = torch.cat([f, f[:1]], dim=0)
        f = torch.cat([f, f[:, :1]], dim=1)
        # (1, 2, P+1, P+1, P//2+1): real and imaginary parts as channels for grid_sample.
        self._grid_input = f.permute(3, 0, 1, 2).unsqueeze(0).contiguous()
        # Per output box: which rfft samples are kept and their (M, 3) xyz frequencies.
        self._samples: dict[tuple[int, float], tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def volume_rfft(self) -> torch.Tensor:
        """``(P, P, P // 2 + 1)`` complex rfft of the padded, gridding-corrected volume.

        The z and y axes are fftshifted (DC at ``[P // 2, P // 2, 0]``).
        """
        p = self.padded_size
        g = self._grid_input[0, :, :p, :p]
        return torch.complex(g[0], g[1])

    def _sample(self, k: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """Trilinear samples ``(N, M)`` of the volume rfft at ``A^T k`` for every rotation.

        ``k`` is ``(M, 3)`` xyz image frequencies and ``rotations`` the ``(N, 3, 3)`` matrices
        ``A`` (image frequency ``k`` samples the volume at ``A^T k``: row vector ``k @ A``).
        """
        p = self.padded_size
        wr = p // 2 + 1
        # grid_sample (align_corners=True) maps -1..1 to the first..last index of each axis,
        # and takes (x, y, z) = (last, middle, first) axis coordinates: index i of an axis of
        # n samples is 2 i / (n - 1) - 1, with i = p * kx (x, from 0) or p * k + p // 2 (y, z).
        # The positive per-axis scale is folded into the rotations' columns.
        scale = rotations.new_tensor([2.0 * p / (wr - 1), 2.0, 2.0])
        offset = rotations.new_tensor([-1.0, 2.0 * (p // 2) / p - 1.0, 2.0 * (p // 2) / p - 1.0])
        q = k @ (rotations * scale)  # (N, M, 3)
        # Only x >= 0 is stored: use Friedel symmetry F(-k) = conj F(k) for the other half.
        sign = torch.where(q[..., :1] < 0, -1.0, 1.0).to(q.dtype)  # (N, M, 1)
        grid = torch.addcmul(offset, q, sign)
        out = F.grid_sample(
            self._grid_input,
            grid.reshape(1, 1, 1, -1, 3),
            mode="bilinear",  # trilinear for 5D input
            padding_mode="border",
            align_corners=True,
        ).reshape(2, *q.shape[:-1])
        return torch.complex(out[0], out[1] * sign[..., 0])

    def _sample_points(self, box: int, kmax: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        """``(box, box // 2 + 1)`` bool mask and ``(M, 3)`` xyz frequencies of its samples.

        Frequencies are in cycles per pixel of the volume: sample ``(jy, jx)`` of a ``box``
        rfft is frequency ``(jy, jx) / D``, so a smaller box is the low-frequency part of the
        ``D`` one. Samples beyond ``min(kmax, 0.5)`` (the volume's Nyquist) are left out.
        """
        key = (box, min(float(kmax), 0.5))
        if key not in self._samples:
            ky, kx = rfft_freq_grid((box, box), device=self.device, dtype=self.dtype)
            scale = box / self.size
            ky, kx = ky * scale, kx * scale
            inside = kx * kx + ky * ky <= key[1] ** 2  # RELION keeps |k| <= Nyquist only
            k = torch.stack([kx[inside], ky[inside], torch.zeros_like(kx[inside])], dim=-1)
            self._samples[key] = (inside, k)
        return self._samples[key]

    def slices(
        self, rotations: torch.Tensor, box: int | None = None, kmax: float = 0.5
    ) -> torch.Tensor:
        """Central slices (Fourier transforms of the unshifted, CTF-free projections).

        Parameters
        ----------
        rotations
            ``(N, 3, 3)`` RELION rotation matrices A.
        box
            Size ``B <= D`` of the slices: the low frequencies only, as the rfft of the
            projection Fourier-cropped to ``B`` pixels (``None``: ``D``). Projecting fewer
            frequencies costs proportionally less.
        kmax
            Only frequencies ``|k| <= kmax`` (cycles per pixel of the volume, at most the
            Nyquist 0.5) are projected; the others are zero. A band-limited use (e.g. a
            low-pass correlation) costs proportionally less.

        Returns
        -------
        torch.Tensor
            Complex ``(N, B, B // 2 + 1)`` in the layout of
            :func:`cryopose.imaging.fft.rfftn_centred`, zero beyond the volume's Nyquist.
        """
        d = self.size if box is None else int(box)
        if not 1 <= d <= self.size:
            raise ValueError(f"slice box must be between 1 and {self.size}, got {box}")
        inside, k = self._sample_points(d, kmax)
        rot = rotations.to(device=self.device, dtype=self.dtype)
        n = rot.shape[0]
        out = torch.zeros(
            (n, d * (d // 2 + 1)), dtype=_complex_dtype(self.dtype), device=self.device
        )
        out.index_copy_(1, inside.flatten().nonzero()[:, 0], self._sample(k, rot))
        return out.view(n, d, d // 2 + 1)

    def project(
        self,
        rotations: torch.Tensor,
        shifts_angst: torch.Tensor | None = None,
        angpix: float | None = None,
        ctf: torch.Tensor | None = None,
        fourier: bool = False,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Project the volume at the given poses, as ``relion_project`` does.

        Parameters
        ----------
        rotations
            ``(N, 3, 3)`` RELION rotation matrices A (``euler_to_matrix`` of rot, tilt, psi).
        shifts_angst
            ``(N, 2)`` RELION origins (``rlnOriginXAngst``, ``rlnOriginYAngst``) in Angstrom;
            the projected content is placed at **minus** the origin (RELION's sign). Needs
            ``angpix``.
        angpix
            Pixel size in Angstrom; required with ``shifts_angst``.
        ctf
            ``(N, D, D // 2 + 1)`` (or broadcastable) CTF from
            :func:`cryopose.imaging.ctf.ctf_2d`, multiplied into the Fourier transform.
        fourier
            Return the Fourier transforms instead of real images.
        batch_size
            Poses processed at once (bounds memory; results do not depend on it).

        Returns
        -------
        torch.Tensor
            Real ``(N, D, D)`` images, or complex ``(N, D, D // 2 + 1)`` in the layout of
            :func:`cryopose.imaging.fft.rfftn_centred` when ``fourier=True``.
        """
        if rotations.dim() != 3 or rotations.shape[-2:] != (3, 3):
            raise ValueError(f"rotations must be (N, 3, 3), got {tuple(rotations.shape)}")
        n = rotations.shape[0]
        shifts_px: torch.Tensor | None = None
        if shifts_angst is not None:
            if angpix is None:
                raise ValueError("shifts_angst needs angpix (Angstrom per pixel)")
            if shifts_angst.shape != (n, 2):
                raise ValueError(f"shifts_angst must be ({n}, 2), got {tuple(shifts_angst.shape)}")
            shifts_px = origin_to_image_shift(
                shifts_angst.to(device=self.device, dtype=self.dtype), angpix
            )
        d = self.size
        if ctf is not None:
            ctf = ctf.to(device=self.device, dtype=self.dtype)
            if ctf.shape[-2:] != (d, d // 2 + 1):
                raise ValueError(
                    f"ctf must be (N, {d}, {d // 2 + 1}) (rfft layout), got {tuple(ctf.shape)}"
                )
            ctf = ctf.expand(n, d, d // 2 + 1)
        chunks = []
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            f = self.slices(rotations[start:stop])
            if shifts_px is not None:
                f = fourier_shift_rfft(f, shifts_px[start:stop], (d, d))
            if ctf is not None:
                f = f * ctf[start:stop]
            chunks.append(f if fourier else irfftn_centred(f, (d, d)))
        if not chunks:
            shape = (0, d, d // 2 + 1) if fourier else (0, d, d)
            dtype = _complex_dtype(self.dtype) if fourier else self.dtype
            return torch.zeros(shape, dtype=dtype, device=self.device)
        return torch.cat(chunks, dim=0)


def project(
    volume: torch.Tensor,
    rotations: torch.Tensor,
    shifts_angst: torch.Tensor | None = None,
    angpix: float | None = None,
    ctf: torch.Tensor | None = None,
    fourier: bool = False,
    pad_factor: float = 2.0,
) -> torch.Tensor:
    """Project a volume once; see :class:`Projector` and :meth:`Projector.project`.

    Parameters
    ----------
    volume
        Real ``(D, D, D)``.
    rotations
        ``(N, 3, 3)`` RELION rotation matrices.
    shifts_angst
        ``(N, 2)`` RELION origins in Angstrom (content placed at minus the origin).
    angpix
        Pixel size in Angstrom (needed with shifts).
    ctf
        ``(N, D, D // 2 + 1)`` CTF from :func:`cryopose.imaging.ctf.ctf_2d`.
    fourier
        Return rfft slices instead of real images.
    pad_factor
        Fourier oversampling.

    Returns
    -------
    torch.Tensor
        ``(N, D, D)`` real images or ``(N, D, D // 2 + 1)`` complex slices.
    """
    return Projector(volume, pad_factor=pad_factor).project(
        rotations, shifts_angst=shifts_angst, angpix=angpix, ctf=ctf, fourier=fourier
    )
