"""Recover orientations from pairwise orientation distances (step ii of distance learning).

Given estimates ``d_hat_ij`` of the geodesic distances ``d_q(q_i, q_j) = 2 acos |<q_i, q_j>|``
between the unknown orientations of ``n`` projections, find unit quaternions minimising

    L(q) = mean over pairs (i, j) of (d_hat_ij - d_q(q_i, q_j))^2

(Banjac, Donati, Defferrard, "Learning to recover orientations from projections in
single-particle cryo-EM"). The pairs form a sparse graph given as a ``(P, 2)`` list, so memory
is linear in ``n`` and ``P``; no ``n x n`` matrix is ever built. The quaternions are free
4-vectors normalised inside the loss; the solution is defined only up to a global ``T`` in
O(4) (see :mod:`cryopose.recovery.align`).

The loss is non-convex, and plain Adam on ``L`` from a random start stalls in local minima:
measured on 300 random orientations with 20 exact partners per node, all 8 of 8 random
starts ended with ``L`` between 0.31 and 0.39 rad^2 (about the loss of unrelated
orientations). What works, and is done here:

1. **Smooth, sign-free surrogate first.** ``cos^2(d_q / 2) = <q_i, q_j>^2`` is a quartic
   polynomial of the quaternions, free of the ``acos`` singularities and of the ``q ~ -q``
   sign switch. Adam on ``(<q_i, q_j>^2 - cos^2(d_hat_ij / 2))^2`` reaches the exact solution
   from about 3 in 8 random starts (same problem).
2. **Node repair between rounds.** The remaining failures are mostly a few nodes trapped on
   the wrong side of their neighbours. After each round, every node whose residual exceeds 4x
   the median is moved to the best of ``candidates`` random quaternions given its neighbours
   (brute force, vectorised), if that lowers its residual. With 3 repair rounds 7 of 8 random
   starts reach the exact solution (loss ~1e-13).
3. **Restarts** run in parallel as one ``(restarts, n, 4)`` tensor sharing the pair batches;
   the restart with the lowest final value of ``L`` is kept.
4. **A last round on L itself**, the paper's objective, so that with noisy distances the
   result is its minimiser rather than the surrogate's.

This is the solver for distances known on random pairs (exact or with moderate noise). For
learned distances, which are informative only when short, :mod:`cryopose.recovery.spectral`
starts from a spectral embedding of a near-neighbour graph and refines it here (one
restart, ``rounds=0``, ``init``).

Each round uses Adam with a cosine learning-rate decay from ``lr`` to 0. Under a point group
(``symmetry``) the distance is ``min over g`` of ``d_q(q_i, q_j g)``, ``g`` the group's
quaternions acting on the right, as poses do (``A @ g``).

>>> import torch
>>> from cryopose.geometry import matrix_to_quaternion, quaternion_distance, random_rotations
>>> g = torch.Generator().manual_seed(0)
>>> q = matrix_to_quaternion(random_rotations(60, g))
>>> pairs = sample_pairs(60, 15, g)
>>> d = quaternion_distance(q[pairs[:, 0]], q[pairs[:, 1]])
>>> result = recover_orientations(60, pairs, d, steps=800, restarts=2, progress=False)
>>> bool(result.final_loss[result.best_restart] < 1e-6)
True
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from cryopose.errors import InputError
from cryopose.geometry.rotations import matrix_to_quaternion
from cryopose.geometry.symmetry import symmetry_group

__all__ = [
    "DistanceFn",
    "RecoveryResult",
    "recover_orientations",
    "recover_orientations_online",
    "sample_pairs",
]

_log = logging.getLogger(__name__)

DistanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``distance_fn(i_idx (B,) int64, j_idx (B,) int64) -> d_hat (B,)`` in radians."""

# Most elements of one (pairs x group x candidates) block in the node repair.
_REPAIR_BLOCK = 1 << 23
# Most pairs scored at once when evaluating the loss on a whole graph.
_EVAL_BLOCK = 1 << 20


@dataclass(frozen=True)
class RecoveryResult:
    """Orientations recovered from distances.

    Attributes
    ----------
    quaternions
        ``(n, 4)`` unit quaternions ``(w, x, y, z)`` with ``w >= 0``, of the best restart;
        determined up to a global O(4) transform (and, with symmetry, per-node group elements).
    loss_history
        ``(restarts, steps)`` mini-batch loss of every Adam step of every restart (surrogate
        rounds in ``cos^2`` units, the last round in rad^2).
    best_restart
        Index of the restart kept.
    final_loss
        ``(restarts,)`` value of the objective ``mean (d_hat - d_q)^2`` in rad^2 of each
        restart, on the whole pair list (or on a fresh ``k_per_node`` graph online).
    """

    quaternions: torch.Tensor
    loss_history: torch.Tensor
    best_restart: int
    final_loss: torch.Tensor


def sample_pairs(
    n: int,
    k_per_node: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random sparse pair graph: ``k_per_node`` random partners for every node.

    Parameters
    ----------
    n
        Number of nodes (>= 2).
    k_per_node
        Partners drawn for each node, uniformly among the other ``n - 1`` (with replacement,
        so a pair can repeat; each node ends up in about ``2 k`` pairs).
    generator
        Optional CPU torch generator.
    device
        Device of the result.

    Returns
    -------
    torch.Tensor
        ``(n * k_per_node, 2)`` int64 pairs ``(i, j)`` with ``i != j``, rows grouped by ``i``.
    """
    if n < 2 or k_per_node < 1:
        raise InputError(
            None, f"need n >= 2 and k_per_node >= 1, got {n} and {k_per_node}", "arguments"
        )
    i = torch.arange(n).repeat_interleave(k_per_node)
    # An offset in [1, n) never maps a node onto itself.
    j = (i + torch.randint(1, n, (n * k_per_node,), generator=generator)) % n
    return torch.stack([i, j], dim=1).to(device)


def _qmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product of ``(..., 4)`` quaternions, scalar first; ``R(a b) = R(a) R(b)``."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        dim=-1,
    )


def _unit(q: torch.Tensor) -> torch.Tensor:
    norm: torch.Tensor = torch.linalg.vector_norm(q, dim=-1, keepdim=True)
    return q / norm.clamp_min(1e-12)


def _abs_cos(qi: torch.Tensor, qj: torch.Tensor, group: torch.Tensor | None) -> torch.Tensor:
    """``max over g of |<qi, qj g>|`` for ``(..., 4)`` unit quaternions -> ``(...)``.

    ``|<qi, qj>| = cos(d_q / 2)``; the largest over the group is the closest equivalent pose.
    """
    if group is None:
        return (qi * qj).sum(-1).abs()
    return (qi[..., None, :] * _qmul(qj[..., None, :], group)).sum(-1).abs().amax(-1)


def _distance(abs_cos: torch.Tensor) -> torch.Tensor:
    """``d_q = 2 acos |<qi, qj>|`` in radians, with the gradient kept finite at 0 and pi."""
    # acos' derivative is infinite at 1; the clamp costs < 1e-3 rad at d = 0.
    return 2 * torch.acos(abs_cos.clamp(0.0, 1.0 - 1e-7))


def _surrogate_target(d_hat: torch.Tensor) -> torch.Tensor:
    """``cos^2(d_hat / 2)``: the surrogate's target, with d_hat clamped into ``[0, pi]``."""
    return torch.cos(d_hat.clamp(0.0, math.pi) / 2) ** 2


def _pair_loss(
    q: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    d_hat: torch.Tensor,
    group: torch.Tensor | None,
    surrogate: bool,
) -> torch.Tensor:
    """``(R, B)`` squared residuals of ``(R, n, 4)`` quaternions on ``B`` pairs."""
    c = _abs_cos(_unit(q[:, i]), _unit(q[:, j]), group)
    if surrogate:
        return (c * c - _surrogate_target(d_hat)) ** 2
    return (_distance(c) - d_hat) ** 2


def _graph_loss(
    q: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    d_hat: torch.Tensor,
    group: torch.Tensor | None,
) -> torch.Tensor:
    """``(R,)`` objective ``mean (d_hat - d_q)^2`` over all pairs, in blocks."""
    total = q.new_zeros(q.shape[0])
    for start in range(0, i.shape[0], _EVAL_BLOCK):
        sl = slice(start, start + _EVAL_BLOCK)
        total += _pair_loss(q, i[sl], j[sl], d_hat[sl], group, surrogate=False).sum(1)
    return total / max(i.shape[0], 1)


def _node_residuals(
    q: torch.Tensor, i: torch.Tensor, j: torch.Tensor, c2: torch.Tensor, group: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-node summed surrogate residuals ``(R, n)`` and pair counts ``(n,)``."""
    n = q.shape[1]
    res = q.new_zeros(q.shape[0], n)
    for start in range(0, i.shape[0], _EVAL_BLOCK):
        sl = slice(start, start + _EVAL_BLOCK)
        c = _abs_cos(_unit(q[:, i[sl]]), _unit(q[:, j[sl]]), group)
        r = (c * c - c2[sl]) ** 2
        res.index_add_(1, i[sl], r).index_add_(1, j[sl], r)
    ones = torch.ones_like(c2)
    count = c2.new_zeros(n).index_add_(0, i, ones).index_add_(0, j, ones)
    return res, count


def _repair(
    q: torch.Tensor,
    i: torch.Tensor,
    j: torch.Tensor,
    d_hat: torch.Tensor,
    group: torch.Tensor | None,
    candidates: torch.Tensor,
) -> tuple[torch.Tensor, int]:
    """Move badly fitting nodes to their best candidate quaternion given their neighbours.

    A node is bad when its mean surrogate residual exceeds 4x the median (plus 1e-6); it is
    moved only if the best candidate lowers its summed residual. Returns the new ``(R, n, 4)``
    quaternions and the number of nodes moved (all restarts).
    """
    q = _unit(q)
    c2 = _surrogate_target(d_hat)
    res, count = _node_residuals(q, i, j, c2, group)
    mean_res = res / count.clamp_min(1)
    moved = 0
    n_cand = candidates.shape[0]
    n_group = 1 if group is None else group.shape[0]
    block = max(1, _REPAIR_BLOCK // (n_cand * n_group))
    for r in range(q.shape[0]):
        bad = mean_res[r] > 4 * mean_res[r].median() + 1e-6
        if not bool(bad.any()):
            continue
        # Orient each incident pair as (bad node a, partner b).
        on_i, on_j = bad[i], bad[j]
        a = torch.cat([i[on_i], j[on_j]])
        b = torch.cat([j[on_i], i[on_j]])
        target = torch.cat([c2[on_i], c2[on_j]])
        # For g acting on the partner, |<cand, b g>| over the group equals the symmetric cos.
        partner = q[r, b] if group is None else _qmul(q[r, b][:, None, :], group)
        # Costs only for the bad nodes: (n_bad, C), not (n, C).
        nodes = torch.nonzero(bad).squeeze(1)
        local = torch.cumsum(bad, 0) - 1
        cost = q.new_zeros(nodes.shape[0], n_cand)
        for start in range(0, a.shape[0], block):
            sl = slice(start, start + block)
            dots = (partner[sl] @ candidates.T).abs()  # (B, C) or (B, G, C)
            if group is not None:
                dots = dots.amax(dim=1)
            cost.index_add_(0, local[a[sl]], (dots * dots - target[sl, None]) ** 2)
        best_cost, best = cost.min(dim=1)
        better = best_cost < res[r, nodes]
        q[r, nodes[better]] = candidates[best[better]]
        moved += int(better.sum())
    return q, moved


@contextmanager
def _progress_bar(
    total: int, enabled: bool, label: str
) -> Iterator[Callable[[int, torch.Tensor], None]]:
    """Yield ``advance(step, losses)``: a rich bar on a terminal, else a log line every 10%.

    ``losses`` is the ``(restarts,)`` tensor of the step; it is read (a device sync) only when
    shown, so logging does not slow a GPU run down.
    """
    if enabled and sys.stderr.isatty():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3e}"),
            TimeRemainingColumn(),
            transient=True,
        ) as bar:
            task = bar.add_task(label, total=total, loss=float("nan"))

            def advance(step: int, losses: torch.Tensor) -> None:
                bar.update(task, completed=step + 1, loss=float(losses.min()))

            yield advance
        return
    every = max(1, total // 10)

    def log_line(step: int, losses: torch.Tensor) -> None:
        if enabled and ((step + 1) % every == 0 or step + 1 == total):
            _log.info("%s: step %d/%d, best loss %.3e", label, step + 1, total, float(losses.min()))

    yield log_line


@dataclass
class _Settings:
    steps: int
    lr: float
    batch_size: int
    restarts: int
    rounds: int
    candidates: int
    symmetry: str | None
    progress: bool
    dtype: torch.dtype
    init: torch.Tensor | None = None


def _check_settings(s: _Settings) -> None:
    if s.steps < s.rounds + 1 or s.restarts < 1 or s.batch_size < 1 or s.candidates < 1:
        raise InputError(
            None,
            f"need steps >= rounds + 1 ({s.rounds + 1}), restarts, batch_size and candidates "
            f">= 1; got steps={s.steps}, restarts={s.restarts}, batch_size={s.batch_size}, "
            f"candidates={s.candidates}",
            "arguments",
        )
    if s.init is not None and (s.init.ndim != 2 or s.init.shape[1] != 4):
        raise InputError(
            None, f"init of shape {tuple(s.init.shape)}; expected (n, 4)", "argument init"
        )
    if s.rounds < 0 or not s.lr > 0:
        raise InputError(None, f"need rounds >= 0 and lr > 0, got {s.rounds}, {s.lr}", "arguments")


def _group_quaternions(
    symmetry: str | None, dtype: torch.dtype, device: torch.device
) -> torch.Tensor | None:
    if symmetry is None:
        return None
    group = symmetry_group(symmetry)
    if group.shape[0] == 1:
        return None
    return matrix_to_quaternion(group).to(dtype=dtype, device=device)


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _optimise(
    n: int,
    next_batch: Callable[[], Batch],
    graph: Callable[[], Batch],
    s: _Settings,
    generator: torch.Generator,
    device: torch.device,
) -> RecoveryResult:
    """Shared loop: surrogate rounds with repair, a last round on the objective, selection."""
    group = _group_quaternions(s.symmetry, s.dtype, device)
    q = torch.randn(s.restarts, n, 4, generator=generator, dtype=s.dtype).to(device)
    if s.init is not None:
        if s.init.shape[0] != n:
            raise InputError(
                None, f"init has {s.init.shape[0]} rows; expected n = {n}", "argument init"
            )
        q[0] = s.init.to(device=device, dtype=s.dtype)
    candidates = _unit(torch.randn(s.candidates, 4, generator=generator, dtype=s.dtype))
    candidates = candidates.to(device)
    per_round = s.steps // (s.rounds + 1)
    lengths = [per_round] * s.rounds + [s.steps - per_round * s.rounds]
    history = torch.empty(s.restarts, s.steps, dtype=s.dtype, device=device)
    step = 0
    with _progress_bar(s.steps, s.progress, "recovering orientations") as advance:
        for r, length in enumerate(lengths):
            surrogate = r < s.rounds
            # The last round starts near a minimum: a full-size first Adam step (lr per
            # coordinate of a unit vector) would throw it out of its basin.
            lr = s.lr if surrogate or s.rounds == 0 else s.lr / 10
            param = q.detach().clone().requires_grad_(True)
            opt = torch.optim.Adam([param], lr=lr)
            for t in range(length):
                for pg in opt.param_groups:
                    pg["lr"] = lr * 0.5 * (1 + math.cos(math.pi * t / length))
                i, j, d_hat = next_batch()
                loss = _pair_loss(param, i, j, d_hat, group, surrogate).mean(dim=1)
                opt.zero_grad(set_to_none=True)
                # Restarts are independent: summing keeps each one's gradient its own.
                torch.autograd.backward(loss.sum())
                opt.step()
                history[:, step] = loss.detach()
                advance(step, history[:, step])
                step += 1
            q = param.detach()
            if surrogate:
                gi, gj, gd = graph()
                q, moved = _repair(q, gi, gj, gd, group, candidates)
                _log.debug("round %d: repaired %d nodes", r, moved)
    gi, gj, gd = graph()
    with torch.no_grad():
        final = _graph_loss(q, gi, gj, gd, group)
    best = int(final.argmin())
    out = _unit(q[best])
    out = torch.where(out[:, :1] < 0, -out, out)
    return RecoveryResult(out, history.cpu(), best, final.cpu())


def _check_pairs(n: int, pairs: torch.Tensor, distances: torch.Tensor) -> None:
    if n < 2:
        raise InputError(None, f"need n >= 2 orientations, got {n}", "argument n")
    if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.dtype not in (torch.int64, torch.int32):
        raise InputError(
            None,
            f"pairs of shape {tuple(pairs.shape)} and dtype {pairs.dtype}; expected (P, 2) int64",
            "argument pairs",
        )
    if pairs.shape[0] == 0:
        raise InputError(None, "no pairs; expected at least one", "argument pairs")
    if distances.shape != (pairs.shape[0],) or not distances.is_floating_point():
        raise InputError(
            None,
            f"distances of shape {tuple(distances.shape)}; expected ({pairs.shape[0]},) float",
            "argument distances",
        )
    if int(pairs.min()) < 0 or int(pairs.max()) >= n:
        raise InputError(None, f"pair indices must lie in [0, {n})", "argument pairs")
    bad_rows = torch.nonzero(pairs[:, 0] == pairs[:, 1]).squeeze(1)
    if bad_rows.numel():
        raise InputError(
            None, "pair of a node with itself", f"argument pairs, row {int(bad_rows[0])}"
        )
    bad_rows = torch.nonzero(~torch.isfinite(distances)).squeeze(1)
    if bad_rows.numel():
        raise InputError(
            None, "distance is not finite", f"argument distances, row {int(bad_rows[0])}"
        )


def recover_orientations(
    n: int,
    pairs: torch.Tensor,
    distances: torch.Tensor,
    *,
    steps: int = 2000,
    lr: float = 0.1,
    batch_size: int = 1 << 16,
    restarts: int = 4,
    rounds: int = 5,
    candidates: int = 2048,
    symmetry: str | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    init: torch.Tensor | None = None,
) -> RecoveryResult:
    """Find unit quaternions whose distances best match the given pairwise distances.

    Minimises ``mean over pairs (d_hat_ij - d_q(q_i, q_j))^2`` by mini-batch Adam, after
    ``rounds`` rounds on the smooth surrogate with node repair (see the module docstring).

    Parameters
    ----------
    n
        Number of orientations.
    pairs
        ``(P, 2)`` int64 node indices in ``[0, n)``, ``i != j``: the sparse distance graph.
    distances
        ``(P,)`` estimated distances ``d_hat`` in radians (true ones lie in ``[0, pi]``).
    steps
        Adam steps in total, split equally between the ``rounds + 1`` rounds.
    lr
        Initial learning rate of every round (cosine decay to 0 within a round).
    batch_size
        Pairs per step, drawn at random from ``pairs``; all of them if ``P <= batch_size``.
    restarts
        Independent random starts optimised together; the lowest final loss is kept.
    rounds
        Surrogate rounds, each followed by node repair (0: optimise the objective only).
    candidates
        Random quaternions tried for each badly fitting node in the repair.
    symmetry
        Point group of the particle (``"D2"``...); distances are then the minimum over the
        group, and orientations are recovered up to per-node group elements.
    generator, seed
        CPU generator for all random draws; when ``None`` one is seeded with ``seed``.
    device
        Device of the computation; default that of ``distances``.
    dtype
        Floating dtype of the quaternions.
    progress
        Show a progress bar (only when stderr is a terminal; else log every 10% of steps).
    init
        Optional ``(n, 4)`` starting quaternions (e.g. a network's estimate) for restart 0;
        the other restarts start at random.

    Returns
    -------
    RecoveryResult
        Quaternions ``(n, 4)`` on ``device``, loss history, best restart and final losses.

    Raises
    ------
    InputError
        For pairs or distances of the wrong shape, out-of-range or self pairs, non-finite
        distances, or invalid settings.
    """
    _check_pairs(n, pairs, distances)
    s = _Settings(
        steps, lr, batch_size, restarts, rounds, candidates, symmetry, progress, dtype, init
    )
    _check_settings(s)
    dev = torch.device(device) if device is not None else distances.device
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    i_all = pairs[:, 0].to(device=dev, dtype=torch.int64)
    j_all = pairs[:, 1].to(device=dev, dtype=torch.int64)
    d_all = distances.to(device=dev, dtype=dtype)
    n_pairs = i_all.shape[0]

    def next_batch() -> Batch:
        if n_pairs <= batch_size:
            return i_all, j_all, d_all
        pick = torch.randint(0, n_pairs, (batch_size,), generator=gen).to(dev)
        return i_all[pick], j_all[pick], d_all[pick]

    def graph() -> Batch:
        return i_all, j_all, d_all

    return _optimise(n, next_batch, graph, s, gen, dev)


def recover_orientations_online(
    n: int,
    distance_fn: DistanceFn,
    *,
    k_per_node: int = 20,
    steps: int = 2000,
    lr: float = 0.1,
    batch_size: int = 1 << 14,
    restarts: int = 4,
    rounds: int = 5,
    candidates: int = 2048,
    symmetry: str | None = None,
    generator: torch.Generator | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    init: torch.Tensor | None = None,
) -> RecoveryResult:
    """Like :func:`recover_orientations`, with distances supplied on demand by a callable.

    Every Adam step draws ``batch_size`` fresh uniformly random pairs and asks
    ``distance_fn`` for their distances (e.g. a Siamese network evaluated on the two
    projections). Node repair and the final loss use a fresh graph of ``k_per_node``
    partners per node (:func:`sample_pairs`), queried in blocks of ``batch_size``.

    Parameters
    ----------
    n
        Number of orientations.
    distance_fn
        ``distance_fn(i_idx (B,) int64, j_idx (B,) int64) -> (B,)`` distances in radians, on
        ``device``; called without gradient tracking of its own inputs.
    k_per_node
        Partners per node of the graphs used for repair and for the final loss.
    steps, lr, batch_size, restarts, rounds, candidates, symmetry, generator, seed, dtype
        As for :func:`recover_orientations` (``batch_size`` pairs are drawn every step).
    progress, init
        As for :func:`recover_orientations`.
    device
        Device of the computation (default CPU).

    Returns
    -------
    RecoveryResult
        As for :func:`recover_orientations`; ``final_loss`` is measured on a fresh graph.

    Raises
    ------
    InputError
        For invalid settings or when ``distance_fn`` returns a wrongly shaped result.
    """
    s = _Settings(
        steps, lr, batch_size, restarts, rounds, candidates, symmetry, progress, dtype, init
    )
    _check_settings(s)
    if n < 2:
        raise InputError(None, f"need n >= 2 orientations, got {n}", "argument n")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)

    def query(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            d = distance_fn(i, j)
        if d.shape != i.shape:
            raise InputError(
                None,
                f"returned shape {tuple(d.shape)} for {i.shape[0]} pairs; expected ({i.shape[0]},)",
                "argument distance_fn",
            )
        return d.to(device=dev, dtype=dtype)

    def next_batch() -> Batch:
        i = torch.randint(0, n, (batch_size,), generator=gen)
        j = (i + torch.randint(1, n, (batch_size,), generator=gen)) % n
        i, j = i.to(dev), j.to(dev)
        return i, j, query(i, j)

    def graph() -> Batch:
        pairs = sample_pairs(n, k_per_node, gen, dev)
        i, j = pairs[:, 0], pairs[:, 1]
        d = torch.cat(
            [
                query(i[start : start + batch_size], j[start : start + batch_size])
                for start in range(0, i.shape[0], batch_size)
            ]
        )
        return i, j, d

    return _optimise(n, next_batch, graph, s, gen, dev)
