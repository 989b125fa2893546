"""Artifacts: ``weights.safetensors`` + ``meta.json``, never pickle.

Every trained model, learned transform or unlearned model is a folder holding

- ``weights.safetensors``: named tensors (safetensors never executes code on load);
- ``meta.json``: ``{"format": "privkit-artifact", "kind", "architecture", "kwargs", "schema",
  "config", "metrics", "privkit_version", "data_fingerprint", "weights_sha256"}``.

:func:`load_artifact` checks the safetensors header before parsing, the SHA-256 of the weights
against ``meta.json``, and refuses anything else (a pickle renamed ``weights.safetensors``, a
truncated file) with an :class:`~privkit.errors.ArtifactError`.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from privkit.errors import ArtifactError
from privkit.io.atomic import atomic_write_bytes, atomic_write_json

ARTIFACT_FORMAT = "privkit-artifact"
WEIGHTS = "weights.safetensors"
META = "meta.json"
_MAX_HEADER = 100 * 1024 * 1024


def _privkit_version() -> str:
    from privkit import __version__

    return __version__


def verify_safetensors_file(path: str | Path) -> None:
    """Refuse a file that is not a well-formed safetensors file, without parsing its tensors.

    The format is an 8-byte little-endian header length, then a JSON header. A pickle (first byte
    ``0x80``), a zip (torch.save) or a truncated file fails here with a message naming the path.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ArtifactError(f"{path} is not a safetensors file (too short); re-create the artifact")
            (n,) = struct.unpack("<Q", head)
            if head[:1] == b"\x80" or head[:2] == b"PK":
                raise ArtifactError(
                    f"{path} is a pickle/torch.save file renamed as safetensors; privkit never unpickles, "
                    f"re-save the weights with safetensors"
                )
            if n <= 1 or n > _MAX_HEADER or 8 + n > size:
                raise ArtifactError(f"{path} is not a safetensors file (bad header length); re-create the artifact")
            header = f.read(n)
        meta = json.loads(header.decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError
        end = max((int(v["data_offsets"][1]) for k, v in meta.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            raise ArtifactError(f"{path} is truncated or padded ({size} bytes, header says {8 + n + end}); re-create the artifact")
    except ArtifactError:
        raise
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist; point at a run folder written by privkit") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, IndexError, struct.error):
        raise ArtifactError(f"{path} is not a safetensors file (unreadable header); re-create the artifact") from None


def safetensors_header(raw: bytes) -> dict:
    """The parsed JSON header of a safetensors file's bytes (``ValueError`` when it is malformed).

    One parser for every state file read from bytes already in memory (and checksummed): the
    8-byte little-endian header length, then the JSON header (``__metadata__`` included).
    """
    if len(raw) < 8:
        raise ValueError("too short for a safetensors file")
    length = int.from_bytes(raw[:8], "little")
    if not 1 < length <= _MAX_HEADER or 8 + length > len(raw):
        raise ValueError("bad header length")
    header = json.loads(raw[8:8 + length].decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def save_artifact(folder: str | Path, tensors: dict, meta: dict[str, Any]) -> Path:
    """Write ``tensors`` (name -> torch.Tensor) and ``meta`` into ``folder`` atomically.

    ``meta`` should hold ``kind``, ``architecture``, ``kwargs``, ``schema``, ``config``,
    ``metrics`` and ``data_fingerprint``; ``format``, ``privkit_version`` and ``weights_sha256``
    are added here. Weights are written first, metadata last, so a folder whose ``meta.json``
    verifies against its weights is complete.
    """
    from safetensors.torch import save as st_save

    folder = Path(folder)
    clean = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    blob = st_save(clean)
    atomic_write_bytes(folder / WEIGHTS, blob)
    full = dict(meta)
    full.update(format=ARTIFACT_FORMAT, privkit_version=_privkit_version(), weights_sha256=_sha256(blob))
    atomic_write_json(folder / META, full)
    return folder


def read_meta(folder: str | Path) -> dict:
    """``meta.json`` of an artifact folder, checked to be a privkit artifact."""
    folder = Path(folder)
    path = folder / META
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder; point at a run folder written by privkit")
    try:
        meta = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{folder} has no meta.json; point at a run folder written by privkit") from None
    except (ValueError, UnicodeDecodeError):
        raise ArtifactError(f"{path} is not valid JSON; the artifact is corrupt, re-create it") from None
    if not isinstance(meta, dict) or meta.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"{path} is not a privkit artifact (format key missing); re-create it with privkit")
    return meta


def load_artifact(folder: str | Path, expected_kind: str | None = None) -> tuple[dict, dict]:
    """Load ``(tensors, meta)`` from an artifact folder. Never unpickles.

    Raises :class:`ArtifactError` if the folder is not a complete privkit artifact of
    ``expected_kind`` or the weights do not match the SHA-256 recorded in ``meta.json``.
    """
    from safetensors.torch import load as st_load

    folder = Path(folder)
    meta = read_meta(folder)
    if expected_kind is not None and meta.get("kind") != expected_kind:
        raise ArtifactError(
            f"{folder} holds a {meta.get('kind')!r} artifact but a {expected_kind!r} is needed; point at the right run"
        )
    wpath = folder / WEIGHTS
    verify_safetensors_file(wpath)
    blob = wpath.read_bytes()
    if meta.get("weights_sha256") and _sha256(blob) != meta["weights_sha256"]:
        raise ArtifactError(f"{wpath} does not match the checksum in meta.json; the artifact was modified or is corrupt")
    try:
        tensors = st_load(blob)
    except Exception as e:  # safetensors raises its own error type for malformed data
        raise ArtifactError(f"{wpath} could not be parsed as safetensors ({type(e).__name__}); re-create the artifact") from None
    return tensors, meta
