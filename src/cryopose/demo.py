"""The demo that ``cryopose demo`` runs on the data bundled with cryopose.

Atomic model of human apoferritin (PDB 6z6u, octahedral) -> density map at 2 A/px -> 2,000
simulated particles with CTF (B-factor 150 A^2), shifts and noise (SNR 0.05) -> gold-standard
reconstruction from the true poses with O symmetry -> half-map FSC, FSC against the true map,
and a plot. It shows the pieces every later step (pose estimation, refinement, evaluation) is
built from, in well under a minute on a laptop CPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cryopose._atomic import atomic_path
from cryopose.data.demo_files import demo_dir, demo_file

__all__ = ["DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    """Settings of the demo (saved as ``demo.json`` in the output folder)."""

    structure: str = "6z6u.pdb.gz"
    symmetry: str = "O"
    angpix: float = 2.0
    box: int = 80
    n_particles: int = 2000
    snr: float = 0.05
    bfactor: float = 150.0
    seed: int = 0


def run_demo(
    out_dir: str | Path = "demo_output", config: DemoConfig | None = None
) -> dict[str, object]:
    """Run the demo and return its summary (also written to ``out_dir/summary.json``)."""
    from cryopose.evaluation.fsc import fsc, pcc, plot_fsc, resolution_at, shell_frequencies
    from cryopose.io.describe import describe
    from cryopose.io.mrc import write_map
    from cryopose.io.particles import read_particles
    from cryopose.pose.reconstruct import reconstruct_particles
    from cryopose.simulate.particles import SimulationConfig, simulate_from_structure

    cfg = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "demo.json") as tmp:
        tmp.write_text(json.dumps(asdict(cfg), indent=2))
    timings: dict[str, float] = {}
    model = demo_file(cfg.structure)

    _say(f"1/4 bundled files in {demo_dir()}")
    for name in ("relion31.star", "EMD-3197.map", cfg.structure):
        s = describe(demo_file(name))
        _say(f"    {name}: " + _one_line(s))

    _say(
        f"2/4 simulating {cfg.n_particles} particles of {cfg.structure} "
        f"({cfg.box} px, {cfg.angpix} A/px, SNR {cfg.snr}, CTF, shifts)"
    )
    start = time.perf_counter()
    sim = SimulationConfig(
        n=cfg.n_particles,
        snr=cfg.snr,
        ctf=True,
        bfactor=cfg.bfactor,
        symmetry=cfg.symmetry,
        seed=cfg.seed,
    )
    star = simulate_from_structure(model, cfg.angpix, cfg.box, out / "particles", config=sim)
    timings["simulate_s"] = time.perf_counter() - start

    _say(f"3/4 reconstructing half maps from the true poses ({cfg.symmetry} symmetry, CTF)")
    start = time.perf_counter()
    table = read_particles(star)
    result = reconstruct_particles(
        table, ctf=True, symmetry=cfg.symmetry, halves=True, regularisation="tau2"
    )
    timings["reconstruct_s"] = time.perf_counter() - start
    assert result.half1 is not None and result.half2 is not None and result.fsc is not None
    write_map(out / "map.mrc", result.full, result.angpix)
    write_map(out / "half1.mrc", result.half1, result.angpix)
    write_map(out / "half2.mrc", result.half2, result.angpix)

    _say("4/4 comparing with the true map")
    from cryopose.io.mrc import read_map

    truth, _ = read_map(out / "particles" / "ground_truth.mrc")
    box = result.full.shape[-1]
    freq = shell_frequencies(box, result.angpix)
    fsc_truth = fsc(result.full, truth)
    plot = plot_fsc(
        {"half map 1 vs half map 2": (freq, result.fsc), "full map vs true map": (freq, fsc_truth)},
        out / "fsc.png",
        title=f"{cfg.structure}: {cfg.n_particles} simulated particles, SNR {cfg.snr}",
    )
    summary: dict[str, object] = {
        "particles": result.n_particles,
        "particles_per_half": list(result.n_half or ()),
        "half_map_resolution_0.143_A": resolution_at(result.fsc, box, result.angpix, 0.143),
        "true_map_resolution_0.5_A": resolution_at(fsc_truth, box, result.angpix, 0.5),
        "pcc_with_true_map": pcc(result.full, truth),
        "nyquist_A": 2 * result.angpix,
        **{k: round(v, 1) for k, v in timings.items()},
        "outputs": {
            "particles": str(star),
            "map": str(out / "map.mrc"),
            "fsc_plot": str(plot),
        },
    }
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary


def _one_line(s: dict[str, Any]) -> str:
    kind = s["kind"]
    if kind == "star":
        return f"STAR, {s.get('particles')} particles, poses {s['has']['poses']}"
    if kind == "mrc":
        return f"map {s['shape']} at {s['voxel_size'][0]} A/voxel"
    if kind == "structure":
        return (
            f"{s['chains']} chains, {s['atoms']} atoms, {float(s['mass_kda']):.0f} kDa, "
            f"point group {s.get('point_group')}"
        )
    return str(kind)


def _say(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)
