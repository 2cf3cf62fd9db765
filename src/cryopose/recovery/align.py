"""Alignment of recovered orientations to the truth, and the orientation-recovery error E_OR.

Distances between orientations do not change when every quaternion is mapped by the same
``T`` in O(4) (``<T a, T b> = <a, b>``), so orientations recovered from distances are compared
with the truth after the best such ``T`` (Banjac, Donati, Defferrard):

    E_OR = min over T in O(4) of mean_i d_q(q_i, T q_hat_i),   d_q(a, b) = 2 acos |<a, b>|.

**How** :func:`align_o4` **finds T.** Both components of O(4) (det +1 and det -1) are searched
separately, each with the Procrustes solution constrained to that determinant:

1. Candidates from anchors: for each of ``restarts`` random sets of 4 points and each of the 8
   sign patterns of their quaternions (``q ~ -q``; the first sign is fixed since ``T`` and
   ``-T`` act alike), ``T`` is the orthogonal Procrustes solution mapping the 4 ``q_hat`` to
   the signed ``q``. With exact data one pattern gives ``T`` exactly.
2. The best 4 candidates by ``mean sin^2(d_q / 2)`` (on at most 5,000 random points) are
   refined on the same points by
   iteratively reweighted Procrustes (``steps`` iterations): signs ``s_i = sign <q_i, T q_hat_i>``,
   weights ``1 / |q_i - s_i T q_hat_i|``, then the weighted Procrustes solution. This is the
   majorise-minimise (Weiszfeld) scheme for the mean chordal distance, which is monotone in
   ``d_q``, so it minimises the mean geodesic error robustly to outliers; the iterate with
   the lowest mean ``d_q`` is kept, and it stops when that gains less than 1e-9 relative.
   The winner is refined on all points. This replaces gradient refinement: it needs no step size
   and reaches the exact ``T`` to rounding on exact data.

**Map frame.** Only part of O(4) has a physical meaning. In RELION's convention an image at
pose ``A`` is ``integral V(A^T x) dz``. If the map is rotated, ``V'(x) = V(B^T x)``, the
same image is produced by ``A' = A B^T``, since ``V'(A'^T x) = V(B^T B A^T x)``: a change of
map frame multiplies every pose **on the right** (as symmetry operators do). If the map is
mirrored through the xy plane, ``V'(x) = V(F x)`` with ``F = diag(1, 1, -1)``, the same image
is produced by ``A' = F A F``, since ``V'(A'^T x) = V(A^T F x)`` and ``F`` only flips the
integration variable z. :func:`align_so3` therefore fits

    R_true_i ~= P_i @ G,   P_i = F @ R_pred_i @ F if flip else R_pred_i,

meaning: the true map is the predicted map, mirrored by ``F`` if ``flip``, then rotated by
``G^T`` (``V_true(x) = V_pred(F G x)``). Both maps are checked by projection in
``tests/recovery/test_align.py``. In quaternions ``P @ G`` is ``p g`` (right multiplication)
and ``F A F`` is ``k a k`` with ``k = (0, 0, 0, 1)``: both lie in SO(4). The rest of O(4)
(left multiplication, i.e. rotating every image frame by the same 3D rotation, and
``q -> conj(q)``, i.e. ``A -> A^T``) keeps distances but is not a change of map frame, which
is why E_OR, defined over all of O(4), can be lower than the map-frame error.

>>> import torch
>>> from cryopose.geometry import matrix_to_quaternion, random_rotations
>>> g = torch.Generator().manual_seed(1)
>>> q = matrix_to_quaternion(random_rotations(50, g, dtype=torch.float64))
>>> T = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64)).Q
>>> T_back, err = align_o4(q, q @ T.T)
>>> err < 1e-9, bool(torch.allclose((T_back @ T).abs(), torch.eye(4, dtype=T.dtype), atol=1e-9))
(True, True)
"""

from __future__ import annotations

import math

import torch

from cryopose.errors import InputError
from cryopose.geometry.distance import geodesic_distance, quaternion_distance

__all__ = ["align_o4", "align_so3", "e_or"]

# Anchor candidates refined per determinant sign.
_KEEP = 4
# Floor of the IRLS residuals (chordal units) so exact fits keep finite weights.
_EPS = 1e-12
# Points used to score anchor candidates (all of them up to this many).
_SCORE_POINTS = 5000


def _procrustes(H: torch.Tensor, det_sign: float) -> torch.Tensor:
    """``argmax <T, H>_F`` over orthogonal ``T`` with ``det T = det_sign``.

    ``H`` is ``(..., k, k)``; with ``H = U S V^T`` the answer is ``U D V^T`` where ``D`` flips
    the smallest singular direction when ``det(U V^T)`` has the wrong sign.
    """
    U, _, Vh = torch.linalg.svd(H)
    d = det_sign * torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    D = torch.ones(H.shape[:-1], dtype=H.dtype, device=H.device)
    D[..., -1] = d
    T: torch.Tensor = (U * D[..., None, :]) @ Vh
    return T


def _check_quaternions(q_true: torch.Tensor, q_pred: torch.Tensor) -> None:
    if q_true.ndim != 2 or q_true.shape[1] != 4 or q_true.shape != q_pred.shape:
        raise InputError(
            None,
            f"quaternions of shapes {tuple(q_true.shape)} and {tuple(q_pred.shape)}; "
            "expected two (n, 4) arrays",
            "arguments q_true, q_pred",
        )
    if q_true.shape[0] < 4:
        raise InputError(
            None, f"need at least 4 orientations, got {q_true.shape[0]}", "argument q_true"
        )


def _unit64(q: torch.Tensor) -> torch.Tensor:
    q = q.to(torch.float64)
    norm: torch.Tensor = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return q / norm


def _anchor_candidates(
    q: torch.Tensor, p: torch.Tensor, restarts: int, det_sign: float, gen: torch.Generator
) -> torch.Tensor:
    """``(restarts * 8, 4, 4)`` Procrustes maps of 4 random anchors under all sign patterns."""
    n = q.shape[0]
    patterns = torch.tensor(
        [[1.0, a, b, c] for a in (1, -1) for b in (1, -1) for c in (1, -1)],
        dtype=q.dtype,
        device=q.device,
    )  # (8, 4)
    cands = []
    for _ in range(restarts):
        anchors = torch.randperm(n, generator=gen)[:4].to(q.device)
        qa, pa = q[anchors], p[anchors]  # (4, 4) rows are points
        # H = sum_a s_a q_a p_a^T for every pattern: (8, 4, 4).
        H = torch.einsum("sa,ai,aj->sij", patterns, qa, pa)
        cands.append(_procrustes(H, det_sign))
    return torch.cat(cands)


def _sin2_score(q: torch.Tensor, p: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """``(K,)`` mean ``sin^2(d_q / 2) = 1 - <q, T p>^2`` of candidates ``T`` ``(K, 4, 4)``."""
    dots = torch.einsum("ni,kij,nj->kn", q, T, p)
    return (1 - dots * dots).mean(dim=1)


def _mean_dq(q: torch.Tensor, p: torch.Tensor, T: torch.Tensor) -> float:
    return float(quaternion_distance(q, p @ T.T).mean())


def _irls(
    q: torch.Tensor, p: torch.Tensor, T: torch.Tensor, det_sign: float, steps: int
) -> tuple[torch.Tensor, float]:
    """Reweighted Procrustes from ``T``; returns the best iterate and its mean ``d_q``."""
    best_T, best = T, _mean_dq(q, p, T)
    for _ in range(steps):
        mapped = p @ T.T
        s = torch.where((q * mapped).sum(-1) < 0, -1.0, 1.0).to(q)
        chord = torch.linalg.vector_norm(q - s[:, None] * mapped, dim=-1)
        w = s / chord.clamp_min(_EPS)
        T = _procrustes((w[:, None] * q).T @ p, det_sign)
        err = _mean_dq(q, p, T)
        if err >= best * (1 - 1e-9):
            if err < best:
                best_T, best = T, err
            break
        best_T, best = T, err
    return best_T, best


def align_o4(
    q_true: torch.Tensor,
    q_pred: torch.Tensor,
    *,
    steps: int = 100,
    restarts: int = 8,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, float]:
    """Orthogonal ``T`` (4 x 4, det +1 or -1) minimising ``mean_i d_q(q_true_i, T q_pred_i)``.

    See the module docstring for the method (anchor Procrustes candidates on both components
    of O(4), then reweighted Procrustes refinement).

    Parameters
    ----------
    q_true, q_pred
        ``(n, 4)`` quaternions ``(w, x, y, z)`` (normalised first; signs arbitrary), n >= 4.
    steps
        Reweighted-Procrustes iterations per refined candidate.
    restarts
        Random sets of 4 anchors (8 sign patterns each) per determinant sign.
    generator
        CPU generator for the anchors; default seeded with 0 (deterministic).

    Returns
    -------
    T : torch.Tensor
        ``(4, 4)`` orthogonal matrix (dtype of ``q_pred``, its device) with
        ``q_true_i ~ +-T @ q_pred_i``, i.e. aligned quaternions are ``q_pred @ T.T``. Only
        defined up to sign (``-T`` aligns equally well).
    e_or_rad : float
        The mean ``d_q`` after alignment, in radians (E_OR).

    Raises
    ------
    InputError
        For shapes other than two equal ``(n, 4)`` with ``n >= 4``.
    """
    _check_quaternions(q_true, q_pred)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    q, p = _unit64(q_true), _unit64(q_pred.to(q_true.device))
    # Candidates are chosen and refined on a subsample; only the winner sees every point.
    sub = torch.randperm(q.shape[0], generator=gen)[:_SCORE_POINTS].to(q.device)
    qs, ps = q[sub], p[sub]
    best_T, best = torch.eye(4, dtype=q.dtype, device=q.device), math.inf
    for det_sign in (1.0, -1.0):
        cands = _anchor_candidates(q, p, restarts, det_sign, gen)
        scores = _sin2_score(qs, ps, cands)
        for k in torch.argsort(scores)[:_KEEP].tolist():
            T, err = _irls(qs, ps, cands[k], det_sign, steps)
            if err < best:
                best_T, best = T, err
    det_sign = float(torch.sign(torch.linalg.det(best_T)))
    if sub.shape[0] < q.shape[0]:
        best_T, best = _irls(q, p, best_T, det_sign, steps)
    return best_T.to(dtype=q_pred.dtype, device=q_pred.device), best


def e_or(
    q_true: torch.Tensor, q_pred: torch.Tensor, *, steps: int = 100, restarts: int = 8
) -> float:
    """Orientation-recovery error in degrees: mean ``d_q`` after the best O(4) alignment.

    Parameters
    ----------
    q_true, q_pred
        ``(n, 4)`` quaternions, as for :func:`align_o4`.
    steps, restarts
        As for :func:`align_o4`.

    Returns
    -------
    float
        E_OR in degrees.
    """
    return math.degrees(align_o4(q_true, q_pred, steps=steps, restarts=restarts)[1])


_FLIP = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def _project_so3(M: torch.Tensor) -> torch.Tensor:
    """Nearest rotation (Frobenius) to a ``(3, 3)`` matrix."""
    return _procrustes(M, 1.0)


def align_so3(
    R_true: torch.Tensor,
    R_pred: torch.Tensor,
    allow_reflection: bool = True,
    *,
    steps: int = 100,
) -> tuple[torch.Tensor, bool, float]:
    """Global rotation (and mirror) of the map frame that best aligns predicted poses.

    Finds the rotation ``G`` (and ``flip``) minimising the mean geodesic distance between
    ``R_true_i`` and ``P_i @ G``, where ``P_i = F @ R_pred_i @ F`` with
    ``F = diag(1, 1, -1)`` when ``flip`` and ``P_i = R_pred_i`` otherwise: the true map is the
    predicted map mirrored through the xy plane (if ``flip``) and rotated by ``G^T`` (module
    docstring). Initialised by the chordal mean (SVD of ``sum P_i^T R_true_i``, exact for
    exact data) and refined by reweighted projection onto SO(3) (Weiszfeld).

    Parameters
    ----------
    R_true, R_pred
        ``(n, 3, 3)`` rotation matrices in RELION's convention.
    allow_reflection
        Also try the mirrored map and keep whichever aligns better.
    steps
        Reweighting iterations.

    Returns
    -------
    G : torch.Tensor
        ``(3, 3)`` rotation (dtype and device of ``R_pred``).
    flip : bool
        Whether the mirrored map was the better fit.
    mean_error_deg : float
        Mean geodesic distance after alignment, in degrees.

    Raises
    ------
    InputError
        For shapes other than two equal ``(n, 3, 3)`` with ``n >= 1``.
    """
    if R_true.ndim != 3 or R_true.shape[1:] != (3, 3) or R_true.shape != R_pred.shape:
        raise InputError(
            None,
            f"rotations of shapes {tuple(R_true.shape)} and {tuple(R_pred.shape)}; "
            "expected two (n, 3, 3) arrays",
            "arguments R_true, R_pred",
        )
    if R_true.shape[0] == 0:
        raise InputError(None, "no rotations; expected at least one", "argument R_true")
    R = R_true.to(torch.float64)
    F = _FLIP.to(R.device)
    best: tuple[torch.Tensor, bool, float] = (torch.eye(3, dtype=R.dtype), False, math.inf)
    for flip in (False, True) if allow_reflection else (False,):
        P = R_pred.to(device=R.device, dtype=torch.float64)
        if flip:
            P = F @ P @ F
        M = P.transpose(-1, -2) @ R  # each M_i would align pair i exactly
        G = _project_so3(M.sum(0))
        G_best, err_best = G, float(geodesic_distance(R, P @ G).mean())
        for _ in range(steps):
            chord = torch.linalg.matrix_norm(P @ G - R)
            G = _project_so3((M / chord.clamp_min(_EPS)[:, None, None]).sum(0))
            err = float(geodesic_distance(R, P @ G).mean())
            if err >= err_best - 1e-15:
                break
            G_best, err_best = G, err
        if math.degrees(err_best) < best[2]:
            best = (G_best, flip, math.degrees(err_best))
    G, flip, err = best
    return G.to(dtype=R_pred.dtype, device=R_pred.device), flip, err
