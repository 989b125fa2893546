"""Safe input/output: atomic writes, safetensors + JSON artifacts, run directories."""

from privkit.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from privkit.io.artifacts import (
    ARTIFACT_FORMAT,
    load_artifact,
    read_meta,
    save_artifact,
    verify_safetensors_file,
)
from privkit.io.rundir import RunDir, is_complete, require_complete

__all__ = [
    "ARTIFACT_FORMAT",
    "RunDir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "is_complete",
    "load_artifact",
    "read_meta",
    "require_complete",
    "save_artifact",
    "verify_safetensors_file",
]
