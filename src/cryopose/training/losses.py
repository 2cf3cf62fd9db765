"""Pose classification loss: confidence-weighted cross-entropy on symmetric smoothed labels.

For particle ``i`` with grid log-probabilities ``log p_i`` (``log_softmax`` of the logits over
the ``M`` cells), the cells ``c_i1..c_i|G|`` of its ``|G|`` symmetry mates and smoothing
``eps``, the cross-entropy against the label of :func:`cryopose.models.rotation_labels` is::

    CE_i = -(1 - eps) / |G| * sum_g log p_i[c_ig] - eps / M * sum_k log p_i[k]

and the batch loss weights each particle by its confidence ``w_i``
(``rlnMaxValueProbDistribution``, 1 when the star file has none)::

    loss = sum_i w_i CE_i / sum_i w_i

The normalisation keeps the loss (and so the learning rate) independent of the scale of the
confidences; with equal weights it is the plain mean, i.e.
:func:`cryopose.models.label_cross_entropy`.

>>> import torch
>>> logits = torch.zeros(2, 4)  # uniform: CE = log 4 for any label
>>> idx = torch.tensor([[0], [3]])
>>> round(float(weighted_pose_loss(logits, idx, torch.tensor([1.0, 3.0]))), 4)
1.3863
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["per_particle_cross_entropy", "weighted_pose_loss"]


def per_particle_cross_entropy(
    logits: torch.Tensor, label_indices: torch.Tensor, smoothing: float = 0.0
) -> torch.Tensor:
    """Cross-entropy ``CE_i`` of each particle against its symmetric smoothed label.

    Parameters
    ----------
    logits
        ``(B, M)`` logits over the HEALPix SO(3) grid.
    label_indices
        ``(B, |G|)`` cells of the symmetry mates
        (:func:`cryopose.models.rotation_label_indices`).
    smoothing
        Label smoothing ``eps`` in ``[0, 1)``.

    Returns
    -------
    torch.Tensor
        ``(B,)`` cross-entropies in nats.
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label smoothing must lie in [0, 1), got {smoothing}")
    if logits.ndim != 2 or label_indices.ndim != 2 or logits.shape[0] != label_indices.shape[0]:
        raise ValueError(
            f"expected logits (B, M) and indices (B, G), got {tuple(logits.shape)} "
            f"and {tuple(label_indices.shape)}"
        )
    log_p = F.log_softmax(logits, dim=-1)
    loss = -(1.0 - smoothing) * log_p.gather(1, label_indices.to(logits.device)).mean(dim=1)
    if smoothing > 0:
        loss = loss - smoothing * log_p.mean(dim=1)
    return loss


def weighted_pose_loss(
    logits: torch.Tensor,
    label_indices: torch.Tensor,
    confidence: torch.Tensor,
    smoothing: float = 0.0,
) -> torch.Tensor:
    """Confidence-weighted mean cross-entropy ``sum_i w_i CE_i / sum_i w_i``.

    Parameters
    ----------
    logits
        ``(B, M)`` logits over the grid.
    label_indices
        ``(B, |G|)`` cells of the symmetry mates.
    confidence
        ``(B,)`` weights ``w_i >= 0`` (``rlnMaxValueProbDistribution``).
    smoothing
        Label smoothing ``eps`` in ``[0, 1)``.

    Returns
    -------
    torch.Tensor
        Scalar loss in nats; the plain mean when every weight is 0.
    """
    ce = per_particle_cross_entropy(logits, label_indices, smoothing)
    w = confidence.to(ce.dtype).to(ce.device).reshape(-1)
    if w.shape != ce.shape:
        raise ValueError(f"expected {ce.shape[0]} confidences, got {tuple(confidence.shape)}")
    total = w.sum()
    if float(total) <= 0:
        return ce.mean()
    return (w * ce).sum() / total
