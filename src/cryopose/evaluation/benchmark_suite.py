"""Offline pose-estimation benchmark: simulated CESPED-protocol entries and a leaderboard.

CESPED's entries are real datasets downloaded from Zenodo; this suite builds entries of the
same shape offline, one per symmetry class, from the atomic models bundled with cryopose:

=====  ========================  ===========================================================
entry  structure                 symmetry and how its axes are found
=====  ========================  ===========================================================
C1     1u6g (shrec/)             none (3 chains)
D7     3j9i (demo/)              20S proteasome, 28 chains as deposited
O      6z6u (demo/)              apoferritin, 24 chains as deposited
C6     3cf3 (shrec/)             p97, assembly 1 built from its BIOMT records (3 -> 6 chains)
D4     1bxn (shrec/)             Rubisco L8S8, assembly 1 from BIOMT (8 -> 16 chains)
=====  ========================  ===========================================================

A deposited model sits in an arbitrary frame, and RELION's symmetry operators act about fixed
axes (Cn/Dn: n-fold on z, 2-fold on x; O: 4-folds on x, y, z). The model is therefore rotated
into RELION's frame before its map is computed, so the map is symmetric under
:func:`cryopose.geometry.symmetry_group` without any resampling: the operators of the model are
found by superposing the CA traces of every chain of the most frequent kind onto the first one
(Kabsch), their axes give the frame (z: a highest-order axis; x: a highest-order axis
perpendicular to it), and the frame error (largest angle between a model operator mapped into
that frame and the nearest RELION operator) is written to ``entry.json``. (Applying the group
to the map instead would average resampled copies; with bundled models it is never needed.)

Each entry folder holds ``particles.star`` (ground-truth poses, CTF, ``rlnRandomSubset``),
the ``.mrcs`` stacks, ``ground_truth.mrc`` (the map projected, centre of mass at ``box // 2``),
``mask.mrc`` (:func:`soft_mask` of that map, used for every PCC and FSC as CESPED's masks are),
``simulation.json`` and ``entry.json`` (written last: its presence means the entry is complete).

:func:`run_benchmark` evaluates every ``predictions/<method>/<entry>.star`` with
:func:`cryopose.evaluation.gold_standard.evaluate_gold_standard` plus two references, the
ground truth itself (best possible) and uniformly random rotations (worst), and writes a
leaderboard. A prediction with origin columns is evaluated as ``SO3xR2``, otherwise ``SO3``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cryopose._atomic import atomic_path
from cryopose.errors import InputError
from cryopose.evaluation.gold_standard import (
    GoldStandardReport,
    PredictionType,
    evaluate_gold_standard,
    reconstruct_reference,
)
from cryopose.geometry.distance import geodesic_distance
from cryopose.geometry.symmetry import symmetry_group
from cryopose.imaging.filters import gaussian_filter
from cryopose.io.mrc import write_map
from cryopose.io.particles import ParticleTable, read_particles
from cryopose.io.structure import Atoms, read_structure
from cryopose.simulate.density import density_map
from cryopose.simulate.particles import SimulationConfig, simulate_particles
from cryopose.simulate.poses import uniform_poses

__all__ = [
    "BENCHMARK_STRUCTURES",
    "DEFAULT_ENTRIES",
    "BenchmarkEntry",
    "LeaderboardRow",
    "leaderboard_markdown",
    "load_benchmark_entry",
    "load_cesped_entry",
    "make_benchmark_entries",
    "run_benchmark",
    "soft_mask",
    "symmetry_frame_from_chains",
]

# entry name -> (bundled file relative to cryopose/data, symmetry, assembly to build)
BENCHMARK_STRUCTURES: dict[str, tuple[str, str, str | None]] = {
    "C1": ("shrec/1u6g.pdb.gz", "C1", None),
    "D7": ("demo/3j9i.pdb.gz", "D7", None),
    "O": ("demo/6z6u.pdb.gz", "O", None),
    "C6": ("shrec/3cf3.pdb.gz", "C6", "1"),
    "D4": ("shrec/1bxn.pdb.gz", "D4", "1"),
}
DEFAULT_ENTRIES: tuple[str, ...] = ("C1", "D7", "O", "C6")
# Largest allowed angle (degrees) between a model operator and RELION's nearest one.
_FRAME_TOL_DEG = 3.0


@dataclass(frozen=True)
class BenchmarkEntry:
    """One benchmark entry on disk.

    Attributes
    ----------
    name
        Entry name (``"C1"``, ``"D7"``, ... or a CESPED target name).
    folder
        Entry folder.
    star
        Ground-truth particle star file.
    symmetry
        Point group.
    info
        Contents of ``entry.json`` (or what was assumed for a CESPED entry).
    """

    name: str
    folder: Path
    star: Path
    symmetry: str
    info: dict[str, Any]

    @property
    def mask(self) -> Path | None:
        """Mask for PCC/FSC (``info["mask"]``, relative to the folder), if the entry has one."""
        name = self.info.get("mask")
        return None if name is None else self.folder / str(name)

    def table(self) -> ParticleTable:
        """Ground-truth particles (images resolved relative to the entry folder)."""
        return read_particles(self.star, particles_dir=self.folder)


# ----------------------------------------------------------------------------- frames


def _ca_traces(atoms: Atoms) -> dict[str, dict[tuple[int, str], torch.Tensor]]:
    """Chain -> {(residue number, residue name): CA position}; first altloc kept."""
    ca = atoms[torch.as_tensor(atoms.atom_names == "CA")]
    traces: dict[str, dict[tuple[int, str], torch.Tensor]] = {}
    for i in range(len(ca)):
        key = (int(ca.residue_numbers[i]), str(ca.residue_names[i]))
        traces.setdefault(str(ca.chain_ids[i]), {}).setdefault(key, ca.coordinates[i])
    return traces


def _kabsch(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Rotation ``R`` minimising ``|R (a - mean a) - (b - mean b)|`` and the RMSD (A)."""
    pa, pb = a - a.mean(0), b - b.mean(0)
    u, _, vt = torch.linalg.svd(pb.T @ pa)
    d = torch.sign(torch.linalg.det(u @ vt))
    R = u @ torch.diag(torch.tensor([1.0, 1.0, float(d)], dtype=a.dtype)) @ vt
    rmsd = float(torch.sqrt(((pa @ R.T - pb) ** 2).sum(-1).mean()))
    return R, rmsd


def _chain_operators(atoms: Atoms, max_rmsd: float = 3.0) -> torch.Tensor:
    """``(k, 3, 3)`` rotations superposing the chains of the most frequent kind on the first."""
    traces = _ca_traces(atoms)
    names = [n for n, t in traces.items() if len(t) >= 10]
    kinds: dict[str, list[str]] = {}
    for n in names:
        for ref in kinds:
            common = traces[ref].keys() & traces[n].keys()
            if len(common) >= 0.9 * min(len(traces[ref]), len(traces[n])):
                kinds[ref].append(n)
                break
        else:
            kinds[n] = [n]
    if not kinds:
        return torch.eye(3, dtype=torch.float64)[None]
    ref = max(kinds, key=lambda k: len(kinds[k]))
    ops = []
    for n in kinds[ref]:
        keys = sorted(traces[ref].keys() & traces[n].keys())
        a = torch.stack([traces[ref][k] for k in keys]).to(torch.float64)
        b = torch.stack([traces[n][k] for k in keys]).to(torch.float64)
        R, rmsd = _kabsch(a, b)
        if rmsd < max_rmsd:
            ops.append(R)
    return torch.stack(ops)


def _axis_order(R: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Return the unit axis and fold ``round(2 pi / angle)`` of a rotation (1: identity)."""
    angle = float(geodesic_distance(torch.eye(3, dtype=R.dtype), R))
    if angle < math.radians(5.0):
        return torch.tensor([0.0, 0.0, 1.0], dtype=R.dtype), 1
    w, v = torch.linalg.eig(R)
    axis = v[:, int(torch.argmin((w - 1).abs()))].real
    return axis / torch.linalg.vector_norm(axis), round(2 * math.pi / angle)


def symmetry_frame_from_chains(atoms: Atoms, symmetry: str) -> tuple[torch.Tensor, float]:
    """Rotation ``Q`` taking a symmetric model's axes onto RELION's, and the frame error.

    Parameters
    ----------
    atoms
        Full assembly (every copy present).
    symmetry
        Expected point group (``C1``, ``Cn``, ``Dn``, ``O``, ``T``; see the module docstring).

    Returns
    -------
    Q, error_deg
        ``(3, 3)`` float64 rotation (new coordinates ``Q (x - c)``) and the largest angle in
        degrees between an operator of the model in the new frame and the nearest element
        of :func:`cryopose.geometry.symmetry_group`.

    Raises
    ------
    InputError
        The chains do not give as many operators as the group has, or the error exceeds
        3 degrees.
    """
    group = symmetry_group(symmetry)
    if len(group) == 1:
        return torch.eye(3, dtype=torch.float64), 0.0
    ops = _chain_operators(atoms)
    if len(ops) != len(group):
        raise InputError(
            None,
            f"the model's chains give {len(ops)} symmetry operators, expected {len(group)} "
            f"for {symmetry}",
        )
    axes = [_axis_order(R) for R in ops]
    top = max(o for _, o in axes)
    ez = next(a for a, o in axes if o == top)
    perp = [(a, o) for a, o in axes if o > 1 and abs(float(a @ ez)) < math.cos(math.radians(80))]
    if perp:
        best = max(o for _, o in perp)
        ex = next(a for a, o in perp if o == best)
    else:
        helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        ex = helper if abs(float(helper @ ez)) < 0.9 else torch.tensor([0.0, 1.0, 0.0]).double()
    ex = ex - (ex @ ez) * ez
    ex = ex / torch.linalg.vector_norm(ex)
    Q = torch.stack([ex, torch.linalg.cross(ez, ex), ez])
    mapped = Q @ ops @ Q.T
    err = geodesic_distance(mapped[:, None], group[None]).min(1).values.max()
    err_deg = math.degrees(float(err))
    if err_deg > _FRAME_TOL_DEG:
        raise InputError(
            None, f"model operators miss RELION's {symmetry} axes by {err_deg:.1f} degrees"
        )
    return Q, err_deg


# ----------------------------------------------------------------------------- entries


def _data_root() -> Path:
    from importlib import resources

    return Path(str(resources.files("cryopose.data")))


def _entry_map(name: str, box: int) -> tuple[torch.Tensor, float, dict[str, Any]]:
    """Symmetric map of an entry in RELION's frame, its pixel size and provenance."""
    rel, symmetry, assembly = BENCHMARK_STRUCTURES[name]
    path = _data_root() / rel
    atoms = read_structure(path, assembly=assembly)
    Q, err = symmetry_frame_from_chains(atoms, symmetry)
    centre = atoms.center_of_mass()
    coords = (atoms.coordinates.to(torch.float64) - centre) @ Q.T
    atoms = dataclasses.replace(atoms, coordinates=coords)
    radius = float(torch.linalg.vector_norm(coords, dim=1).max())
    # The particle fills ~75 % of the box, as in extracted particles.
    angpix = round(2 * radius / (0.75 * box), 3)
    volume = density_map(
        atoms, angpix, box, resolution=2.0 * angpix, center=torch.zeros(3, dtype=torch.float64)
    )
    info = {
        "structure": rel,
        "assembly": assembly,
        "symmetry": symmetry,
        "frame_error_deg": err,
        "particle_diameter_angst": 2 * radius,
    }
    return volume, angpix, info


def soft_mask(volume: torch.Tensor, threshold: float = 0.05, sigma_px: float = 1.5) -> torch.Tensor:
    """Soft mask around a map: ``volume`` smoothed, thresholded, and its edge softened.

    Parameters
    ----------
    volume
        ``(D, D, D)`` map (positive density).
    threshold
        Fraction of the smoothed map's maximum that is inside.
    sigma_px
        Gaussian width in voxels of both smoothings (the mask reaches ~2 sigma beyond the
        thresholded region).

    Returns
    -------
    torch.Tensor
        ``(D, D, D)`` float32 in ``[0, 1]``.
    """
    smooth = gaussian_filter(volume.to(torch.float32), sigma_px, ndim=3)
    inside = (smooth > threshold * float(smooth.max())).to(torch.float32)
    # Softening a binary mask by the same Gaussian, then doubling, keeps its edge at ~1.
    return (2.0 * gaussian_filter(inside, sigma_px, ndim=3)).clamp(0.0, 1.0)


def make_benchmark_entries(
    out_dir: str | Path,
    entries: Sequence[str] = DEFAULT_ENTRIES,
    n_particles: int = 2000,
    box: int = 64,
    snr: float = 0.1,
    seed: int = 0,
    progress: bool = False,
) -> list[BenchmarkEntry]:
    """Simulate CESPED-protocol entries ``out_dir/<entry>/`` (kept when already complete).

    Parameters
    ----------
    out_dir
        Benchmark folder.
    entries
        Names from :data:`BENCHMARK_STRUCTURES` (``C1``, ``D7``, ``O``, ``C6``, ``D4``).
    n_particles
        Particles per entry (half of them in each ``rlnRandomSubset``).
    box
        Image box in pixels; the pixel size is chosen so that the particle spans 75 % of it.
    snr
        Signal-to-noise ratio of the images (inside the particle's disc).
    seed
        Seed of poses, CTFs and noise (entry ``k`` uses ``seed + k``).
    progress
        Progress bars.

    Returns
    -------
    list[BenchmarkEntry]
        In the order asked.
    """
    out = Path(out_dir)
    result = []
    for k, name in enumerate(entries):
        if name not in BENCHMARK_STRUCTURES:
            raise InputError(
                None,
                f"unknown benchmark entry {name!r}; expected one of {list(BENCHMARK_STRUCTURES)}",
                where="argument entries",
            )
        folder = out / name
        params = {"n_particles": n_particles, "box": box, "snr": snr, "seed": seed + k}
        existing = folder / "entry.json"
        if existing.is_file():
            info = json.loads(existing.read_text(encoding="utf-8"))
            if all(info.get(key) == value for key, value in params.items()):
                result.append(load_benchmark_entry(folder))
                continue
        volume, angpix, info = _entry_map(name, box)
        config = SimulationConfig(
            n=n_particles,
            snr=snr,
            seed=seed + k,
            symmetry=info["symmetry"],
            particle_diameter_angst=info["particle_diameter_angst"],
            defocus_range=(8000.0, 20000.0),
        )
        folder.mkdir(parents=True, exist_ok=True)
        write_map(folder / "ground_truth.mrc", volume, angpix=angpix)
        write_map(folder / "mask.mrc", soft_mask(volume), angpix=angpix)
        simulate_particles(volume, angpix, folder, config, progress=progress)
        info |= params | {
            "name": name,
            "angpix": angpix,
            "star": "particles.star",
            "mask": "mask.mrc",
        }
        with atomic_path(existing) as tmp:
            tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        result.append(load_benchmark_entry(folder))
    return result


def load_benchmark_entry(folder: str | Path) -> BenchmarkEntry:
    """Read an entry written by :func:`make_benchmark_entries` (``entry.json``)."""
    folder = Path(folder)
    path = folder / "entry.json"
    if not path.is_file():
        raise InputError(path, "no entry.json: not a complete benchmark entry")
    info = json.loads(path.read_text(encoding="utf-8"))
    for key in ("name", "symmetry", "star"):
        if key not in info:
            raise InputError(path, f"missing key {key!r}")
    return BenchmarkEntry(info["name"], folder, folder / info["star"], info["symmetry"], info)


def load_cesped_entry(folder: str | Path) -> BenchmarkEntry:
    """Read a CESPED entry as downloaded by ``cesped`` (its local layout, version 25.12).

    CESPED keeps each target in ``<benchmarkDir>/<targetName>/`` as ``particles_0.star`` +
    ``particles_0.mrcs`` and ``particles_1.star`` + ``particles_1.mrcs`` (the two half sets,
    image names relative to that folder) and ``info_0.json`` / ``info_1.json`` holding
    ``{"symmetry": ...}``. What is assumed here:

    * half set ``particles_0`` is ``rlnRandomSubset`` 1 and ``particles_1`` is 2 (an existing
      ``rlnRandomSubset`` column is overwritten by the file it came from);
    * the symmetry is read from ``info_0.json`` (else ``info_1.json``), ``C1`` when neither
      exists (CESPED always writes one);
    * a ``mask.mrc`` in the folder (CESPED downloads its mask into its working directory;
      copy it there) is recorded in ``info["mask"]``.

    The two halves are written merged as ``particles_merged_cryopose.star`` in the folder,
    which :attr:`BenchmarkEntry.star` points to.

    Raises
    ------
    InputError
        A half-set star file is missing.
    """
    from cryopose.io.particles import write_particles

    folder = Path(folder)
    tables = []
    for half in (0, 1):
        star = folder / f"particles_{half}.star"
        if not star.is_file():
            raise InputError(
                star, "missing: a CESPED entry has particles_0.star and particles_1.star"
            )
        t = read_particles(star, particles_dir=folder)
        t.particles["rlnRandomSubset"] = np.full(len(t), half + 1, dtype=np.int64)
        tables.append(t)
    symmetry, source = "C1", "assumed (no info_*.json)"
    for half in (0, 1):
        info_path = folder / f"info_{half}.json"
        if info_path.is_file():
            data = json.loads(info_path.read_text(encoding="utf-8"))
            if "symmetry" not in data:
                raise InputError(info_path, "expected a key 'symmetry'")
            symmetry, source = str(data["symmetry"]).upper(), info_path.name
            break
    from cryopose.evaluation.gold_standard import _concat

    merged = _concat(tables)
    star = folder / "particles_merged_cryopose.star"
    write_particles(merged, star)
    info: dict[str, Any] = {
        "name": folder.name,
        "symmetry": symmetry,
        "symmetry_source": source,
        "n_particles": len(merged),
        "halves": {"particles_0.star": 1, "particles_1.star": 2},
    }
    if (folder / "mask.mrc").is_file():
        info["mask"] = "mask.mrc"
    return BenchmarkEntry(folder.name, folder, star, symmetry, info)


# ----------------------------------------------------------------------------- leaderboard


@dataclass(frozen=True)
class LeaderboardRow:
    """One (entry, method) result; ``rank`` 1 is the lowest mean angular error of the entry."""

    entry: str
    method: str
    rank: int
    prediction_type: str
    n_particles: int
    mean_error_deg: float
    weighted_mean_error_deg: float
    median_error_deg: float
    delta_pcc: float
    delta_fsc: float
    cross_resolution: float
    gt_resolution: float
    cesped_delta_pcc: float
    cesped_delta_resolution: float
    report: str


def _row(entry: str, method: str, rep: GoldStandardReport, report_path: Path) -> dict[str, Any]:
    return {
        "entry": entry,
        "method": method,
        "prediction_type": rep.prediction_type,
        "n_particles": rep.n_particles,
        "mean_error_deg": rep.mean_error_deg,
        "weighted_mean_error_deg": rep.weighted_mean_error_deg,
        "median_error_deg": rep.median_error_deg,
        "delta_pcc": rep.delta_pcc,
        "delta_fsc": rep.delta_fsc,
        "cross_resolution": rep.cross_halves.resolution_0143,
        "gt_resolution": rep.gt_halves.resolution_0143,
        "cesped_delta_pcc": rep.cesped.delta_pcc,
        "cesped_delta_resolution": rep.cesped.delta_resolution,
        "report": str(report_path),
    }


def _random_predictions(table: ParticleTable, seed: int) -> ParticleTable:
    g = torch.Generator().manual_seed(seed)
    out = table.subset(np.arange(len(table)))
    out.set_rotations(uniform_poses(len(table), g).to(torch.float64))
    return out


def leaderboard_markdown(rows: Sequence[LeaderboardRow]) -> str:
    """Markdown table of a leaderboard (one line per entry and method, ranked per entry)."""
    head = (
        "| entry | rank | method | type | MAnE (deg) | wMAnE (deg) | median (deg) | dPCC | "
        "dFSC (A) | res cross (A) | res GT (A) | CESPED dPCC | CESPED dres (A) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r.entry} | {r.rank} | {r.method} | {r.prediction_type} | "
            f"{r.mean_error_deg:.2f} | {r.weighted_mean_error_deg:.2f} | "
            f"{r.median_error_deg:.2f} | {r.delta_pcc:.4f} | {r.delta_fsc:.2f} | "
            f"{r.cross_resolution:.2f} | {r.gt_resolution:.2f} | {r.cesped_delta_pcc:.4f} | "
            f"{r.cesped_delta_resolution:.2f} |"
        )
    return "\n".join(lines) + "\n"


def run_benchmark(
    out_dir: str | Path,
    entries: Sequence[str] = DEFAULT_ENTRIES,
    n_particles: int = 2000,
    box: int = 64,
    snr: float = 0.1,
    seed: int = 0,
    predictions_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> list[LeaderboardRow]:
    """Build missing entries, evaluate every method and write the leaderboard.

    Parameters
    ----------
    out_dir
        Benchmark folder: entries in ``out_dir/<entry>/``, reports in
        ``out_dir/results/<entry>/<method>/``, ``leaderboard.md`` and ``leaderboard.json``.
    entries, n_particles, box, snr, seed
        See :func:`make_benchmark_entries`.
    predictions_dir
        Folder holding ``predictions/<method>/<entry>.star`` (default ``out_dir``). Methods
        named ``ground_truth`` or ``random`` are reserved for the references.
    device, progress
        Reconstruction device; progress bars.

    Returns
    -------
    list[LeaderboardRow]
        Sorted by entry (in the order asked), then by mean angular error.
    """
    out = Path(out_dir)
    built = make_benchmark_entries(out, entries, n_particles, box, snr, seed, progress)
    pred_root = Path(predictions_dir if predictions_dir is not None else out) / "predictions"
    methods = (
        sorted(p.name for p in pred_root.iterdir() if p.is_dir()) if pred_root.is_dir() else []
    )
    for reserved in ("ground_truth", "random"):
        if reserved in methods:
            raise InputError(pred_root / reserved, f"method name {reserved!r} is reserved")
    rows: list[dict[str, Any]] = []
    for k, entry in enumerate(built):
        truth = entry.table()
        reference = reconstruct_reference(truth, entry.symmetry, device, progress)
        candidates: list[tuple[str, ParticleTable | Path]] = [
            ("ground_truth", truth),
            ("random", _random_predictions(truth, seed + 1000 + k)),
        ]
        candidates += [
            (m, pred_root / m / f"{entry.name}.star")
            for m in methods
            if (pred_root / m / f"{entry.name}.star").is_file()
        ]
        for method, pred in candidates:
            pred_table = pred if isinstance(pred, ParticleTable) else read_particles(pred)
            ptype: PredictionType = (
                "SO3xR2" if isinstance(pred, Path) and pred_table.has_shifts else "SO3"
            )
            report_dir = out / "results" / entry.name / method
            rep = evaluate_gold_standard(
                pred_table,
                truth,
                entry.symmetry,
                ptype,
                mask=entry.mask,
                out_dir=report_dir,
                device=device,
                progress=progress,
                reference=reference,
            )
            rows.append(_row(entry.name, method, rep, report_dir / "report.json"))
    ranked = _rank(rows, [e.name for e in built])
    with atomic_path(out / "leaderboard.json") as tmp:
        tmp.write_text(
            json.dumps([dataclasses.asdict(r) for r in ranked], indent=2) + "\n", encoding="utf-8"
        )
    with atomic_path(out / "leaderboard.md") as tmp:
        tmp.write_text(leaderboard_markdown(ranked), encoding="utf-8")
    return ranked


def _rank(rows: list[dict[str, Any]], order: list[str]) -> list[LeaderboardRow]:
    ranked = []
    for name in order:
        mine = sorted((r for r in rows if r["entry"] == name), key=lambda r: r["mean_error_deg"])
        ranked += [LeaderboardRow(rank=i + 1, **r) for i, r in enumerate(mine)]
    return ranked
