"""RELION's contrast transfer function (CTF), sign and astigmatism axis included.

The CTF at a spatial frequency ``(X, Y)`` in 1/Angstrom (``X`` along image columns, ``Y`` along
rows, both increasing with the array index) is, exactly as RELION 3.1 computes it
(``src/ctf.h``; verified in ``tests/imaging/test_ctf.py`` against ``relion_project --ctf`` on a
delta-function volume to 1e-7)::

    lambda = 12.2643247 / sqrt(V * (1 + 0.978466e-6 * V))      # V in volts, lambda in A
    K1 = pi * lambda
    K2 = pi / 2 * Cs * lambda**3                                # Cs in A (mm * 1e7)
    K3 = atan(Q0 / sqrt(1 - Q0**2))                             # amplitude contrast
    K4 = -B / 4                                                 # B-factor, A^2
    K5 = phase_shift                                            # radians
    u2 = X**2 + Y**2
    deltaf = -(dfU + dfV) / 2 - (dfU - dfV) / 2 * cos(2 * (atan2(Y, X) - azimuth))
    ctf = -sin(K1 * deltaf * u2 + K2 * u2**2 - K5 - K3) * exp(K4 * u2) * scale

``deltaf`` is minus the defocus along the direction of the frequency: it equals ``-dfU``
along the azimuth ``rlnDefocusAngle`` (measured from +X towards +Y) and ``-dfV`` at 90
degrees from it. With underfocus (positive ``dfU``, ``dfV``) and ``Q0 > 0`` the CTF is
``+Q0`` at DC and positive throughout the first lobe.

>>> import torch
>>> c = ctf_2d((64, 64), 1.5, torch.tensor([20000.0]), torch.tensor([12000.0]),
...            torch.tensor([30.0]), 300.0, 2.7, 0.1)
>>> tuple(c.shape), round(float(c[0, 0, 0]), 4)
((1, 64, 33), 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from cryopose.imaging.fft import rfft_freq_grid

__all__ = ["apply_ctf", "ctf_2d", "ctf_at_frequencies", "phase_flip", "wavelength_angstrom"]

Param = float | torch.Tensor


def wavelength_angstrom(voltage_kv: Param) -> torch.Tensor:
    """Relativistic electron wavelength in Angstrom (RELION's formula).

    Parameters
    ----------
    voltage_kv
        Acceleration voltage in kV (``rlnVoltage``), float or tensor of any shape.

    Returns
    -------
    torch.Tensor
        Wavelength in Angstrom, same shape and floating dtype as the input (float32 for
        a Python float, float64 for an integer).
    """
    v = torch.as_tensor(voltage_kv)
    if not v.is_floating_point():
        v = v.to(torch.float64)
    v = v * 1e3
    return 12.2643247 / torch.sqrt(v * (1.0 + 0.978466e-6 * v))


def ctf_at_frequencies(
    kx: torch.Tensor,
    ky: torch.Tensor,
    defocus_u: Param,
    defocus_v: Param,
    defocus_angle: Param,
    voltage: Param,
    cs: Param,
    amplitude_contrast: Param,
    phase_shift: Param = 0.0,
    bfactor: Param = 0.0,
    scale: Param = 1.0,
) -> torch.Tensor:
    """RELION's CTF at arbitrary frequencies.

    Parameters
    ----------
    kx, ky
        Frequencies in 1/Angstrom, broadcastable to each other, shape ``F`` (e.g. ``(H, Wr)``).
    defocus_u, defocus_v
        ``rlnDefocusU``/``rlnDefocusV`` in Angstrom, positive for underfocus; float or tensor
        of batch shape ``B`` (e.g. ``(N,)``).
    defocus_angle
        ``rlnDefocusAngle`` in degrees, azimuth of the U axis from +x towards +y.
    voltage
        ``rlnVoltage`` in kV.
    cs
        ``rlnSphericalAberration`` in mm.
    amplitude_contrast
        ``rlnAmplitudeContrast`` (fraction, 0 <= Q0 < 1).
    phase_shift
        ``rlnPhaseShift`` in degrees (phase plate).
    bfactor
        ``rlnCtfBfactor`` in A^2 (positive damps high frequencies).
    scale
        ``rlnCtfScalefactor``.

    Returns
    -------
    torch.Tensor
        ``(*B, *F)`` real CTF values, dtype of ``kx``.
    """
    dtype = kx.dtype if kx.is_floating_point() else torch.float32
    device = kx.device
    params = [
        torch.as_tensor(p, dtype=torch.float64, device=device)
        for p in (
            defocus_u,
            defocus_v,
            defocus_angle,
            voltage,
            cs,
            amplitude_contrast,
            phase_shift,
            bfactor,
            scale,
        )
    ]
    common = torch.zeros((), dtype=torch.float64, device=device)
    for p in params:  # broadcast shape of all parameters (raises if incompatible)
        common = common + torch.zeros_like(p)
    batch = common.shape
    du, dv, ang, volt, cs_mm, q0, ps, bf, sc = (p.expand(batch) for p in params)
    # Constants in float64: K2 * u^4 and K1 * deltaf * u^2 are differences of large numbers.
    lam = wavelength_angstrom(volt)
    k1 = math.pi * lam
    k2 = math.pi / 2.0 * (cs_mm * 1e7) * lam**3
    k3 = torch.atan(q0 / torch.sqrt(1.0 - q0 * q0))
    k4 = -bf / 4.0
    k5 = torch.deg2rad(ps)
    extra = (1,) * max(kx.dim(), ky.dim())

    def per_particle(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(*t.shape, *extra)

    x = kx.to(torch.float64)
    y = ky.to(torch.float64)
    u2 = x * x + y * y
    theta = torch.atan2(y, x)
    avg = -(per_particle(du) + per_particle(dv)) / 2.0
    dev = -(per_particle(du) - per_particle(dv)) / 2.0
    deltaf = avg + dev * torch.cos(2.0 * (theta - per_particle(torch.deg2rad(ang))))
    arg = per_particle(k1) * deltaf * u2 + per_particle(k2) * u2 * u2
    arg = arg - per_particle(k5) - per_particle(k3)
    out = -torch.sin(arg) * torch.exp(per_particle(k4) * u2) * per_particle(sc)
    return out.to(dtype)


def ctf_2d(
    shape: Sequence[int],
    angpix: float,
    defocus_u: Param,
    defocus_v: Param,
    defocus_angle: Param,
    voltage: Param,
    cs: Param,
    amplitude_contrast: Param,
    phase_shift: Param = 0.0,
    bfactor: Param = 0.0,
    scale: Param = 1.0,
    rfft: bool = True,
    fftshift: bool = False,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """RELION's CTF on the Fourier grid of an ``(H, W)`` image.

    Parameters
    ----------
    shape
        Real-space image shape ``(H, W)``.
    angpix
        Pixel size in Angstrom.
    defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast, phase_shift, \
bfactor, scale
        Star-file units (A, A, deg, kV, mm, fraction, deg, A^2, -); floats or tensors of a
        common batch shape ``B`` such as ``(N,)``. See :func:`ctf_at_frequencies`.
    rfft
        ``True``: half grid ``(H, W // 2 + 1)``; ``False``: full grid ``(H, W)``.
    fftshift
        Put DC at index ``N // 2`` of the non-half axes (all axes when ``rfft=False``).
    device
        Defaults to the device of the first tensor parameter, else CPU.
    dtype
        Real dtype of the result.

    Returns
    -------
    torch.Tensor
        ``(*B, H, W // 2 + 1)`` (or ``(*B, H, W)``) CTF in the layout of
        :func:`cryopose.imaging.fft.rfftn_centred` (when ``fftshift=False``).
    """
    if device is None:
        for p in (defocus_u, defocus_v, defocus_angle, voltage, cs, amplitude_contrast):
            if isinstance(p, torch.Tensor):
                device = p.device
                break
    h, w = (int(s) for s in shape)
    if rfft:
        ky, kx = rfft_freq_grid((h, w), angpix=angpix, device=device, dtype=torch.float64)
        if fftshift:
            ky, kx = (torch.fft.fftshift(g, dim=0) for g in (ky, kx))
    else:
        fy = torch.fft.fftfreq(h, d=angpix, device=device, dtype=torch.float64)
        fx = torch.fft.fftfreq(w, d=angpix, device=device, dtype=torch.float64)
        if fftshift:
            fy, fx = torch.fft.fftshift(fy), torch.fft.fftshift(fx)
        ky, kx = torch.meshgrid(fy, fx, indexing="ij")
    out = ctf_at_frequencies(
        kx,
        ky,
        defocus_u,
        defocus_v,
        defocus_angle,
        voltage,
        cs,
        amplitude_contrast,
        phase_shift,
        bfactor,
        scale,
    )
    return out.to(dtype)


def _filter_real(images: torch.Tensor, filt: torch.Tensor) -> torch.Tensor:
    h, w = images.shape[-2:]
    if filt.shape[-2:] != (h, w // 2 + 1):
        raise ValueError(
            f"filter of shape {tuple(filt.shape)} does not fit images {tuple(images.shape)}: "
            f"expected (..., {h}, {w // 2 + 1}) (rfft layout, fftshift=False)"
        )
    # A real even filter is a convolution: no need to move the origin before the FFT.
    f = torch.fft.rfft2(images) * filt.to(images.dtype)
    out: torch.Tensor = torch.fft.irfft2(f, s=(h, w))
    return out


def apply_ctf(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Multiply images by a CTF in Fourier space.

    Parameters
    ----------
    images
        Real ``(..., H, W)``.
    ctf
        ``(..., H, W // 2 + 1)`` from :func:`ctf_2d` (rfft, not fftshifted), broadcastable
        against the images' batch shape.

    Returns
    -------
    torch.Tensor
        Real ``(..., H, W)`` images convolved with the CTF's point-spread function.
    """
    return _filter_real(images, ctf)


def phase_flip(images: torch.Tensor, ctf: torch.Tensor) -> torch.Tensor:
    """Flip the phases of images where the CTF is negative (RELION's ``ctf < 0 -> -1``).

    Parameters
    ----------
    images
        Real ``(..., H, W)``.
    ctf
        ``(..., H, W // 2 + 1)`` from :func:`ctf_2d` (rfft, not fftshifted).

    Returns
    -------
    torch.Tensor
        Real ``(..., H, W)`` phase-flipped images.
    """
    sign = torch.where(ctf < 0, -1.0, 1.0).to(images.dtype)
    return _filter_real(images, sign)
