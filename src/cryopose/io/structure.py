"""Atomic models: read PDB / mmCIF files (plain or gzipped) into tensors, and summarise them.

Reading is done by gemmi; cryopose adds the checks (a bad file raises
:class:`cryopose.errors.InputError` naming it), the biological assembly and a point-group
detector that works on the chains themselves.

What is kept
------------
* The first model only (NMR ensembles and multi-model files: ``structure_summary`` reports
  how many models there are).
* Waters (``HOH``, ``DOD``, ``WAT``, ...) are dropped unless ``keep_waters=True``: in a cryo-EM
  sample they are bulk solvent, not part of the particle.
* Everything else is kept as it is in the file: hydrogens when the file has them (none are
  added), ligands, ions, and all alternate conformations, each with its occupancy, so that
  occupancy-weighted sums (mass, density) count an alternate site once.

Example
-------
>>> from cryopose.io.structure import read_structure, structure_summary
>>> atoms = read_structure("tests/data/structures/1s3x.pdb.gz")  # doctest: +SKIP
>>> atoms.coordinates.shape  # doctest: +SKIP
torch.Size([3375, 3])
>>> structure_summary("1bxn.pdb")["point_group"]  # doctest: +SKIP
'D4'
"""

from __future__ import annotations

import gzip
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gemmi
import numpy as np
import numpy.typing as npt
import torch

from cryopose.errors import InputError

__all__ = ["Atoms", "read_structure", "structure_summary"]

_FORMATS = {
    ".pdb": gemmi.CoorFormat.Pdb,
    ".ent": gemmi.CoorFormat.Pdb,
    ".cif": gemmi.CoorFormat.Mmcif,
    ".mmcif": gemmi.CoorFormat.Mmcif,
}
# Mass of one hydrogen (standard atomic weight, Da).
_H_MASS = gemmi.Element("H").weight
# Hydrogens lost when a residue is linked into a polymer: the water of the peptide bond
# (amino acids), the water of the phosphodiester bond plus the ionised phosphate (nucleotides).
_H_LOST_IN_POLYMER = {"aa": 2, "na": 3}
# Rotations and chains closer than these count as the same (superposition RMSD, Angstrom;
# axis direction, degrees).
_RMSD_TOL = 3.0
_AXIS_TOL_DEG = 8.0


@dataclass(frozen=True)
class Atoms:
    """Atoms of one model, as tensors (numbers) and numpy arrays (strings).

    All per-atom fields have length ``N``, in file order (chain by chain).

    Attributes
    ----------
    coordinates
        ``(N, 3)`` float64, Cartesian x, y, z in Angstrom, as in the file.
    atomic_numbers
        ``(N,)`` int64; deuterium counts as hydrogen (1), unknown elements are 0.
    occupancies
        ``(N,)`` float32 in [0, 1].
    bfactors
        ``(N,)`` float32 isotropic B-factors in Angstrom^2.
    elements
        ``(N,)`` element symbols, e.g. ``"C"``, ``"Fe"``.
    chain_ids
        ``(N,)`` chain names (author chain ids; in an assembly, copies get a number appended,
        e.g. ``"A1"``, ``"A2"``).
    residue_names
        ``(N,)`` residue names, e.g. ``"ALA"``.
    residue_numbers
        ``(N,)`` int64 author residue sequence numbers.
    atom_names
        ``(N,)`` atom names, e.g. ``"CA"``.
    """

    coordinates: torch.Tensor
    atomic_numbers: torch.Tensor
    occupancies: torch.Tensor
    bfactors: torch.Tensor
    elements: npt.NDArray[np.str_]
    chain_ids: npt.NDArray[np.str_]
    residue_names: npt.NDArray[np.str_]
    residue_numbers: torch.Tensor
    atom_names: npt.NDArray[np.str_]

    def __len__(self) -> int:
        """Return the number of atoms."""
        return int(self.coordinates.shape[0])

    def __getitem__(self, index: torch.Tensor | npt.NDArray[Any] | slice) -> Atoms:
        """Subset of atoms, e.g. ``atoms[atoms.chain_ids == "A"]`` (boolean mask or indices)."""
        idx = index if isinstance(index, slice) else torch.as_tensor(index)
        np_idx = idx if isinstance(idx, slice) else idx.cpu().numpy()
        return Atoms(
            coordinates=self.coordinates[idx],
            atomic_numbers=self.atomic_numbers[idx],
            occupancies=self.occupancies[idx],
            bfactors=self.bfactors[idx],
            elements=self.elements[np_idx],
            chain_ids=self.chain_ids[np_idx],
            residue_names=self.residue_names[np_idx],
            residue_numbers=self.residue_numbers[idx],
            atom_names=self.atom_names[np_idx],
        )

    @property
    def masses(self) -> torch.Tensor:
        """``(N,)`` float64 standard atomic weights in Dalton (not multiplied by occupancy)."""
        table = torch.tensor([gemmi.Element(z).weight for z in range(119)], dtype=torch.float64)
        return table[self.atomic_numbers.cpu()].to(self.coordinates.device)

    def center_of_mass(self) -> torch.Tensor:
        """``(3,)`` float64 occupancy- and mass-weighted centre (x, y, z) in Angstrom."""
        w = self.masses * self.occupancies.to(torch.float64)
        return (self.coordinates * w[:, None]).sum(0) / w.sum()


def read_structure(
    path: str | Path, assembly: str | None = None, *, keep_waters: bool = False
) -> Atoms:
    """Read the first model of a PDB or mmCIF file, optionally as a biological assembly.

    Parameters
    ----------
    path
        ``.pdb``, ``.ent``, ``.cif`` or ``.mmcif`` file, optionally gzipped (``.pdb.gz``).
    assembly
        Name of a biological assembly (``"1"``, ``"2"``, ...), built by gemmi from the PDB
        ``REMARK 350 BIOMT`` records or the mmCIF ``pdbx_struct_assembly*`` categories: each
        operator is applied to the chains it names, copies are appended. ``None`` returns the
        deposited coordinates (asymmetric unit) unchanged.
    keep_waters
        Keep water molecules (dropped by default).

    Returns
    -------
    Atoms
        Coordinates in Angstrom and per-atom properties; hydrogens only if in the file.

    Raises
    ------
    InputError
        The file is missing, not a PDB/mmCIF model, empty, truncated, or has no such assembly.
    """
    path = Path(path)
    st = _read_gemmi(path)
    # The assembly first: mmCIF assemblies name subchains, waters included.
    model = st[0] if assembly is None else _assembly_model(st, assembly, path)
    if not keep_waters:
        model.remove_waters()
    atoms = _model_to_atoms(model)
    if len(atoms) == 0:
        raise InputError(path, "no atoms left after removing waters", where="model 1")
    return atoms


def structure_summary(path: str | Path) -> dict[str, Any]:
    """Summarise an atomic model for ``cryopose info``.

    Counts are for the first model, waters excluded (``waters`` gives how many were in it).

    Parameters
    ----------
    path
        PDB or mmCIF file, optionally gzipped.

    Returns
    -------
    dict
        ``path``, ``format`` (``"pdb"`` / ``"mmcif"``), ``models``, ``chains`` (count),
        ``chain_ids``, ``residues``, ``atoms``, ``waters``, ``has_hydrogens``,
        ``mass_kda`` (sum of the standard atomic weights of the modelled atoms times their
        occupancy, i.e. gemmi's ``Model.calculate_mass`` without waters: no hydrogens unless
        the file has them), ``mass_kda_with_hydrogens`` (the same plus, for each residue
        without modelled hydrogens, gemmi's tabulated hydrogen count of that residue (CCD
        protonation state) minus those lost on polymer linking: 2 per amino acid, 3 per
        nucleotide), ``extent_angstrom`` (bounding box edge lengths x, y, z),
        ``max_diameter_angstrom`` (largest distance between two atoms), ``resolution_angstrom``
        and ``method`` (``None`` when the header does not say), ``assemblies`` (one dict per
        assembly in the file: ``name``, ``operators`` (number of BIOMT / oper_list operators),
        ``chains``, ``atoms``, ``mass_kda``, ``point_group``), and ``point_group``: the point
        group of the first assembly, or of the deposited model when the file defines none.

        Point groups (``"C1"``, ``"Cn"``, ``"Dn"``, ``"T"``, ``"O"``, ``"I"``) are detected
        from the chains themselves, not from the operators alone (files often give only part
        of the symmetry as operators and the rest as chains): every copy of the most frequent
        chain is superposed on one reference copy (C-alpha / P atoms, common residue numbers)
        and the rotation is kept if it maps every chain onto a chain of the same sequence
        within 3 A RMSD; the kept rotations are then classified by their number and axes.
        ``None`` when they form no recognised group.

    Raises
    ------
    InputError
        As :func:`read_structure`.
    """
    path = Path(path)
    st = _read_gemmi(path)
    n_models = len(st)
    waters = sum(1 for r in st[0].all() if r.residue.is_water())
    model = st[0].clone()
    model.remove_waters()
    atoms = _model_to_atoms(model)
    if len(atoms) == 0:
        raise InputError(path, "no atoms left after removing waters", where="model 1")
    coords = atoms.coordinates.numpy()
    chain_ids = sorted(set(atoms.chain_ids.tolist()), key=atoms.chain_ids.tolist().index)
    assemblies = []
    for asm in st.assemblies:
        amodel = _assembly_model(st, asm.name, path)
        amodel.remove_waters()
        assemblies.append(
            {
                "name": asm.name,
                "operators": sum(len(g.operators) for g in asm.generators),
                "chains": len({c.name for c in amodel}),
                "atoms": amodel.count_atom_sites(),
                "mass_kda": amodel.calculate_mass() / 1000.0,
                "point_group": _point_group(amodel),
            }
        )
    method = next((v for k, v in st.info.items() if k == "_exptl.method"), None)
    return {
        "path": str(path),
        "format": "pdb" if st.input_format == gemmi.CoorFormat.Pdb else "mmcif",
        "models": n_models,
        "chains": len(chain_ids),
        "chain_ids": chain_ids,
        "residues": sum(1 for ch in model for _ in ch),
        "atoms": len(atoms),
        "waters": waters,
        "has_hydrogens": bool(model.has_hydrogen()),
        "mass_kda": model.calculate_mass() / 1000.0,
        "mass_kda_with_hydrogens": (model.calculate_mass() + _missing_hydrogen_mass(model))
        / 1000.0,
        "extent_angstrom": (coords.max(0) - coords.min(0)).tolist(),
        "max_diameter_angstrom": _max_diameter(coords),
        "resolution_angstrom": float(st.resolution) if st.resolution > 0 else None,
        "method": method,
        "assemblies": assemblies,
        "point_group": assemblies[0]["point_group"] if assemblies else _point_group(model),
    }


# ----------------------------------------------------------------------------- reading


def _read_gemmi(path: Path) -> gemmi.Structure:
    """Read ``path`` with gemmi, turning every failure into an InputError."""
    suffixes = [s.lower() for s in path.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    ext = suffixes[-2] if gz and len(suffixes) > 1 else (suffixes[-1] if suffixes else "")
    if ext not in _FORMATS:
        raise InputError(
            path, "expected a .pdb, .ent, .cif or .mmcif file (optionally .gz), got " + repr(ext)
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read file ({exc.strerror or exc})") from exc
    if gz:
        try:
            # gzip.decompress checks the end-of-stream marker and CRC, so a truncated
            # download fails here rather than silently losing the last chains.
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(path, f"not a complete gzip file ({exc})") from exc
    if not raw.strip():
        raise InputError(path, "file is empty")
    try:
        st = gemmi.read_structure_string(raw, format=_FORMATS[ext])
    except (RuntimeError, ValueError, IndexError) as exc:
        raise InputError(path, f"not a readable {ext[1:]} model: {exc}") from exc
    if len(st) == 0 or st[0].count_atom_sites() == 0:
        raise InputError(path, f"no ATOM/HETATM records: not a {ext[1:]} atomic model")
    st.setup_entities()
    return st


def _assembly_model(st: gemmi.Structure, name: str, path: Path) -> gemmi.Model:
    """Build assembly ``name`` from the first model of ``st``."""
    names = [a.name for a in st.assemblies]
    if name not in names:
        have = ", ".join(repr(n) for n in names) if names else "none"
        raise InputError(
            path, f"no biological assembly {name!r} (assemblies in file: {have})", "REMARK 350"
        )
    asm = st.assemblies[names.index(name)]
    try:
        return gemmi.make_assembly(asm, st[0], gemmi.HowToNameCopiedChain.AddNumber)
    except RuntimeError as exc:
        raise InputError(path, f"cannot build assembly {name!r}: {exc}") from exc


def _model_to_atoms(model: gemmi.Model) -> Atoms:
    """Flatten a gemmi model into an :class:`Atoms`."""
    xyz: list[tuple[float, float, float]] = []
    z: list[int] = []
    occ: list[float] = []
    b: list[float] = []
    el: list[str] = []
    chains: list[str] = []
    resn: list[str] = []
    resi: list[int] = []
    names: list[str] = []
    for chain in model:
        for res in chain:
            for atom in res:
                p = atom.pos
                xyz.append((p.x, p.y, p.z))
                z.append(atom.element.atomic_number)
                occ.append(atom.occ)
                b.append(atom.b_iso)
                el.append(atom.element.name)
                chains.append(chain.name)
                resn.append(res.name)
                resi.append(res.seqid.num or 0)  # None only for unnumbered residues
                names.append(atom.name)
    return Atoms(
        coordinates=torch.tensor(xyz, dtype=torch.float64).reshape(-1, 3),
        atomic_numbers=torch.tensor(z, dtype=torch.int64),
        occupancies=torch.tensor(occ, dtype=torch.float32),
        bfactors=torch.tensor(b, dtype=torch.float32),
        elements=np.array(el, dtype=np.str_),
        chain_ids=np.array(chains, dtype=np.str_),
        residue_names=np.array(resn, dtype=np.str_),
        residue_numbers=torch.tensor(resi, dtype=torch.int64),
        atom_names=np.array(names, dtype=np.str_),
    )


# ----------------------------------------------------------------------------- summary


def _missing_hydrogen_mass(model: gemmi.Model) -> float:
    """Mass (Da) of the hydrogens that residues without modelled hydrogens would carry."""
    count = 0
    for chain in model:
        for res in chain:
            if any(a.is_hydrogen() for a in res):
                continue
            info = gemmi.find_tabulated_residue(res.name)
            if info is None:
                continue
            lost = 0
            if info.is_amino_acid():
                lost = _H_LOST_IN_POLYMER["aa"]
            elif info.is_nucleic_acid():
                lost = _H_LOST_IN_POLYMER["na"]
            count += max(info.hydrogen_count - lost, 0)
    return count * _H_MASS


def _max_diameter(coords: npt.NDArray[np.float64]) -> float:
    """Largest distance (Angstrom) between two of the ``(N, 3)`` points."""
    pts = coords
    if len(pts) > 2000:
        from scipy.spatial import ConvexHull

        # The farthest pair lies on the convex hull: a few hundred points instead of N.
        pts = pts[ConvexHull(pts).vertices]
    best = 0.0
    for start in range(0, len(pts), 1024):
        block = pts[start : start + 1024]
        d2 = ((block[:, None, :] - pts[None, :, :]) ** 2).sum(-1)
        best = max(best, float(d2.max()))
    return math.sqrt(best)


# ----------------------------------------------------------------------------- symmetry


@dataclass(frozen=True)
class _Trace:
    """C-alpha (or P) trace of one chain: residue key -> (residue name, position)."""

    name: str
    keys: tuple[tuple[int, str], ...]
    resnames: tuple[str, ...]
    xyz: npt.NDArray[np.float64]


def _traces(model: gemmi.Model) -> list[_Trace]:
    """Traces of the polymer chains with at least 10 C-alpha / P atoms."""
    out = []
    for chain in model:
        keys, names, xyz = [], [], []
        seen = set()
        for res in chain:
            key = (res.seqid.num or 0, res.seqid.icode)
            if key in seen:
                continue
            atom = next((a for a in res if a.name in ("CA", "P")), None)
            if atom is None:
                continue
            seen.add(key)
            keys.append(key)
            names.append(res.name)
            xyz.append((atom.pos.x, atom.pos.y, atom.pos.z))
        if len(keys) >= 10:
            out.append(_Trace(chain.name, tuple(keys), tuple(names), np.array(xyz)))
    return out


def _common(a: _Trace, b: _Trace) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Return indices into ``a`` and ``b`` of the residues both have, with the same name."""
    index_b = {k: i for i, k in enumerate(b.keys)}
    ia, ib = [], []
    for i, k in enumerate(a.keys):
        j = index_b.get(k)
        if j is not None and a.resnames[i] == b.resnames[j]:
            ia.append(i)
            ib.append(j)
    return np.array(ia, dtype=np.intp), np.array(ib, dtype=np.intp)


def _same_kind(a: _Trace, b: _Trace) -> bool:
    """Whether two chains are copies of one molecule (most residues shared by number+name)."""
    ia, _ = _common(a, b)
    return len(ia) >= 0.8 * min(len(a.keys), len(b.keys))


def _kabsch(
    p: npt.NDArray[np.float64], q: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], float]:
    """Rotation ``R`` and translation ``t`` minimising ``|R p + t - q|``, and the RMSD."""
    pc, qc = p.mean(0), q.mean(0)
    u, _, vt = np.linalg.svd((p - pc).T @ (q - qc))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    t = qc - rot @ pc
    rmsd = float(np.sqrt((((p @ rot.T + t) - q) ** 2).sum(-1).mean()))
    return rot, t, rmsd


def _maps_onto_itself(
    rot: npt.NDArray[np.float64],
    t: npt.NDArray[np.float64],
    traces: list[_Trace],
    kinds: list[int],
) -> bool:
    """Whether ``x -> rot x + t`` sends every chain onto a chain of the same kind."""
    centres = np.array([tr.xyz.mean(0) for tr in traces])
    for i, tr in enumerate(traces):
        moved = tr.xyz @ rot.T + t
        order = np.argsort(((centres - moved.mean(0)) ** 2).sum(-1))
        ok = False
        for j in order[:3]:
            if kinds[j] != kinds[i]:
                continue
            ia, ib = _common(tr, traces[j])
            if len(ia) == 0:
                continue
            rmsd = float(np.sqrt(((moved[ia] - traces[j].xyz[ib]) ** 2).sum(-1).mean()))
            if rmsd < _RMSD_TOL:
                ok = True
                break
        if not ok:
            return False
    return True


def _point_group(model: gemmi.Model) -> str | None:
    """Point group of the chains of ``model`` (see :func:`structure_summary`)."""
    traces = _traces(model)
    if not traces:
        return None
    kinds: list[int] = []
    for i, tr in enumerate(traces):
        match = next((kinds[j] for j in range(i) if _same_kind(traces[j], tr)), None)
        kinds.append(match if match is not None else i)
    # The most frequent kind gives the most candidate operators.
    ref_kind = max(set(kinds), key=kinds.count)
    members = [i for i, k in enumerate(kinds) if k == ref_kind]
    ref = traces[members[0]]
    rotations = []
    for m in members:
        ia, ib = _common(ref, traces[m])
        rot, t, rmsd = _kabsch(ref.xyz[ia], traces[m].xyz[ib])
        if rmsd < _RMSD_TOL and _maps_onto_itself(rot, t, traces, kinds):
            rotations.append(rot)
    return _classify(np.array(rotations))


def _axis_angle(rot: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], float]:
    """Return the unit axis and angle (radians) of a rotation matrix."""
    angle = math.acos(max(-1.0, min(1.0, (np.trace(rot) - 1.0) / 2.0)))
    w, v = np.linalg.eig(rot)
    axis = np.real(v[:, np.argmin(np.abs(w - 1.0))])
    return axis / np.linalg.norm(axis), angle


def _classify(rotations: npt.NDArray[np.float64]) -> str | None:
    """Name the point group of ``(n, 3, 3)`` rotations (identity included), or None."""
    n = len(rotations)
    if n <= 1:
        return "C1"
    axes, orders = [], []
    for rot in rotations:
        axis, angle = _axis_angle(rot)
        if angle < math.radians(5.0):
            continue
        axes.append(axis)
        orders.append(round(2.0 * math.pi / angle))
    k = max(orders)
    cos_tol = math.cos(math.radians(_AXIS_TOL_DEG))
    if all(abs(float(a @ axes[0])) > cos_tol for a in axes):
        return f"C{n}" if k == n else None
    if n == 2 * k:
        return f"D{k}"
    return {(12, 3): "T", (24, 4): "O", (60, 5): "I"}.get((n, k))
