"""Images and volumes in Fourier space: CTF, projection, shifts, filters, masks, resampling.

Pure torch functions on tensors, batched over leading dimensions; the device follows the inputs.
Images are ``(..., H, W)`` and volumes ``(..., D, H, W)`` with the real-space origin at N // 2.
Fourier-space arrays use the ``rfftn_centred`` layout (origin moved to index 0, not fftshifted).
"""

from cryopose.imaging.ctf import (
    apply_ctf,
    ctf_2d,
    ctf_at_frequencies,
    phase_flip,
    wavelength_angstrom,
)
from cryopose.imaging.fft import (
    fftshift_rfft,
    ifftshift_rfft,
    irfftn_centred,
    rfft_freq_grid,
    rfft_radial_freq,
    rfft_shape,
    rfftn_centred,
)
from cryopose.imaging.filters import (
    apply_fourier_filter,
    gaussian_filter,
    lowpass,
    lowpass_filter_rfft,
)
from cryopose.imaging.masks import circular_mask, radial_distance, soft_edge, spherical_mask
from cryopose.imaging.normalise import background_stats, normalise_background
from cryopose.imaging.projection import Projector, project
from cryopose.imaging.resample import (
    fourier_crop,
    fourier_pad,
    fourier_resize,
    rescale,
    window_centred,
)
from cryopose.imaging.shift import (
    fourier_shift_rfft,
    origin_to_image_shift,
    phase_ramp_rfft,
    shift_images,
)

__all__ = [
    "Projector",
    "apply_ctf",
    "apply_fourier_filter",
    "background_stats",
    "circular_mask",
    "ctf_2d",
    "ctf_at_frequencies",
    "fftshift_rfft",
    "fourier_crop",
    "fourier_pad",
    "fourier_resize",
    "fourier_shift_rfft",
    "gaussian_filter",
    "ifftshift_rfft",
    "irfftn_centred",
    "lowpass",
    "lowpass_filter_rfft",
    "normalise_background",
    "origin_to_image_shift",
    "phase_flip",
    "phase_ramp_rfft",
    "project",
    "radial_distance",
    "rescale",
    "rfft_freq_grid",
    "rfft_radial_freq",
    "rfft_shape",
    "rfftn_centred",
    "shift_images",
    "soft_edge",
    "spherical_mask",
    "wavelength_angstrom",
    "window_centred",
]
