"""SHREC 2020 cryo-ET picking metrics: localisation and classification of particles.

SHREC 2020 ("Classification in cryo-electron tomograms", Gubins et al.) scores a list of
predicted particle centres and classes against a simulated tomogram's ground truth: a table of
particles (``particle_locations.txt``) and an occupancy mask (``occupancy_mask.mrc``) in which
voxel value ``k`` marks the particle on line ``k`` (1-based) of the table and 0 is background.
This module reproduces the organisers' evaluation script (``misc/eval.py`` of SHREC 2020/2021)
rule by rule; where the script was silent or cryopose chooses differently, the rule says so.

Localisation rules
------------------
1. **Rounding.** A predicted centre ``(x, y, z)`` (voxels) is rounded to the nearest voxel with
   round-half-to-even (:func:`numpy.rint`), exactly what the script's ``int(round(float(x)))``
   does in Python 3: ``6.5 -> 6``, ``7.5 -> 8`` (not ``floor(x + 0.5)``).
2. **Outside.** A rounded centre outside the volume is counted in ``outside`` and clipped to
   the nearest border voxel before the look-up (``np.clip`` in the script), so a pick just
   beyond the border next to a border particle still hits it.
3. **Hit.** The clipped voxel is looked up (``[z, y, x]``: volumes are stored z, y, x) in the
   occupancy mask grey-dilated once with the 6-connected cross (``skimage.morphology.dilation``
   with its default footprint in the script; here ``scipy.ndimage.grey_dilation`` with
   ``generate_binary_structure(3, 1)``). A face neighbour of a particle voxel therefore hits it,
   an edge or corner diagonal neighbour does not. Where two particles touch, the dilation takes
   the larger label on the contact shell, as the script's did.
4. **Counts.** ``tp`` = particles hit at least once; ``fn`` = particles never hit; ``fp`` =
   predictions that hit no particle; ``multiple_hits`` = particles hit more than once (the
   script's "particles that had more than one prediction": a particle hit three times counts
   once, not twice); ``outside`` = predictions outside the volume (rule 2).
5. **Precision.** ``precision = tp / n_predictions`` as in the script, i.e. every extra hit on
   an already found particle counts against precision like a false positive
   (``tp / (tp + fp + extra hits)``). Otherwise a picker could report ten centres per particle
   at no cost. ``recall = tp / (tp + fn)``, ``f1`` their harmonic mean, ``miss_rate = fn /
   (tp + fn)``.
6. **Distance.** ``avg_distance`` is the mean, over found particles, of the Euclidean distance
   in voxels between the particle's true centre and the **first** prediction (in list order)
   that hit it, using that prediction's rounded and clipped voxel, as the script did.

Classes
-------
7. **Evaluated classes.** ``classes=None`` evaluates every class in the truth except the
   non-protein labels ``"fiducial"`` and ``"vesicle"``. Class ids are compared case-insensitively
   (PDB ids are; SHREC 2021 upper-cased them) and reported in lower case. Truth particles of a
   class that is not evaluated are *don't care*: they count neither as TP nor FN, and a
   prediction that hits one counts neither as TP nor FP nor in the precision denominator.
   (The SHREC 2021 script removed skipped classes from the truth but left their predictions in
   the precision denominator; cryopose does not penalise what it does not evaluate.)
   Localisation ignores predicted classes, as the script did.
8. **Confusion matrix.** Labels are the evaluated classes (ordered by mass, then name) plus
   ``"none"``. Row = true class, column = predicted class. Each evaluated particle adds one
   entry: the class of its first hitting prediction, or ``"none"`` when it was never hit (or hit
   by a prediction of a class that is not evaluated). The extra last row ``"none"`` holds the
   predictions that hit no particle, by predicted class; it is shown but, as in the script
   (which built the matrix from particles only), not used for classification F1.
9. **Per-class F1.** From the particle rows: ``TP_c = M[c, c]``, ``FN_c`` = rest of row ``c``
   (wrong class or missed particles of class ``c``), ``FP_c`` = rest of column ``c`` over the
   particle rows (particles of other classes called ``c``); ``F1_c = 2 TP_c / (2 TP_c + FP_c +
   FN_c)``, which equals pycm's per-class F1 used by the script.
10. **Size groups.** ``small`` < 200 kDa <= ``medium`` <= 600 kDa < ``large``, by
    ``class_mass_kda`` (default :data:`SHREC_CLASS_MASS_KDA`). A group's F1 pools the per-class
    counts of its evaluated classes (micro average): ``2 sum TP / (2 sum TP + sum FP + sum FN)``.
    Classes without a known mass belong to no group.

Undefined ratios (nothing to divide by, e.g. F1 of a group without classes) are ``nan`` in
:class:`ShrecResult` and ``None`` in :meth:`ShrecResult.to_dict`.

Coordinates must be in the occupancy mask's voxel frame. (SHREC 2021 submissions were in the
512^3 reconstruction frame, shifted by 156 voxels in z; cryopose does not guess such offsets.)

>>> import numpy as np
>>> from cryopose.io.picks import Picks
>>> occupancy = np.zeros((8, 8, 8), dtype=np.int64)
>>> occupancy[2:4, 2:4, 5:7] = 1  # particle 1: x 5..6, y 2..3, z 2..3
>>> truth = ShrecTruth(["1bxn"], [[5.5, 2.5, 2.5]], occupancy)
>>> result = evaluate_picks(Picks(["1bxn", "1bxn"], [[6.0, 3.0, 2.0], [0.0, 7.0, 7.0]]), truth)
>>> result.tp, result.fp, result.fn, result.precision
(1, 1, 0, 0.5)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import numpy.typing as npt
from scipy.ndimage import generate_binary_structure, grey_dilation

from cryopose.errors import InputError
from cryopose.io.picks import Picks, read_picks

__all__ = [
    "NON_PROTEIN_CLASSES",
    "SHREC2020_CLASSES",
    "SHREC_CLASS_MASS_KDA",
    "SIZE_GROUPS",
    "ShrecResult",
    "ShrecTruth",
    "evaluate_picks",
    "evaluate_tomograms",
    "format_tables",
    "load_truth",
    "size_group",
]

#: The 12 SHREC 2020 protein classes named in the cryopose task (PDB ids); cryopose's own
#: simulations use 3j9i (20S proteasome) in place of 5mrc, for which it has no model.
SHREC2020_CLASSES: tuple[str, ...] = (
    "1bxn", "1qvr", "1s3x", "1u6g", "2cg9", "3cf3",
    "3d2f", "3gl1", "3h84", "3qm1", "4cr2", "5mrc",
)  # fmt: skip

#: Molecular weight in kDa of each class, RCSB "total structure weight" of the deposited entry
#: (its asymmetric unit). They reproduce the SHREC 2021 script's small/medium/large ordering of
#: the 12 classes, so the size groups, and the scores per group, compare with SHREC's tables.
#: What :mod:`cryopose.simulate.tomogram` places by default differs for some classes: it builds
#: biological assembly 1 where the file defines one (measured masses of its densities: 3gl1 39,
#: 3qm1 55, 3h84 135, 3d2f 103, 3cf3 453, 1bxn 481, 1qvr 513 kDa), so in its tomograms 3d2f is
#: as heavy as a small protein while it is scored in the medium group; ``assembly="deposited"``
#: places the asymmetric units this table lists. For the 10 with a model file
#: gemmi's SEQRES mass of the file is 0.3-6 % lower (no ligands or waters) and falls in the same
#: size group (tests check 1s3x, 3qm1, 1bxn, 3cf3, 3j9i); 4cr2 and 5mrc have no local model and
#: are unverified. 3j9i is gemmi's SEQRES mass of its 28 chains (the whole D7 complex).
SHREC_CLASS_MASS_KDA: Mapping[str, float] = {
    "3qm1": 31.31,
    "1s3x": 42.75,
    "3h84": 79.04,
    "3gl1": 84.61,
    "2cg9": 188.73,
    "3d2f": 236.10,
    "1u6g": 238.82,
    "3cf3": 270.87,
    "1bxn": 279.81,
    "1qvr": 296.68,
    "3j9i": 659.0,
    "4cr2": 1309.28,
    "5mrc": 3325.59,
}

#: Truth labels that are not proteins and are never evaluated unless asked for explicitly.
NON_PROTEIN_CLASSES: frozenset[str] = frozenset({"fiducial", "vesicle"})

#: Size groups in order, with their lower (inclusive) and upper bounds in kDa.
SIZE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("small", 0.0, 200.0),
    ("medium", 200.0, 600.0),
    ("large", 600.0, math.inf),
)

_NONE = "none"


def size_group(mass_kda: float) -> str:
    """Name the SHREC size group of a mass: ``small`` < 200 <= ``medium`` <= 600 < ``large``.

    >>> size_group(199.9), size_group(200.0), size_group(600.0), size_group(600.1)
    ('small', 'medium', 'medium', 'large')
    """
    if mass_kda < 200.0:
        return "small"
    if mass_kda <= 600.0:
        return "medium"
    return "large"


@dataclass(frozen=True, eq=False)
class ShrecTruth:
    """Ground truth of one SHREC tomogram.

    Parameters
    ----------
    class_ids
        ``(m,)`` class of particle ``k + 1`` at index ``k`` (line ``k + 1`` of
        ``particle_locations.txt``).
    coords
        ``(m, 3)`` float64 true centres in voxels, x y z.
    occupancy
        ``(Z, Y, X)`` int32 occupancy mask, undilated: ``k`` marks particle ``k`` (1-based),
        0 is background.
    """

    class_ids: npt.NDArray[np.str_]
    coords: npt.NDArray[np.float64]
    occupancy: npt.NDArray[np.int32]

    def __init__(self, class_ids: Iterable[str], coords: Any, occupancy: Any) -> None:
        ids = np.asarray([str(c) for c in class_ids], dtype=np.str_).reshape(-1)
        xyz = np.array(coords, dtype=np.float64).reshape(-1, 3)
        occ = np.asarray(occupancy)
        if xyz.shape[0] != ids.shape[0]:
            raise InputError(None, f"{ids.shape[0]} class ids but {xyz.shape[0]} centres")
        if occ.ndim != 3 or occ.size == 0:
            raise InputError(None, f"occupancy must be a 3D volume (Z, Y, X), got {occ.shape}")
        if occ.dtype.kind not in "iuf":
            raise InputError(None, f"occupancy must be numeric, got dtype {occ.dtype}")
        low, high = (occ.min(), occ.max())
        if low < 0 or high > ids.shape[0]:
            raise InputError(
                None,
                f"occupancy labels must lie in 0..{ids.shape[0]} (one per particle), "
                f"found {low:g}..{high:g}",
            )
        # int32 holds any SHREC particle count at half the memory of int64 (512^2 x 200 masks).
        labels = np.rint(occ).astype(np.int32) if occ.dtype.kind == "f" else occ.astype(np.int32)
        if occ.dtype.kind == "f" and not np.array_equal(labels, occ):
            raise InputError(None, "occupancy must hold integer particle labels")
        object.__setattr__(self, "class_ids", ids)
        object.__setattr__(self, "coords", xyz)
        object.__setattr__(self, "occupancy", labels)


@dataclass(frozen=True, eq=False)
class ShrecResult:
    """SHREC localisation and classification scores of one pick list (see module rules).

    Attributes
    ----------
    tp, fp, fn, multiple_hits, outside
        Counts (rules 4 and 7).
    avg_distance
        Mean distance in voxels from a found particle's centre to its first hit (rule 6).
    precision, recall, f1, miss_rate
        Localisation ratios (rule 5).
    per_class_f1
        F1 per evaluated class id (rule 9).
    size_group_f1
        F1 of ``"small"``, ``"medium"``, ``"large"`` (rule 10).
    confusion
        ``(labels, matrix)``: ``K + 1`` labels (evaluated classes, then ``"none"``) and the
        ``(K + 1, K + 1)`` int64 count matrix, rows true class, columns predicted (rule 8).
    """

    tp: int
    fp: int
    fn: int
    multiple_hits: int
    outside: int
    avg_distance: float
    precision: float
    recall: float
    f1: float
    miss_rate: float
    per_class_f1: dict[str, float]
    size_group_f1: dict[str, float]
    confusion: tuple[tuple[str, ...], npt.NDArray[np.int64]]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict with one key per field; ``nan`` becomes ``None``."""
        labels, matrix = self.confusion
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "multiple_hits": self.multiple_hits,
            "outside": self.outside,
            "avg_distance": _json_float(self.avg_distance),
            "precision": _json_float(self.precision),
            "recall": _json_float(self.recall),
            "f1": _json_float(self.f1),
            "miss_rate": _json_float(self.miss_rate),
            "per_class_f1": {k: _json_float(v) for k, v in self.per_class_f1.items()},
            "size_group_f1": {k: _json_float(v) for k, v in self.size_group_f1.items()},
            "confusion": {"labels": list(labels), "matrix": matrix.tolist()},
        }


def _json_float(value: float) -> float | None:
    """Map ``nan`` (undefined ratio) to ``None``, which JSON can hold."""
    return None if math.isnan(value) else float(value)


def _ratio(num: float, den: float) -> float:
    """``num / den``, or ``nan`` when there is nothing to divide by."""
    return num / den if den > 0 else math.nan


def load_truth(folder: str | Path) -> ShrecTruth:
    """Read a SHREC tomogram folder's ``particle_locations.txt`` and ``occupancy_mask.mrc``.

    Parameters
    ----------
    folder
        A SHREC 2020 model folder (``model_0`` .. ``model_9``).

    Returns
    -------
    ShrecTruth
        Class ids and centres (x y z voxels) in file order, and the occupancy mask (z, y, x).

    Raises
    ------
    InputError
        A missing file, a bad line, or a mask whose labels do not match the particle table.
    """
    folder = Path(folder)
    locations = folder / "particle_locations.txt"
    mask = folder / "occupancy_mask.mrc"
    particles = read_picks(locations)
    if not mask.is_file():
        raise InputError(mask, "file not found")
    try:
        with mrcfile.open(mask, mode="r", permissive=True) as mrc:
            data = None if mrc.data is None else np.array(mrc.data)
    except (OSError, ValueError) as exc:
        raise InputError(mask, f"not a readable MRC file ({exc})") from exc
    if data is None or data.ndim != 3:
        raise InputError(mask, "expected a 3D occupancy volume")
    try:
        return ShrecTruth(particles.class_ids, particles.coords, data)
    except InputError as exc:
        message = f"{exc.message} ({len(particles)} lines in {locations.name})"
        raise InputError(mask, message) from exc


def _dilated_labels(occupancy: npt.NDArray[np.int32]) -> npt.NDArray[np.int32]:
    """Grey-dilate the occupancy once with the 6-connected cross (rule 3)."""
    footprint = generate_binary_structure(3, 1)
    return np.asarray(grey_dilation(occupancy, footprint=footprint), dtype=np.int32)


def _lookup(
    coords: npt.NDArray[np.float64], shape: tuple[int, ...]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Round x y z to voxels (half to even), clip into ``shape`` (z, y, x); flag the clipped."""
    voxels = np.rint(coords).astype(np.int64)
    upper = np.array([shape[2], shape[1], shape[0]], dtype=np.int64) - 1
    clipped = np.clip(voxels, 0, upper)
    outside = np.any(clipped != voxels, axis=1)
    return clipped, outside


def _evaluated_classes(
    truth_ids: Sequence[str], classes: Iterable[str] | None, masses: Mapping[str, float]
) -> list[str]:
    """Lower-cased evaluated classes ordered by mass then name (rule 7)."""
    if classes is None:
        wanted = {c for c in truth_ids if c not in NON_PROTEIN_CLASSES}
    else:
        wanted = {str(c).lower() for c in classes}
    return sorted(wanted, key=lambda c: (masses.get(c, math.inf), c))


def evaluate_picks(
    picks: Picks,
    truth: ShrecTruth,
    classes: Iterable[str] | None = None,
    class_mass_kda: Mapping[str, float] | None = None,
) -> ShrecResult:
    """Score picks against a SHREC ground truth with the SHREC 2020 rules (module docstring).

    Parameters
    ----------
    picks
        Predicted centres (x y z voxels, in the occupancy mask's frame) and classes.
    truth
        Ground truth from :func:`load_truth` or built in memory.
    classes
        Class ids to evaluate; ``None`` means every truth class except fiducials and vesicles.
        Truth particles of other classes are ignored (rule 7).
    class_mass_kda
        Mass of each class in kDa for the size groups; default :data:`SHREC_CLASS_MASS_KDA`.

    Returns
    -------
    ShrecResult
        Localisation counts and ratios, per-class and size-group F1, confusion matrix.
    """
    masses = {k.lower(): float(v) for k, v in (class_mass_kda or SHREC_CLASS_MASS_KDA).items()}
    truth_ids = [c.lower() for c in truth.class_ids]
    labels = _evaluated_classes(truth_ids, classes, masses)
    index = {c: i for i, c in enumerate(labels)}
    n_classes = len(labels)

    # Particle k (1-based) is evaluated when its class is; label 0 (background) is always kept.
    evaluated = np.array([True] + [c in index for c in truth_ids])
    voxels, outside = _lookup(picks.coords, truth.occupancy.shape)
    hit = _dilated_labels(truth.occupancy)[voxels[:, 2], voxels[:, 1], voxels[:, 0]]
    counted = evaluated[hit]

    n_particles = int(evaluated[1:].sum())
    hits_per_particle = np.bincount(hit[counted], minlength=len(truth_ids) + 1)[1:]
    tp = int(np.count_nonzero(hits_per_particle))
    fp = int(np.count_nonzero(hit[counted] == 0))
    fn = n_particles - tp
    multiple = int(np.count_nonzero(hits_per_particle > 1))
    precision = _ratio(tp, int(counted.sum()))
    recall = _ratio(tp, n_particles)
    # Harmonic mean of tp / n_predictions and tp / n_particles, defined with one of them zero.
    f1 = _ratio(2 * tp, int(counted.sum()) + n_particles)

    # First hitting prediction of each particle (in list order), for distance and class.
    first = np.full(len(truth_ids) + 1, -1, dtype=np.int64)
    hitting = np.flatnonzero(counted & (hit > 0))
    particle_ids, first_position = np.unique(hit[hitting], return_index=True)
    first[particle_ids] = hitting[first_position]
    found = np.flatnonzero(first[1:] >= 0) + 1
    distances = np.linalg.norm(voxels[first[found]] - truth.coords[found - 1], axis=1)
    avg_distance = float(distances.mean()) if found.size else math.nan

    # Predicted class index of each pick; the appended sentinel makes first == -1 map to "none".
    predicted = np.array(
        [*(index.get(c.lower(), n_classes) for c in picks.class_ids), n_classes], dtype=int
    )
    matrix = np.zeros((n_classes + 1, n_classes + 1), dtype=np.int64)
    particles = np.flatnonzero(evaluated[1:]) + 1
    rows = np.array([index[truth_ids[k - 1]] for k in particles], dtype=int)
    columns = predicted[first[particles]]
    np.add.at(matrix, (rows, columns), 1)
    np.add.at(matrix[n_classes], predicted[:-1][counted & (hit == 0)], 1)

    per_class, group_f1 = _classification_f1(labels, matrix, masses)
    return ShrecResult(
        tp=tp,
        fp=fp,
        fn=fn,
        multiple_hits=multiple,
        outside=int(outside.sum()),
        avg_distance=avg_distance,
        precision=precision,
        recall=recall,
        f1=f1,
        miss_rate=_ratio(fn, n_particles),
        per_class_f1=per_class,
        size_group_f1=group_f1,
        confusion=((*labels, _NONE), matrix),
    )


def evaluate_tomograms(
    pairs: Sequence[tuple[Picks, ShrecTruth]],
    classes: Iterable[str] | None = None,
    class_mass_kda: Mapping[str, float] | None = None,
) -> ShrecResult:
    """Score several tomograms' picks as one test set: counts and confusion matrices summed.

    Each pair is scored with :func:`evaluate_picks`; then the counts (``tp``, ``fp``, ``fn``,
    ``multiple_hits``, ``outside``), the predictions in the precision denominator and the
    confusion matrices are added, and every ratio is computed from the sums (rules 5, 9, 10),
    as if the tomograms were one volume. ``avg_distance`` is the mean over all found
    particles. With one pair the result equals :func:`evaluate_picks`'s.

    Parameters
    ----------
    pairs
        ``(picks, truth)`` per tomogram, at least one.
    classes, class_mass_kda
        As in :func:`evaluate_picks`; with ``classes=None`` the evaluated classes are those of
        all the truths together.

    Returns
    -------
    ShrecResult
        The pooled scores; the confusion matrix has the classes of all the tomograms.
    """
    if not pairs:
        raise ValueError("expected at least one (picks, truth) pair")
    masses = {k.lower(): float(v) for k, v in (class_mass_kda or SHREC_CLASS_MASS_KDA).items()}
    all_ids = [c.lower() for _, truth in pairs for c in truth.class_ids]
    labels = _evaluated_classes(all_ids, classes, masses)
    position = {c: i for i, c in enumerate([*labels, _NONE])}
    k = len(labels)
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    tp = fp = fn = multiple = outside = predictions = 0
    distance_sum = 0.0
    for picks, truth in pairs:
        r = evaluate_picks(picks, truth, labels, class_mass_kda)
        tp, fp, fn = tp + r.tp, fp + r.fp, fn + r.fn
        multiple, outside = multiple + r.multiple_hits, outside + r.outside
        # Predictions in the precision denominator: tp / precision (exact in float to far
        # beyond any pick count); with no particle found only the misses were counted.
        predictions += round(r.tp / r.precision) if r.tp else r.fp
        distance_sum += r.avg_distance * r.tp if r.tp else 0.0
        index = [position[c] for c in r.confusion[0]]
        matrix[np.ix_(index, index)] += r.confusion[1]
    n_particles = tp + fn
    per_class, group_f1 = _classification_f1(labels, matrix, masses)
    return ShrecResult(
        tp=tp,
        fp=fp,
        fn=fn,
        multiple_hits=multiple,
        outside=outside,
        avg_distance=_ratio(distance_sum, tp),
        precision=_ratio(tp, predictions),
        recall=_ratio(tp, n_particles),
        f1=_ratio(2 * tp, predictions + n_particles),
        miss_rate=_ratio(fn, n_particles),
        per_class_f1=per_class,
        size_group_f1=group_f1,
        confusion=((*labels, _NONE), matrix),
    )


def _classification_f1(
    labels: Sequence[str], matrix: npt.NDArray[np.int64], masses: Mapping[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """Per-class F1 (rule 9) and pooled size-group F1 (rule 10) from the particle rows."""
    k = len(labels)
    particles = matrix[:k]
    tp = np.diag(particles[:, :k]).astype(np.float64)
    fn = particles.sum(axis=1) - tp
    fp = particles[:, :k].sum(axis=0) - tp
    per_class = {c: _ratio(2 * tp[i], 2 * tp[i] + fp[i] + fn[i]) for i, c in enumerate(labels)}
    groups: dict[str, float] = {}
    for name, _, _ in SIZE_GROUPS:
        members = [i for i, c in enumerate(labels) if c in masses and size_group(masses[c]) == name]
        t, p, n = tp[members].sum(), fp[members].sum(), fn[members].sum()
        groups[name] = _ratio(2 * t, 2 * t + p + n)
    return per_class, groups


def _fmt(value: float, digits: int = 5) -> str:
    """Format a ratio, ``-`` when undefined."""
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def format_tables(result: ShrecResult) -> str:
    """Render SHREC-style text tables: localisation, per-class F1, size-group F1.

    Parameters
    ----------
    result
        Scores from :func:`evaluate_picks`.

    Returns
    -------
    str
        Three plain-text tables separated by blank lines; undefined values print as ``-``.
    """
    loc_rows = [
        ("TP (unique particles found)", str(result.tp)),
        ("FP (predictions hitting no particle)", str(result.fp)),
        ("FN (particles not found)", str(result.fn)),
        ("particles with multiple hits", str(result.multiple_hits)),
        ("predictions outside the volume", str(result.outside)),
        ("average distance (voxels)", _fmt(result.avg_distance, 3)),
        ("precision", _fmt(result.precision)),
        ("recall", _fmt(result.recall)),
        ("miss rate", _fmt(result.miss_rate)),
        ("F1", _fmt(result.f1)),
    ]
    class_rows = [(c, _fmt(v)) for c, v in result.per_class_f1.items()]
    group_rows = [(g, _fmt(v)) for g, v in result.size_group_f1.items()]
    return "\n\n".join(
        [
            _table("Localisation", ("metric", "value"), loc_rows),
            _table("Classification F1 per class", ("class", "F1"), class_rows),
            _table("Classification F1 per size group", ("group", "F1"), group_rows),
        ]
    )


def _table(title: str, header: tuple[str, str], rows: Sequence[tuple[str, str]]) -> str:
    """Two-column text table with a title, left-aligned names and right-aligned values."""
    width = max(len(r[0]) for r in [header, *rows])
    value_width = max(len(r[1]) for r in [header, *rows])
    lines = [f"### {title}", f"{header[0]:<{width}}  {header[1]:>{value_width}}"]
    lines.append("-" * (width + 2 + value_width))
    lines += [f"{name:<{width}}  {value:>{value_width}}" for name, value in rows]
    return "\n".join(lines)
