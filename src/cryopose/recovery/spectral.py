"""Near-neighbour pair graphs and a spectral starting point for orientation recovery.

Learned distances are informative only when short: a Siamese estimate of a 20 deg distance
ranks neighbours well, while large estimates saturate and scatter. Recovery from a random
pair graph spends most of its pairs on those uninformative large distances, and from a
random start the non-convex objective (:mod:`cryopose.recovery.recover`) then stalls. This
module builds the two things that make recovery from estimated distances work:

**Near-neighbour graph** (:func:`nearest_pairs`). For every node the ``k`` partners with the
smallest estimated distance among ``candidates`` (all other nodes by default), queried in
blocks through a distance callable, so memory is ``O(block * candidates + n k)``.

**Spectral start** (:func:`spectral_orientations`). On SO(3) the eigenfunctions of any
zonal kernel ``K(d(R_i, R_j))`` are the Wigner D functions; a smooth bump kernel has its
largest eigenvalue on the constants (``l = 0``) and the next, 9-fold, on ``l = 1``, whose
eigenfunctions are exactly the 9 entries of the rotation matrix ``R`` (equivalently the
traceless part of ``q q^T``, since ``<q_i, q_j>^2 = (1 + tr(R_i^T R_j)) / 4``). So on the
near-neighbour graph with Gaussian weights ``exp(-(d_hat / sigma)^2)`` (``sigma`` the median
edge distance), the eigenvectors 2 to 10 of the normalised affinity ``D^-1/2 W D^-1/2``
span, up to noise, the 9 coordinates ``vec(R_i)``: ``Y ~= vec(R) O`` for an unknown
orthogonal ``9 x 9`` matrix ``O`` (scaled so that ``Y^T Y = n / 3``, the second moment of
``vec(R)`` for uniform rotations). ``O`` is found by alternating projection: rows of ``Y O^T``
reshaped to ``3 x 3`` are projected onto SO(3) (SVD), then ``O`` is the orthogonal
Procrustes solution, from several random orthogonal starts, keeping the lowest residual.
The orthogonal maps of R^9 that keep SO(3) in place are ``R -> A R B`` and ``R -> A R^T B``,
which are exactly the O(4) ambiguity of distances, so nothing else is left undetermined.

This assumes orientations that cover SO(3) roughly uniformly and a C1 particle (under a
point group the ``l = 1`` functions are not invariant); the result is a start for
:func:`~cryopose.recovery.recover_orientations`, which refines it on the same graph.

>>> import torch
>>> from cryopose.geometry import matrix_to_quaternion, quaternion_distance, random_rotations
>>> from cryopose.recovery import e_or
>>> q = matrix_to_quaternion(random_rotations(400, torch.Generator().manual_seed(0)))
>>> pairs, d = nearest_pairs(400, lambda i, j: quaternion_distance(q[i], q[j]), k=12)
>>> q0 = spectral_orientations(400, pairs, d)
>>> 5.0 < e_or(q, q0) < 25.0  # a coarse start on 400 points (measured 19.7 deg)
True
>>> e_or(q, recover_from_near_pairs(400, pairs, d, progress=False).quaternions) < 0.5
True
"""

from __future__ import annotations

import math

import torch

from cryopose.errors import InputError
from cryopose.geometry.rotations import matrix_to_quaternion
from cryopose.recovery.recover import (
    DistanceFn,
    RecoveryResult,
    _abs_cos,
    _distance,
    _unit,
    recover_orientations,
)

__all__ = ["nearest_pairs", "recover_from_near_pairs", "spectral_orientations"]

# Most pairs queried from the distance callable at once.
_QUERY_BLOCK = 1 << 18
# Nodes used to fit the 9 x 9 orthogonal map (the fit is then applied to all).
_FIT_NODES = 3000


def nearest_pairs(
    n: int,
    distance_fn: DistanceFn,
    k: int,
    *,
    candidates: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Near-neighbour pair graph: every node with its ``k`` closest partners by estimate.

    Parameters
    ----------
    n
        Number of nodes.
    distance_fn
        ``fn(i (B,) int64, j (B,) int64) -> (B,)`` estimated distances in radians.
    k
        Partners kept per node (``1 <= k < n``).
    candidates
        Partners scored per node: all other nodes when ``None`` or ``>= n - 1`` (cost
        ``n^2`` distance evaluations), else that many random ones (cost ``n * candidates``).
    generator
        CPU generator for the random candidates.
    device
        Device of the index tensors given to ``distance_fn`` and of the result.

    Returns
    -------
    pairs : torch.Tensor
        ``(n * k, 2)`` int64 ``(i, j)``, rows grouped by ``i``, ``i != j``.
    distances : torch.Tensor
        ``(n * k,)`` their estimated distances.
    """
    if n < 2 or not 1 <= k < n:
        raise InputError(None, f"need n >= 2 and 1 <= k < n, got n={n}, k={k}", "arguments")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    m = n - 1 if candidates is None or candidates >= n - 1 else max(candidates, k)
    block = max(1, _QUERY_BLOCK // m)
    pairs, dists = [], []
    for start in range(0, n, block):
        nodes = torch.arange(start, min(start + block, n))
        b = nodes.shape[0]
        if m == n - 1:
            # Offsets 1..n-1 enumerate every other node exactly once.
            offsets = torch.arange(1, n).expand(b, m)
        else:
            offsets = torch.randint(1, n, (b, m), generator=generator)
        partners = (nodes[:, None] + offsets) % n
        i, j = nodes[:, None].expand(b, m).reshape(-1).to(dev), partners.reshape(-1).to(dev)
        with torch.no_grad():
            d = distance_fn(i, j).reshape(b, m)
        best, pick = d.topk(k, dim=1, largest=False)
        pairs.append(torch.stack([i.reshape(b, m)[:, :k], partners.to(dev).gather(1, pick)], -1))
        dists.append(best)
    return torch.cat(pairs).reshape(-1, 2), torch.cat(dists).reshape(-1)


def _project_so3(M: torch.Tensor) -> torch.Tensor:
    """Nearest rotations ``(..., 3, 3)`` to ``(..., 3, 3)`` matrices (Frobenius norm)."""
    U, _, Vh = torch.linalg.svd(M)
    det = torch.linalg.det(U @ Vh)
    S = torch.ones_like(M[..., 0])
    S[..., 2] = det
    out: torch.Tensor = (U * S[..., None, :]) @ Vh
    return out


def _top_eigenvectors(
    indices: torch.Tensor,
    values: torch.Tensor,
    n: int,
    count: int,
    iterations: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """``(n, count)`` leading orthonormal eigenvectors of a sparse symmetric PSD-shifted matrix.

    Subspace iteration with a block of ``count + 6`` vectors on ``(I + A) / 2`` (eigenvalues
    of the normalised affinity lie in ``[-1, 1]``; the shift makes them non-negative and keeps
    the order), then Rayleigh-Ritz.
    """
    rows, cols = indices

    def apply(X: torch.Tensor) -> torch.Tensor:  # (I + A) X / 2, A given by its entries
        return 0.5 * X.index_add(0, rows, values[:, None] * X[cols])

    width = min(n, count + 6)
    X = torch.linalg.qr(torch.randn(n, width, generator=generator, dtype=values.dtype)).Q
    for _ in range(iterations):
        X = torch.linalg.qr(apply(X)).Q
    H = X.T @ apply(X)
    evals, evecs = torch.linalg.eigh(0.5 * (H + H.T))
    order = torch.argsort(evals, descending=True)[:count]
    out: torch.Tensor = X @ evecs[:, order]
    return out


def _fit_rotations(
    Y: torch.Tensor, starts: int, iterations: int, gen: torch.Generator
) -> torch.Tensor:
    """``(9, 9)`` orthogonal ``W`` making the rows of ``(m, 9)`` ``Y W^T`` closest to rotations.

    Alternating projection from ``starts`` random orthogonal ``W`` at once on 100 of the rows
    (most starts end in local minima; measured, 1 in 5 to 10 reach the global one), then the
    best is polished on all of ``Y``.
    """

    def cost(W: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        Z = (Y @ W.transpose(-1, -2)).reshape(*W.shape[:-2], -1, 3, 3)
        return (Z - _project_so3(Z)).square().sum(dim=(-3, -2, -1))

    def step(W: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        Z = (Y @ W.transpose(-1, -2)).reshape(*W.shape[:-2], -1, 3, 3)
        R = _project_so3(Z).reshape(*W.shape[:-2], -1, 9)
        U, _, Vh = torch.linalg.svd(R.transpose(-1, -2) @ Y)  # argmax tr(O Y^T R)
        out: torch.Tensor = U @ Vh
        return out

    sub = Y[: min(Y.shape[0], 100)]
    W = torch.linalg.qr(torch.randn(starts, 9, 9, generator=gen, dtype=Y.dtype)).Q
    for _ in range(iterations):
        W = step(W, sub)
    best: torch.Tensor = W[int(cost(W, sub).argmin())]
    for _ in range(iterations):
        best = step(best, Y)
    return best


def spectral_orientations(
    n: int,
    pairs: torch.Tensor,
    distances: torch.Tensor,
    *,
    bandwidth: float | None = None,
    iterations: int = 300,
    starts: int = 64,
    seed: int = 0,
) -> torch.Tensor:
    """Orientations from the ``l = 1`` eigenvectors of a near-neighbour affinity graph.

    Parameters
    ----------
    n
        Number of nodes.
    pairs
        ``(P, 2)`` int64 pairs ``(i, j)``, preferably near neighbours (:func:`nearest_pairs`);
        the graph must be connected.
    distances
        ``(P,)`` their (estimated) distances in radians.
    bandwidth
        ``sigma`` of the weights ``exp(-(d / sigma)^2)`` in radians; ``None``: the median of
        ``distances``.
    iterations
        Subspace iterations of the eigen-solver.
    starts
        Random orthogonal starts of the fit of ``O`` (module docstring).
    seed
        Seed of the random draws.

    Returns
    -------
    torch.Tensor
        ``(n, 4)`` float64 unit quaternions ``(w, x, y, z)``, determined up to a global O(4)
        transform (as any orientations from distances).
    """
    if pairs.ndim != 2 or pairs.shape[1] != 2 or distances.shape != (pairs.shape[0],):
        raise InputError(
            None,
            f"pairs {tuple(pairs.shape)} and distances {tuple(distances.shape)}; expected "
            "(P, 2) and (P,)",
            "arguments",
        )
    if n < 10:
        raise InputError(None, f"need at least 10 orientations, got {n}", "argument n")
    gen = torch.Generator().manual_seed(seed)
    p = pairs.to("cpu", torch.int64)
    d = distances.detach().to("cpu", torch.float64).clamp_min(0.0)
    sigma = float(d.median()) if bandwidth is None else bandwidth
    w = torch.exp(-((d / max(sigma, 1e-6)) ** 2))
    i, j = p[:, 0], p[:, 1]
    indices = torch.stack([torch.cat([i, j]), torch.cat([j, i])])
    values = torch.cat([w, w])
    degree = torch.zeros(n, dtype=torch.float64).index_add_(0, indices[0], values)
    if bool((degree <= 0).any()):
        raise InputError(None, "a node has no pair; expected every node in the graph", "pairs")
    scale = degree.rsqrt()
    values = values * scale[indices[0]] * scale[indices[1]]
    psi = _top_eigenvectors(indices, values, n, 10, iterations, gen)[:, 1:]
    # Random-walk eigenvectors (density-corrected), re-orthonormalised within their span.
    Y = torch.linalg.qr(psi * scale[:, None]).Q * math.sqrt(n / 3)
    fit = torch.randperm(n, generator=gen)[: min(n, _FIT_NODES)]
    W = _fit_rotations(Y[fit], starts, 30, gen)
    R = _project_so3((Y @ W.T).reshape(-1, 3, 3))
    return matrix_to_quaternion(R)


def _keep_every_node(
    n: int, pairs: torch.Tensor, distances: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """``keep`` plus, for every node left without a pair, its pairs of least distance."""
    i, j = pairs[:, 0], pairs[:, 1]
    ones = keep.to(distances.dtype)
    degree = distances.new_zeros(n).index_add_(0, i, ones).index_add_(0, j, ones)
    lonely = degree == 0
    if not bool(lonely.any()):
        return keep
    nearest = distances.new_full((n,), math.inf)
    nearest = nearest.scatter_reduce(0, i, distances, "amin").scatter_reduce(
        0, j, distances, "amin"
    )
    rescue = (lonely[i] & (distances == nearest[i])) | (lonely[j] & (distances == nearest[j]))
    return keep | rescue


def recover_from_near_pairs(
    n: int,
    pairs: torch.Tensor,
    distances: torch.Tensor,
    *,
    steps: int = 1000,
    lr: float = 0.01,
    batch_size: int = 1 << 14,
    trim_rounds: int = 1,
    trim_factor: float = 3.0,
    seed: int = 0,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> RecoveryResult:
    """Spectral start, refinement, and rejection of pairs the result contradicts.

    Each round: :func:`spectral_orientations` on the current pairs, then
    :func:`~cryopose.recovery.recover_orientations` from that start (one restart, the
    objective only, ``steps`` Adam steps at ``lr``). After a round, pairs whose recovered
    distance exceeds their estimate by more than ``trim_factor`` times the median absolute
    residual are dropped (estimated neighbours that are in fact far apart, the typical error
    of a learned estimator), and the next round starts over on the rest.

    Parameters
    ----------
    n
        Number of orientations.
    pairs, distances
        ``(P, 2)`` near-neighbour pairs and ``(P,)`` estimated distances in radians.
    steps, lr, batch_size
        Refinement settings of every round.
    trim_rounds
        Rounds of pair rejection (0: one spectral start and one refinement).
    trim_factor
        Rejection threshold in median absolute residuals.
    seed
        Seed of every random draw.
    device
        Device of the refinement.
    progress
        Report progress of the refinement.

    Returns
    -------
    RecoveryResult
        The last round's refinement (its ``final_loss`` on the pairs kept).
    """
    gen = torch.Generator().manual_seed(seed)
    keep = torch.ones(pairs.shape[0], dtype=torch.bool, device=pairs.device)
    for r in range(trim_rounds + 1):
        p, d = pairs[keep], distances[keep]
        start = spectral_orientations(n, p, d, seed=seed + r)
        result = recover_orientations(
            n, p, d, init=start.to(torch.float32), steps=steps, lr=lr, batch_size=batch_size,
            restarts=1, rounds=0, generator=gen, device=device, progress=progress,
        )  # fmt: skip
        if r == trim_rounds:
            break
        q = _unit(result.quaternions.to(distances.device, torch.float32))
        with torch.no_grad():
            found = _distance(_abs_cos(q[pairs[:, 0]], q[pairs[:, 1]], None))
        excess = found - distances.to(found.dtype)
        scale = float(excess[keep].abs().median())
        keep = keep & (excess <= trim_factor * scale).to(keep.device)
        keep = _keep_every_node(n, pairs, distances, keep)
    return result
