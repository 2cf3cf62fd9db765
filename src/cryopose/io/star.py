"""Raw STAR files: every data block, in file order, read and written without loss.

A STAR file is a sequence of ``data_<name>`` blocks. A *loop* block (``loop_``, labels, then
one row per line) becomes a :class:`pandas.DataFrame`; a *simple* block (``_label value``
lines) becomes a ``dict``. Block names drop the ``data_`` prefix (``data_optics`` ->
``"optics"``, a bare ``data_`` -> ``""``).

Parsing is done by ``starfile`` (0.5.13); cryopose adds what it lacks:

- a structural check first, so that a malformed file fails with an :class:`InputError`
  naming the file, the block, the row and the line (starfile silently pads short rows with
  empty strings and gives a bare pandas error for long ones);
- exact values: every value is read as text and converted here. A column becomes ``int64``
  when every value is an integer, ``float64`` when every value is a number (parsed with
  Python's correctly rounded ``float``), text otherwise. Columns whose label ends in ``Name``,
  ``File``, ``FileName``, ``Image``, ``StarFile`` or ``Tomogram`` always stay text, so
  ``000012@x.mrcs`` or a micrograph called ``0001`` keep their leading zeros;
- lossless writing: floats are written with Python's shortest round-trip ``repr`` (RELION
  writes 6 significant digits; a value read from a file is written back exactly as it was
  read), strings are quoted when they must be, and the file is replaced atomically.

Values ``nan``, ``NaN`` and ``<NA>`` are read as NaN (starfile's rule); in a text column they
come back as the string ``"nan"``.

>>> import tempfile, pathlib, pandas as pd
>>> path = pathlib.Path(tempfile.mkdtemp()) / "x.star"
>>> write_star({"general": {"rlnFinalResolution": 3.25},
...             "particles": pd.DataFrame({"rlnImageName": ["000001@a.mrcs"],
...                                        "rlnAngleRot": [12.345678901]})}, path)
>>> blocks = read_star(path)
>>> p = blocks["particles"]
>>> list(blocks), p["rlnImageName"].tolist(), p["rlnAngleRot"].tolist()
(['general', 'particles'], ['000001@a.mrcs'], [12.345678901])
"""

from __future__ import annotations

import math
import re
import shlex
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import starfile

from cryopose._atomic import atomic_path
from cryopose.errors import InputError

__all__ = ["StarBlock", "is_text_label", "read_star", "write_star"]

StarBlock = pd.DataFrame | dict[str, Any]
"""One data block: a DataFrame for a loop, a ``{label: value}`` dict for a simple block."""

# Labels that name files or things: never converted to numbers (leading zeros matter).
_TEXT_LABEL = re.compile(r"(Name|File|FileName|Image|StarFile|Tomogram)$")
_INT = re.compile(r"[+-]?\d+")
# One STAR token: a quoted string (closed by a quote followed by blank or end of line),
# a bare word, or a lone opening quote (= unbalanced, reported as an error).
_TOKEN = re.compile(r""""[^"]*"(?=\s|$)|'[^']*'(?=\s|$)|[^\s"'#]\S*|#.*|["']""")
_NAN_TOKENS = ("nan", "NaN", "<NA>")


def is_text_label(label: str) -> bool:
    """Whether a column label always holds text (file and object names), never numbers."""
    return _TEXT_LABEL.search(label) is not None


@dataclass
class _BlockShape:
    """What the structural scan found for one block (used to cross-check starfile)."""

    name: str
    line: int
    kind: str = ""  # "loop" or "simple"
    labels: list[str] = field(default_factory=list)
    n_rows: int = 0


def _tokens(line: str) -> list[str] | None:
    """Split a loop row into fields; ``None`` when a quote is not closed.

    A field starting with ``#`` starts a comment, as in starfile (pandas ``comment='#'``).
    """
    if '"' not in line and "'" not in line and "#" not in line:
        return line.split()
    out: list[str] = []
    for tok in _TOKEN.findall(line):
        if tok.startswith("#"):
            break
        if tok in ('"', "'"):
            return None
        out.append(tok)
    return out


def _scan(path: Path, text: str) -> list[_BlockShape]:
    """Check the block structure of a STAR file and count every loop's rows.

    Raises
    ------
    InputError
        Empty file, no ``data_`` block, an empty block, a loop without labels, a row with
        the wrong number of fields, an unclosed quote, a malformed ``_label value`` line,
        or a block or label that appears twice.
    """
    if not text.strip():
        raise InputError(path, "file is empty (expected a STAR file with data_ blocks)")
    blocks: list[_BlockShape] = []
    state = ""  # start | header | rows | simple
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("data_"):
            if blocks and not blocks[-1].kind:
                _empty_block(path, blocks[-1])
            name = line[5:]
            if any(b.name == name for b in blocks):
                raise InputError(
                    path,
                    "block appears twice (block names must be unique)",
                    f"line {lineno}: data_{name}",
                )
            blocks.append(_BlockShape(name=name, line=lineno))
            state = "start"
            continue
        if not line:
            continue
        if not blocks:
            if line.startswith("#"):
                continue
            raise InputError(path, "text before the first data_ block", f"line {lineno}")
        block = blocks[-1]
        where = f"block data_{block.name}, line {lineno}"
        if state == "start":
            if line.startswith("#"):
                continue
            if line.startswith("loop_"):
                block.kind, state = "loop", "header"
                continue
            if line.startswith("_"):
                block.kind, state = "simple", "simple"
            else:
                raise InputError(
                    path, f"expected loop_ or a _label line, found {line[:40]!r}", where
                )
        if state == "header":
            if line.startswith("_"):
                label = line.split()[0][1:]
                if label in block.labels:
                    raise InputError(path, f"label _{label} appears twice", where)
                block.labels.append(label)
                continue
            if line.startswith("#"):
                continue
            if not block.labels:
                raise InputError(path, "loop_ has no _label lines", where)
            state = "rows"
        if state == "rows":
            _check_row(path, block, line, lineno)
        elif state == "simple":
            _check_simple_line(path, block, line, where)
    if not blocks:
        raise InputError(path, "no data block (expected a line starting with 'data_')")
    if not blocks[-1].kind:
        _empty_block(path, blocks[-1])
    if blocks[-1].kind == "loop" and not blocks[-1].labels:
        raise InputError(path, "loop_ has no _label lines", f"block data_{blocks[-1].name}")
    return blocks


def _empty_block(path: Path, block: _BlockShape) -> None:
    raise InputError(
        path,
        "block is empty (expected loop_ or _label value lines)",
        f"block data_{block.name}, line {block.line}",
    )


def _check_row(path: Path, block: _BlockShape, line: str, lineno: int) -> None:
    if line.startswith("#"):
        return
    fields = _tokens(line)
    where = f"block data_{block.name}, row {block.n_rows + 1} (line {lineno})"
    if fields is None:
        raise InputError(path, "unreadable value: a quote is not closed", where)
    if not fields:
        return
    if len(fields) != len(block.labels):
        raise InputError(
            path,
            f"expected {len(block.labels)} fields (one per label), found {len(fields)}",
            where,
        )
    block.n_rows += 1


def _check_simple_line(path: Path, block: _BlockShape, line: str, where: str) -> None:
    if line.startswith("#"):
        return
    if not line.startswith("_"):
        raise InputError(path, f"expected a '_label value' line, found {line[:40]!r}", where)
    try:
        parts = shlex.split(line)
    except ValueError as exc:
        raise InputError(path, f"unreadable value: {exc}", where) from exc
    if len(parts) != 2:
        raise InputError(path, f"expected '_label value', found {len(parts)} fields", where)
    label = parts[0][1:]
    if label in block.labels:
        raise InputError(path, f"label _{label} appears twice", where)
    block.labels.append(label)


def _convert_column(label: str, values: pd.Series) -> pd.Series:
    """Text column from starfile -> int64, float64 or text (see the module docstring)."""
    raw = values.to_numpy(dtype=object)
    tokens = ["nan" if not isinstance(v, str) else v for v in raw]
    if is_text_label(label) or len(tokens) == 0:
        return pd.Series(tokens, dtype=object, name=label)
    if all(_INT.fullmatch(t) for t in tokens):
        try:
            return pd.Series(np.array([int(t) for t in tokens], dtype=np.int64), name=label)
        except OverflowError:
            # Beyond int64 (e.g. 64-bit uids): keep the digits as text rather than round them.
            return pd.Series(tokens, dtype=object, name=label)
    try:
        floats = [float(t) for t in tokens]
    except ValueError:
        return pd.Series(tokens, dtype=object, name=label)
    return pd.Series(np.array(floats, dtype=np.float64), name=label)


def _convert_value(label: str, value: str) -> Any:
    if is_text_label(label):
        return value
    if _INT.fullmatch(value):
        return int(value)
    try:
        return float(value)
    except ValueError:
        return value


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise InputError(path, "file not found") from exc
    except UnicodeDecodeError as exc:
        raise InputError(
            path, f"unreadable: not UTF-8 text (byte {exc.start}); is this a STAR file?"
        ) from exc


def read_star(path: str | Path) -> dict[str, StarBlock]:
    """Read every data block of a STAR file, in file order.

    Parameters
    ----------
    path
        STAR file (RELION 3.0, 3.1+, pipeline, optimiser, postprocess... any STAR file).

    Returns
    -------
    dict[str, pandas.DataFrame | dict[str, Any]]
        Block name (without ``data_``) -> a DataFrame for a loop block (one row per data
        line, columns named by the labels without ``_``; ``int64``/``float64``/text columns
        as described in the module docstring) or a ``{label: value}`` dict for a simple block
        (values ``int``, ``float`` or ``str``). An empty loop is a DataFrame with no rows.

    Raises
    ------
    InputError
        When the file is missing, empty, not text, has no data block, or is malformed; the
        message names the file, the block, and the row and line at fault.
    """
    path = Path(path)
    text = _read_text(path)
    shapes = _scan(path, text)
    labels = sorted({label for shape in shapes for label in shape.labels})
    try:
        parsed = _starfile_read(path, labels)
    except Exception as exc:
        if not any(s.kind == "loop" and s.n_rows == 0 for s in shapes):
            # A parser failure the scan did not foresee.
            raise InputError(path, f"starfile could not parse the file: {exc}") from exc
        # starfile 0.5.13 fails on an empty loop followed by a comment line (RELION writes
        # '# version 30001' before every block): parse a copy without full-line comments.
        kept = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
        with tempfile.TemporaryDirectory() as folder:
            copy = Path(folder) / path.name
            copy.write_text("\n".join(kept) + "\n", encoding="utf-8")
            try:
                parsed = _starfile_read(copy, labels)
            except Exception as exc2:
                raise InputError(path, f"starfile could not parse the file: {exc2}") from exc2
    return {shape.name: _convert_block(path, shape, parsed.get(shape.name)) for shape in shapes}


def _starfile_read(path: Path, labels: list[str]) -> dict[str, Any]:
    """Parse with starfile, every value kept as text (converted by :func:`_convert_column`)."""
    with warnings.catch_warnings():
        # starfile sets DataFrame.name, which pandas may flag; the attribute is unused here.
        warnings.simplefilter("ignore", UserWarning)
        parsed: dict[str, Any] = starfile.read(path, always_dict=True, parse_as_string=labels)
    return parsed


def _convert_block(path: Path, shape: _BlockShape, block: Any) -> StarBlock:
    where = f"block data_{shape.name}, line {shape.line}"
    if shape.kind == "simple":
        if not isinstance(block, dict) or list(block) != shape.labels:
            raise InputError(
                path, "starfile read this simple block differently from the scan", where
            )
        return {k: _convert_value(k, str(v)) for k, v in block.items()}
    if not isinstance(block, pd.DataFrame) or list(block.columns) != shape.labels:
        raise InputError(path, "starfile read this loop differently from the scan", where)
    if len(block) != shape.n_rows:
        raise InputError(
            path, f"starfile found {len(block)} rows where the scan found {shape.n_rows}", where
        )
    if shape.n_rows == 0:
        df = pd.DataFrame(
            {
                c: pd.Series([], dtype=object if is_text_label(c) else np.float64)
                for c in shape.labels
            }
        )
        return df
    return pd.DataFrame({c: _convert_column(c, block[c]) for c in shape.labels})


# ----------------------------------------------------------------------------- writing


def _quote(s: str, label: str) -> str:
    """Format a text value as one STAR field (quoted when empty or it could be misread)."""
    needs = (
        not s
        or any(ch.isspace() for ch in s)
        or s[0] in "\"'_#"
        or "#" in s
        or s.startswith(("data_", "loop_"))
    )
    if not needs:
        return s
    if '"' not in s and "'" not in s:
        return f'"{s}"'
    raise InputError(
        None,
        f"cannot write text value {s!r}: it needs quoting but contains a quote",
        f"column {label}",
    )


def _format_scalar(value: Any, label: str) -> str:
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return repr(float(value))
    if value is None or value is pd.NA:
        return "nan"
    return _quote(str(value), label)


def _format_column(col: pd.Series, label: str) -> list[str]:
    """Format one DataFrame column as STAR fields, exactly (floats by shortest repr)."""
    kind = col.dtype.kind
    if kind == "b":
        return ["1" if v else "0" for v in col.tolist()]
    if kind in "iu":
        return [str(v) for v in col.tolist()]
    if kind == "f":
        if col.dtype == np.float32:
            # float32 values: shortest repr of the float32, not of its float64 widening.
            return [
                str(np.float32(v)) if math.isfinite(v) else repr(float(v)) for v in col.tolist()
            ]
        return [repr(v) for v in col.astype(np.float64).tolist()]
    return [_format_scalar(v, label) for v in col.tolist()]


def _check_label(label: object, block: str) -> str:
    if not isinstance(label, str) or not label or any(ch.isspace() for ch in label):
        raise InputError(
            None,
            f"invalid label {label!r}: labels are non-empty text without blanks",
            f"block data_{block}",
        )
    return label


def _loop_lines(name: str, df: pd.DataFrame) -> Iterable[str]:
    labels = [_check_label(c, name) for c in df.columns]
    if len(set(labels)) != len(labels):
        raise InputError(None, "duplicate column labels", f"block data_{name}")
    yield "loop_ "
    for i, label in enumerate(labels, start=1):
        yield f"_{label} #{i} "
    columns = [_format_column(df[c], c) for c in df.columns]
    # Right-aligned columns, like RELION, so the file is readable by eye.
    widths = [max((len(v) for v in col), default=0) for col in columns]
    for row in zip(*columns, strict=True):
        yield " ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) + " "


def _simple_lines(name: str, block: Mapping[str, Any]) -> Iterable[str]:
    width = max((len(k) for k in block), default=0) + 2
    for label, value in block.items():
        _check_label(label, name)
        yield f"_{label.ljust(width)}{_format_scalar(value, label)}"


def write_star(blocks: Mapping[str, StarBlock], path: str | Path) -> None:
    """Write data blocks to a STAR file atomically, in the order given.

    Parameters
    ----------
    blocks
        Block name (without ``data_``) -> DataFrame (loop block) or ``{label: value}``
        (simple block), e.g. the result of :func:`read_star`.
    path
        Destination; replaced atomically (a failed write leaves the old file untouched).

    Notes
    -----
    Every block is preceded by ``# version 30001`` (RELION 3.1's table version). Floats are
    written with the shortest text that reads back to the same ``float64``; NaN as ``nan``.

    Raises
    ------
    InputError
        A block that is neither a DataFrame nor a dict, a label with blanks, duplicate labels,
        or a text value that cannot be quoted.
    """
    lines: list[str] = ["# Written by cryopose", ""]
    for name, block in blocks.items():
        if not isinstance(name, str) or any(ch.isspace() for ch in name):
            raise InputError(path, f"invalid block name {name!r}")
        lines += ["", "# version 30001", "", f"data_{name}", ""]
        if isinstance(block, pd.DataFrame):
            lines.extend(_loop_lines(name, block))
        elif isinstance(block, Mapping):
            lines.extend(_simple_lines(name, block))
        else:
            raise InputError(
                path,
                f"block must be a DataFrame or dict, got {type(block).__name__}",
                f"block data_{name}",
            )
        lines.append("")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
