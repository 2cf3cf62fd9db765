"""Nearest HEALPix SO(3) grid rotation: cryopose's candidate search vs brute force.

cryopose: ``nearest_grid_index`` for 10,000 uniform random rotations on the order-4 grid
(294,912 rotations), best of 5. Peer: brute force over the whole grid (one float64 matrix
product of the flattened matrices per chunk, then argmax of trace(R^T G)), timed on 1,000 of
the same rotations and scaled by 10. The script also checks that both give the same geodesic
distance and reports the largest nearest-grid distance seen (a measured covering radius) on
stderr, next to the guaranteed bound ``grid_resolution_deg(4)``.

Example usage: python benchmarks/bench_healpix_nearest.py [--write] [--quick]
"""

from __future__ import annotations

import math
import sys

import torch
from harness import Row, best_of, emit, machine, parse_args

from cryopose.geometry.healpix import grid_resolution_deg, nearest_grid_index, so3_healpix_grid

ORDER = 4


def random_rotations(n: int, seed: int) -> torch.Tensor:
    """Uniform random rotations from normalised Gaussian quaternions, float64."""
    q = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    m = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, -1) for row in m], -2)


def brute_force(R: torch.Tensor, grid_flat: torch.Tensor) -> torch.Tensor:
    """Argmax over the grid of trace(R^T G), in chunks of 128 rotations."""
    return torch.cat([(c.reshape(-1, 9) @ grid_flat).argmax(dim=1) for c in R.split(128)])


def main() -> None:
    args = parse_args(__doc__ or "")
    n, n_peer = (1000, 100) if args.quick else (10000, 1000)
    R = random_rotations(n, seed=2024)
    grid = so3_healpix_grid(ORDER, dtype=torch.float64)
    grid_flat = grid.reshape(-1, 9).T.contiguous()

    nearest_grid_index(R, ORDER)  # build the cached candidate tables outside the timing
    ours = best_of(lambda: nearest_grid_index(R, ORDER), repeats=5)
    peer = best_of(lambda: brute_force(R[:n_peer], grid_flat), repeats=2) * (n / n_peer)

    index = nearest_grid_index(R, ORDER)
    trace = (R * grid[index]).sum(dim=(-2, -1))
    d_ours = torch.arccos(((trace - 1) / 2).clamp(-1, 1))
    peer_index = brute_force(R[:n_peer], grid_flat)
    trace_peer = (R[:n_peer] * grid[peer_index]).sum(dim=(-2, -1))
    d_peer = torch.arccos(((trace_peer - 1) / 2).clamp(-1, 1))
    if (d_ours[:n_peer] - d_peer).abs().max() > 1e-6:
        sys.exit("nearest_grid_index disagrees with brute force")
    print(
        f"max nearest-grid distance over {n} rotations: {math.degrees(d_ours.max()):.3f} deg "
        f"(bound grid_resolution_deg({ORDER}) = {grid_resolution_deg(ORDER):.3f} deg); "
        f"{machine()}",
        file=sys.stderr,
    )
    emit(
        Row(
            area="geometry",
            name=f"nearest_grid_index, {n:,} rotations, order {ORDER}",
            cryopose=f"{ours * 1e3:.1f} ms",
            peer=f"brute force {peer * 1e3:.0f} ms ({n_peer:,} rotations x {n // n_peer})",
            ratio=peer / ours,
            command="python benchmarks/bench_healpix_nearest.py",
        ),
        args.write,
    )


if __name__ == "__main__":
    main()
