"""Reconstruction time: ``cryopose reconstruct`` vs ``relion_reconstruct`` on the same particles.

Both run as commands on the same star file in the same run, with CTF correction, in C1 and
with O symmetry: 1,000 and 10,000 simulated apoferritin particles (6z6u, SNR 0.1) at 64 px
(3 A/px) and 128 px (1.5 A/px). The particles are simulated once into a cache folder outside
the repository (``$CRYOPOSE_BENCH_DIR``, default ``/tmp/cryopose-bench``). RELION 3.1.3's
``relion_reconstruct`` has no threads option; it runs on one core. The map correlation
between the two results is printed to stderr. Ratio = RELION time / cryopose command time;
the cryopose column also gives the time of the library call alone (``reconstruct_particles``
plus writing the map, in this process), i.e. without Python and import start-up.

Example usage: python benchmarks/bench_reconstruct.py [--write] [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import mrcfile
import numpy as np
from harness import ROOT, Row, emit, machine, parse_args

from cryopose.io.mrc import write_map
from cryopose.io.particles import read_particles
from cryopose.pose.reconstruct import reconstruct_particles

STRUCTURE = ROOT / "src" / "cryopose" / "data" / "demo" / "6z6u.pdb.gz"
ANGPIX = {64: 3.0, 128: 1.5}


def cache_dir() -> Path:
    """Where simulated particles are kept between runs."""
    return Path(os.environ.get("CRYOPOSE_BENCH_DIR", "/tmp/cryopose-bench"))


def simulated(box: int, n: int) -> Path:
    """The star file of ``n`` particles at ``box`` px, simulated on first use."""
    folder = cache_dir() / f"b{box}_{n}"
    star = folder / "particles.star"
    if not star.exists():
        folder.parent.mkdir(parents=True, exist_ok=True)
        cmd = ["cryopose", "simulate", "particles", "--structure", str(STRUCTURE)]
        cmd += ["--angpix", str(ANGPIX[box]), "--box", str(box), "-n", str(n)]
        cmd += ["--snr", "0.1", "-o", str(folder)]
        subprocess.run(cmd, check=True, capture_output=True)
    return star


def timed(cmd: list[str], cwd: Path) -> float:
    """Wall time in seconds of one command."""
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def library_time(star: Path, sym: str) -> float:
    """Wall time of reading the star file, reconstructing and writing the map in-process."""
    start = time.perf_counter()
    table = read_particles(star)
    result = reconstruct_particles(table, ctf=True, symmetry=sym, show_progress=False)
    write_map(star.parent / f"bench_library_{sym}.mrc", result.full, result.angpix)
    return time.perf_counter() - start


def correlation(a: Path, b: Path) -> float:
    """Pearson correlation of two maps."""
    x, y = (mrcfile.read(p).astype(np.float64).ravel() for p in (a, b))
    return float(np.corrcoef(x, y)[0, 1])


def main() -> None:
    args = parse_args(__doc__ or "")
    cases = [(64, 1000)] if args.quick else [(64, 1000), (64, 10000), (128, 1000), (128, 10000)]
    for box, n in cases:
        star = simulated(box, n)
        for sym in ("C1", "O"):
            ours_map, theirs_map = f"bench_cryopose_{sym}.mrc", f"bench_relion_{sym}.mrc"
            ours = timed(
                ["cryopose", "reconstruct", star.name, "-o", ours_map, "--ctf", "--symmetry", sym],
                star.parent,
            )
            theirs = timed(
                ["relion_reconstruct", "--i", star.name, "--o", theirs_map, "--ctf", "--sym", sym],
                star.parent,
            )
            library = library_time(star, sym)
            cc = correlation(star.parent / ours_map, star.parent / theirs_map)
            print(f"{box} px, {n} particles, {sym}: map correlation {cc:.4f}", file=sys.stderr)
            emit(
                Row(
                    area="reconstruction",
                    name=f"reconstruct --ctf {sym}, {n:,} particles, {box} px",
                    cryopose=f"{ours:.1f} s (library call {library:.1f} s)",
                    peer=f"relion_reconstruct {theirs:.1f} s",
                    ratio=theirs / ours,
                    command="python benchmarks/bench_reconstruct.py",
                ),
                args.write,
            )
    print(machine(), file=sys.stderr)


if __name__ == "__main__":
    main()
