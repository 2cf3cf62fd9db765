"""MRC maps and particle stacks: read, write, memory-map.

Maps come back as float32 torch tensors ``(D, H, W)`` (z, y, x; x varies fastest, as MRC
stores it) with their voxel size in Angstrom; stacks are memory-mapped, so a 100 GB stack costs
no RAM and only the images asked for are read. Writes are atomic (temporary file + rename).
Plain, gzip and bzip2 files are recognised by their content.

A short tour (writes into a temporary folder):

>>> import tempfile, torch
>>> from pathlib import Path
>>> from cryopose.io.mrc import (open_stack, read_images, read_map, read_map_header,
...                              write_map, write_stack)
>>> tmp = Path(tempfile.mkdtemp())
>>> volume = torch.zeros(8, 8, 8)
>>> volume[4, 4, 4] = 1.0
>>> write_map(tmp / "delta.mrc", volume, angpix=1.5, origin=(-6.0, -6.0, -6.0))
>>> data, angpix = read_map(tmp / "delta.mrc")
>>> data.shape, data.dtype, angpix, bool(data[4, 4, 4] == 1.0)
(torch.Size([8, 8, 8]), torch.float32, 1.5, True)
>>> header = read_map_header(tmp / "delta.mrc")
>>> header.voxel_size, header.origin, header.dtype, header.is_stack
((1.5, 1.5, 1.5), (-6.0, -6.0, -6.0), 'float32', False)

Particle stacks are opened, not loaded; indices are 0-based:

>>> images = torch.arange(10 * 4 * 4, dtype=torch.float32).reshape(10, 4, 4)
>>> write_stack(tmp / "particles.mrcs", images, angpix=2.0)
>>> with open_stack(tmp / "particles.mrcs") as stack:
...     print(len(stack), stack.shape, stack.angpix)
...     print(stack[3].shape, stack[2:5].shape, stack[[7, 1]].shape)
10 (10, 4, 4) 2.0
torch.Size([4, 4]) torch.Size([3, 4, 4]) torch.Size([2, 4, 4])
>>> batch = read_images([(tmp / "particles.mrcs", 7), (tmp / "particles.mrcs", 1)])
>>> torch.equal(batch, images[[7, 1]])
True

Bad files fail early with the file name and what was expected:

>>> (tmp / "empty.mrc").touch()
>>> read_map(tmp / "empty.mrc")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
cryopose.errors.InputError: .../empty.mrc: empty file; expected an MRC file (a 1024-byte ...
>>> import shutil; shutil.rmtree(tmp)

Axis order: files whose header declares a column/row/section order other than x, y, z
(``MAPC/MAPR/MAPS``, e.g. EMD-3001) are permuted to (z, y, x) by :func:`read_map`, the way
ChimeraX and gemmi read them, so the voxel size and origin apply to the axes they name.
RELION ignores these fields; maps written by cryopose (or RELION) always use x, y, z.
"""

from __future__ import annotations

import bz2
import gzip
import io
import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeAlias

import mrcfile
import numpy as np
import numpy.typing as npt
import torch
from mrcfile.mrcinterpreter import MrcInterpreter

from cryopose._atomic import atomic_path
from cryopose.errors import InputError

__all__ = [
    "MapHeader",
    "MrcStack",
    "StackCache",
    "map_statistics",
    "open_stack",
    "read_images",
    "read_map",
    "read_map_header",
    "write_map",
    "write_stack",
]

PathLike: TypeAlias = str | os.PathLike[str]
Index: TypeAlias = (
    int | np.integer[Any] | slice | Sequence[int] | npt.NDArray[np.integer[Any]] | torch.Tensor
)

_HEADER_BYTES = 1024
_MAP_ID = b"MAP "
_MAP_ID_OFFSET = 208
_NSYMBT_OFFSET = 92
# Real-valued MRC modes and how they are stored (MRC2014; 6 and 12 are later additions).
_MODES: dict[int, str] = {0: "int8", 1: "int16", 2: "float32", 6: "uint16", 12: "float16"}
_UNSUPPORTED_MODES = {3: "complex int16", 4: "complex float32", 101: "4-bit packed"}
_EXPECTED_MODES = "a real-valued mode: 0 (int8), 1 (int16), 2 (float32), 6 (uint16) or 12 (float16)"
_STANDARD_AXES = (1, 2, 3)


@dataclass(frozen=True)
class MapHeader:
    """What an MRC header says about its file, read without touching the data.

    Attributes
    ----------
    path
        The file.
    shape
        ``(nz, ny, nx)``: the shape :func:`read_map` returns (z, y, x). It equals the stored
        (sections, rows, columns) unless ``axis_order`` is not ``(1, 2, 3)``.
    voxel_size
        ``(x, y, z)`` voxel size in Angstrom (cell length / intervals), as stored: 0 or NaN
        when the file does not set it (common in particle stacks).
    origin
        ``(x, y, z)`` origin in Angstrom (the MRC2014 ``ORIGIN`` record).
    nstart
        ``(x, y, z)`` index of the first voxel (``NXSTART``...), in voxels.
    dtype
        Stored data type: ``"int8"``, ``"int16"``, ``"float32"``, ``"uint16"`` or ``"float16"``.
    mode
        MRC mode number (0, 1, 2, 6 or 12).
    is_stack
        True for image stacks: space group 0 or a ``.mrcs`` name. Some programs also write
        volumes with space group 0, so this reports the header, not the content.
    ispg
        Space group number.
    axis_order
        ``(MAPC, MAPR, MAPS)``: which axis (1=x, 2=y, 3=z) the columns, rows and sections run
        along; ``(1, 2, 3)`` for nearly all files.
    byte_order
        ``"<"`` (little-endian) or ``">"`` (big-endian).
    compression
        ``None``, ``"gzip"`` or ``"bzip2"``.
    header_bytes
        Bytes before the data (1024 + extended header): the data offset.
    data_bytes
        Bytes of data the header announces.
    file_bytes
        Size of the file on disk (compressed size for compressed files).
    """

    path: Path
    shape: tuple[int, int, int]
    voxel_size: tuple[float, float, float]
    origin: tuple[float, float, float]
    nstart: tuple[int, int, int]
    dtype: str
    mode: int
    is_stack: bool
    ispg: int
    axis_order: tuple[int, int, int]
    byte_order: str
    compression: str | None
    header_bytes: int
    data_bytes: int
    file_bytes: int

    @property
    def stored_shape(self) -> tuple[int, int, int]:
        """``(sections, rows, columns)``: the data's shape in file order."""
        shape = self.shape
        inverse = np.argsort(_to_zyx_axes(self.axis_order))
        return (shape[inverse[0]], shape[inverse[1]], shape[inverse[2]])

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The stored data type with its byte order."""
        return np.dtype(self.dtype).newbyteorder("<" if self.byte_order == "<" else ">")


def read_map_header(path: PathLike) -> MapHeader:
    """Read and check an MRC header without reading the data.

    Reads 1024 bytes (decompressing only those for ``.gz``/``.bz2``) and checks the header
    against the file size, so truncated and header-only files fail here, cheaply.

    Parameters
    ----------
    path
        An MRC map or stack (``.mrc``, ``.map``, ``.mrcs``, optionally gzip/bzip2 compressed).

    Returns
    -------
    MapHeader

    Raises
    ------
    InputError
        Missing, empty, truncated or non-MRC files, unsupported modes. The length of the data
        of a compressed file is only checked when the data is read.
    """
    p = Path(path)
    file_bytes = _file_size(p)
    with _open_file(p) as f:
        first = f.read(_HEADER_BYTES)
    compression = _compression(first)
    if compression is None:
        raw = first
    else:
        with _decompressing(p, compression) as f:
            raw = _read_upto(p, f, _HEADER_BYTES, compression)
    if len(raw) < _HEADER_BYTES:
        after = "" if compression is None else f" after {compression} decompression"
        raise InputError(
            p, f"expected at least {_HEADER_BYTES} bytes of MRC header, found {len(raw)}{after}"
        )
    return _parse_header(p, raw, compression, file_bytes)


def read_map(path: PathLike, angpix: float | None = None) -> tuple[torch.Tensor, float]:
    """Read a map (or a whole stack) into memory.

    Parameters
    ----------
    path
        ``.mrc``, ``.map`` or ``.mrcs`` file, optionally gzip/bzip2 compressed.
    angpix
        Voxel size in Angstrom to use instead of the header's (for files that do not set it).

    Returns
    -------
    data
        float32 ``(D, H, W)`` tensor (z, y, x); a single image is ``(1, H, W)``.
    angpix
        The x voxel size in Angstrom (``read_map_header`` reports all three when they differ).

    Raises
    ------
    InputError
        Bad files (see :func:`read_map_header`), volume stacks, and a voxel size that is not a
        positive number when ``angpix`` is not given.
    """
    header = read_map_header(path)
    pixel = _require_angpix(header) if angpix is None else _check_angpix(header.path, angpix)
    _reject_volume_stack(header)
    data = _read_stored(header).transpose(_to_zyx_axes(header.axis_order))
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), pixel


def write_map(
    path: PathLike,
    data: torch.Tensor | npt.ArrayLike,
    angpix: float,
    origin: tuple[float, float, float] | None = None,
) -> None:
    """Write a float32 (mode 2) MRC map, atomically.

    Parameters
    ----------
    path
        Destination; ``.gz`` or ``.bz2`` endings compress. A ``.mrcs`` name writes an image
        stack (space group 0), anything else a volume (space group 1).
    data
        ``(D, H, W)`` map, ``(N, H, W)`` stack or ``(H, W)`` image; tensor or array.
    angpix
        Voxel size in Angstrom, the same along x, y and z.
    origin
        ``(x, y, z)`` origin in Angstrom; zero when omitted.

    Raises
    ------
    InputError
        Wrong number of dimensions, a voxel size that is not a positive number, a bad origin.
    """
    stack = any(s.lower() == ".mrcs" for s in Path(path).suffixes)
    _write(path, data, angpix, origin, stack=stack)


def write_stack(path: PathLike, images: torch.Tensor | npt.ArrayLike, angpix: float) -> None:
    """Write ``(N, H, W)`` images as a float32 image stack (space group 0), atomically.

    Parameters
    ----------
    path
        Destination, normally ``*.mrcs``.
    images
        ``(N, H, W)`` stack or one ``(H, W)`` image.
    angpix
        Pixel size in Angstrom.
    """
    _write(path, images, angpix, None, stack=True)


class MrcStack:
    """A memory-mapped stack of images; indexing returns float32 tensors.

    Only the images asked for are read and copied. The map is opened lazily in each process,
    and pickling carries only the path, so a stack can live in a torch ``Dataset`` used by
    ``DataLoader`` worker processes. A single image file is a stack of one; a volume is a
    stack of its z sections. Compressed files cannot be mapped: their data is decompressed
    into memory on first access.

    Attributes
    ----------
    path
        The file.
    header
        Its :class:`MapHeader`.
    shape
        ``(N, H, W)``.

    Examples
    --------
    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_stack(Path(tmp) / "two.mrcs", torch.ones(2, 6, 6), angpix=1.0)
    ...     with open_stack(Path(tmp) / "two.mrcs") as stack:
    ...         stack[-1].sum().item()
    36.0
    """

    def __init__(self, path: PathLike, angpix: float | None = None) -> None:
        header = read_map_header(path)
        _reject_volume_stack(header)
        if header.axis_order != _STANDARD_AXES:
            raise InputError(
                header.path,
                f"axis order (MAPC, MAPR, MAPS) = {header.axis_order}; "
                "expected (1, 2, 3) for an image stack (open it with read_map instead)",
            )
        self.path = header.path
        self.header = header
        self.shape: tuple[int, int, int] = header.shape
        self._angpix = None if angpix is None else _check_angpix(self.path, angpix)
        self._array: npt.NDArray[Any] | None = None
        self._pid: int | None = None
        self._closed = False

    @property
    def angpix(self) -> float:
        """Pixel size in Angstrom (the one given to :func:`open_stack`, else the header's x).

        Raises
        ------
        InputError
            When the header's pixel size is 0, negative or NaN and none was given.
        """
        return _require_angpix(self.header) if self._angpix is None else self._angpix

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: Index) -> torch.Tensor:
        """Images as float32: an int gives ``(H, W)``, a slice or index list ``(n, H, W)``.

        Indices are 0-based; negative ones count from the end as in Python.
        """
        data = self._data()
        n = self.shape[0]
        if isinstance(index, int | np.integer) and not isinstance(index, bool):
            i = int(index)
            if not -n <= i < n:
                raise InputError(self.path, _out_of_range(i, n))
            return torch.from_numpy(np.array(data[i], dtype=np.float32))
        if isinstance(index, slice):
            return torch.from_numpy(np.array(data[index], dtype=np.float32))
        idx = _as_index_array(index)
        bad = (idx < -n) | (idx >= n)
        if bad.any():
            raise InputError(self.path, _out_of_range(int(idx[bad][0]), n))
        # Fancy indexing already copies exactly the images asked for.
        return torch.from_numpy(data[idx].astype(np.float32, copy=False))

    def close(self) -> None:
        """Release the map; indexing afterwards raises ``ValueError``."""
        self._array = None
        self._closed = True

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle the map itself (numpy would copy the whole file into the pickle).
        state = self.__dict__.copy()
        state["_array"] = None
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        n, h, w = self.shape
        return f"MrcStack({str(self.path)!r}, {n} images of {h}x{w} {self.header.dtype})"

    def _data(self) -> npt.NDArray[Any]:
        if self._closed:
            raise ValueError(f"{self.path}: the stack is closed")
        # A map inherited through fork works, but reopening per process keeps each worker's
        # state its own and is cheap.
        if self._array is None or self._pid != os.getpid():
            self._array = _map_stored(self.header)
            self._pid = os.getpid()
        return self._array


def open_stack(path: PathLike, angpix: float | None = None) -> MrcStack:
    """Open an MRC stack (or any MRC file) for reading images on demand.

    Parameters
    ----------
    path
        ``.mrcs`` stack, or any MRC file (a single image is a stack of 1).
    angpix
        Pixel size in Angstrom to report instead of the header's.

    Returns
    -------
    MrcStack
        Use as a context manager, or call ``close()``.
    """
    return MrcStack(path, angpix=angpix)


class StackCache:
    """Open stacks, least recently used dropped first, to reuse across batches.

    Parameters
    ----------
    max_open
        How many stacks to keep open. A dropped stack is released once nobody else holds it.

    Examples
    --------
    >>> cache = StackCache(max_open=64)
    >>> # batch = read_images(locations, cache=cache)  # for each batch
    >>> cache.close()
    """

    def __init__(self, max_open: int = 64) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.max_open = max_open
        self._stacks: OrderedDict[Path, MrcStack] = OrderedDict()

    def get(self, path: PathLike) -> MrcStack:
        """Return the open stack for ``path``, opening it if needed."""
        key = Path(path)
        stack = self._stacks.pop(key, None)
        if stack is None:
            stack = MrcStack(key)
            while len(self._stacks) >= self.max_open:
                self._stacks.popitem(last=False)
        self._stacks[key] = stack
        return stack

    def __len__(self) -> int:
        return len(self._stacks)

    def close(self) -> None:
        """Close every stack in the cache."""
        for stack in self._stacks.values():
            stack.close()
        self._stacks.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # A copy in another process starts empty and opens its own stacks.
        return {"max_open": self.max_open, "_stacks": OrderedDict()}


def read_images(
    locations: Sequence[tuple[PathLike, int]], cache: StackCache | None = None
) -> torch.Tensor:
    """Read images from many stacks, in the order asked.

    Reads are grouped by file and, within a file, done in increasing index order.

    Parameters
    ----------
    locations
        ``(path, index)`` pairs, index 0-based (RELION's ``12@stack.mrcs`` is index 11).
    cache
        Open stacks to reuse across calls; by default a private cache closed on return.

    Returns
    -------
    torch.Tensor
        float32 ``(n, H, W)``; ``(0, 0, 0)`` for no locations.

    Raises
    ------
    InputError
        Bad files, an index outside its stack, images of different box sizes.
    """
    locations = list(locations)
    if not locations:
        return torch.empty((0, 0, 0))
    positions: dict[Path, list[int]] = {}
    for k, (path, _) in enumerate(locations):
        positions.setdefault(Path(path), []).append(k)
    own_cache = cache is None
    stacks = StackCache() if cache is None else cache
    try:
        out: torch.Tensor | None = None
        first: Path | None = None
        for path, ks in positions.items():
            stack = stacks.get(path)
            n, h, w = stack.shape
            if out is None or first is None:
                out, first = torch.empty((len(locations), h, w)), path
            elif (h, w) != tuple(out.shape[1:]):
                h0, w0 = out.shape[1:]
                raise InputError(
                    path,
                    f"images are {h}x{w} pixels but {first} holds {h0}x{w0} images; "
                    "all images must share one box size",
                )
            idx = np.array([int(locations[k][1]) for k in ks], dtype=np.int64)
            bad = np.flatnonzero((idx < 0) | (idx >= n))
            if bad.size:
                j = int(bad[0])
                raise InputError(path, _out_of_range(int(idx[j]), n), where=f"location {ks[j]}")
            order = np.argsort(idx, kind="stable")
            out[torch.from_numpy(np.asarray(ks)[order])] = stack[idx[order]]
        assert out is not None
        return out
    finally:
        if own_cache:
            stacks.close()


def map_statistics(path: PathLike, chunk: int = 1 << 20) -> dict[str, float]:
    """Minimum, maximum, mean and standard deviation of all values in a file.

    The data is streamed ``chunk`` values at a time through one reused buffer (decompressing
    on the fly for ``.gz``/``.bz2``), so memory stays the same whatever the file size.

    Parameters
    ----------
    path
        Any MRC file.
    chunk
        Values per read.

    Returns
    -------
    dict
        ``{"min", "max", "mean", "std"}`` (population standard deviation), computed in float64;
        all NaN if the data holds a NaN.
    """
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1 value, got {chunk}")
    header = read_map_header(path)
    count, mean, m2 = 0, 0.0, 0.0
    lo, hi = math.inf, -math.inf
    for values in _iter_chunks(header, chunk):
        part = values.astype(np.float64)
        n_b = part.size
        mean_b = float(part.mean())
        m2_b = float(np.square(part - mean_b).sum())
        total = count + n_b
        delta = mean_b - mean
        # Chan et al.'s pairwise update: no catastrophic cancellation as with sum of squares.
        mean += delta * n_b / total
        m2 += m2_b + delta * delta * count * n_b / total
        count = total
        # np.minimum/np.maximum, unlike min/max, let a NaN through (as mean and std do).
        lo, hi = float(np.minimum(lo, part.min())), float(np.maximum(hi, part.max()))
    return {"min": lo, "max": hi, "mean": mean, "std": math.sqrt(m2 / count)}


# --- header --------------------------------------------------------------------------------


def _parse_header(p: Path, raw: bytes, compression: str | None, file_bytes: int) -> MapHeader:
    # mrcfile's permissive mode finds the byte order (machine stamp, or the one giving a valid
    # mode). It is given the header with NSYMBT zeroed: the extended header is not needed and a
    # garbage NSYMBT (non-MRC files) would make it read or allocate that much.
    no_extended = raw[:_NSYMBT_OFFSET] + bytes(4) + raw[_NSYMBT_OFFSET + 4 : _HEADER_BYTES]
    with warnings.catch_warnings():
        # It warns about what is checked below, with the file name.
        warnings.simplefilter("ignore")
        mrc = MrcInterpreter(io.BytesIO(no_extended), permissive=True, header_only=True)
    h = np.frombuffer(raw[:_HEADER_BYTES], dtype=mrc.header.dtype).reshape(()).view(np.recarray)
    hint = ""
    if bytes(h.map)[:3] != _MAP_ID[:3]:
        hint = "; no 'MAP ' identifier at byte 208 either: is this an MRC file?"
    nx, ny, nz = int(h.nx), int(h.ny), int(h.nz)
    mode, nsymbt = int(h.mode), int(h.nsymbt)
    if min(nx, ny, nz) < 1:
        raise InputError(
            p, f"header gives dimensions {nx}x{ny}x{nz}; expected positive nx, ny, nz{hint}"
        )
    if mode not in _MODES:
        what = _UNSUPPORTED_MODES.get(mode)
        found = f"MRC mode {mode} ({what}) is not supported" if what else f"unknown MRC mode {mode}"
        raise InputError(p, f"{found}; expected {_EXPECTED_MODES}{hint}")
    if nsymbt < 0:
        raise InputError(p, f"negative extended header size {nsymbt}; expected 0 or more{hint}")
    axes = (int(h.mapc), int(h.mapr), int(h.maps))
    if axes == (0, 0, 0):  # unset in some old files: the standard order
        axes = _STANDARD_AXES
    if sorted(axes) != [1, 2, 3]:
        raise InputError(
            p, f"axis order (MAPC, MAPR, MAPS) = {axes}; expected a permutation of 1, 2, 3{hint}"
        )
    dtype = _MODES[mode]
    itemsize = np.dtype(dtype).itemsize
    header_bytes = _HEADER_BYTES + nsymbt
    data_bytes = nx * ny * nz * itemsize
    if compression is None and file_bytes < header_bytes + data_bytes:
        present = max(file_bytes - header_bytes, 0)
        raise InputError(p, _short_data(data_bytes, nx, ny, nz, dtype, present) + hint)
    # Columns, rows, sections -> the x, y, z axes they run along.
    starts = (int(h.nxstart), int(h.nystart), int(h.nzstart))
    by_axis = dict(zip(axes, zip((nx, ny, nz), starts, strict=True), strict=True))
    byte_order = h.mode.dtype.byteorder
    if byte_order in ("=", "|"):
        byte_order = "<" if np.little_endian else ">"
    cell = (float(h.cella.x), float(h.cella.y), float(h.cella.z))
    intervals = (int(h.mx), int(h.my), int(h.mz))
    voxel = [_f32_digits(c / m) if m > 0 else 0.0 for c, m in zip(cell, intervals, strict=True)]
    return MapHeader(
        path=p,
        shape=(by_axis[3][0], by_axis[2][0], by_axis[1][0]),
        voxel_size=(voxel[0], voxel[1], voxel[2]),
        origin=(_f32(h.origin.x), _f32(h.origin.y), _f32(h.origin.z)),
        nstart=(by_axis[1][1], by_axis[2][1], by_axis[3][1]),
        dtype=dtype,
        mode=mode,
        is_stack=int(h.ispg) == 0 or any(s.lower() == ".mrcs" for s in p.suffixes),
        ispg=int(h.ispg),
        axis_order=axes,
        byte_order=byte_order,
        compression=compression,
        header_bytes=header_bytes,
        data_bytes=data_bytes,
        file_bytes=file_bytes,
    )


def _to_zyx_axes(axis_order: tuple[int, int, int]) -> tuple[int, int, int]:
    """Transpose taking stored (sections, rows, columns) to (z, y, x)."""
    stored = (axis_order[2], axis_order[1], axis_order[0])  # axis of stored dims 0, 1, 2
    return (stored.index(3), stored.index(2), stored.index(1))


def _f32(value: Any) -> float:
    """Convert a float32 header value to the shortest float printing it (11.4, not 11.3999996)."""
    return float(str(np.float32(value)))


def _f32_digits(value: float) -> float:
    """Round a value computed from float32 fields to float32's 7 significant digits.

    The cell length is stored as float32(n * angpix), so cell / n gives 1.19999997 for a pixel
    size of 1.2; beyond 7 digits there is only rounding error.
    """
    return float(f"{value:.7g}")


def _short_data(data_bytes: int, nx: int, ny: int, nz: int, dtype: str, found: int) -> str:
    return (
        f"expected {data_bytes} bytes of data for {nx}x{ny}x{nz} {dtype}, found {found} "
        "(truncated file, or a header without data)"
    )


def _out_of_range(i: int, n: int) -> str:
    images = "image" if n == 1 else "images"
    return f"image {i} requested but the stack holds {n} {images} (0-based indices 0 to {n - 1})"


def _check_angpix(path: Path | None, angpix: float) -> float:
    value = float(angpix)
    if not (math.isfinite(value) and value > 0):
        raise InputError(path, f"pixel size must be a positive number of Angstrom, got {angpix}")
    return value


def _require_angpix(header: MapHeader) -> float:
    x = header.voxel_size[0]
    if not (math.isfinite(x) and x > 0):
        raise InputError(
            header.path,
            f"the header's voxel size is {x} A; expected a positive pixel size "
            "(give it with angpix=, e.g. the star file's rlnImagePixelSize)",
        )
    return x


def _reject_volume_stack(header: MapHeader) -> None:
    if 401 <= header.ispg <= 630:
        raise InputError(
            header.path,
            f"space group {header.ispg} marks a stack of volumes; expected one map or an "
            "image stack",
        )


# --- data ----------------------------------------------------------------------------------


def _file_size(p: Path) -> int:
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        raise InputError(p, "no such file; expected an MRC map or stack") from None
    except OSError as err:
        raise InputError(p, f"cannot read the file ({err.strerror})") from None
    if p.is_dir():
        raise InputError(p, "is a folder; expected an MRC map or stack")
    if size == 0:
        raise InputError(
            p, "empty file; expected an MRC file (a 1024-byte header followed by the data)"
        )
    return size


def _open_file(p: Path) -> io.BufferedIOBase:
    try:
        return p.open("rb")
    except OSError as err:
        raise InputError(p, f"cannot read the file ({err.strerror})") from None


def _compression(first: bytes) -> str | None:
    # As mrcfile: a 'MAP ' identifier wins over magic numbers that plain data may contain.
    if first[_MAP_ID_OFFSET : _MAP_ID_OFFSET + 4] == _MAP_ID:
        return None
    if first[:2] == b"\x1f\x8b":
        return "gzip"
    if first[:3] == b"BZh":
        return "bzip2"
    return None


def _decompressing(p: Path, compression: str) -> io.BufferedIOBase:
    if compression == "gzip":
        return gzip.open(p, "rb")
    return bz2.open(p, "rb")


def _read_upto(p: Path, f: io.BufferedIOBase, nbytes: int, compression: str | None) -> bytes:
    """Up to ``nbytes`` from ``f``, turning decompression failures into InputError."""
    buf = bytearray(nbytes)
    got = _readinto(p, f, memoryview(buf), compression)
    return bytes(buf[:got])


def _readinto(p: Path, f: io.BufferedIOBase, view: memoryview, compression: str | None) -> int:
    """Fill ``view`` from ``f`` (streams may return short reads); return the bytes read."""
    got = 0
    try:
        while got < len(view):
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    except (OSError, EOFError, ValueError) as err:
        kind = f"{compression} data" if compression else "the file"
        expected = f"a complete {compression}-compressed MRC file" if compression else "an MRC file"
        raise InputError(p, f"cannot read {kind} ({err}); expected {expected}") from None
    return got


def _skip(p: Path, f: io.BufferedIOBase, nbytes: int, compression: str | None) -> None:
    if compression is None:
        f.seek(nbytes)
        return
    scratch = bytearray(min(nbytes, 1 << 20) or 1)
    left = nbytes
    while left > 0:
        got = _readinto(p, f, memoryview(scratch)[: min(left, len(scratch))], compression)
        if not got:
            break
        left -= got


def _stream(header: MapHeader) -> io.BufferedIOBase:
    """Open the file (decompressing) and skip to its data."""
    p, compression = header.path, header.compression
    f = _open_file(p) if compression is None else _decompressing(p, compression)
    _skip(p, f, header.header_bytes, compression)
    return f


def _read_stored(header: MapHeader) -> npt.NDArray[Any]:
    """All data, in stored (sections, rows, columns) order and stored dtype."""
    buf = bytearray(header.data_bytes)
    with _stream(header) as f:
        got = _readinto(header.path, f, memoryview(buf), header.compression)
    if got < header.data_bytes:
        nz, ny, nx = header.stored_shape
        raise InputError(header.path, _short_data(header.data_bytes, nx, ny, nz, header.dtype, got))
    return np.frombuffer(buf, dtype=header.numpy_dtype).reshape(header.stored_shape)


def _map_stored(header: MapHeader) -> npt.NDArray[Any]:
    """Map the data read-only (compressed files: read it into memory)."""
    if header.compression is not None:
        return _read_stored(header)
    return np.memmap(
        header.path,
        dtype=header.numpy_dtype,
        mode="r",
        offset=header.header_bytes,
        shape=header.stored_shape,
    )


def _iter_chunks(header: MapHeader, chunk: int) -> Iterator[npt.NDArray[Any]]:
    """Yield the data as flat arrays of at most ``chunk`` values, read through one buffer."""
    itemsize = header.numpy_dtype.itemsize
    buf = bytearray(min(chunk * itemsize, header.data_bytes))
    left = header.data_bytes
    with _stream(header) as f:
        while left > 0:
            view = memoryview(buf)[: min(left, len(buf))]
            got = _readinto(header.path, f, view, header.compression)
            if got < len(view):
                nz, ny, nx = header.stored_shape
                found = header.data_bytes - left + got
                raise InputError(
                    header.path, _short_data(header.data_bytes, nx, ny, nz, header.dtype, found)
                )
            left -= got
            yield np.frombuffer(view, dtype=header.numpy_dtype)


def _as_index_array(index: Any) -> npt.NDArray[np.int64]:
    if isinstance(index, torch.Tensor):
        index = index.detach().cpu().numpy()
    idx = np.asarray(index)
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(
            f"stack indices must be an int, a slice or a 1-D sequence of ints, got {index!r}"
        )
    return idx.astype(np.int64, copy=False)


def _as_float32_array(data: torch.Tensor | npt.ArrayLike) -> npt.NDArray[np.float32]:
    if isinstance(data, torch.Tensor):
        return data.detach().to("cpu", torch.float32).contiguous().numpy()
    return np.ascontiguousarray(data, dtype=np.float32)


def _write(
    path: PathLike,
    data: torch.Tensor | npt.ArrayLike,
    angpix: float,
    origin: tuple[float, float, float] | None,
    stack: bool,
) -> None:
    p = Path(path)
    pixel = _check_angpix(p, angpix)
    array = _as_float32_array(data)
    if array.ndim == 2:
        array = array[np.newaxis]
    if array.ndim != 3 or 0 in array.shape:
        raise InputError(
            p, f"cannot write data of shape {tuple(array.shape)}; expected (D, H, W) or (H, W)"
        )
    xyz = (0.0, 0.0, 0.0) if origin is None else tuple(float(v) for v in origin)
    if len(xyz) != 3 or not all(math.isfinite(v) for v in xyz):
        raise InputError(p, f"origin must be three finite numbers (x, y, z) in A, got {origin}")
    last = p.suffix.lower()
    compression = {".gz": "gzip", ".bz2": "bzip2"}.get(last)
    with atomic_path(p) as tmp, mrcfile.new(tmp, overwrite=True, compression=compression) as mrc:
        mrc.set_data(array)
        if stack:
            mrc.set_image_stack()
        else:
            mrc.set_volume()
        mrc.voxel_size = pixel
        mrc.header.origin = xyz
