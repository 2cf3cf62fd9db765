"""Simulated particle datasets: RELION 3.1 star file + image stacks from a map.

:func:`simulate_particles` draws, from one seed, a pose, an origin and CTF parameters for
every particle, projects the map at those poses (one :class:`~cryopose.imaging.Projector`,
so the volume's Fourier transform is computed once), applies the CTF, adds white Gaussian
noise at a target SNR, optionally replaces a fraction of the images with junk
(:mod:`cryopose.simulate.junk`), and writes::

    out_dir/particles_000.mrcs, particles_001.mrcs, ...   chunk_size images each
    out_dir/particles.star                                RELION 3.1 (data_optics, data_particles)
    out_dir/simulation.json                               the config and derived numbers

The same seed gives byte-identical stacks, star and json. Images are streamed one batch at a
time into memory-mapped stacks, so memory does not grow with the number of particles.

Signal-to-noise ratio
---------------------
As in cryoDRGN's ``add_noise`` (``--mask circular``) and the simulated sets of the
cryoPARES/CESPED line of work, SNR is a dataset-wide ratio of variances::

    SNR = mean over particles of var(clean image inside the mask) / sigma_noise^2

where the clean image is the CTF-modulated projection (what the detector would see without
noise), the mask is the disc of the particle's radius centred in the box (``snr_region =
"mask"``; ``"image"`` uses every pixel), and one noise level ``sigma_noise`` is used for the
whole dataset (a fixed electron dose), so images at high defocus, which carry more
low-frequency signal, have a higher SNR than those close to focus. The mean signal variance
is measured on the first ``calibration_size`` true particles (all of them for small sets).

Star file conventions
---------------------
Angles are RELION's (rlnAngleRot/Tilt/Psi, degrees); origins rlnOriginXAngst/YAngst carry
RELION's sign (the particle's centre sits at minus the origin). Defocus is drawn per fake
micrograph (``particles_per_micrograph`` consecutive particles share rlnMicrographName, mean
defocus, astigmatism and its angle) plus an optional per-particle jitter; rlnDefocusU >=
rlnDefocusV. With ``ctf=False`` the CTF columns are omitted (the images carry no CTF).
``rlnRandomSubset`` splits the particles into two random halves of sizes ``ceil(n/2)`` and
``floor(n/2)``. ``cryoposeIsJunk`` (0/1) and ``cryoposeJunkKind`` (``"none"`` or a junk
kind) mark junk; RELION keeps unknown labels with a warning.

Example usage::

    from cryopose.io.mrc import read_map
    volume, angpix = read_map("map.mrc")
    simulate_particles(volume, angpix, "sim", SimulationConfig(n=10000, snr=0.05, seed=1))
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import torch
from rich.progress import Progress, TaskID

from cryopose._atomic import atomic_path
from cryopose.errors import InputError
from cryopose.geometry.euler import euler_to_matrix, matrix_to_euler
from cryopose.geometry.symmetry import symmetry_order
from cryopose.imaging.ctf import ctf_2d
from cryopose.imaging.masks import circular_mask, radial_distance
from cryopose.imaging.projection import Projector
from cryopose.imaging.resample import fourier_resize, window_centred
from cryopose.io.mrc import write_map
from cryopose.io.particles import ParticleTable, write_particles
from cryopose.simulate.density import density_from_file
from cryopose.simulate.junk import JUNK_KINDS, junk_images, random_blob_volume
from cryopose.simulate.poses import PREFERRED_VIEWS, preferred_orientation_poses, uniform_poses

__all__ = [
    "SimulationConfig",
    "estimate_radius_px",
    "load_config",
    "simulate_from_structure",
    "simulate_particles",
]

_STACK_LABEL = b"cryopose simulated particles"


@dataclass
class SimulationConfig:
    """Everything that defines a simulated dataset (saved as ``simulation.json``).

    Attributes
    ----------
    n
        Number of particle images (junk included).
    box
        Image box size in pixels; ``None``: the map's (after rescaling). The map is cropped or
        zero-padded (centred) to this box.
    angpix
        Pixel size of the images in Angstrom; ``None``: the map's. Otherwise the map is
        Fourier-resampled first and the pixel size actually reached (``angpix_map * D / M``
        for an integer box M) is written.
    snr
        Target signal-to-noise ratio (see the module docstring); ``None``: no noise.
    noise
        ``False`` writes the clean images while drawing everything else exactly as with
        ``True`` (same poses, CTFs, junk): ``noisy - clean`` is then the added noise.
    snr_region
        ``"mask"`` (disc of the particle radius) or ``"image"`` (whole box) for the signal
        variance.
    particle_diameter_angst
        Particle diameter in Angstrom (SNR mask, junk displacements); ``None``: estimated from
        the map (:func:`estimate_radius_px`).
    ctf
        Multiply by RELION's CTF.
    defocus_range
        ``(min, max)`` mean defocus ``(dfU + dfV) / 2`` in Angstrom, drawn uniformly per
        micrograph.
    astigmatism_max
        ``dfU - dfV`` is uniform in ``[0, astigmatism_max]`` Angstrom per micrograph; the
        astigmatism angle rlnDefocusAngle is uniform in [0, 180) degrees.
    defocus_jitter
        Standard deviation (Angstrom) of an extra per-particle defocus offset (particle
        height in the ice), added to dfU and dfV alike.
    voltage, cs, amplitude_contrast
        kV, mm, fraction (RELION's rlnVoltage, rlnSphericalAberration, rlnAmplitudeContrast).
    bfactor
        rlnCtfBfactor in A^2 (envelope of the CTF; 0 for none).
    shift_sigma_angst, shift_max_angst
        Each origin component is a Gaussian of this sigma truncated to ``[-max, max]``
        Angstrom (sigma 0: no shifts).
    pose_distribution
        ``"uniform"`` or a kind of
        :func:`cryopose.simulate.poses.preferred_orientation_poses` (``"top"``,
        ``"top-side"``, ``"side"``).
    pose_concentration
        von Mises-Fisher kappa of the preferred views.
    symmetry
        Point group of the map (``"C1"``, ``"D7"``, ...). Recorded for downstream evaluation;
        it does not change the simulation.
    junk_fraction
        Fraction of the ``n`` images that are junk; exactly ``round(junk_fraction * n)``.
    junk_kinds
        Kinds of junk (:data:`cryopose.simulate.junk.JUNK_KINDS`), used in equal numbers.
    particles_per_micrograph
        Consecutive particles that share a fake micrograph and its CTF.
    seed
        Seed of every random draw.
    chunk_size
        Images per ``.mrcs`` file.
    batch_size
        Images projected at once (bounds memory; results do not depend on it).
    calibration_size
        Particles used to measure the mean signal variance.
    """

    n: int = 1000
    box: int | None = None
    angpix: float | None = None
    snr: float | None = 0.1
    noise: bool = True
    snr_region: str = "mask"
    particle_diameter_angst: float | None = None
    ctf: bool = True
    defocus_range: tuple[float, float] = (5000.0, 25000.0)
    astigmatism_max: float = 1000.0
    defocus_jitter: float = 0.0
    voltage: float = 300.0
    cs: float = 2.7
    amplitude_contrast: float = 0.1
    bfactor: float = 0.0
    shift_sigma_angst: float = 3.0
    shift_max_angst: float = 10.0
    pose_distribution: str = "uniform"
    pose_concentration: float = 20.0
    symmetry: str = "C1"
    junk_fraction: float = 0.0
    junk_kinds: tuple[str, ...] = field(default=JUNK_KINDS)
    particles_per_micrograph: int = 100
    seed: int = 0
    chunk_size: int = 1000
    batch_size: int = 256
    calibration_size: int = 512

    def validate(self) -> None:
        """Raise :class:`InputError` for values that cannot be simulated."""

        def bad(name: str, expected: str) -> InputError:
            return InputError(
                None, f"{expected}, got {getattr(self, name)!r}", where=f"config {name}"
            )

        if self.n < 1:
            raise bad("n", "expected at least 1 particle")
        if self.box is not None and self.box < 2:
            raise bad("box", "expected a box of at least 2 pixels")
        if self.angpix is not None and not self.angpix > 0:
            raise bad("angpix", "expected a positive pixel size")
        if self.snr is not None and not self.snr > 0:
            raise bad("snr", "expected a positive SNR or None")
        if self.snr_region not in ("mask", "image"):
            raise bad("snr_region", "expected 'mask' or 'image'")
        lo, hi = self.defocus_range
        if not 0 <= lo <= hi:
            raise bad("defocus_range", "expected 0 <= min <= max (Angstrom)")
        if self.astigmatism_max < 0 or self.defocus_jitter < 0:
            raise bad("astigmatism_max", "expected astigmatism_max, defocus_jitter >= 0")
        if not 0 <= self.amplitude_contrast < 1:
            raise bad("amplitude_contrast", "expected 0 <= amplitude contrast < 1")
        if self.shift_sigma_angst < 0 or self.shift_max_angst < 0:
            raise bad("shift_sigma_angst", "expected non-negative shift sigma and maximum")
        if self.pose_distribution != "uniform" and self.pose_distribution not in PREFERRED_VIEWS:
            raise bad("pose_distribution", f"expected uniform or one of {list(PREFERRED_VIEWS)}")
        if not 0 <= self.junk_fraction <= 1:
            raise bad("junk_fraction", "expected a fraction in [0, 1]")
        if self.junk_fraction > 0 and (
            not self.junk_kinds or set(self.junk_kinds) - set(JUNK_KINDS)
        ):
            raise bad("junk_kinds", f"expected a non-empty subset of {list(JUNK_KINDS)}")
        for name in ("particles_per_micrograph", "chunk_size", "batch_size", "calibration_size"):
            if getattr(self, name) < 1:
                raise bad(name, "expected a positive integer")
        symmetry_order(self.symmetry)  # raises InputError naming a bad group

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SimulationConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise :class:`InputError`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(None, f"unknown simulation settings {unknown}")
        kw = dict(values)
        for key in ("defocus_range", "junk_kinds"):
            if key in kw:
                kw[key] = tuple(kw[key])
        return cls(**kw)


def load_config(path: str | Path) -> SimulationConfig:
    """Read the config saved by :func:`simulate_particles` (``simulation.json``).

    Parameters
    ----------
    path
        ``simulation.json``.

    Returns
    -------
    SimulationConfig
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return SimulationConfig.from_dict(data["config"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InputError(p, f"not a cryopose simulation.json: {err}") from err


# ----------------------------------------------------------------------------- helpers


def _seed_generators(seed: int, names: Iterable[str]) -> dict[str, torch.Generator]:
    """Make independent CPU generators, one per purpose.

    Separate streams mean that e.g. turning noise off leaves poses and CTFs unchanged.
    """
    names = list(names)
    children = np.random.SeedSequence(seed).spawn(len(names))
    return {
        name: torch.Generator().manual_seed(int(child.generate_state(1, np.uint64)[0] >> 1))
        for name, child in zip(names, children, strict=True)
    }


def estimate_radius_px(volume: torch.Tensor, fraction: float = 0.99) -> float:
    """Radius (voxels) of the centred sphere holding ``fraction`` of the map's positive mass.

    Parameters
    ----------
    volume
        ``(D, D, D)`` map, origin at ``D // 2``.
    fraction
        Fraction of ``sum(max(volume, 0))`` inside the radius.

    Returns
    -------
    float
        Radius in voxels, clipped to ``[2, D / 2 - 1]``.
    """
    d = volume.shape[-1]
    r = radial_distance(volume.shape, dtype=torch.float64).reshape(-1)
    mass = volume.to(torch.float64).clamp_min(0.0).reshape(-1)
    total = float(mass.sum())
    hi = max(d / 2.0 - 1.0, 2.0)
    if total <= 0:
        return hi
    order = torch.argsort(r)
    cum = torch.cumsum(mass[order], dim=0)
    k = int(torch.searchsorted(cum, torch.tensor(fraction * total, dtype=torch.float64)))
    radius = float(r[order][min(k, len(r) - 1)])
    return min(max(radius, 2.0), hi)


def _truncated_normal(
    shape: tuple[int, ...], sigma: float, limit: float, generator: torch.Generator
) -> torch.Tensor:
    """Gaussian(0, sigma) truncated to [-limit, limit], by inverting the CDF (one draw each)."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    if sigma <= 0 or limit <= 0:
        return torch.zeros(shape, dtype=torch.float64)
    p = torch.special.ndtr(torch.tensor(limit / sigma, dtype=torch.float64))
    out: torch.Tensor = sigma * torch.special.ndtri((1.0 - p) + u * (2.0 * p - 1.0))
    return out


def _prepare_volume(
    volume: torch.Tensor, angpix: float, config: SimulationConfig
) -> tuple[torch.Tensor, float]:
    """Resample the map to the target pixel size and window it to the target box."""
    if volume.dim() != 3 or len(set(volume.shape)) != 1:
        raise InputError(None, f"expected a cubic (D, D, D) map, got {tuple(volume.shape)}")
    vol = volume.to(torch.float32)
    d = int(vol.shape[0])
    apix = float(angpix)
    if config.angpix is not None and abs(config.angpix - apix) > 1e-6 * apix:
        m = max(round(d * apix / config.angpix), 2)
        vol = fourier_resize(vol, m, ndim=3)
        apix = apix * d / m
    box = int(vol.shape[0]) if config.box is None else config.box
    if box != vol.shape[0]:
        vol = window_centred(vol, box, ndim=3)
    return vol.contiguous(), apix


def _draw_table(
    config: SimulationConfig, gens: dict[str, torch.Generator]
) -> tuple[pd.DataFrame, list[str]]:
    """Per-particle star columns (no image names yet) and the junk kind of every row."""
    n = config.n
    if config.pose_distribution == "uniform":
        R = uniform_poses(n, gens["poses"])
    else:
        R = preferred_orientation_poses(
            n, gens["poses"], kind=config.pose_distribution, concentration=config.pose_concentration
        )
    g = gens["params"]
    shifts = _truncated_normal((n, 2), config.shift_sigma_angst, config.shift_max_angst, g)
    n_mics = math.ceil(n / config.particles_per_micrograph)
    lo, hi = config.defocus_range
    mean_df = lo + (hi - lo) * torch.rand(n_mics, generator=g, dtype=torch.float64)
    astig = config.astigmatism_max * torch.rand(n_mics, generator=g, dtype=torch.float64)
    angle = 180.0 * torch.rand(n_mics, generator=g, dtype=torch.float64)
    jitter = config.defocus_jitter * torch.randn(n, generator=g, dtype=torch.float64)
    subset = torch.full((n,), 2, dtype=torch.int64)
    subset[torch.randperm(n, generator=g)[: (n + 1) // 2]] = 1
    # Junk: exact count, random rows, kinds in equal numbers in random order; junk rows get
    # uniform poses.
    n_junk = round(config.junk_fraction * n)
    junk_rows = torch.randperm(n, generator=g)[:n_junk].tolist()
    kinds = ["none"] * n
    for i, row in enumerate(junk_rows):
        kinds[row] = config.junk_kinds[i % len(config.junk_kinds)]
    junk_R = uniform_poses(n, gens["poses"])
    is_junk = torch.tensor([k != "none" for k in kinds], dtype=torch.bool)
    R = torch.where(is_junk[:, None, None], junk_R, R)

    mic = torch.arange(n) // config.particles_per_micrograph
    angles = matrix_to_euler(R).numpy()
    cols: dict[str, Any] = {
        "rlnAngleRot": angles[:, 0],
        "rlnAngleTilt": angles[:, 1],
        "rlnAnglePsi": angles[:, 2],
        "rlnOriginXAngst": shifts[:, 0].numpy(),
        "rlnOriginYAngst": shifts[:, 1].numpy(),
    }
    if config.ctf:
        cols |= {
            "rlnDefocusU": (mean_df[mic] + astig[mic] / 2.0 + jitter).numpy(),
            "rlnDefocusV": (mean_df[mic] - astig[mic] / 2.0 + jitter).numpy(),
            "rlnDefocusAngle": angle[mic].numpy(),
            "rlnPhaseShift": np.zeros(n),
            "rlnCtfBfactor": np.full(n, float(config.bfactor)),
        }
    cols |= {
        "rlnOpticsGroup": np.ones(n, dtype=np.int64),
        "rlnRandomSubset": subset.numpy(),
        "rlnMicrographName": [f"micrographs/mic_{int(m):06d}.mrc" for m in mic],
        "cryoposeIsJunk": is_junk.to(torch.int64).numpy(),
        "cryoposeJunkKind": kinds,
    }
    return pd.DataFrame(cols), kinds


def _optics(config: SimulationConfig, angpix: float, box: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnImagePixelSize": [angpix],
            "rlnImageSize": [box],
            "rlnVoltage": [float(config.voltage)],
            "rlnSphericalAberration": [float(config.cs)],
            "rlnAmplitudeContrast": [float(config.amplitude_contrast)],
            "rlnImageDimensionality": [2],
        }
    )


def _rows_ctf(
    table: pd.DataFrame, rows: slice | list[int], config: SimulationConfig, box: int, apix: float
) -> torch.Tensor | None:
    """``(b, D, D // 2 + 1)`` CTF of the given rows, or None without CTF."""
    if not config.ctf:
        return None
    sub = table.iloc[rows]

    def col(name: str) -> torch.Tensor:
        return torch.from_numpy(sub[name].to_numpy(dtype=np.float64))

    return ctf_2d(
        (box, box),
        apix,
        col("rlnDefocusU"),
        col("rlnDefocusV"),
        col("rlnDefocusAngle"),
        config.voltage,
        config.cs,
        config.amplitude_contrast,
        phase_shift=col("rlnPhaseShift"),
        bfactor=col("rlnCtfBfactor"),
    )


def _rows_pose(table: pd.DataFrame, rows: slice | list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotations (from the Euler angles as written) and origins of the given rows."""
    sub = table.iloc[rows]
    angles = sub[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(dtype=np.float64)
    shifts = sub[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(dtype=np.float64)
    return euler_to_matrix(torch.from_numpy(angles)), torch.from_numpy(shifts)


def _region_variance(images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(b,)`` variance of each image over the pixels where ``mask`` is true."""
    values = images[:, mask]
    return values.var(dim=1, correction=0)


def _write_stack_streamed(
    path: Path, n: int, box: int, angpix: float, batches: Iterable[torch.Tensor]
) -> None:
    """Write ``n`` images arriving in batches into one float32 MRC stack, atomically.

    Memory-mapped, so only one batch is in memory. The header is deterministic (a fixed
    label, no time stamp) so that equal images give byte-identical files; header statistics
    (min, max, mean, rms) are accumulated over the batches.
    """
    with atomic_path(path) as tmp:
        mrc = mrcfile.new_mmap(tmp, shape=(n, box, box), mrc_mode=2, overwrite=True)
        try:
            start = 0
            lo, hi, total, total2 = math.inf, -math.inf, 0.0, 0.0
            for batch in batches:
                b = batch.detach().to("cpu", torch.float32).numpy()
                mrc.data[start : start + len(b)] = b
                start += len(b)
                b64 = b.astype(np.float64)
                lo, hi = min(lo, float(b64.min())), max(hi, float(b64.max()))
                total += float(b64.sum())
                total2 += float((b64 * b64).sum())
            if start != n:
                raise RuntimeError(f"expected {n} images for {path}, got {start}")
            count = n * box * box
            mean = total / count
            mrc.set_image_stack()
            mrc.voxel_size = angpix
            mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = lo, hi, mean
            mrc.header.rms = math.sqrt(max(total2 / count - mean * mean, 0.0))
            mrc.header.label[0] = _STACK_LABEL
            mrc.header.nlabl = 1
        finally:
            mrc.close()


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- main


def simulate_particles(
    volume: torch.Tensor,
    angpix: float,
    out_dir: str | Path,
    config: SimulationConfig | None = None,
    progress: bool = True,
    other_volume: torch.Tensor | None = None,
) -> Path:
    """Simulate a particle dataset from a map; see the module docstring for the model.

    Parameters
    ----------
    volume
        ``(D, D, D)`` map (z, y, x), origin at ``D // 2``, positive density (any unit).
    angpix
        Voxel size of ``volume`` in Angstrom.
    out_dir
        Output folder (created).
    config
        Simulation settings; defaults to ``SimulationConfig()``.
    progress
        Show a progress bar.
    other_volume
        Optional ``(D', D', D')`` map at the same voxel size, projected for the
        ``"other_protein"`` junk kind (a random blob assembly otherwise).

    Returns
    -------
    pathlib.Path
        ``out_dir / "particles.star"``, written last (its presence means the stacks are
        complete).
    """
    cfg = SimulationConfig() if config is None else config
    cfg.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vol, apix = _prepare_volume(volume, angpix, cfg)
    box = int(vol.shape[0])
    radius = (
        estimate_radius_px(vol)
        if cfg.particle_diameter_angst is None
        else cfg.particle_diameter_angst / 2.0 / apix
    )
    gens = _seed_generators(cfg.seed, ("poses", "params", "junk", "noise"))
    table, kinds = _draw_table(cfg, gens)
    projector = Projector(vol)
    other: Projector | None = None
    if cfg.junk_fraction > 0 and "other_protein" in kinds:
        if other_volume is None:
            other_vol = random_blob_volume(box, radius, gens["junk"])
        else:
            other_vol, _ = _prepare_volume(other_volume, angpix, dataclasses.replace(cfg, box=box))
        other = Projector(other_vol)
    region = (
        circular_mask(box, radius).bool()
        if cfg.snr_region == "mask"
        else torch.ones((box, box), dtype=torch.bool)
    )

    # Mean signal variance of the true particles, on the first calibration_size of them.
    true_rows = torch.tensor([i for i, k in enumerate(kinds) if k == "none"], dtype=torch.long)
    calib = true_rows[: cfg.calibration_size]
    variances = []
    for start in range(0, len(calib), cfg.batch_size):
        rows = calib[start : start + cfg.batch_size].tolist()
        R, s = _rows_pose(table, rows)
        clean = projector.project(R, s, apix, ctf=_rows_ctf(table, rows, cfg, box, apix))
        variances.append(_region_variance(clean.to(torch.float64), region))
    signal_var = float(torch.cat(variances).mean()) if variances else 1.0
    sigma = 0.0 if cfg.snr is None else math.sqrt(signal_var / cfg.snr)

    n_chunks = math.ceil(cfg.n / cfg.chunk_size)
    width = max(3, len(str(n_chunks - 1)))
    names: list[str] = []

    def batches(lo: int, hi: int, bar: Progress, task: TaskID) -> Iterator[torch.Tensor]:
        for start in range(lo, hi, cfg.batch_size):
            stop = min(start + cfg.batch_size, hi)
            yield _simulate_batch(
                table,
                kinds,
                slice(start, stop),
                cfg,
                projector,
                other,
                apix,
                box,
                radius,
                region,
                signal_var,
                sigma,
                gens,
            )
            bar.advance(task, stop - start)

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("simulating particles", total=cfg.n)
        for c in range(n_chunks):
            lo, hi = c * cfg.chunk_size, min((c + 1) * cfg.chunk_size, cfg.n)
            stack = f"particles_{c:0{width}d}.mrcs"
            _write_stack_streamed(out / stack, hi - lo, box, apix, batches(lo, hi, bar, task))
            names += [f"{i + 1:06d}@{stack}" for i in range(hi - lo)]

    table.insert(0, "rlnImageName", names)
    optics = _optics(cfg, apix, box)
    star = out / "particles.star"
    _write_json(
        out / "simulation.json",
        {
            "config": cfg.to_dict(),
            "derived": {
                "angpix": apix,
                "box": box,
                "n_junk": int((table["cryoposeIsJunk"] == 1).sum()),
                "particle_radius_px": radius,
                "signal_variance": signal_var,
                "noise_sigma": sigma,
                "noise_added": bool(cfg.noise and cfg.snr is not None),
                "symmetry_order": symmetry_order(cfg.symmetry),
                "stacks": n_chunks,
            },
        },
    )
    particle_table = ParticleTable(
        particles=table,
        optics=optics,
        blocks={"optics": optics, "particles": table},
        particles_block="particles",
        path=star,
    )
    write_particles(particle_table, star)
    return star


def _simulate_batch(
    table: pd.DataFrame,
    kinds: list[str],
    rows: slice,
    cfg: SimulationConfig,
    projector: Projector,
    other: Projector | None,
    apix: float,
    box: int,
    radius: float,
    region: torch.Tensor,
    signal_var: float,
    sigma: float,
    gens: dict[str, torch.Generator],
) -> torch.Tensor:
    """Clean images of the rows (particles and junk), plus noise: ``(b, D, D)`` float32."""
    R, s = _rows_pose(table, rows)
    ctf = _rows_ctf(table, rows, cfg, box, apix)
    images = projector.project(R, s, apix, ctf=ctf).to(torch.float64)
    batch_kinds = kinds[rows]
    junk = torch.tensor([i for i, k in enumerate(batch_kinds) if k != "none"], dtype=torch.long)
    if len(junk):
        j = junk_images(
            [batch_kinds[i] for i in junk.tolist()],
            projector,
            R[junk],
            s[junk],
            apix,
            radius,
            gens["junk"],
            ctf=None if ctf is None else ctf[junk],
            other=other,
        )
        # Same signal variance as an average particle: junk is not an intensity outlier.
        var = _region_variance(j, region).clamp_min(1e-30)
        images[junk] = j * torch.sqrt(signal_var / var)[:, None, None]
    # Drawn even when noise is off, so both settings consume the same random stream.
    noise = torch.randn(images.shape, generator=gens["noise"], dtype=torch.float64)
    if cfg.noise and cfg.snr is not None:
        images = images + sigma * noise
    return images.to(torch.float32)


def simulate_from_structure(
    path: str | Path,
    angpix: float,
    box: int | None,
    out_dir: str | Path,
    config: SimulationConfig | None = None,
    resolution: float | None = None,
    assembly: str | None = None,
    progress: bool = True,
) -> Path:
    """Simulate particles of an atomic model; also writes ``out_dir/ground_truth.mrc``.

    Parameters
    ----------
    path
        PDB or mmCIF file (optionally gzipped).
    angpix
        Pixel size in Angstrom of the map and images.
    box
        Box in pixels (``None``: fits the model, see
        :func:`cryopose.simulate.density.density_from_file`).
    out_dir
        Output folder.
    config
        Simulation settings; its ``angpix`` and ``box`` are replaced by this function's.
    resolution
        Gaussian low-pass of the map in Angstrom (``None``: none).
    assembly
        Biological assembly to build (``"1"``...), or ``None``.
    progress
        Show a progress bar.

    Returns
    -------
    pathlib.Path
        The particle star file.
    """
    cfg = SimulationConfig() if config is None else config
    # The map is built directly at the requested sampling: nothing left to resample, and the
    # ground truth written is exactly the map projected.
    cfg = dataclasses.replace(cfg, angpix=None, box=None)
    cfg.validate()
    vol = density_from_file(path, angpix, box=box, resolution=resolution, assembly=assembly)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_map(out / "ground_truth.mrc", vol, angpix=angpix)
    return simulate_particles(vol, angpix, out, cfg, progress=progress)
