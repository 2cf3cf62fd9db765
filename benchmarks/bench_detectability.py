"""How detectable SHREC-style particles are: oracle matched-filter z-scores against the SNR.

Simulates the template-matching benchmark's tomogram (seed 7001, not used by any test) at
several tilt SNRs and scores every particle with the oracle template matcher of
:mod:`cryopose.tomo.detectability` (its exact density, orientation and position). The
fraction with z >= 4 per SHREC size group bounds the recall any picker that correlates with
the particle's density can reach on that data, so it says which picking targets the
simulation allows at all. Peer: SHREC 2020's best learned picker (UMC), F1 0.949 and
small-protein F1 0.826 on SHREC's own data, whose SNR is defined differently.

Run from the repository root::

    python benchmarks/bench_detectability.py --size 256 --snr 0.05 --snr 0.2 --snr 1 --write
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Row, emit, machine

from cryopose.simulate.tomogram import simulate_tomogram
from cryopose.tomo.detectability import detectability_summary, oracle_zscores_folder

SEED = 7001  # the template-matching benchmark's tomogram
THRESHOLD = 4.0
GROUPS = ("small", "medium", "large", "all")


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="in-plane size (SHREC: 512)")
    parser.add_argument("--snr", type=float, action="append", help="tilt SNR (repeat)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cryopose_bench_tm"))
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    return parser.parse_args()


def run_one(size: int, snr: float, work: Path, write: bool) -> None:
    folder = work / f"s{size}_seed{SEED}_snr{snr}"
    if not (folder / "reconstruction.mrc").is_file():
        simulate_tomogram(folder, size=size, seed=SEED, snr=snr, progress=False)
    start = time.perf_counter()
    particles = oracle_zscores_folder(folder, progress=True)
    seconds = time.perf_counter() - start
    summary = detectability_summary(particles, THRESHOLD)
    print(f"\n=== {folder.name}: {len(particles)} particles, {seconds:.0f} s")
    for name, row in sorted(summary.items(), key=lambda kv: kv[1]["median_z"]):
        print(
            f"{name:<8} n {int(row['n']):>4}  median z {row['median_z']:6.2f}  "
            f"z >= {THRESHOLD:g}: {row['fraction_detectable']:.2f}"
        )
    shown = ", ".join(
        f"{g} {summary[g]['fraction_detectable']:.2f}" for g in GROUPS if g in summary
    )
    emit(
        Row(
            area="cryo-ET",
            name=f"oracle detectability (z >= {THRESHOLD:g}), SNR {snr:g}, {size}x{size}",
            cryopose=f"fraction detectable: {shown}; median z small "
            f"{summary['small']['median_z']:.1f}",
            peer="SHREC 2020 UMC: F1 0.949, small F1 0.826 (SHREC's data)",
            ratio=None,
            command=f"python benchmarks/bench_detectability.py --size {size} --snr {snr:g}",
        ),
        write,
    )


def main() -> None:
    args = _args()
    torch.set_num_threads(1)
    print(machine())
    args.work.mkdir(parents=True, exist_ok=True)
    for snr in args.snr or [0.05, 0.2, 1.0]:
        run_one(args.size, snr, args.work, args.write)


if __name__ == "__main__":
    main()
