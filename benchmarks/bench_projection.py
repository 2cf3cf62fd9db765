"""Projection throughput: ``cryopose.imaging.Projector`` vs per-batch ``project_3d_to_2d``.

Projections per second of a random 64^3 and 128^3 volume at 1,024 uniform random poses in
batches of 256. cryopose: one :class:`cryopose.imaging.Projector` (the padded volume FFT is
computed once) projecting each batch. Peer: teamtomo's
``torch_fourier_slice.project_3d_to_2d(volume, A^T)`` called per batch, as a plain training
loop would (the convention that reproduces RELION's images, DESIGN.md). Best of 3.
Ratio = cryopose projections/s / peer projections/s.

Example usage: python benchmarks/bench_projection.py [--write] [--quick]
"""

from __future__ import annotations

import sys

import torch
from harness import Row, best_of, emit, machine, parse_args
from torch_fourier_slice import project_3d_to_2d

from cryopose.geometry.euler import euler_to_matrix
from cryopose.imaging import Projector

BATCH = 256


def random_rotations(n: int, seed: int) -> torch.Tensor:
    """RELION matrices of uniform random poses (rot, psi uniform, cos(tilt) uniform)."""
    gen = torch.Generator().manual_seed(seed)
    rot, psi = (torch.rand(n, generator=gen) * 360 - 180 for _ in range(2))
    tilt = torch.rad2deg(torch.arccos(torch.rand(n, generator=gen) * 2 - 1))
    return euler_to_matrix(torch.stack([rot, tilt, psi], dim=-1))


def ours(volume: torch.Tensor, batches: tuple[torch.Tensor, ...]) -> None:
    """One Projector (volume FFT once), then every batch."""
    projector = Projector(volume)
    for r in batches:
        projector.project(r)


def peer(volume: torch.Tensor, batches: tuple[torch.Tensor, ...]) -> None:
    """project_3d_to_2d per batch, given A^T."""
    for r in batches:
        project_3d_to_2d(volume, r.transpose(-1, -2))


def main() -> None:
    args = parse_args(__doc__ or "")
    n = BATCH if args.quick else 4 * BATCH
    for box in (64,) if args.quick else (64, 128):
        volume = torch.randn(box, box, box, generator=torch.Generator().manual_seed(box))
        rots = random_rotations(n, seed=1)
        batches = rots.split(BATCH)

        t_ours = best_of(lambda v=volume, bs=batches: ours(v, bs), repeats=3)
        t_peer = best_of(lambda v=volume, bs=batches: peer(v, bs), repeats=3)
        a = Projector(volume).project(rots[:8])
        b = project_3d_to_2d(volume, rots[:8].transpose(-1, -2))
        cc = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        print(f"{box} px: correlation of the two projections {cc:.4f}", file=sys.stderr)
        emit(
            Row(
                area="imaging",
                name=f"projections/s, {box} px, batches of {BATCH}",
                cryopose=f"{n / t_ours:,.0f} /s",
                peer=f"project_3d_to_2d {n / t_peer:,.0f} /s",
                ratio=t_peer / t_ours,
                command="python benchmarks/bench_projection.py",
            ),
            args.write,
        )
    print(machine(), file=sys.stderr)


if __name__ == "__main__":
    main()
