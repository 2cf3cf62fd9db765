"""Tests of cryopose.io.structure against hand parsing of the PDB text and analytic groups."""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch

from cryopose.errors import InputError
from cryopose.io.structure import read_structure, structure_summary

# Standard atomic weights (IUPAC, Da), typed by hand for the elements of the test files.
WEIGHTS = {
    "C": 12.011,
    "N": 14.007,
    "O": 15.999,
    "S": 32.06,
    "P": 30.974,
    "NA": 22.990,
    "CA": 40.078,
    "MG": 24.305,
    "H": 1.008,
}
# Hydrogens of each amino acid inside a chain, in the CCD protonation state (Arg, Lys, His
# charged), typed by hand: the free amino acid's count minus the 2 of the peptide-bond water.
CHAIN_H = {
    "ALA": 5,
    "ARG": 13,
    "ASN": 6,
    "ASP": 5,
    "CYS": 5,
    "GLN": 8,
    "GLU": 7,
    "GLY": 3,
    "HIS": 8,
    "ILE": 11,
    "LEU": 11,
    "LYS": 13,
    "MET": 9,
    "PHE": 9,
    "PRO": 7,
    "SER": 5,
    "THR": 7,
    "TRP": 10,
    "TYR": 9,
    "VAL": 9,
}


@dataclass(frozen=True)
class Row:
    """One ATOM/HETATM record."""

    resname: str
    chain: str
    resseq: int
    icode: str
    xyz: tuple[float, float, float]
    occ: float
    element: str


def parse_pdb(path: Path) -> list[Row]:
    """ATOM/HETATM records of the first model, waters excluded, parsed by column."""
    text = gzip.decompress(path.read_bytes()).decode()
    rows = []
    for line in text.splitlines():
        if line.startswith("ENDMDL"):
            break
        if not line.startswith(("ATOM  ", "HETATM")) or line[17:20] == "HOH":
            continue
        xyz = (float(line[30:38]), float(line[38:46]), float(line[46:54]))
        rows.append(
            Row(
                line[17:20].strip(),
                line[21],
                int(line[22:26]),
                line[26],
                xyz,
                float(line[54:60]),
                line[76:78].strip(),
            )
        )
    return rows


def biomt(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """BIOMT operators (R, t) of REMARK 350, parsed by hand."""
    rows: dict[int, list[list[float]]] = {}
    for line in gzip.decompress(path.read_bytes()).decode().splitlines():
        if line.startswith("REMARK 350   BIOMT"):
            fields = line.split()
            rows.setdefault(int(fields[3]), []).append([float(v) for v in fields[4:8]])
    return [(np.array(m)[:, :3], np.array(m)[:, 3]) for m in rows.values()]


@pytest.mark.parametrize("name", ["1s3x", "3qm1", "6z6u"])
def test_counts_and_coordinates_match_hand_parse(data_dir: Path, name: str) -> None:
    path = data_dir / "structures" / f"{name}.pdb.gz"
    rows = parse_pdb(path)
    atoms = read_structure(path)
    summary = structure_summary(path)
    assert len(atoms) == len(rows) == summary["atoms"]
    # gemmi groups a chain's ligands (after TER) with its polymer: compare as sorted lists.
    got = sorted(
        zip(
            atoms.chain_ids.tolist(),
            atoms.residue_names.tolist(),
            map(tuple, atoms.coordinates.numpy().round(3).tolist()),
            strict=True,
        )
    )
    want = sorted((r.chain, r.resname, r.xyz) for r in rows)
    assert got == want
    chains = {r.chain for r in rows}
    assert summary["chains"] == len(chains)
    assert set(summary["chain_ids"]) == chains
    assert summary["residues"] == len({(r.chain, r.resseq, r.icode) for r in rows})
    coords = np.array([r.xyz for r in rows])
    np.testing.assert_allclose(summary["extent_angstrom"], coords.max(0) - coords.min(0))


def test_mass_against_hand_sum(data_dir: Path) -> None:
    path = data_dir / "structures" / "1s3x.pdb.gz"
    rows = parse_pdb(path)
    heavy = sum(WEIGHTS[r.element.upper()] * r.occ for r in rows)
    summary = structure_summary(path)
    assert summary["mass_kda"] == pytest.approx(heavy / 1000.0, rel=1e-3)
    residues = {(r.chain, r.resseq, r.icode): r.resname for r in rows}
    hydrogens = sum(CHAIN_H.get(n, 0) for n in residues.values())
    assert summary["mass_kda_with_hydrogens"] == pytest.approx(
        (heavy + WEIGHTS["H"] * hydrogens) / 1000.0, rel=1e-3
    )
    assert atoms_mass(path) == pytest.approx(heavy, rel=1e-3)


def atoms_mass(path: Path) -> float:
    atoms = read_structure(path)
    return float((atoms.masses * atoms.occupancies.double()).sum())


def test_header_fields_and_diameter(data_dir: Path) -> None:
    s = structure_summary(data_dir / "structures" / "1s3x.pdb.gz")
    assert (s["resolution_angstrom"], s["method"], s["models"]) == (1.84, "X-RAY DIFFRACTION", 1)
    assert s["waters"] == 408 and not s["has_hydrogens"]
    coords = np.array([r.xyz for r in parse_pdb(data_dir / "structures" / "1s3x.pdb.gz")])
    brute = max(float(np.linalg.norm(coords[i] - coords, axis=1).max()) for i in range(len(coords)))
    assert s["max_diameter_angstrom"] == pytest.approx(brute, abs=1e-6)
    em = structure_summary(data_dir / "structures" / "6z6u.pdb.gz")
    assert (em["resolution_angstrom"], em["method"]) == (1.25, "ELECTRON MICROSCOPY")


def test_plain_gzip_and_mmcif_agree(data_dir: Path, tmp_path: Path) -> None:
    gz = data_dir / "structures" / "3qm1.pdb.gz"
    plain = tmp_path / "3qm1.pdb"
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    st = gemmi.read_structure(str(plain))
    st.setup_entities()
    cif = tmp_path / "3qm1.cif"
    st.make_mmcif_document().write_file(str(cif))
    cif_gz = tmp_path / "3qm1.mmcif.gz"
    cif_gz.write_bytes(gzip.compress(cif.read_bytes()))
    ref = read_structure(gz, assembly="1")
    for other in (plain, cif, cif_gz):
        got = read_structure(other, assembly="1")
        np.testing.assert_allclose(got.coordinates.numpy(), ref.coordinates.numpy(), atol=1e-3)
        assert torch.equal(got.atomic_numbers, ref.atomic_numbers)
    assert structure_summary(cif)["format"] == "mmcif"


def test_assembly_applies_biomt_operators(data_dir: Path) -> None:
    path = data_dir / "structures" / "3qm1.pdb.gz"
    asu = read_structure(path).coordinates.numpy()
    ops = biomt(path)
    assert len(ops) == 2
    full = read_structure(path, assembly="1")
    assert len(full) == 2 * len(asu)
    expected = np.concatenate([asu @ r.T + t for r, t in ops])
    np.testing.assert_allclose(full.coordinates.numpy(), expected, atol=1e-3)
    assert set(full.chain_ids) == {"A1", "A2"}


@pytest.mark.parametrize(
    ("name", "operators", "chains", "group"),
    [
        ("1bxn", 2, 16, "D4"),
        ("3cf3", 2, 6, "C6"),
        ("6z6u", 1, 24, "O"),
        ("3qm1", 2, 2, "C2"),
        ("1s3x", 1, 1, "C1"),
    ],
)
def test_point_group_of_real_assemblies(
    data_dir: Path, name: str, operators: int, chains: int, group: str
) -> None:
    path = data_dir / "structures" / f"{name}.pdb.gz"
    s = structure_summary(path)
    assert len(biomt(path)) == operators
    assert s["assemblies"][0]["operators"] == operators
    assert s["assemblies"][0]["chains"] == chains
    assert s["assemblies"][0]["atoms"] == operators * s["atoms"]
    assert s["assemblies"][0]["mass_kda"] == pytest.approx(operators * s["mass_kda"])
    assert s["point_group"] == group


def rotation(axis: list[float], degrees: float) -> np.ndarray:
    u = np.array(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    a = math.radians(degrees)
    rot: np.ndarray = np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k
    return rot


def close_group(generators: list[np.ndarray]) -> list[np.ndarray]:
    group = [np.eye(3)]
    while True:
        new = [
            g @ h
            for g in group
            for h in generators
            if not any(np.allclose(g @ h, x, atol=1e-6) for x in group)
        ]
        if not new:
            return group
        for m in new:
            if not any(np.allclose(m, x, atol=1e-6) for x in group):
                group.append(m)


@pytest.mark.parametrize(
    ("generators", "group"),
    [
        ([rotation([0, 0, 1], 360 / 7)], "C7"),
        ([rotation([0, 0, 1], 120), rotation([1, 0, 0], 180)], "D3"),
        ([rotation([1, 1, 1], 120), rotation([0, 0, 1], 180)], "T"),
    ],
)
def test_point_group_of_synthetic_assembly(
    data_dir: Path, tmp_path: Path, generators: list[np.ndarray], group: str
) -> None:
    """Copies of one chain placed by a known group around a point off the origin."""
    rotations = close_group(generators)
    st = gemmi.read_structure(str(data_dir / "structures" / "3qm1.pdb.gz"))
    st.remove_ligands_and_waters()
    st.assemblies.clear()
    chain = st[0][0]
    xyz = np.array([[a.pos.x, a.pos.y, a.pos.z] for r in chain for a in r])
    # The chain sits 45 A from the symmetry centre in a generic direction.
    centre = xyz.mean(0) - np.array([30.0, 20.0, 27.0])
    model = gemmi.Model(1)
    for i, rot in enumerate(rotations):
        copy = chain.clone()
        copy.name = chr(ord("A") + i)
        for res in copy:
            for atom in res:
                p = np.array([atom.pos.x, atom.pos.y, atom.pos.z])
                atom.pos = gemmi.Position(*(rot @ (p - centre) + centre + 5.0))
        model.add_chain(copy)
    out = gemmi.Structure()
    out.add_model(model)
    path = tmp_path / "synthetic.pdb"
    out.write_pdb(str(path))
    s = structure_summary(path)
    assert s["chains"] == len(rotations)
    assert s["point_group"] == group


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("junk.pdb", b"hello, this is not a model\n", "no ATOM/HETATM"),
        ("empty.cif", b"", "empty"),
        ("model.txt", b"ATOM", "expected a .pdb"),
        ("bad.cif", b"data_x\nloop_\n_atom_site.id\n1\n", "no ATOM/HETATM"),
    ],
)
def test_bad_files_raise_input_error(
    tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as err:
        read_structure(path)
    assert err.value.path == path
    assert str(path) in str(err.value)


def test_truncated_gzip_and_missing_assembly(data_dir: Path, tmp_path: Path) -> None:
    raw = (data_dir / "structures" / "1s3x.pdb.gz").read_bytes()
    cut = tmp_path / "cut.pdb.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match="not a complete gzip"):
        structure_summary(cut)
    with pytest.raises(InputError, match="no biological assembly '7'"):
        read_structure(data_dir / "structures" / "1s3x.pdb.gz", assembly="7")
    with pytest.raises(InputError, match="cannot read"):
        read_structure(tmp_path / "missing.pdb")
