"""Peak memory of ``cryopose reconstruct`` for 10,000 vs 100,000 particles (64 px, CTF).

Streaming means memory does not grow with the particle count: the ratio of the two peaks
should be ~1. The 10,000 particles are simulated once (as in ``bench_reconstruct.py``, in
``$CRYOPOSE_BENCH_DIR``, default ``/tmp/cryopose-bench``); the 100,000-particle star file lists
those 10,000 rows ten times, so it reads 1.6 GB of images from the same stacks (legitimate
for a memory test: every image is still read and inserted). Peak RSS of the command is
measured by ``/usr/bin/time -f %M``. Ratio = peak(10,000) / peak(100,000).

Example usage: python benchmarks/bench_reconstruct_memory.py [--write] [--quick]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import starfile
from bench_reconstruct import simulated
from harness import Row, emit, machine, parse_args


def repeated_star(star: Path, times: int) -> Path:
    """A star file next to ``star`` listing its particles ``times`` times."""
    out = star.with_name(f"particles_x{times}.star")
    if not out.exists():
        blocks = starfile.read(star)
        particles = pd.concat([blocks["particles"]] * times, ignore_index=True)
        starfile.write({"optics": blocks["optics"], "particles": particles}, out)
    return out


def peak_rss_mb(star: Path) -> float:
    """Peak resident memory (MB) of ``cryopose reconstruct --ctf`` on ``star``."""
    cmd = ["/usr/bin/time", "-f", "%M", "cryopose", "reconstruct", star.name]
    cmd += ["-o", f"memory_{star.stem}.mrc", "--ctf"]
    done = subprocess.run(cmd, cwd=star.parent, check=True, capture_output=True, text=True)
    return int(done.stderr.strip().splitlines()[-1]) / 1024.0


def main() -> None:
    args = parse_args(__doc__ or "")
    n, times = (1000, 10) if args.quick else (10000, 10)
    star = simulated(64, n)
    small = peak_rss_mb(star)
    large = peak_rss_mb(repeated_star(star, times))
    print(machine(), file=sys.stderr)
    emit(
        Row(
            area="reconstruction",
            name=f"peak RSS of cryopose reconstruct, {n:,} vs {n * times:,} particles, 64 px",
            cryopose=f"{small:.0f} MB vs {large:.0f} MB",
            peer=f"{n:,} particles (same run)",
            ratio=small / large,
            command="python benchmarks/bench_reconstruct_memory.py",
        ),
        args.write,
    )


if __name__ == "__main__":
    main()
