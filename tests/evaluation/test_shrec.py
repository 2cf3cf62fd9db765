from __future__ import annotations

import json
import math
from pathlib import Path

import gemmi
import matplotlib.image
import mrcfile
import numpy as np
import pytest

import cryopose
from cryopose.errors import InputError
from cryopose.evaluation.shrec import (
    SHREC_CLASS_MASS_KDA,
    ShrecResult,
    ShrecTruth,
    evaluate_picks,
    evaluate_tomograms,
    format_tables,
    load_truth,
    size_group,
)
from cryopose.io.picks import Picks
from cryopose.report.confusion import plot_confusion, row_normalise

RESULT_KEYS = [
    "tp", "fp", "fn", "multiple_hits", "outside", "avg_distance", "precision", "recall", "f1",
    "miss_rate", "per_class_f1", "size_group_f1", "confusion",
]  # fmt: skip


def make_truth() -> ShrecTruth:
    """20^3 tomogram (z, y, x) with four proteins and a vesicle, none diagonal-symmetric."""
    occ = np.zeros((20, 20, 20), dtype=np.int64)
    occ[14:17, 10:13, 3:6] = 1  # 1s3x box: x 3..5, y 10..12, z 14..16
    z, y, x = np.mgrid[0:20, 0:20, 0:20]
    occ[(x - 12) ** 2 + (y - 5) ** 2 + (z - 8) ** 2 <= 4] = 2  # 3cf3 sphere r 2 at (12, 5, 8)
    occ[2:5, 2:5, 17:20] = 3  # 4cr2 box touching the x = 19 border
    occ[3:6, 15:18, 10:13] = 4  # vesicle
    occ[8:10, 2:4, 2:4] = 5  # 3qm1 box: x 2..3, y 2..3, z 8..9
    ids = ["1s3x", "3cf3", "4cr2", "vesicle", "3qm1"]
    centres = [[4, 11, 15], [12, 5, 8], [18, 3, 3], [11, 16, 4], [2.5, 2.5, 8.5]]
    return ShrecTruth(ids, centres, occ)


def evaluate(rows: list[tuple[str, float, float, float]], **kwargs: object) -> ShrecResult:
    picks = Picks([r[0] for r in rows], [r[1:] for r in rows])
    return evaluate_picks(picks, make_truth(), **kwargs)  # type: ignore[arg-type]


def test_hit_inside_occupancy() -> None:
    r = evaluate([("1s3x", 4, 11, 15)])
    assert (r.tp, r.fp, r.fn, r.multiple_hits, r.outside) == (1, 0, 3, 0, 0)
    assert r.avg_distance == 0.0
    assert r.precision == 1.0 and r.recall == 0.25 and r.miss_rate == 0.75
    assert r.f1 == pytest.approx(2 * 1.0 * 0.25 / 1.25)


@pytest.mark.parametrize(
    ("xyz", "hits"),
    [
        ((6, 11, 15), True),  # face neighbour in x
        ((4, 9, 15), True),  # face neighbour in y
        ((4, 11, 17), True),  # face neighbour in z
        ((6, 13, 15), False),  # edge diagonal
        ((6, 13, 17), False),  # corner diagonal
        ((7, 11, 15), False),  # two voxels away
    ],
)
def test_dilation_shell_is_six_connected(xyz: tuple[int, int, int], hits: bool) -> None:
    r = evaluate([("1s3x", *xyz)])
    assert (r.tp, r.fp) == ((1, 0) if hits else (0, 1))
    if hits:
        assert r.avg_distance == pytest.approx(math.dist(xyz, (4, 11, 15)))


def test_multiple_hits_count_particles_and_lower_precision() -> None:
    rows = [("1s3x", 4, 11, 15), ("1s3x", 5, 11, 15), ("1s3x", 3, 10, 14)]  # particle 1 thrice
    rows += [("3cf3", 12, 5, 8), ("3cf3", 13, 5, 8), ("3cf3", 0, 19, 0)]  # twice + background
    r = evaluate(rows)
    assert (r.tp, r.fp, r.fn, r.multiple_hits) == (2, 1, 2, 2)
    assert r.precision == pytest.approx(2 / 6)  # duplicates count against precision
    assert r.recall == pytest.approx(2 / 4)
    assert r.f1 == pytest.approx(2 * (2 / 6) * (2 / 4) / (2 / 6 + 2 / 4))
    assert r.avg_distance == 0.0  # first hits of both particles are their centres


def test_outside_is_counted_and_clipped() -> None:
    rows = [
        ("4cr2", 20.4, 3, 3),  # rounds to x = 20, clipped to 19: inside particle 3
        ("4cr2", 25.0, 3, 3),  # far outside, clipped onto particle 3 as well
        ("4cr2", 19.5, 3, 3),  # half to even: 20 -> outside, clipped to 19
        ("4cr2", 19.4, 3, 3),  # rounds to 19: inside, not outside
        ("1s3x", -3.0, 0, 0),  # outside, clipped to the background corner
    ]
    r = evaluate(rows)
    assert r.outside == 4
    assert (r.tp, r.fp, r.multiple_hits) == (1, 1, 1)
    assert r.avg_distance == pytest.approx(1.0)  # clipped voxel (19, 3, 3) vs centre (18, 3, 3)


def test_wrong_class_is_localised_but_confused() -> None:
    r = evaluate([("3cf3", 4, 11, 15)])
    assert r.tp == 1 and r.fp == 0
    labels, matrix = r.confusion
    assert labels == ("3qm1", "1s3x", "3cf3", "4cr2", "none")
    assert matrix[labels.index("1s3x"), labels.index("3cf3")] == 1
    assert r.per_class_f1["1s3x"] == 0.0
    assert r.per_class_f1["3cf3"] == 0.0  # FP 1 (particle 1 called 3cf3), FN 1 (particle 2)


@pytest.mark.parametrize(
    ("xyz", "hits"),
    [
        ((6.5, 11, 15), True),  # round(6.5) = 6 (shell); floor(6.5 + 0.5) = 7 would miss
        ((5.5, 11, 15), True),  # 6
        ((7.5, 11, 15), False),  # 8
        ((2.5, 11, 15), True),  # 2 (shell on the other side)
        ((4, 8.5, 15), False),  # 8, two voxels below y = 10; floor(9.0) = 9 would hit
        ((4, 11, 17.5), False),  # 18
    ],
)
def test_rounding_is_half_to_even_like_python_round(
    xyz: tuple[float, float, float], hits: bool
) -> None:
    # The SHREC script rounds with Python's round(): the reference for each case.
    voxel = tuple(round(v) for v in xyz)
    r = evaluate([("1s3x", *xyz)])
    assert r.tp == int(hits)
    if hits:
        assert r.avg_distance == pytest.approx(math.dist(voxel, (4, 11, 15)))


def test_axis_order_is_xyz_against_zyx_volume() -> None:
    assert make_truth().occupancy[15, 11, 4] == 1  # volume[z, y, x]
    assert evaluate([("1s3x", 4, 11, 15)]).tp == 1
    assert evaluate([("1s3x", 15, 11, 4)]).tp == 0  # x and z swapped misses


def test_non_evaluated_classes_are_dont_care() -> None:
    rows = [("1s3x", 4, 11, 15), ("vesicle", 11, 16, 4), ("1s3x", 11, 16, 4)]
    r = evaluate(rows)
    assert (r.tp, r.fp, r.fn) == (1, 0, 3)  # vesicle neither TP, FN nor FP
    assert r.precision == 1.0
    r = evaluate([*rows, ("1s3x", 12, 5, 8)], classes=["1S3X"])  # 3cf3 particle ignored too
    assert (r.tp, r.fp, r.fn, r.precision, r.recall) == (1, 0, 0, 1.0, 1.0)
    assert r.confusion[0] == ("1s3x", "none")
    assert list(r.size_group_f1) == ["small", "medium", "large"]
    assert r.size_group_f1["small"] == 1.0 and math.isnan(r.size_group_f1["large"])


def classification_truth() -> ShrecTruth:
    occ = np.zeros((20, 20, 20), dtype=np.int64)
    boxes = [(2, 2, 2), (8, 2, 2), (14, 2, 2), (2, 10, 10), (10, 10, 10)]  # x, y, z corners
    for k, (x, y, z) in enumerate(boxes, start=1):
        occ[z : z + 2, y : y + 2, x : x + 2] = k
    centres = [[x + 0.5, y + 0.5, z + 0.5] for x, y, z in boxes]
    return ShrecTruth(["1s3x", "1s3x", "3qm1", "3cf3", "4cr2"], centres, occ)


def test_per_class_and_size_group_f1_by_hand() -> None:
    rows = [
        ("1s3x", 2, 2, 2),  # A1 correct
        ("3qm1", 8, 2, 2),  # A2 called 3qm1
        ("3cf3", 2, 10, 10),  # C1 correct
        ("1s3x", 10, 10, 10),  # D1 called 1s3x
        ("3cf3", 17, 17, 17),  # background pick
        ("4cr2", 3, 3, 3),  # second hit on A1: classification uses the first
    ]  # B1 (3qm1) is missed
    picks = Picks([r[0] for r in rows], [r[1:] for r in rows])
    r = evaluate_picks(picks, classification_truth())
    assert (r.tp, r.fp, r.fn, r.multiple_hits) == (4, 1, 1, 1)
    assert r.precision == pytest.approx(4 / 6) and r.recall == pytest.approx(4 / 5)
    assert r.f1 == pytest.approx(8 / 11)
    labels, matrix = r.confusion
    assert labels == ("3qm1", "1s3x", "3cf3", "4cr2", "none")
    expected = [
        [0, 0, 0, 0, 1],  # 3qm1 missed
        [1, 1, 0, 0, 0],  # 1s3x: one right, one called 3qm1
        [0, 0, 1, 0, 0],
        [0, 1, 0, 0, 0],  # 4cr2 called 1s3x
        [0, 0, 1, 0, 0],  # background pick labelled 3cf3
    ]
    np.testing.assert_array_equal(matrix, expected)
    # 1s3x: TP 1, FN 1, FP 1; 3qm1: TP 0, FN 1, FP 1; 3cf3: TP 1; 4cr2: FN 1.
    assert r.per_class_f1 == pytest.approx({"3qm1": 0.0, "1s3x": 0.5, "3cf3": 1.0, "4cr2": 0.0})
    # small pools 1s3x + 3qm1: 2*1 / (2*1 + 2 + 2)
    assert r.size_group_f1 == pytest.approx({"small": 1 / 3, "medium": 1.0, "large": 0.0})


def shrec_script_reference(
    rows: list[tuple[str, float, float, float]], truth: ShrecTruth, evaluated: set[str]
) -> dict[str, object]:
    """Loop-by-loop transcription of the SHREC eval script (skimage-style cross dilation)."""
    occ = truth.occupancy
    nz, ny, nx = occ.shape
    pad = np.pad(occ, 1)
    dil = np.zeros_like(occ)
    cross = [(0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    for dz, dy, dx in cross:
        dil = np.maximum(dil, pad[1 + dz : 1 + dz + nz, 1 + dy : 1 + dy + ny, 1 + dx : 1 + dx + nx])
    ids = list(truth.class_ids)
    found: dict[int, list[tuple[str, float]]] = {k: [] for k in range(len(ids) + 1)}
    outside = 0
    for cls, *xyz in rows:
        c = [round(v) for v in xyz]
        cc = [min(max(c[0], 0), nx - 1), min(max(c[1], 0), ny - 1), min(max(c[2], 0), nz - 1)]
        outside += cc != c
        k = int(dil[cc[2], cc[1], cc[0]])
        if k and ids[k - 1] not in evaluated:
            continue
        d = math.dist(cc, truth.coords[k - 1]) if k else 0.0
        found[k].append((cls, d))
    particles = [k for k in range(1, len(ids) + 1) if ids[k - 1] in evaluated]
    tp = sum(1 for k in particles if found[k])
    n_pred = sum(len(v) for v in found.values())
    confusion: dict[tuple[str, str], int] = {}
    for k in particles:
        pred = found[k][0][0] if found[k] and found[k][0][0] in evaluated else "none"
        confusion[ids[k - 1], pred] = confusion.get((ids[k - 1], pred), 0) + 1
    return {
        "tp": tp,
        "fp": len(found[0]),
        "fn": len(particles) - tp,
        "multiple_hits": sum(1 for k in particles if len(found[k]) > 1),
        "outside": outside,
        "avg_distance": sum(found[k][0][1] for k in particles if found[k]) / tp,
        "precision": tp / n_pred,
        "recall": tp / len(particles),
        "confusion": confusion,
    }


def test_matches_loop_transcription_of_shrec_script() -> None:
    rng = np.random.default_rng(7)
    shape = (16, 20, 24)  # z, y, x all different so any axis mix-up fails
    occ = np.zeros(shape, dtype=np.int64)
    names = ["1s3x", "3qm1", "1bxn", "4cr2", "vesicle"]
    ids, centres = [], []
    for k in range(1, 15):
        size = rng.integers(1, 4, size=3)
        lo = [int(rng.integers(0, n - s + 1)) for n, s in zip(shape[::-1], size, strict=True)]
        occ[lo[2] : lo[2] + size[2], lo[1] : lo[1] + size[1], lo[0] : lo[0] + size[0]] = k
        ids.append(str(rng.choice(names)))
        centres.append([lo[i] + (size[i] - 1) / 2 for i in range(3)])
    truth = ShrecTruth(ids, centres, occ)
    xyz = rng.integers(-6, 2 * 26, size=(400, 3)) / 2.0  # many exact .5 and outside values
    classes = rng.choice(names[:4], size=400)
    rows = [(str(c), *map(float, p)) for c, p in zip(classes, xyz, strict=True)]
    r = evaluate_picks(Picks(classes, xyz), truth)
    ref = shrec_script_reference(rows, truth, set(names[:4]))
    assert (r.tp, r.fp, r.fn, r.multiple_hits, r.outside) == (
        ref["tp"], ref["fp"], ref["fn"], ref["multiple_hits"], ref["outside"],
    )  # fmt: skip
    assert r.tp > 3 and r.multiple_hits > 0 and r.outside > 0  # the draw exercises every rule
    assert r.avg_distance == pytest.approx(ref["avg_distance"])
    assert r.precision == pytest.approx(ref["precision"])
    assert r.recall == pytest.approx(ref["recall"])
    labels, matrix = r.confusion
    got = {
        (labels[i], labels[j]): int(matrix[i, j])
        for i in range(len(labels) - 1)
        for j in range(len(labels))
        if matrix[i, j]
    }
    assert got == ref["confusion"]


def write_shrec_folder(folder: Path, truth: ShrecTruth) -> None:
    folder.mkdir()
    lines = [
        f"{c} {x:g} {y:g} {z:g} 0 0 0\n"
        for c, (x, y, z) in zip(truth.class_ids, truth.coords, strict=True)
    ]
    (folder / "particle_locations.txt").write_text("".join(lines))
    with mrcfile.new(folder / "occupancy_mask.mrc") as mrc:
        mrc.set_data(truth.occupancy.astype(np.float32))  # SHREC masks are float32


def test_load_truth_round_trip(tmp_path: Path) -> None:
    truth = make_truth()
    write_shrec_folder(tmp_path / "model_0", truth)
    loaded = load_truth(tmp_path / "model_0")
    assert loaded.class_ids.tolist() == truth.class_ids.tolist()
    np.testing.assert_array_equal(loaded.coords, truth.coords)
    np.testing.assert_array_equal(loaded.occupancy, truth.occupancy)
    r = evaluate_picks(Picks(["1s3x"], [[6, 11, 15]]), loaded)
    assert (r.tp, r.fn) == (1, 3)


def test_load_truth_rejects_mismatched_mask(tmp_path: Path) -> None:
    truth = make_truth()
    write_shrec_folder(tmp_path / "m", truth)
    (tmp_path / "m" / "particle_locations.txt").write_text("1s3x 4 11 15\n")  # 1 line, 5 labels
    with pytest.raises(InputError, match=r"labels must lie in 0\.\.1") as info:
        load_truth(tmp_path / "m")
    assert info.value.path == tmp_path / "m" / "occupancy_mask.mrc"
    (tmp_path / "m" / "occupancy_mask.mrc").unlink()
    with pytest.raises(InputError, match="file not found"):
        load_truth(tmp_path / "m")


def test_to_dict_is_json_with_exact_keys() -> None:
    r = evaluate([("1s3x", 4, 11, 15)], classes=["1s3x"])
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert list(d) == RESULT_KEYS
    assert d["per_class_f1"] == {"1s3x": 1.0}
    assert d["size_group_f1"] == {"small": 1.0, "medium": None, "large": None}
    assert d["confusion"] == {"labels": ["1s3x", "none"], "matrix": [[1, 0], [0, 0]]}


def test_format_tables_shows_the_numbers() -> None:
    r = evaluate([("1s3x", 4, 11, 15), ("3qm1", 0, 19, 19)])
    text = format_tables(r)
    assert "### Localisation" in text and "### Classification F1 per size group" in text
    lines = text.splitlines()
    assert any(
        line.startswith("TP (unique particles found)") and line.endswith(" 1") for line in lines
    )
    assert any(line.split() == ["precision", "0.50000"] for line in lines)
    assert any(line.split() == ["1s3x", "1.00000"] for line in lines)
    assert any(line.split() == ["large", "0.00000"] for line in lines)


def test_plot_confusion_png(tmp_path: Path) -> None:
    matrix = np.array([[3, 1, 0], [0, 0, 0], [2, 2, 4]])
    expected = [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]]
    np.testing.assert_allclose(row_normalise(matrix), expected)
    path = tmp_path / "plots" / "cm.png"
    assert plot_confusion(["a", "b", "none"], matrix, path) == path
    image = matplotlib.image.imread(path)
    side = round(100 * (2.0 + 0.55 * 3))  # figure inches * dpi
    assert image.shape[:2] == (side, side)
    assert sorted(p.name for p in path.parent.iterdir()) == ["cm.png"]
    with pytest.raises(InputError, match=r"\(3, 3\)"):
        plot_confusion(["a", "b", "c"], matrix[:2], path)


def sequence_mass_kda(path: Path) -> float:
    """gemmi mass of every SEQRES chain in the file (the deposited asymmetric unit)."""
    st = gemmi.read_structure(str(path))
    st.setup_entities()
    total = 0.0
    for entity in st.entities:
        if entity.entity_type == gemmi.EntityType.Polymer and entity.full_sequence:
            monomers = [gemmi.Entity.first_mon(s) for s in entity.full_sequence]
            total += gemmi.calculate_sequence_weight(monomers) * len(entity.subchains)
    return total / 1000.0


@pytest.mark.parametrize("pdb", ["1s3x", "3qm1", "1bxn", "3cf3", "3j9i"])
def test_default_masses_match_structure_files(data_dir: Path, pdb: str) -> None:
    demo = Path(cryopose.__file__).parent / "data" / "demo"
    path = demo / f"{pdb}.pdb.gz" if pdb == "3j9i" else data_dir / "structures" / f"{pdb}.pdb.gz"
    mass = sequence_mass_kda(path)
    # Deposited weights also count ligands and waters, so they sit a few % above SEQRES.
    assert mass == pytest.approx(SHREC_CLASS_MASS_KDA[pdb], rel=0.07)
    assert size_group(mass) == size_group(SHREC_CLASS_MASS_KDA[pdb])


def test_pooled_tomograms_score_as_one_volume_side_by_side() -> None:
    """Two tomograms pooled = one volume holding both side by side (a gap keeps them apart)."""
    first = make_truth()
    second = ShrecTruth(["3cf3", "1s3x"], [[4, 4, 4], [14, 14, 14]], np.zeros((20, 20, 20), int))
    second.occupancy[3:6, 3:6, 3:6] = 1
    second.occupancy[13:16, 13:16, 13:16] = 2
    picks_a = Picks(
        ["1s3x", "1s3x", "3qm1", "4cr2", "3cf3"],
        [[4, 11, 15], [5, 11, 15], [9, 9, 9], [18, 3, 3], [2, 2, 8]],  # double, FP, wrong class
    )
    picks_b = Picks(["3cf3", "4cr2", "1s3x"], [[4, 4, 5], [10, 10, 2], [14, 13, 14]])
    pooled = evaluate_tomograms([(picks_a, first), (picks_b, second)])

    gap = 5  # second volume starts at x = 25
    occupancy = np.zeros((20, 20, 45), dtype=np.int64)
    occupancy[:, :, :20] = first.occupancy
    shifted = np.where(second.occupancy > 0, second.occupancy + len(first.class_ids), 0)
    occupancy[:, :, 20 + gap :] = shifted
    offset = np.array([20 + gap, 0, 0])
    merged = ShrecTruth(
        [*first.class_ids, *second.class_ids],
        np.vstack([first.coords, second.coords + offset]),
        occupancy,
    )
    picks = Picks(
        [*picks_a.class_ids, *picks_b.class_ids],
        np.vstack([picks_a.coords, picks_b.coords + offset]),
    )
    reference = evaluate_picks(picks, merged)
    assert pooled.to_dict() == reference.to_dict()
    assert (pooled.tp, pooled.fp, pooled.fn, pooled.multiple_hits) == (5, 2, 1, 1)
    assert pooled.per_class_f1["3qm1"] == 0.0 and pooled.per_class_f1["4cr2"] == 1.0


def test_pooling_one_tomogram_changes_nothing() -> None:
    truth = make_truth()
    picks = Picks(["1s3x", "3qm1", "4cr2"], [[4, 11, 15], [3, 2, 8], [25, 3, 3]])  # 1 outside
    single = evaluate_picks(picks, truth)
    assert evaluate_tomograms([(picks, truth)]).to_dict() == single.to_dict()
    assert single.outside == 1
    with pytest.raises(ValueError, match="at least one"):
        evaluate_tomograms([])
