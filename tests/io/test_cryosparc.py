"""cryoSPARC .cs -> RELION-convention particle table (pyem csparc2star conventions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryopose.errors import InputError
from cryopose.geometry import axis_angle_to_matrix
from cryopose.io.cryosparc import cryosparc_fields, read_cryosparc
from cryopose.io.particles import ParticleTable, read_particles, write_particles

DATA = Path(__file__).parents[1] / "data"
CS_DTYPE = [
    ("uid", "<u8"),
    ("blob/path", "S40"),
    ("blob/idx", "<u4"),
    ("blob/shape", "<u4", (2,)),
    ("blob/psize_A", "<f4"),
    ("ctf/accel_kv", "<f4"),
    ("ctf/cs_mm", "<f4"),
    ("ctf/amp_contrast", "<f4"),
    ("ctf/df1_A", "<f4"),
    ("ctf/df2_A", "<f4"),
    ("ctf/df_angle_rad", "<f4"),
    ("ctf/phase_shift_rad", "<f4"),
    ("alignments3D/split", "<u4"),
    ("alignments3D/shift", "<f4", (2,)),
    ("alignments3D/pose", "<f4", (3,)),
]


def _geodesic(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    cos = (np.einsum("nij,nij->n", A, B) - 1) / 2
    return np.arccos(np.clip(cos, -1, 1))


def _cs_from_relion(table: ParticleTable, path: Path) -> np.ndarray:
    """A .cs array encoding a RELION table the way pyem's csparc2star decodes it."""
    merged = table.merged()
    n = len(table)
    cs = np.zeros(n, dtype=CS_DTYPE)
    cs["uid"] = np.arange(n, dtype=np.uint64) + np.uint64(2**63 + 12345)
    cs["blob/path"] = [b">J7/extract/stack.mrcs"] * n
    cs["blob/idx"] = np.arange(n)
    cs["blob/shape"] = 200
    apix = table.angpix()
    cs["blob/psize_A"] = apix
    cs["ctf/accel_kv"] = merged["rlnVoltage"]
    cs["ctf/cs_mm"] = merged["rlnSphericalAberration"]
    cs["ctf/amp_contrast"] = merged["rlnAmplitudeContrast"]
    cs["ctf/df1_A"] = merged["rlnDefocusU"]
    cs["ctf/df2_A"] = merged["rlnDefocusV"]
    cs["ctf/df_angle_rad"] = np.deg2rad(merged["rlnDefocusAngle"])
    cs["ctf/phase_shift_rad"] = np.deg2rad(merged["rlnPhaseShift"])
    cs["alignments3D/split"] = merged["rlnRandomSubset"] - 1
    # Same sign as RELION's origin, in pixels (pyem copies it to rlnOriginX/Y unchanged).
    cs["alignments3D/shift"] = table.shifts_angst(torch.float64).numpy() / apix[:, None]
    A = table.rotations(torch.float64).numpy()
    # RELION's A is the transpose of the axis-angle rotation (pyem: rot2euler(expmap(pose))).
    cs["alignments3D/pose"] = Rotation.from_matrix(np.transpose(A, (0, 2, 1))).as_rotvec()
    with path.open("wb") as f:
        np.save(f, cs)
    return cs


def test_axis_angle_matches_scipy() -> None:
    v = torch.tensor([[0.3, -1.2, 2.0], [0.0, 0.0, 0.0], [np.pi, 0.0, 0.0]], dtype=torch.float64)
    expected = Rotation.from_rotvec(v.numpy()).as_matrix()
    np.testing.assert_allclose(axis_angle_to_matrix(v).numpy(), expected, atol=1e-14)


@pytest.mark.parametrize(
    "name", ["sample_particles_relion31.star", "sample_particles_relion30.star"]
)
def test_read_cryosparc_recovers_relion_table(name: str, tmp_path: Path) -> None:
    ref = read_particles(DATA / "starfiles" / name)
    cs = _cs_from_relion(ref, tmp_path / "x.cs")
    t = read_cryosparc(tmp_path / "x.cs", particles_dir=tmp_path)
    assert len(t) == 17 and not t.is_relion30 and t.particles_dir == tmp_path
    err = _geodesic(t.rotations(torch.float64).numpy(), ref.rotations(torch.float64).numpy())
    assert err.max() < 1e-4
    np.testing.assert_allclose(
        t.shifts_angst(torch.float64).numpy(), ref.shifts_angst(torch.float64).numpy(), atol=1e-5
    )
    assert t.particles["rlnImageName"][0] == "000001@J7/extract/stack.mrcs"
    assert t.particles["rlnImageName"][16] == "000017@J7/extract/stack.mrcs"
    ctf, ref_ctf = t.ctf_parameters(), ref.ctf_parameters()
    for key in ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast"):
        np.testing.assert_allclose(ctf[key].numpy(), ref_ctf[key].numpy(), rtol=1e-6, atol=1e-4)
    np.testing.assert_array_equal(t.random_subset(), ref.random_subset())
    assert t.optics is not None and sorted(t.optics["rlnVoltage"]) == [200.0, 300.0]
    np.testing.assert_array_equal(t.image_size(), [200] * 17)
    assert t.particles["cryoposeCsUid"].tolist() == [str(u) for u in cs["uid"].tolist()]
    # The converted table writes as a RELION 3.1 file and reads back the same.
    write_particles(t, tmp_path / "converted.star")
    back = read_particles(tmp_path / "converted.star")
    torch.testing.assert_close(
        back.rotations(torch.float64), t.rotations(torch.float64), rtol=0, atol=0
    )
    assert back.particles["cryoposeCsUid"].tolist() == t.particles["cryoposeCsUid"].tolist()


def test_cryosparc_fields(tmp_path: Path) -> None:
    ref = read_particles(DATA / "starfiles" / "sample_particles_relion31.star")
    _cs_from_relion(ref, tmp_path / "x.cs")
    names, count = cryosparc_fields(tmp_path / "x.cs")
    assert names == [d[0] for d in CS_DTYPE] and count == 17


def test_bad_cs_files(tmp_path: Path) -> None:
    (tmp_path / "text.cs").write_text("not numpy")
    with pytest.raises(InputError, match=r"text\.cs: not a cryoSPARC \.cs file"):
        read_cryosparc(tmp_path / "text.cs")
    with (tmp_path / "plain.cs").open("wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(InputError, match="structured array"):
        cryosparc_fields(tmp_path / "plain.cs")
    with (tmp_path / "mics.cs").open("wb") as f:
        np.save(f, np.zeros(2, dtype=[("uid", "<u8"), ("micrograph_blob/path", "S8")]))
    with pytest.raises(InputError, match="missing field"):
        read_cryosparc(tmp_path / "mics.cs")
