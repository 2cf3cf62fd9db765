"""How alike the SHREC classes look at the tomograms' resolution, for each assembly choice.

For every pair of the chosen classes (default the small group, whose F1 is the open target)
and for each way the simulation builds them (``--assembly``: biological assembly 1 or the
deposited asymmetric unit, :mod:`cryopose.simulate.tomogram`), the best-aligned normalised
cross-correlation of their densities band-limited to the CTF's first zero
(:func:`cryopose.tomo.similarity.class_similarity_table`, HEALPix SO(3) order 2). A pair whose
value reaches the classes' "self" values (a density against a turned copy of itself) cannot be
told apart by any classifier on these tomograms, which bounds the per-class F1 a picker can
reach there. Peer: SHREC 2020's UMC, small-protein F1 0.826 on SHREC's data.

Run from the repository root::

    python benchmarks/bench_class_similarity.py --write
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Row, emit, machine

from cryopose.tomo.similarity import class_similarity_table
from cryopose.tomo.templates import load_templates

SMALL = ("1s3x", "3qm1", "3gl1", "3h84", "2cg9")  # the SHREC small group (< 200 kDa)
ANGPIX = 10.0  # the simulation's voxel


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", default=list(SMALL), help="PDB ids")
    parser.add_argument(
        "--assembly", action="append", choices=("biological", "deposited"), help="(repeat)"
    )
    parser.add_argument("--order", type=int, default=2, help="HEALPix SO(3) grid order")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    return parser.parse_args()


def main() -> None:
    args = _args()
    torch.set_num_threads(args.threads)
    print(machine())
    assemblies = args.assembly or ["biological", "deposited"]
    parts = []
    for assembly in assemblies:
        start = time.perf_counter()
        templates = load_templates(args.classes, angpix=ANGPIX, assembly=assembly)
        densities = {t.name: t.density for t in templates}
        print(f"--- {assembly}: boxes {[t.box for t in templates]}")
        table = class_similarity_table(densities, ANGPIX, args.order, progress=print)
        names = list(densities)
        print(f"{'':>6}" + "".join(f"{n:>7}" for n in names))
        for x in names:
            cells = [table.get((x, y), table.get((y, x), float("nan"))) for y in names]
            print(f"{x:>6}" + "".join(f"{v:7.3f}" for v in cells))
        pairs = {k: v for k, v in table.items() if k[0] != k[1]}
        (a, b), top = max(pairs.items(), key=lambda kv: kv[1])
        selves = f"{table[(a, a)]:.3f} / {table[(b, b)]:.3f}"
        print(f"closest pair {a}/{b} {top:.3f}, against themselves {selves} "
              f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
        parts.append(f"{assembly}: closest {a}/{b} {top:.3f} (each against itself {selves})")
    options = "" if args.classes == list(SMALL) else " --classes " + " ".join(args.classes)
    options += "".join(f" --assembly {a}" for a in args.assembly or [])
    options += f" --order {args.order}" if args.order != 2 else ""
    emit(
        Row(
            area="cryo-ET",
            name=f"class similarity at the CTF's first zero, {', '.join(args.classes)}",
            cryopose="; ".join(parts),
            peer="SHREC 2020 UMC: small F1 0.826, medium 0.946 (SHREC's data)",
            ratio=None,
            command=f"python benchmarks/bench_class_similarity.py{options}",
        ),
        args.write,
    )


if __name__ == "__main__":
    main()
