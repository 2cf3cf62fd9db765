"""Image2Sphere pose network: probabilities of particle poses over a HEALPix SO(3) grid.

The architecture of Klee et al. (ICLR 2023), the CESPED baseline, written in RELION's rotation
convention (a particle image at pose ``A`` is the projection of the volume rotated by ``A``):

1. a 2D encoder (:mod:`cryopose.models.encoders`) turns the image into a feature map;
2. the map is lifted onto the upper hemisphere by orthographic projection: the feature at the
   unit vector ``u`` (``u_z > 0``) is the map sampled at image coordinates ``(x, y) = (u_x, u_y)``
   (x along columns, y along rows, the unit disc inscribed in the image);
3. that sphere signal ``f`` is expanded in spherical harmonics up to ``lmax`` by quadrature;
4. an S2 convolution with a learned filter of global support (values ``W_j`` at the HEALPix
   directions ``v_j``) gives the SO(3) signal ``g(A) = sum_j W_j f(A v_j)``, computed in Fourier
   space as ``G_l = c_l w_l^T`` with ``w_l = sum_j W_j Y_l(v_j)``;
5. a pointwise ReLU on an SO(3) grid, then an SO(3) convolution with a local filter (values
   ``W_j`` at the rotations ``R_j`` within a radius of the identity):
   ``h(A) = sum_j W_j g(A R_j^T)``, i.e. ``H_l = G_l sum_j W_j D_l(R_j)``;
6. ``h`` evaluated at every rotation of the output HEALPix grid gives the logits.

Equivariance: rotating the image in-plane by ``Q`` (about the optical axis z) rotates the
hemisphere signal (``f'(u) = f(Q^T u)``), hence ``g'(A) = g(Q^T A)`` and ``h'(A) = h(Q^T A)``:
the logit of pose ``Q A`` for the rotated image is the logit of ``A`` for the original, which is
exactly how the true pose moves (the projection at ``Q A`` is the image rotated by ``Q``). With
``torch.rot90`` (``Q`` = RELION's ``Rz(90 deg)``, ``[[0, 1, 0], [-1, 0, 0], [0, 0, 1]]``) every
step after the encoder is exact up to float rounding: the hemisphere grid, the activation grid
and the output grid (orders >= 1) are invariant under ``Q``. The encoder is a plain CNN; with
``rotation_averaged_encoder=True`` it is averaged over the four rotations and the whole network
is exactly rot90-equivariant. Images rotate about the array centre ``(N - 1) / 2``; RELION's
origin ``N // 2`` is half a pixel away for even boxes, which the encoder absorbs.

>>> import torch
>>> net = Image2Sphere(Image2SphereConfig(image_size=32, encoder_width=4, lmax=2,
...                                       output_order=1))
>>> net(torch.randn(2, 1, 32, 32)).shape
torch.Size([2, 576])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cryopose.errors import InputError
from cryopose.geometry.euler import euler_to_matrix_rad
from cryopose.geometry.healpix import (
    grid_neighbours,
    grid_size,
    nearest_grid_index,
    so3_healpix_angles,
)
from cryopose.geometry.symmetry import symmetry_group
from cryopose.models.encoders import EncoderKind, build_encoder, encoder_channels
from cryopose.models.so3 import (
    SO3Grid,
    flat_wigner,
    hemisphere_points,
    s2_healpix_points,
    so3_local_rotations,
    spherical_harmonics,
)

__all__ = ["Image2Sphere", "Image2SphereConfig", "PosePrediction", "poses_from_logits"]


@dataclass(frozen=True)
class Image2SphereConfig:
    """Hyper-parameters of :class:`Image2Sphere` (defaults: the CPU configuration).

    Attributes
    ----------
    in_channels
        Image channels.
    image_size
        Edge of the square input images in pixels.
    encoder
        ``"unet"`` (small U-Net, features at 1/2 resolution) or ``"resnet"`` (1/4).
    encoder_width
        Base width of the encoder.
    rotation_averaged_encoder
        Average the encoder over the four 90 degree image rotations (exact rot90
        equivariance of the whole network, 4x encoder cost).
    sphere_features
        Channels of the hemisphere signal (a 1x1 convolution maps the encoder's channels).
    hemisphere_order
        HEALPix order of the hemisphere sampling grid (order 3: 368 points).
    lmax
        Largest harmonic degree of the S2 and SO(3) signals.
    s2_kernel_order
        HEALPix order of the S2 filter's directions (global support; order 1: 48).
    s2_features
        Channels of the SO(3) signal after the S2 convolution.
    activation_order
        HEALPix SO(3) grid order on which the ReLU between the convolutions is applied.
    so3_kernel_radius_deg
        Radius of the local SO(3) filter's support, degrees.
    so3_kernel_order
        SO(3) grid order the local filter's rotations are taken from (order 3, 22.5 deg: 97).
    output_order
        HEALPix SO(3) grid order of the logits (3: 36,864 poses; 4: 294,912).
    """

    in_channels: int = 1
    image_size: int = 64
    encoder: EncoderKind = "unet"
    encoder_width: int = 16
    rotation_averaged_encoder: bool = False
    sphere_features: int = 16
    hemisphere_order: int = 3
    lmax: int = 6
    s2_kernel_order: int = 1
    s2_features: int = 16
    activation_order: int = 2
    so3_kernel_radius_deg: float = 22.5
    so3_kernel_order: int = 3
    output_order: int = 3

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (to save next to a checkpoint)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Image2SphereConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(
                None, f"unknown Image2Sphere config keys {unknown}; expected {sorted(known)}"
            )
        return cls(**values)


@dataclass
class PosePrediction:
    """Poses predicted for a batch of images (tensors on the images' device).

    Attributes
    ----------
    index
        ``(B,)`` int64 grid index of the most probable cell.
    rotation
        ``(B, 3, 3)`` float64 RELION matrix of that cell.
    probability
        ``(B,)`` its probability.
    top_k_indices, top_k_probabilities
        ``(B, k)`` the k most probable cells, most probable first.
    averaged_rotation
        ``(B, 3, 3)`` float64 probability-weighted mean of the top-1 cell, its grid
        neighbours and those of its symmetry copies (each cell replaced by its symmetry mate
        nearest to the top-1 pose), projected onto SO(3) by SVD.
    neighbourhood_probability
        ``(B,)`` total probability of the cells in that average (a confidence).
    """

    index: torch.Tensor
    rotation: torch.Tensor
    probability: torch.Tensor
    top_k_indices: torch.Tensor
    top_k_probabilities: torch.Tensor
    averaged_rotation: torch.Tensor
    neighbourhood_probability: torch.Tensor


class HemisphereProjector(nn.Module):
    """Feature map -> spherical-harmonic coefficients of its orthographic lift to the hemisphere.

    Parameters
    ----------
    in_channels
        Channels of the feature map.
    features
        Channels of the sphere signal.
    order
        HEALPix order of the hemisphere grid.
    lmax
        Largest degree.
    """

    sample_grid: torch.Tensor
    quadrature: torch.Tensor

    def __init__(self, in_channels: int, features: int, order: int, lmax: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(in_channels, features, 1)
        points = hemisphere_points(order)  # (P, 3)
        # grid_sample's (x, y) are (column, row) coordinates in [-1, 1]: the unit disc.
        grid = points[:, :2].to(torch.float32)[None, None]  # (1, 1, P, 2)
        self.register_buffer("sample_grid", grid, persistent=False)
        # Quadrature over the whole sphere with equal-area weights; the lower hemisphere is 0.
        weight = 4 * math.pi / (12 * 4**order)
        Y = spherical_harmonics(points, lmax) * weight  # (P, S)
        self.register_buffer("quadrature", Y.to(torch.float32), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, h, w)`` features to ``(B, features, (lmax+1)**2)`` coefficients."""
        x = self.reduce(features)
        grid = self.sample_grid.expand(x.shape[0], -1, -1, -1)
        samples = F.grid_sample(x, grid, mode="bilinear", align_corners=False)  # (B, F, 1, P)
        return samples[:, :, 0] @ self.quadrature


class S2Convolution(nn.Module):
    """S2 -> SO(3) convolution with a filter of global support.

    ``g_o(A) = sum_i sum_j W[i, o, j] f_i(A v_j) / sqrt(F_in K)`` over the ``K`` HEALPix
    directions ``v_j`` (band-limited to ``lmax``).

    Parameters
    ----------
    in_features, out_features
        Channels.
    lmax
        Largest degree.
    kernel_order
        HEALPix order of the filter directions.
    """

    kernel_harmonics: torch.Tensor

    def __init__(self, in_features: int, out_features: int, lmax: int, kernel_order: int) -> None:
        super().__init__()
        self.lmax = lmax
        points = s2_healpix_points(kernel_order)
        self.weight = nn.Parameter(torch.randn(in_features, out_features, len(points)))
        scale = 1 / math.sqrt(in_features * len(points))
        Y = spherical_harmonics(points, lmax) * scale
        self.register_buffer("kernel_harmonics", Y.to(torch.float32), persistent=False)

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Map ``(B, F_in, (lmax+1)**2)`` sphere coefficients to ``(B, F_out, C)`` SO(3) ones."""
        w = self.weight @ self.kernel_harmonics  # (F_in, F_out, S)
        parts = []
        for ell in range(self.lmax + 1):
            s = slice(ell * ell, (ell + 1) ** 2)
            # G_l[m, n] = sum_i c_l[i, m] w_l[i, o, n]
            block = torch.einsum("bim,ion->bomn", coefficients[..., s], w[..., s])
            parts.append(block.flatten(-2))
        return torch.cat(parts, dim=-1)


class SO3Convolution(nn.Module):
    """SO(3) -> SO(3) convolution with a filter supported near the identity.

    ``h_o(A) = sum_i sum_j W[i, o, j] g_i(A R_j^T) / sqrt(F_in K)`` over the ``K`` rotations
    ``R_j`` of :func:`cryopose.models.so3.so3_local_rotations`.

    Parameters
    ----------
    in_features, out_features
        Channels.
    lmax
        Largest degree.
    radius_deg, kernel_order
        Support of the filter (see :func:`~cryopose.models.so3.so3_local_rotations`).
    """

    kernel_wigner: torch.Tensor

    def __init__(
        self, in_features: int, out_features: int, lmax: int, radius_deg: float, kernel_order: int
    ) -> None:
        super().__init__()
        self.lmax = lmax
        rotations = so3_local_rotations(radius_deg, kernel_order)
        self.weight = nn.Parameter(torch.randn(in_features, out_features, len(rotations)))
        scale = 1 / math.sqrt(in_features * len(rotations))
        D = flat_wigner(rotations, lmax) * scale
        self.register_buffer("kernel_wigner", D.to(torch.float32), persistent=False)

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Map ``(B, F_in, C)`` flat coefficients to ``(B, F_out, C)``."""
        kernel = self.weight @ self.kernel_wigner  # (F_in, F_out, C)
        parts = []
        start = 0
        for ell in range(self.lmax + 1):
            d = 2 * ell + 1
            s = slice(start, start + d * d)
            start += d * d
            G = coefficients[..., s].reshape(*coefficients.shape[:-1], d, d)
            K = kernel[..., s].reshape(*kernel.shape[:-1], d, d)
            parts.append(torch.einsum("bimk,iokn->bomn", G, K).flatten(-2))
        return torch.cat(parts, dim=-1)


class SO3Activation(nn.Module):
    """Pointwise ReLU of SO(3) signals, applied on a HEALPix SO(3) grid and projected back."""

    def __init__(self, order: int, lmax: int) -> None:
        super().__init__()
        self.grid = SO3Grid(order, lmax)

    def forward(self, coefficients: torch.Tensor) -> torch.Tensor:
        """Map ``(..., C)`` coefficients to those of ``relu(h)``."""
        return self.grid.from_grid(F.relu(self.grid.to_grid(coefficients)))


class Image2Sphere(nn.Module):
    """Image2Sphere pose network (see the module docstring for the architecture).

    Parameters
    ----------
    config
        Hyper-parameters.
    """

    def __init__(self, config: Image2SphereConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else Image2SphereConfig()
        self.config = cfg
        self.encoder = build_encoder(
            cfg.encoder, cfg.in_channels, cfg.encoder_width, cfg.rotation_averaged_encoder
        )
        self.projector = HemisphereProjector(
            encoder_channels(self.encoder), cfg.sphere_features, cfg.hemisphere_order, cfg.lmax
        )
        self.s2_conv = S2Convolution(
            cfg.sphere_features, cfg.s2_features, cfg.lmax, cfg.s2_kernel_order
        )
        self.activation = SO3Activation(cfg.activation_order, cfg.lmax)
        self.so3_conv = SO3Convolution(
            cfg.s2_features, 1, cfg.lmax, cfg.so3_kernel_radius_deg, cfg.so3_kernel_order
        )
        self.output_grid = SO3Grid(cfg.output_order, cfg.lmax)

    def _check_images(self, images: torch.Tensor) -> None:
        cfg = self.config
        expected = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"expected images of shape (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                f"got {tuple(images.shape)}"
            )

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Return the encoder feature maps ``(B, F, h, w)`` of ``(B, C, N, N)`` images."""
        self._check_images(images)
        out: torch.Tensor = self.encoder(images)
        return out

    def so3_coefficients(self, features: torch.Tensor) -> torch.Tensor:
        """Flat Wigner coefficients ``(B, C)`` of the output signal ``h`` from feature maps."""
        g = self.s2_conv(self.projector(features))
        h: torch.Tensor = self.so3_conv(self.activation(g))
        return h[:, 0]

    def head(self, features: torch.Tensor, order: int | None = None) -> torch.Tensor:
        """Logits ``(B, M)`` from encoder feature maps (everything after the encoder).

        Parameters
        ----------
        features
            ``(B, F, h, w)`` feature maps, as :meth:`encode` returns.
        order
            Output grid order; ``None`` for ``config.output_order``.
        """
        return self._evaluate(self.so3_coefficients(features), order)

    def _evaluate(self, coefficients: torch.Tensor, order: int | None) -> torch.Tensor:
        if order is None or order == self.config.output_order:
            return self.output_grid.to_grid(coefficients)
        grid = SO3Grid(order, self.config.lmax, dtype=coefficients.dtype)
        return grid.to(coefficients.device).to_grid(coefficients)

    def forward(self, images: torch.Tensor, order: int | None = None) -> torch.Tensor:
        """Logits over the HEALPix SO(3) grid.

        Parameters
        ----------
        images
            ``(B, in_channels, image_size, image_size)`` particle images.
        order
            Output grid order; ``None`` for ``config.output_order``. The signal is continuous,
            so a network trained at one order can be evaluated at another.

        Returns
        -------
        torch.Tensor
            ``(B, M)`` logits, ``M = grid_size(order)``; column ``k`` is the pose
            ``so3_healpix_grid(order)[k]`` (index ``psi_index * npix + pixel``).
        """
        return self.head(self.encode(images), order)

    @torch.no_grad()
    def predict(
        self,
        images: torch.Tensor,
        top_k: int = 5,
        symmetry: str = "C1",
        order: int | None = None,
    ) -> PosePrediction:
        """Most probable poses, top-k cells and the neighbour-averaged pose.

        Parameters
        ----------
        images
            ``(B, in_channels, image_size, image_size)`` particle images.
        top_k
            Number of most probable cells to return.
        symmetry
            Point group of the map: the average gathers the top-1 cell's neighbours and
            those of its symmetry copies (``nearest cell of R_top1 @ g``), each cell moved
            to its mate ``C @ g`` nearest to the top-1 pose.
        order
            Output grid order; ``None`` for ``config.output_order``.

        Returns
        -------
        PosePrediction
            See :class:`PosePrediction` and :func:`poses_from_logits`.
        """
        order = self.config.output_order if order is None else order
        return poses_from_logits(self.forward(images, order), order, top_k, symmetry)


def poses_from_logits(
    logits: torch.Tensor, order: int, top_k: int = 5, symmetry: str = "C1"
) -> PosePrediction:
    """Top-1, top-k and neighbour-averaged poses from logits over a HEALPix SO(3) grid.

    Parameters
    ----------
    logits
        ``(B, M)`` logits in grid order (``M = grid_size(order)``), e.g. from
        :meth:`Image2Sphere.forward`.
    order
        Grid order of the logits.
    top_k
        Number of most probable cells to return.
    symmetry
        Point group of the map: the average gathers the top-1 cell's neighbours and those of
        its symmetry copies (the cells nearest to ``R_top1 @ g``), each cell ``C`` replaced by
        its mate ``C @ g`` nearest to the top-1 pose, weighted by its probability.

    Returns
    -------
    PosePrediction
        See :class:`PosePrediction`; probabilities are float64.
    """
    if logits.ndim != 2 or logits.shape[1] != grid_size(order):
        raise ValueError(
            f"expected logits of shape (B, {grid_size(order)}) for order {order}, "
            f"got {tuple(logits.shape)}"
        )
    if not 1 <= top_k <= grid_size(order):
        raise ValueError(f"top_k must lie in [1, {grid_size(order)}], got {top_k}")
    probs = torch.softmax(logits.detach().to(torch.float64), dim=-1)
    top = probs.topk(top_k, dim=-1)
    index = top.indices[:, 0]
    rotation = _grid_rotations(index, order)
    averaged, mass = _neighbour_average(probs, rotation, order, symmetry)
    return PosePrediction(
        index=index,
        rotation=rotation,
        probability=top.values[:, 0],
        top_k_indices=top.indices,
        top_k_probabilities=top.values,
        averaged_rotation=averaged,
        neighbourhood_probability=mass,
    )


def _grid_rotations(index: torch.Tensor, order: int) -> torch.Tensor:
    """``(..., 3, 3)`` float64 grid matrices of ``(...)`` indices, on index's device."""
    angles = so3_healpix_angles(order).to(index.device)[index]
    return euler_to_matrix_rad(angles)


def _neighbour_average(
    probs: torch.Tensor, top1: torch.Tensor, order: int, symmetry: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Probability-weighted SVD mean around the top-1 pose, over its symmetry copies.

    Returns the ``(B, 3, 3)`` mean rotation and the ``(B,)`` probability mass averaged.
    """
    group = symmetry_group(symmetry).to(top1.device)  # (G, 3, 3) float64
    copies = nearest_grid_index(top1[:, None] @ group[None], order)  # (B, G)
    cells = grid_neighbours(copies, order).flatten(1)  # (B, G * 27)
    # Count each cell once: neighbour lists are padded with the centre, and the
    # neighbourhoods of symmetry copies can overlap on coarse grids.
    cells, _ = cells.sort(dim=1)
    first = torch.ones_like(cells, dtype=torch.bool)
    first[:, 1:] = cells[:, 1:] != cells[:, :-1]
    weights = probs.gather(1, cells) * first
    C = _grid_rotations(cells, order)  # (B, N, 3, 3)
    # Mate C g nearest to the top-1 A maximises trace(A^T C g) = <A^T C, g^T> (Frobenius).
    P = (top1.transpose(-1, -2)[:, None] @ C).flatten(-2)  # (B, N, 9)
    best = (P @ group.transpose(-1, -2).flatten(-2).T).argmax(dim=-1)  # (B, N)
    aligned = C @ group[best]
    mass = weights.sum(dim=1)
    mean = (weights[..., None, None] * aligned).sum(dim=1) / mass[:, None, None]
    return _project_to_so3(mean), mass


def _project_to_so3(M: torch.Tensor) -> torch.Tensor:
    """Nearest rotation (Frobenius) to each ``(..., 3, 3)`` matrix, by SVD."""
    U, _, Vh = torch.linalg.svd(M)
    # Flip the last singular direction where U Vh would be a reflection.
    fix = torch.ones_like(M[..., 0])
    fix[..., -1] = torch.linalg.det(U @ Vh)
    rotation: torch.Tensor = U @ (fix[..., None] * Vh)
    return rotation
