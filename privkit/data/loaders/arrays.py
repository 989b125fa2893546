"""The ``npz`` layout: arrays in one ``.npz`` file.

The file holds ``x`` (``N x ...`` samples), one 1-D array of length ``N`` per attribute (strings or
integers; integers become class names ``"0"``, ``"1"`` ... in numeric order), and optionally 0-d
``modality`` (default ``features``), ``sample_rate`` and ``identity`` (the name of the identity
attribute). It is read with ``allow_pickle=False``; when ``x`` is stored uncompressed it is
memory-mapped straight out of the zip archive instead of being loaded.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

from privkit.data.loaders import Column, LayoutDataset, LoadOptions, build_attributes, register_layout, report
from privkit.data.schema import MODALITIES, Schema
from privkit.errors import DataError, SchemaError

SCALAR_KEYS = ("modality", "sample_rate", "identity")
#: Dimensions of one sample each modality needs (audio ``(T,)`` is promoted to ``(1, T)``).
SAMPLE_NDIM = {"image": (3,), "audio": (1, 2), "motion": (2,), "features": None}


def find_npz(path: Path) -> Path:
    """``path`` itself if it is an ``.npz`` file, else the only ``.npz`` file in the folder ``path``."""
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DataError(f"{path} is not an .npz file; give an .npz file or a folder holding one")
        return path
    if not path.exists():
        raise DataError(f"{path} does not exist; check the --data path")
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".npz")
    if len(found) != 1:
        raise DataError(f"{path} holds {len(found)} .npz files; it must hold exactly one (or give the file itself)")
    return found[0]


def _detect_npz(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".npz"
    return path.is_dir() and sum(1 for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".npz") == 1


def memmap_npz_member(path: Path, member: str = "x.npy") -> np.ndarray | None:
    """Memory-map an uncompressed ``.npy`` member of a zip archive; None when it is compressed."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) < 30 or local[:4] != b"PK\x03\x04":
            raise DataError(f"{path} has a damaged zip entry {member}; re-create the file")
        n_name, n_extra = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + n_name + n_extra)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        offset = f.tell()
    if dtype.hasobject:
        raise DataError(f"{path} stores {member} as Python objects; save numeric arrays (allow_pickle is off)")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset + nbytes > path.stat().st_size:
        raise DataError(f"{path} is truncated ({member} needs {nbytes} bytes); re-create the file")
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape), order="F" if fortran else "C")


class ArrayReader:
    """Callable ``i -> x[i]`` as float32 (``x`` may be a memory map)."""

    def __init__(self, x: np.ndarray, shape: tuple[int, ...]):
        self.x, self.shape = x, tuple(shape)

    def __call__(self, i: int) -> np.ndarray:
        return np.array(self.x[i], dtype=np.float32, copy=True).reshape(self.shape)  # writable copy


def _scalar(arrays: dict, key: str, path: Path):
    if key not in arrays:
        return None
    a = arrays[key]
    if a.ndim != 0 and a.size != 1:
        raise DataError(f"{path}: {key!r} must be a single value, not an array of shape {list(a.shape)}")
    v = a.reshape(()).item()
    return v.decode() if isinstance(v, bytes) else v


def _attribute_column(name: str, arr: np.ndarray, n: int, path: Path, binned: bool) -> Column:
    if arr.ndim != 1 or len(arr) != n:
        raise DataError(f"{path}: attribute array {name!r} has shape {list(arr.shape)} but x holds {n} samples; "
                        f"give one value per sample")
    if arr.dtype.kind in "US":
        values = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in arr.tolist()]
        return Column(name, values)
    if arr.dtype.kind in "iub":
        ints = arr.astype(np.int64)
        return Column(name, [str(v) for v in ints.tolist()], classes=tuple(str(v) for v in np.unique(ints)))
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{path}: attribute array {name!r} contains NaN or infinite values; fix them")
        if binned:
            return Column(name, [repr(float(v)) for v in arr.tolist()])
        if np.all(arr == np.round(arr)):
            ints = arr.astype(np.int64)
            return Column(name, [str(v) for v in ints.tolist()], classes=tuple(str(v) for v in np.unique(ints)))
        raise SchemaError(f"{path}: attribute {name!r} holds non-integer numbers; bin it, e.g. bins {name}=0.5")
    raise SchemaError(f"{path}: attribute array {name!r} has unsupported type {arr.dtype}; use strings or integers")


@register_layout("npz", detect=_detect_npz, modality=None, options=(), priority=50,
                 description="one .npz file with x, one array per attribute, optional modality/sample_rate/identity")
def load_npz(root: Path, opts: LoadOptions) -> LayoutDataset:
    """Load an ``.npz`` file (or the one ``.npz`` in a folder)."""
    path = find_npz(root)
    try:
        with np.load(path, allow_pickle=False) as npz:
            names = list(npz.files)
            if "x" not in names:
                raise DataError(f"{path} has no array 'x'; it holds {', '.join(names) or 'nothing'}")
            small = {k: npz[k] for k in names if k != "x"}
        x = memmap_npz_member(path, "x.npy")
        if x is None:
            with np.load(path, allow_pickle=False) as npz:
                x = npz["x"]
    except (DataError, SchemaError):
        raise
    except Exception as e:  # zipfile / numpy raise many types for damaged or pickled archives
        raise DataError(f"cannot read {path} ({type(e).__name__}: {e}); it is not a valid .npz of numeric and "
                        f"string arrays") from e
    if x.ndim == 0:
        raise DataError(f"{path}: x is a single value; save samples as an N x ... array")
    if x.ndim == 1:
        x = x.reshape(-1, 1)
    if len(x) == 0:
        raise DataError(f"{path}: x holds no samples; save at least one")
    if x.dtype.kind not in "fiub":
        raise SchemaError(f"{path}: x has type {x.dtype}; save samples as numbers (float32)")
    n = len(x)
    for start in range(0, n, 4096):  # chunked so a memory-mapped x is never loaded whole
        if x.dtype.kind == "f" and not np.all(np.isfinite(x[start:start + 4096])):
            raise DataError(f"{path}: x contains NaN or infinite values (first chunk at sample {start}); clean the data")
        report(opts.progress, min(n, start + 4096), n)
    modality = str(_scalar(small, "modality", path) or "features")
    if modality not in MODALITIES:
        raise SchemaError(f"{path}: unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    shape = tuple(int(s) for s in x.shape[1:])
    if modality == "audio" and len(shape) == 1:
        shape = (1, shape[0])
    allowed = SAMPLE_NDIM[modality]
    if allowed is not None and len(shape) not in allowed and not (modality == "audio" and len(shape) == 2):
        raise SchemaError(f"{path}: {modality} samples need {allowed[0] + 1}-D x (N x ...), but x has shape "
                          f"{list(x.shape)}; reshape x or set modality")
    rate = _scalar(small, "sample_rate", path)
    if rate is not None:
        try:
            rate = int(rate)
        except (TypeError, ValueError):
            raise DataError(f"{path}: sample_rate {rate!r} is not an integer; fix it") from None
        if rate < 1:
            raise DataError(f"{path}: sample_rate {rate} must be positive; fix it")
    identity = _scalar(small, "identity", path)
    attr_names = [k for k in small if k not in SCALAR_KEYS]
    if identity is not None and str(identity) not in attr_names:
        raise SchemaError(f"{path}: identity names {identity!r}, which is not an attribute; attributes: "
                          f"{', '.join(attr_names)}")
    columns = []
    for k in attr_names:
        col = _attribute_column(k, small[k], n, path, binned=k in opts.bins)
        col.identity = identity is not None and k == str(identity)
        columns.append(col)
    if not columns:
        raise DataError(f"{path} has no attribute arrays besides x; add one 1-D array per attribute")
    sample_ids = [str(i) for i in range(n)]
    attributes, labels, extra = build_attributes(columns, opts.bins, sample_ids, str(path))
    schema = Schema(modality, attributes, shape, sample_rate=rate, layout="npz", extra=extra)
    meta = {"file": str(path.absolute()), "arrays": {k: small[k] for k in attr_names},
            "scalars": {k: small[k] for k in SCALAR_KEYS if k in small}}
    return LayoutDataset(schema, labels, sample_ids, ArrayReader(x, shape), str(path.absolute()),
                         [str(path.absolute())] * n, meta)
