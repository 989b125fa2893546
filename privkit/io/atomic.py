"""Atomic file writes: write to a temporary file in the same folder, fsync, then ``os.replace``.

A reader therefore sees either the old file or the complete new one, never a torn write. Disk
full and permission errors become :class:`~privkit.errors.ResourceError` with the path named.
"""

from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from privkit.errors import ResourceError


def _describe_os_error(path: Path, err: OSError) -> ResourceError:
    if err.errno == errno.ENOSPC:
        return ResourceError(f"no space left on the device while writing {path}; free some space or choose another --out")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return ResourceError(f"cannot write {path}: permission denied; choose a writable --out folder")
    return ResourceError(f"cannot write {path}: {err.strerror or err}; choose another --out folder")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file + fsync + ``os.replace``).

    Under ``torchrun`` only rank 0 writes: on the other ranks this is a no-op, so every artifact,
    report and checkpoint written through privkit.io has exactly one writer.
    """
    from privkit.distributed import is_main_process

    if not is_main_process():
        return
    path = Path(path)
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
    except OSError as e:
        raise _describe_os_error(path, e) from None
    finally:
        if tmp_name is not None and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy / torch scalars and arrays, paths and tuples to JSON-safe values.

    Non-finite floats become ``None`` so the file stays valid JSON for every reader.
    """
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        np = None
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return str(obj)
    if np is not None:
        if isinstance(obj, np.ndarray):
            return to_jsonable(obj.tolist())
        if isinstance(obj, np.generic):
            return to_jsonable(obj.item())
    if hasattr(obj, "tolist") and hasattr(obj, "dtype"):  # torch tensors
        return to_jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")
