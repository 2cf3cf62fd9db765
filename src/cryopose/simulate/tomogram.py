"""SHREC-2020-style simulated cryo-electron tomograms with ground truth.

:func:`simulate_tomogram` builds a crowded, cell-like sample of up to 12 protein classes at
1 nm per voxel, images it as a single-axis tilt series and reconstructs it by weighted
back-projection, writing the files of a SHREC 2020 model folder (which
:func:`cryopose.evaluation.shrec.load_truth` reads)::

    grandmodel.mrc          (Z, Y, X) float32 noise-free sample potential, volts
    class_mask.mrc          (Z, Y, X) float32 holding integer class indices, 0 = background
    occupancy_mask.mrc      (Z, Y, X) float32 holding k = line k of particle_locations.txt
    particle_locations.txt  one line per object: ``pdb x y z rotZ1 rotX rotZ2``
    reconstruction.mrc      (Z, Y, X) float32 WBP of the noisy tilt series
    simulation.json         every parameter, the class indices, counts and timings;
                            written last, so its presence means the folder is complete
                            (a reader may stream folders while others are simulated)

Example usage (what ``cryopose tomo simulate -o DIR --size 128`` runs)::

    >>> from cryopose.simulate.tomogram import simulate_tomogram
    >>> simulate_tomogram("model_0", size=128, seed=0)  # doctest: +SKIP
    PosixPath('model_0')

Sample ("grandmodel")
---------------------
* Size ``(Z, Y, X) = (thickness, size, size)`` voxels of 10 A; by default ``thickness =
  round(size * 200 / 512)`` (SHREC: 512 x 512 x 200).
* Class densities: each class's Coulomb potential at 10 A per voxel (voxel-averaged, see
  :mod:`cryopose.simulate.density`), computed once per class, of its biological assembly 1
  (``REMARK 350 BIOMT``) when the file defines one, else of the deposited chains
  (``assembly="biological"``, the default); or always of the deposited chains, the entry's
  asymmetric unit (``assembly="deposited"``). The SHREC mass table that sets the
  evaluation's size groups lists asymmetric units, so ``"deposited"`` places the masses
  that table names (e.g. 3gl1 85 kDa, twice 1s3x, the Hsp70 domain of the same fold; as a
  biological assembly it is one 39 kDa chain), while ``"biological"`` places what the
  entries say the proteins are (see :data:`cryopose.evaluation.shrec.SHREC_CLASS_MASS_KDA`
  for the masses of both). A class given
  as a map (``.mrc``, e.g. 4cr2) is resampled to 10 A if needed, cropped around its centre of
  mass, and scaled so that its integral equals :data:`POTENTIAL_PER_KDA` times the class mass
  (:data:`cryopose.evaluation.shrec.SHREC_CLASS_MASS_KDA`), as for the atomic classes; a map
  of a class of unknown mass is scaled so that the 90th percentile of its support is
  :data:`PROTEIN_INTERIOR_V` (what the atomic classes show).
* Particles: classes are placed in rounds holding each class once, largest first within a
  round (so counts stay balanced as the volume fills up), each in a uniformly random
  orientation (rotated by trilinear resampling) at a random integer voxel with its whole box
  inside the volume. A placement is rejected when the particle's mask (potential above
  ``mask_threshold`` volts, plus its centre voxel so that a pick at the centre always hits
  it) meets a voxel already occupied; each particle gets ``max_tries`` attempts, and
  placement stops at ``n_particles`` (default: SHREC's crowding, 2,000 per 512 x 512 x 200
  voxels) or after ``max_failures`` particles in a row that found no room.
* Ice: vitreous ice of constant potential ``ice_potential`` (4.5 V) plus white Gaussian
  "density noise" of standard deviation ``ice_noise`` fills the volume; protein displaces it
  (the ice is weighted by ``1 - min(1, particle potential / PROTEIN_INTERIOR_V)``).
* Non-protein objects, as in SHREC 2020, listed in ``particle_locations.txt`` with angles
  ``0 0 0`` and ignored by the SHREC evaluation: ``fiducial`` (gold beads, 10 nm diameter,
  30 V, default 10 per 512 x 512 x 200 voxels) and ``vesicle`` (a lipid bilayer shell,
  4 nm thick, 6 V, radius 15-40 nm, default 4 per 512 x 512 x 200). They are placed first,
  without overlap, and their mask voxels are occupied (a vesicle's lumen stays free).

Class indices (``class_mask.mrc``): ``1 + position`` of the class in ``classes``. The default
order is SHREC 2020's alphabetical one, 1bxn=1, 1qvr=2, 1s3x=3, 1u6g=4, 2cg9=5, 3cf3=6,
3d2f=7, 3gl1=8, 3h84=9, 3qm1=10, 4cr2=11, 3j9i=12 (3j9i stands in for 5mrc), restricted to
the classes found in ``structures_dir``; then ``fiducial`` and ``vesicle`` take the next two
indices. ``simulation.json`` records the mapping (``class_index``).

Particle table and rotation convention
--------------------------------------
``x y z`` is the voxel (0-based, x = column, volume indexed ``[z, y, x]``) where the class
density's centre (its box index ``box // 2``, the centre of mass for atomic models) sits.
``rotZ1 rotX rotZ2`` = ``(phi, theta, psi)`` in degrees are intrinsic Z-X'-Z'' Euler angles
of an **active** rotation ``R = Rz(phi) @ Rx(theta) @ Rz(psi)`` with
``Rz(a) = [[cos a, -sin a, 0], [sin a, cos a, 0], [0, 0, 1]]``,
``Rx(a) = [[1, 0, 0], [0, cos a, -sin a], [0, sin a, cos a]]`` acting on column vectors
``(x, y, z)``; scipy's ``Rotation.from_euler("ZXZ", [phi, theta, psi], degrees=True)``. The
placed particle is ``V(r) = V_class(R^T (r - c))`` with ``c = (x, y, z)``: rotating the class
density by ``R`` and pasting its centre at ``c`` reproduces the grandmodel there (tested).
(This is cryopose's precise reading of SHREC's "ZXZ"; SHREC did not publish one.)

Tilt series and reconstruction
------------------------------
Tilt axis ``y``; ``n_tilts`` angles ``linspace(-tilt_range, tilt_range, n_tilts)`` (default
40 from -60 to +60 in steps of 3.08 degrees, as the brief's signature; ``n_tilts=41`` gives
3 degree steps with a 0 degree tilt). The geometry is RELION's projection at Euler
``(0, tilt, 0)`` (:mod:`cryopose.imaging.backprojection`). Per tilt:

1. line integral of ``grandmodel - ice_potential`` (constant ice left out, so that rays
   leaving a finite box through its sides do not print ramps; a constant only shifts the DC,
   which the CTF and the ramp filter barely pass);
2. optional dose attenuation: with ``dose_per_tilt`` (e/A^2) and a dose-symmetric order
   (0 degrees first, then increasing ``|tilt|``), frequencies are damped by
   ``exp(-N / (2 N_e(k)))``, ``N`` the dose received before the tilt and ``N_e(k) = 0.245
   k^-1.665 + 2.81`` (Grant & Grigorieff 2015, 300 kV);
3. structural noise: white Gaussian noise added before the CTF;
4. RELION's CTF (:func:`cryopose.imaging.ctf.ctf_2d`): defocus 3 um underfocus, 300 kV,
   Cs 2.7 mm, amplitude contrast 0.08, 10 A pixels;
5. detector noise: white Gaussian.

SNR definition: for each tilt, ``SNR = var(s) / var(n)`` over the image pixels, with ``s``
the CTF-modulated noiseless projection (steps 1, 2 and 4) and ``n`` the sum of the structural
noise after the CTF and the detector noise; ``structural_fraction`` (0.5) of ``var(n)`` is
structural. The noise is scaled per tilt so the SNR is ``snr`` at every tilt.

This SNR is not SHREC's, whose simulator set the noise through an electron dose: the same
number is much harsher here. :mod:`cryopose.tomo.detectability` measures what a given SNR
allows (``cryopose tomo detectability DIR``): in a 256 x 256 x 100 crowded sample the oracle
matched filter (each particle's exact density, pose and position) scores z >= 4 for 35% of
the small proteins at SNR 0.05, 74% at 0.2, 95% at 0.5 and 97% at 1
(``benchmarks/bench_detectability.py``). SHREC 2020's best picker reached F1 0.949 (small
proteins 0.826) on SHREC's data, which needs nearly every particle detectable: SNR 0.5 or more
in these units. The default ``snr`` is SHREC's nominal 0.004, at which almost nothing is.

Reconstruction: the tilt images are phase-flipped (``phase_flip=True``), ramp-filtered and
back-projected (:func:`cryopose.imaging.backprojection.wbp`) into a volume of the grandmodel's
shape. Protein is bright (positive), as in the grandmodel.

Simplifications compared with SHREC 2020's simulator
----------------------------------------------------
SHREC used a multislice simulation (TEM-simulator style) of the 3D potential with an electron
dose budget, Poisson shot noise, a detector MTF/DQE, an imaginary (amplitude) potential for
inelastic scattering and a defocus gradient across tilted images, and reconstructed 512^3
volumes. Here: the projection assumption (weak phase object, no multislice propagation or
Ewald sphere), the CTF is applied to whole images with one defocus (no defocus gradient with
the height in a tilted sample), noise is Gaussian at a prescribed SNR rather than Poisson from
a dose, no MTF/DQE, no beam-induced motion or tilt-series misalignment, amplitude contrast only
through the CTF's constant ``Q0``, the sample is finite (ends at the box edges, no
neighbouring cytoplasm), the ice noise is white and the membranes are uniform shells. The
reconstruction has the grandmodel's thickness, not 512 slices.

Memory and time: peak memory is about 6 volumes of the grandmodel's size (grandmodel, masks,
ice noise, two layouts for the projector, reconstruction: ~1.2 GB at 512 x 512 x 200).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gemmi
import torch
import torch.nn.functional as F

from cryopose._atomic import atomic_path
from cryopose.errors import InputError
from cryopose.evaluation.shrec import SHREC_CLASS_MASS_KDA
from cryopose.imaging.backprojection import project_tilt_series, wbp
from cryopose.imaging.ctf import apply_ctf, ctf_2d, phase_flip
from cryopose.imaging.fft import rfft_radial_freq
from cryopose.imaging.resample import rescale
from cryopose.io.mrc import read_map, write_map
from cryopose.simulate.density import density_from_file

__all__ = [
    "ANGPIX",
    "ASSEMBLIES",
    "DEFAULT_CLASSES",
    "POTENTIAL_PER_KDA",
    "PROTEIN_INTERIOR_V",
    "ClassDensity",
    "Placement",
    "Sample",
    "TiltSeries",
    "TomogramConfig",
    "build_sample",
    "euler_zxz_to_matrix",
    "find_structures",
    "load_class_density",
    "reconstruct",
    "rotate_density",
    "simulate_tilt_series",
    "simulate_tomogram",
    "tilt_angles",
]

#: Voxel size of every SHREC volume, Angstrom.
ANGPIX = 10.0

#: SHREC 2020 classes in their class-index order, 3j9i standing in for 5mrc.
DEFAULT_CLASSES: tuple[str, ...] = (
    "1bxn", "1qvr", "1s3x", "1u6g", "2cg9", "3cf3",
    "3d2f", "3gl1", "3h84", "3qm1", "4cr2", "3j9i",
)  # fmt: skip

#: Integral of a protein's potential per kDa, V nm^3 (V x voxel at 10 A): 8.57-8.60 for the
#: assemblies of 1bxn, 1qvr, 3j9i and 3qm1 from :func:`density_from_file`.
POTENTIAL_PER_KDA = 8.59

#: Potential of protein interior, volts: 90th percentile of the voxels of an atomic class's
#: support (above 5 % of its maximum) at 10 A, 5.7-6.3 V for 1bxn, 1qvr, 2cg9, 3h84, 3j9i.
PROTEIN_INTERIOR_V = 6.0

_STRUCTURE_SUFFIXES = (".pdb", ".pdb.gz", ".ent", ".ent.gz", ".cif", ".cif.gz", ".mmcif")
_MAP_SUFFIXES = (".mrc", ".map", ".mrc.gz", ".map.gz")
_SHREC_VOXELS = 512 * 512 * 200
_NON_PROTEIN = ("fiducial", "vesicle")

#: What a class model contributes (:func:`load_class_density`): its biological assembly 1, or
#: its deposited chains (the asymmetric unit, what SHREC's mass table lists).
ASSEMBLIES = ("biological", "deposited")

Advance = Callable[[int], None]


@dataclass
class TomogramConfig:
    """Every parameter of a simulation (saved as ``simulation.json``).

    Attributes
    ----------
    size, thickness
        Volume ``(thickness, size, size)`` voxels (z, y, x); ``thickness=None`` means
        ``round(size * 200 / 512)``.
    seed
        Seed of the one torch generator every random draw comes from.
    snr
        Per-tilt signal-to-noise ratio (module docstring).
    n_tilts, tilt_range
        ``linspace(-tilt_range, tilt_range, n_tilts)`` degrees.
    n_particles
        Target protein count; ``None``: 2,000 per 512 x 512 x 200 voxels.
    n_fiducials, n_vesicles
        Counts of gold beads and vesicles; ``None``: 10 and 4 per 512 x 512 x 200 voxels.
    max_tries, max_failures
        Placement attempts per particle; stop after this many failed particles in a row.
    mask_threshold
        Potential (V) above which a rotated class density occupies a voxel.
    ice_potential, ice_noise
        Ice potential and the standard deviation of its white density noise (V).
    defocus_um, voltage_kv, cs_mm, amplitude_contrast
        CTF parameters (underfocus positive).
    structural_fraction
        Fraction of the noise variance added before the CTF.
    dose_per_tilt
        Electrons per A^2 per tilt for dose attenuation; ``None`` for none.
    phase_flip
        Phase-flip the tilt images before the weighted back-projection.
    assembly
        ``"biological"`` (assembly 1 of each model) or ``"deposited"`` (its asymmetric
        unit): :data:`ASSEMBLIES`.
    """

    size: int = 512
    thickness: int | None = None
    seed: int = 0
    snr: float = 0.004
    n_tilts: int = 40
    tilt_range: float = 60.0
    n_particles: int | None = None
    n_fiducials: int | None = None
    n_vesicles: int | None = None
    max_tries: int = 50
    max_failures: int = 200
    mask_threshold: float = 1.0
    ice_potential: float = 4.5
    ice_noise: float = 0.5
    defocus_um: float = 3.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.08
    structural_fraction: float = 0.5
    dose_per_tilt: float | None = None
    phase_flip: bool = True
    assembly: str = "biological"

    def shape(self) -> tuple[int, int, int]:
        """``(Z, Y, X)`` of the volume."""
        z = self.thickness if self.thickness is not None else round(self.size * 200 / 512)
        return (int(z), int(self.size), int(self.size))

    def scaled_count(self, per_shrec_volume: float) -> int:
        """Scale a count given per 512 x 512 x 200 voxels to this volume."""
        z, y, x = self.shape()
        return round(per_shrec_volume * z * y * x / _SHREC_VOXELS)


@dataclass(frozen=True)
class ClassDensity:
    """One class's potential at 10 A per voxel.

    Attributes
    ----------
    name
        Class id (PDB id, or ``fiducial`` / ``vesicle``).
    density
        ``(B, B, B)`` float32 potential in volts, ``(z, y, x)``, centre at index ``B // 2``.
    source
        File it came from (empty for generated objects).
    """

    name: str
    density: torch.Tensor
    source: str = ""


@dataclass(frozen=True)
class Placement:
    """One object of the sample: a line of ``particle_locations.txt``.

    Attributes
    ----------
    name
        Class id.
    xyz
        Centre voxel ``(x, y, z)``.
    angles
        ``(rotZ1, rotX, rotZ2)`` degrees (module docstring).
    """

    name: str
    xyz: tuple[int, int, int]
    angles: tuple[float, float, float]


@dataclass
class Sample:
    """The ground truth.

    Attributes
    ----------
    grandmodel
        ``(Z, Y, X)`` float32 potential in volts, ice included.
    class_mask
        ``(Z, Y, X)`` int16 class indices (0 background).
    occupancy
        ``(Z, Y, X)`` int32: ``k`` marks ``placements[k - 1]``, 0 background.
    placements
        Objects in file order.
    class_index
        Class id -> index in ``class_mask``.
    """

    grandmodel: torch.Tensor
    class_mask: torch.Tensor
    occupancy: torch.Tensor
    placements: list[Placement]
    class_index: dict[str, int]


@dataclass
class TiltSeries:
    """Simulated tilt images.

    Attributes
    ----------
    images
        ``(T, Y, X)`` noisy images.
    noiseless
        ``(T, Y, X)`` CTF-modulated noiseless images (the SNR's signal).
    angles
        ``(T,)`` float64 tilt angles, degrees.
    ctf
        ``(T, Y, X // 2 + 1)`` CTF applied to each tilt (rfft layout).
    """

    images: torch.Tensor
    noiseless: torch.Tensor
    angles: torch.Tensor
    ctf: torch.Tensor


# ----------------------------------------------------------------------------- rotations


def euler_zxz_to_matrix(angles_deg: torch.Tensor) -> torch.Tensor:
    """SHREC ``rotZ1 rotX rotZ2`` angles to active rotation matrices.

    Parameters
    ----------
    angles_deg
        ``(..., 3)`` ``(phi, theta, psi)`` in degrees.

    Returns
    -------
    torch.Tensor
        ``(..., 3, 3)`` ``R = Rz(phi) @ Rx(theta) @ Rz(psi)`` (module docstring), acting on
        column vectors ``(x, y, z)``; same dtype as the input.
    """
    a = torch.deg2rad(angles_deg)
    phi, theta, psi = a.unbind(-1)
    one, zero = torch.ones_like(phi), torch.zeros_like(phi)

    def rz(t: torch.Tensor) -> torch.Tensor:
        c, s = torch.cos(t), torch.sin(t)
        return torch.stack([c, -s, zero, s, c, zero, zero, zero, one], -1).reshape(*t.shape, 3, 3)

    c, s = torch.cos(theta), torch.sin(theta)
    rx = torch.stack([one, zero, zero, zero, c, -s, zero, s, c], -1).reshape(*theta.shape, 3, 3)
    return rz(phi) @ rx @ rz(psi)


def _random_angles(generator: torch.Generator) -> tuple[float, float, float]:
    """Uniform SO(3) ZXZ angles: phi, psi uniform, cos(theta) uniform (Haar measure)."""
    u = torch.rand(3, generator=generator, dtype=torch.float64)
    phi = 360.0 * float(u[0])
    theta = math.degrees(math.acos(2.0 * float(u[1]) - 1.0))
    psi = 360.0 * float(u[2])
    # Rounded as written to the table, so the file and the grandmodel agree exactly.
    return (round(phi, 4), round(theta, 4), round(psi, 4))


def rotate_density(density: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate a cubic density about its centre voxel ``B // 2`` (trilinear, zero outside).

    Parameters
    ----------
    density
        ``(B, B, B)`` volume ``(z, y, x)``.
    rotation
        ``(3, 3)`` active rotation ``R`` on ``(x, y, z)`` column vectors.

    Returns
    -------
    torch.Tensor
        ``(B, B, B)`` with ``out(u) = density(R^T u)``, ``u`` relative to the centre.
    """
    b = density.shape[-1]
    dev, dt = density.device, density.dtype
    u = torch.arange(b, device=dev, dtype=dt) - b // 2
    zz, yy, xx = torch.meshgrid(u, u, u, indexing="ij")
    pts = torch.stack([xx, yy, zz], -1).reshape(-1, 3)  # (B^3, 3) x y z
    src = pts @ rotation.to(dev, dt)  # rows: (R^T u)^T = u^T R
    # grid_sample with align_corners=True maps -1..1 to voxel 0..B-1; grid is (x, y, z).
    grid = ((src + b // 2) * (2.0 / (b - 1)) - 1.0).reshape(1, b, b, b, 3)
    out = F.grid_sample(
        density[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return out[0, 0]


# ----------------------------------------------------------------------------- class densities


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for sfx in (*_STRUCTURE_SUFFIXES, *_MAP_SUFFIXES):
        if name.endswith(sfx):
            return sfx
    return ""


def _class_id(path: Path) -> str:
    """``4cr2_10A_simulated.mrc`` -> ``4cr2``; ``1bxn.pdb.gz`` -> ``1bxn``."""
    stem = path.name[: -len(_suffix(path))]
    return stem.split("_")[0].lower()


def default_structures_dir() -> Path:
    """Return the folder of the bundled SHREC structures (``cryopose/data/shrec``)."""
    return Path(__file__).resolve().parent.parent / "data" / "shrec"


def find_structures(
    structures_dir: str | Path | None = None, classes: Sequence[str] | None = None
) -> dict[str, Path]:
    """Map class ids to their structure (PDB/mmCIF, optionally gzipped) or map (MRC) files.

    A file belongs to class ``id`` when its name is ``id`` or ``id_anything`` followed by a
    recognised suffix (``1bxn.pdb.gz``, ``4cr2_10A_simulated.mrc``); a model is preferred over
    a map of the same class.

    Parameters
    ----------
    structures_dir
        Folder of files; default the bundled ``cryopose/data/shrec``.
    classes
        Class ids wanted, in class-index order; ``None``: every class found, SHREC order
        (:data:`DEFAULT_CLASSES`) first, then the others alphabetically.

    Returns
    -------
    dict
        Class id -> file, in class-index order.

    Raises
    ------
    InputError
        Missing folder, no structures, or a wanted class without a file.
    """
    folder = Path(structures_dir) if structures_dir is not None else default_structures_dir()
    if not folder.is_dir():
        raise InputError(folder, "structures folder not found; pass structures_dir")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        sfx = _suffix(path)
        if not sfx or not path.is_file():
            continue
        cid = _class_id(path)
        if cid in _NON_PROTEIN:
            continue
        is_model = sfx in _STRUCTURE_SUFFIXES
        if cid not in found or (is_model and _suffix(found[cid]) in _MAP_SUFFIXES):
            found[cid] = path
    if classes is None:
        order = [c for c in DEFAULT_CLASSES if c in found]
        order += sorted(c for c in found if c not in DEFAULT_CLASSES)
    else:
        order = [str(c).lower() for c in classes]
        if len(set(order)) != len(order) or any(c in _NON_PROTEIN for c in order):
            raise InputError(folder, f"classes must be distinct protein ids, got {order}")
        missing = [c for c in order if c not in found]
        if missing:
            raise InputError(
                folder, f"no structure or map file for classes {missing} (have {sorted(found)})"
            )
    if not order:
        raise InputError(folder, f"no structure ({', '.join(_STRUCTURE_SUFFIXES)}) or map files")
    return {c: found[c] for c in order}


def _centre_crop(volume: torch.Tensor, threshold: float) -> torch.Tensor:
    """Crop a map to an even cube centred on its centre of mass that holds its support."""
    support = volume > threshold
    if not bool(support.any()):
        raise ValueError("empty map")
    weights = volume.clamp(min=0.0) * support
    idx = support.nonzero().to(torch.float64)  # (n, 3) z y x
    w = weights[support].to(torch.float64)
    com = torch.round((idx * w[:, None]).sum(0) / w.sum()).to(torch.int64)
    reach = int((idx - com).abs().max()) + 2
    half = reach + 1
    padded = F.pad(volume, (half,) * 6)
    c = com + half
    sl = [slice(int(ci) - half, int(ci) + half) for ci in c]
    return padded[sl[0], sl[1], sl[2]].contiguous()


def load_class_density(
    path: str | Path, name: str | None = None, assembly: str = "biological"
) -> ClassDensity:
    """Potential of one class at 10 A per voxel, from a model or a map (module docstring).

    Parameters
    ----------
    path
        PDB/mmCIF model (optionally gzipped) or MRC map.
    name
        Class id; default from the file name.
    assembly
        For a model: ``"biological"`` builds its assembly 1 when it defines one, else keeps
        the deposited chains; ``"deposited"`` always keeps the deposited chains. Maps are
        used as they are.

    Returns
    -------
    ClassDensity
        ``(B, B, B)`` float32 volts, centre of mass at ``B // 2``.

    Raises
    ------
    InputError
        Unreadable file or an empty map.
    ValueError
        ``assembly`` not one of :data:`ASSEMBLIES`.
    """
    if assembly not in ASSEMBLIES:
        raise ValueError(f"assembly must be one of {ASSEMBLIES}, got {assembly!r}")
    p = Path(path)
    cid = name if name is not None else _class_id(p)
    if _suffix(p) in _MAP_SUFFIXES:
        return ClassDensity(cid, _map_density(p, cid), str(p))
    try:
        has_assembly = bool(gemmi.read_structure(str(p)).assemblies)
    except (RuntimeError, ValueError) as exc:
        raise InputError(p, f"not a readable PDB/mmCIF file ({exc})") from exc
    build = "1" if has_assembly and assembly == "biological" else None
    density = density_from_file(p, ANGPIX, assembly=build)
    return ClassDensity(cid, density.to(torch.float32), str(p))


def _map_density(path: Path, cid: str) -> torch.Tensor:
    """Read a class map, bring it to 10 A, crop it and scale it to volts."""
    vol, angpix = read_map(path)
    if vol.shape[0] != vol.shape[1] or vol.shape[1] != vol.shape[2]:
        raise InputError(path, f"expected a cubic map, got shape {tuple(vol.shape)}")
    if abs(angpix - ANGPIX) > 1e-3:
        vol = rescale(vol, angpix, ANGPIX, ndim=3)
    top = float(vol.max())
    if top <= 0.0:
        raise InputError(path, "map has no positive density")
    vol = _centre_crop(vol, 0.01 * top)
    mass = SHREC_CLASS_MASS_KDA.get(cid)
    if mass is not None:
        scale = POTENTIAL_PER_KDA * mass / float(vol.clamp(min=0.0).sum())
    else:
        support = vol[vol > 0.05 * top]
        scale = PROTEIN_INTERIOR_V / float(torch.quantile(support, 0.9))
    return (vol.clamp(min=0.0) * scale).to(torch.float32)


def _fiducial_density(radius: float = 5.0, potential: float = 30.0) -> torch.Tensor:
    """Gold bead: uniform ball, edge voxels weighted by their covered fraction (4^3 samples)."""
    return _radial_object(lambda r: (r <= radius).to(torch.float32) * potential, radius + 2)


def _vesicle_density(radius: float, width: float = 4.0, potential: float = 6.0) -> torch.Tensor:
    """Lipid bilayer: a spherical shell of thickness ``width`` (voxels) around ``radius``."""
    return _radial_object(
        lambda r: ((r - radius).abs() <= width / 2).to(torch.float32) * potential,
        radius + width / 2 + 2,
    )


def _radial_object(profile: Callable[[torch.Tensor], torch.Tensor], reach: float) -> torch.Tensor:
    """Voxel-averaged radially symmetric object in an even cube, centre at ``B // 2``."""
    b = 2 * math.ceil(reach)
    sub = 4
    off = (torch.arange(sub, dtype=torch.float32) + 0.5) / sub - 0.5
    u = (torch.arange(b, dtype=torch.float32) - b // 2)[:, None] + off  # (B, sub)
    u = u.reshape(-1)
    r = torch.sqrt(u[:, None, None] ** 2 + u[None, :, None] ** 2 + u[None, None, :] ** 2)
    fine = profile(r)
    return F.avg_pool3d(fine[None, None], sub)[0, 0]


# ----------------------------------------------------------------------------- placement


@dataclass
class _Canvas:
    """Volumes being filled; ``particle`` is the protein/membrane potential without ice."""

    particle: torch.Tensor
    class_mask: torch.Tensor
    occupancy: torch.Tensor
    placements: list[Placement] = field(default_factory=list)


def _object_mask(density: torch.Tensor, threshold: float) -> torch.Tensor:
    """Voxels an object occupies: potential above ``threshold``, and always its centre.

    The centre is included so that a pick at a true centre hits its particle even for rings
    (3cf3) and barrels (3j9i, vesicles) whose centre of mass lies in a channel.
    """
    mask = density > threshold
    c = density.shape[-1] // 2
    mask[c, c, c] = True
    return mask


def _try_place(
    canvas: _Canvas,
    density: torch.Tensor,
    mask: torch.Tensor,
    generator: torch.Generator,
    tries: int,
) -> tuple[int, int, int] | None:
    """Find a free integer centre for a rotated object; ``None`` after ``tries`` attempts."""
    b = density.shape[-1]
    shape = canvas.occupancy.shape
    lo = b // 2
    highs = [n - (b - b // 2) for n in shape]  # last centre keeping the box inside, z y x
    if any(h < lo for h in highs):
        return None
    for _ in range(tries):
        zyx = [int(torch.randint(lo, h + 1, (1,), generator=generator)) for h in highs]
        region = canvas.occupancy[
            zyx[0] - lo : zyx[0] - lo + b,
            zyx[1] - lo : zyx[1] - lo + b,
            zyx[2] - lo : zyx[2] - lo + b,
        ]
        if not bool(region[mask].any()):
            return (zyx[2], zyx[1], zyx[0])
    return None


def _paste(
    canvas: _Canvas,
    density: torch.Tensor,
    mask: torch.Tensor,
    xyz: tuple[int, int, int],
    class_index: int,
) -> None:
    """Add the object to the volumes and label its mask voxels."""
    b = density.shape[-1]
    lo = b // 2
    x, y, z = xyz
    sl = (slice(z - lo, z - lo + b), slice(y - lo, y - lo + b), slice(x - lo, x - lo + b))
    canvas.particle[sl] += density
    label = len(canvas.placements)  # 1-based label of the placement just appended
    canvas.occupancy[sl][mask] = label
    canvas.class_mask[sl][mask] = class_index


def _class_schedule(n: int, sizes: Sequence[float], generator: torch.Generator) -> list[int]:
    """``n`` class positions, round-robin: each round holds every class once, largest first.

    Largest first within a round because small proteins still fit in the gaps big ones leave,
    not the reverse; whole rounds keep the class counts balanced as the volume fills up. The
    last, partial round takes a random subset of the classes.
    """
    order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    out: list[int] = []
    while len(out) + len(order) <= n:
        out += order
    rest = sorted(torch.randperm(len(order), generator=generator)[: n - len(out)].tolist())
    return out + [order[i] for i in rest]


def _place_non_protein(
    canvas: _Canvas,
    config: TomogramConfig,
    class_index: dict[str, int],
    generator: torch.Generator,
) -> None:
    """Vesicles then fiducials, before the proteins (they are the largest objects)."""
    n_ves = config.n_vesicles if config.n_vesicles is not None else config.scaled_count(4)
    n_fid = config.n_fiducials if config.n_fiducials is not None else config.scaled_count(10)
    z = config.shape()[0]
    r_max = min(40.0, z / 2 - 5.0)
    r_min = min(15.0, r_max)
    objects: list[tuple[str, torch.Tensor]] = []
    for _ in range(n_ves if r_max >= 4.0 else 0):
        radius = r_min + (r_max - r_min) * float(torch.rand(1, generator=generator))
        objects.append(("vesicle", _vesicle_density(radius)))
    fid = _fiducial_density()
    objects += [("fiducial", fid)] * n_fid
    for name, dens in objects:
        mask = _object_mask(dens, config.mask_threshold)
        xyz = _try_place(canvas, dens, mask, generator, config.max_tries)
        if xyz is None:
            continue
        canvas.placements.append(Placement(name, xyz, (0.0, 0.0, 0.0)))
        _paste(canvas, dens, mask, xyz, class_index[name])


def build_sample(
    densities: Sequence[ClassDensity],
    config: TomogramConfig,
    generator: torch.Generator,
    advance: Advance | None = None,
) -> Sample:
    """Place objects without overlap, add ice: the ground truth (module docstring).

    Parameters
    ----------
    densities
        Protein classes in class-index order (index ``1 + position``).
    config
        Sizes, counts and thresholds.
    generator
        CPU torch generator, the only source of randomness.
    advance
        Called with 1 after each protein placement attempt.

    Returns
    -------
    Sample
        Grandmodel, masks and the placement table.
    """
    shape = config.shape()
    class_index = {d.name: i + 1 for i, d in enumerate(densities)}
    for k, name in enumerate(_NON_PROTEIN):
        class_index[name] = len(densities) + 1 + k
    canvas = _Canvas(
        particle=torch.zeros(shape, dtype=torch.float32),
        class_mask=torch.zeros(shape, dtype=torch.int16),
        occupancy=torch.zeros(shape, dtype=torch.int32),
    )
    _place_non_protein(canvas, config, class_index, generator)
    n_target = config.n_particles if config.n_particles is not None else config.scaled_count(2000)
    sizes = [float(d.density.sum()) for d in densities]
    schedule = _class_schedule(n_target, sizes, generator)
    failures = 0
    for ci in schedule:
        dens = densities[ci]
        angles = _random_angles(generator)
        rot = euler_zxz_to_matrix(torch.tensor(angles, dtype=torch.float64)).to(torch.float32)
        rotated = rotate_density(dens.density, rot)
        mask = _object_mask(rotated, config.mask_threshold)
        xyz = _try_place(canvas, rotated, mask, generator, config.max_tries)
        if advance is not None:
            advance(1)
        if xyz is None:
            failures += 1
            if failures >= config.max_failures:
                break
            continue
        failures = 0
        canvas.placements.append(Placement(dens.name, xyz, angles))
        _paste(canvas, rotated, mask, xyz, class_index[dens.name])
    # Protein displaces ice in proportion to how much of the voxel it fills.
    fill = (canvas.particle / PROTEIN_INTERIOR_V).clamp(0.0, 1.0)
    ice = config.ice_potential + config.ice_noise * torch.randn(shape, generator=generator)
    grandmodel = canvas.particle + (1.0 - fill) * ice
    return Sample(grandmodel, canvas.class_mask, canvas.occupancy, canvas.placements, class_index)


# ----------------------------------------------------------------------------- tilt series


def tilt_angles(n_tilts: int = 40, tilt_range: float = 60.0) -> torch.Tensor:
    """``(n_tilts,)`` float64 angles ``linspace(-tilt_range, tilt_range, n_tilts)`` degrees."""
    if n_tilts < 1:
        raise ValueError(f"n_tilts must be >= 1, got {n_tilts}")
    return torch.linspace(-tilt_range, tilt_range, n_tilts, dtype=torch.float64)


def _dose_filter(
    angles: torch.Tensor, dose_per_tilt: float, shape: tuple[int, int], device: torch.device
) -> torch.Tensor:
    """``(T, Y, X // 2 + 1)`` Grant-Grigorieff attenuation, dose-symmetric tilt order."""
    order = torch.argsort(angles.abs(), stable=True)
    prior = torch.empty_like(angles)
    prior[order] = torch.arange(len(angles), dtype=angles.dtype) * dose_per_tilt
    k = rfft_radial_freq(shape, angpix=ANGPIX, device=device, dtype=torch.float64)
    k = k.clamp(min=1e-6)
    n_e = 0.245 * k.pow(-1.665) + 2.81
    return torch.exp(-prior.to(device)[:, None, None] / (2.0 * n_e)).to(torch.float32)


def simulate_tilt_series(
    volume: torch.Tensor,
    config: TomogramConfig,
    generator: torch.Generator,
    advance: Advance | None = None,
) -> TiltSeries:
    """Project, attenuate, add structural noise, apply the CTF, add detector noise.

    Parameters
    ----------
    volume
        ``(Z, Y, X)`` potential (volts); ``config.ice_potential`` is subtracted before
        projection (module docstring).
    config
        Tilts, CTF, SNR, noise split, dose.
    generator
        CPU torch generator for the noise.
    advance
        Called with 1 after each projected tilt.

    Returns
    -------
    TiltSeries
        Noisy and noiseless ``(T, Y, X)`` images, angles, CTFs.
    """
    dev = volume.device
    angles = tilt_angles(config.n_tilts, config.tilt_range)
    proj = project_tilt_series(volume - config.ice_potential, angles, progress=advance)
    n_t, n_y, n_x = proj.shape
    if config.dose_per_tilt is not None:
        filt = _dose_filter(angles, config.dose_per_tilt, (n_y, n_x), dev)
        proj = torch.fft.irfft2(torch.fft.rfft2(proj) * filt, s=(n_y, n_x))
    defocus = config.defocus_um * 1e4
    ctf = ctf_2d(
        (n_y, n_x),
        ANGPIX,
        torch.full((n_t,), defocus, device=dev),
        torch.full((n_t,), defocus, device=dev),
        0.0,
        config.voltage_kv,
        config.cs_mm,
        config.amplitude_contrast,
        device=dev,
    )
    signal = apply_ctf(proj, ctf)
    noise_var = signal.var(dim=(1, 2)) / config.snr  # (T,) target total noise variance
    structural = torch.randn(proj.shape, generator=generator).to(dev)
    structural = apply_ctf(structural, ctf)
    # Scale the CTF-filtered structural noise to exactly its share of the noise variance.
    structural *= torch.sqrt(
        config.structural_fraction * noise_var / structural.var(dim=(1, 2)).clamp(min=1e-30)
    )[:, None, None]
    detector = torch.randn(proj.shape, generator=generator).to(dev)
    detector *= torch.sqrt((1.0 - config.structural_fraction) * noise_var)[:, None, None]
    images = signal + structural + detector
    return TiltSeries(images=images, noiseless=signal, angles=angles, ctf=ctf)


def reconstruct(
    tilts: TiltSeries, thickness: int, flip: bool = True, advance: Advance | None = None
) -> torch.Tensor:
    """Weighted back-projection of a tilt series, phase-flipped first when ``flip``.

    Parameters
    ----------
    tilts
        From :func:`simulate_tilt_series`.
    thickness
        ``Z`` of the reconstruction.
    flip
        Phase-flip each tilt with its CTF (:func:`cryopose.imaging.ctf.phase_flip`).
    advance
        Called with 1 after each back-projected tilt.

    Returns
    -------
    torch.Tensor
        ``(Z, Y, X)`` float32.
    """
    images = phase_flip(tilts.images, tilts.ctf) if flip else tilts.images
    return wbp(images, tilts.angles, thickness, progress=advance)


# ----------------------------------------------------------------------------- driver


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[str, int], Advance]]:
    """Yield ``task(description, total) -> advance``; a rich progress bar when enabled."""
    if not enabled:
        yield lambda _d, _t: lambda _n: None
        return
    from rich.progress import Progress

    with Progress(transient=False) as bar:

        def task(description: str, total: int) -> Advance:
            tid = bar.add_task(description, total=total)
            return lambda n: bar.advance(tid, n)

        yield task


def _write_locations(path: Path, placements: Sequence[Placement]) -> None:
    lines = [
        f"{p.name} {p.xyz[0]} {p.xyz[1]} {p.xyz[2]} "
        f"{p.angles[0]:.4f} {p.angles[1]:.4f} {p.angles[2]:.4f}\n"
        for p in placements
    ]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(lines), encoding="utf-8")


def simulate_tomogram(
    out_dir: str | Path,
    size: int = 512,
    thickness: int | None = None,
    seed: int = 0,
    snr: float = 0.004,
    n_tilts: int = 40,
    tilt_range: float = 60,
    structures_dir: str | Path | None = None,
    classes: Sequence[str] | None = None,
    n_particles: int | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    **options: Any,
) -> Path:
    """Simulate one SHREC-style tomogram folder (module docstring for the physics and files).

    Parameters
    ----------
    out_dir
        Output folder (created).
    size
        Edge in x and y, voxels of 10 A.
    thickness
        Edge in z; default ``round(size * 200 / 512)``.
    seed
        Seed of every random draw (placement, orientations, noise); the same seed and
        parameters give identical files.
    snr
        Per-tilt signal-to-noise ratio, ``var(signal) / var(noise)``.
    n_tilts, tilt_range
        Tilt angles ``linspace(-tilt_range, tilt_range, n_tilts)`` degrees.
    structures_dir
        Folder of class models/maps; default the bundled ``cryopose/data/shrec``.
    classes
        Class ids in class-index order; default all found (:func:`find_structures`).
    n_particles
        Target protein count; default 2,000 per 512 x 512 x 200 voxels.
    device
        Torch device for the projection and reconstruction.
    progress
        Show rich progress bars.
    **options
        Any other :class:`TomogramConfig` field (``n_fiducials``, ``ice_noise``, ...).

    Returns
    -------
    Path
        ``out_dir``, holding the five SHREC files and ``simulation.json``.

    Raises
    ------
    InputError
        Missing structures, or an unknown option.
    """
    out = Path(out_dir)
    known = set(TomogramConfig.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise InputError(None, f"unknown options {unknown}; expected fields of TomogramConfig")
    config = TomogramConfig(
        size=size,
        thickness=thickness,
        seed=seed,
        snr=snr,
        n_tilts=n_tilts,
        tilt_range=float(tilt_range),
        n_particles=n_particles,
        **options,
    )
    if size < 8 or config.shape()[0] < 4 or snr <= 0:
        raise InputError(None, f"need size >= 8, thickness >= 4, snr > 0; got {config}")
    if config.assembly not in ASSEMBLIES:
        raise InputError(None, f"assembly must be one of {ASSEMBLIES}, got {config.assembly!r}")
    dev = torch.device(device)
    files = find_structures(structures_dir, classes)
    generator = torch.Generator().manual_seed(seed)
    timings: dict[str, float] = {}
    with _progress_bar(progress) as task:
        t0 = time.perf_counter()
        densities = [load_class_density(p, name, config.assembly) for name, p in files.items()]
        timings["densities_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_target = n_particles if n_particles is not None else config.scaled_count(2000)
        sample = build_sample(densities, config, generator, task("placing particles", n_target))
        timings["placement_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        volume = sample.grandmodel.to(dev)
        tilts = simulate_tilt_series(volume, config, generator, task("projecting", n_tilts))
        timings["tilt_series_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rec = reconstruct(
            tilts, config.shape()[0], config.phase_flip, task("back-projecting", n_tilts)
        )
        timings["reconstruction_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    write_map(out / "grandmodel.mrc", sample.grandmodel, ANGPIX)
    write_map(out / "class_mask.mrc", sample.class_mask.to(torch.float32), ANGPIX)
    write_map(out / "occupancy_mask.mrc", sample.occupancy.to(torch.float32), ANGPIX)
    write_map(out / "reconstruction.mrc", rec.cpu(), ANGPIX)
    _write_locations(out / "particle_locations.txt", sample.placements)
    timings["writing_s"] = time.perf_counter() - t0
    counts: dict[str, int] = {}
    for p in sample.placements:
        counts[p.name] = counts.get(p.name, 0) + 1
    record = {
        "config": asdict(config),
        "shape_zyx": list(config.shape()),
        "angpix": ANGPIX,
        "tilt_angles_deg": [round(float(a), 6) for a in tilts.angles],
        "class_index": sample.class_index,
        "class_files": {k: str(v) for k, v in files.items()},
        "counts": counts,
        "n_objects": len(sample.placements),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }
    with atomic_path(out / "simulation.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out
