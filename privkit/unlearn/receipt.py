"""The erasure receipt: ``receipt.json``, a verifiable record of one deletion request.

It binds together

- ``forget_ids_sha256``: SHA-256 of the sorted forget sample indices (numbered as
  ``privkit datasets info`` numbers them), one decimal integer per line, each followed by ``\\n``
  — anyone holding the id list can recompute it;
- ``model_before_sha256`` / ``model_after_sha256``: SHA-256 of the model weights before and after
  (the safetensors serialisation of the state dict with sorted names, i.e. the bytes of
  ``weights.safetensors`` for a model saved by privkit);
- the run's ``config`` and ``metrics``, and a ``verdict`` comparing the result with retraining.

Written atomically into the run folder.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["forget_ids_sha256", "model_sha256", "erasure_verdict", "build_receipt", "write_receipt", "RECEIPT_FILE"]

RECEIPT_FILE = "receipt.json"
RECEIPT_FORMAT = "privkit-erasure-receipt/1"


def forget_ids_sha256(ids: Sequence[int]) -> str:
    """SHA-256 of the sorted, de-duplicated ids written one per line."""
    uniq = np.unique(np.asarray(ids, dtype=np.int64))
    return hashlib.sha256("".join(f"{int(i)}\n" for i in uniq).encode("ascii")).hexdigest()


def model_sha256(model: nn.Module | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of the safetensors bytes of a model's state dict (names sorted)."""
    from safetensors.torch import save as st_save

    from privkit.train import unwrap

    state = unwrap(model).state_dict() if isinstance(model, nn.Module) else dict(model)
    blob = st_save({k: v.detach().cpu().contiguous() for k, v in sorted(state.items())})
    return hashlib.sha256(blob).hexdigest()


def erasure_verdict(metrics: Mapping[str, Any], reference: Mapping[str, Any] | None, tolerance: float = 5.0,
                    method: str = "") -> dict[str, Any]:
    """Compare with retraining: UA and MIA efficacy each within ``tolerance`` points of retrain's.

    Returns ``{"ok": True/False/None, "text": ..., "tolerance_points": ...}``; ``ok`` is ``None``
    when no retrained reference is available (nothing to compare with).
    """
    if method == "retrain":
        return {"ok": True, "tolerance_points": tolerance,
                "text": "retrained from scratch without the forget set: exact unlearning (the reference itself)"}
    if reference is None:
        return {"ok": None, "tolerance_points": tolerance,
                "text": "no retrained reference (--reference or --compare-retrain): forgetting cannot be compared with "
                        "retraining; UA and MIA efficacy are reported alone"}
    gaps = {k: abs(float(metrics[k]) - float(reference[k])) for k in ("UA", "MIA_efficacy")}
    ok = all(g <= tolerance for g in gaps.values())
    detail = ", ".join(f"{k} {metrics[k]:.1f} vs retrain {reference[k]:.1f} (gap {g:.1f})" for k, g in gaps.items())
    text = (f"{'consistent with' if ok else 'NOT consistent with'} retraining within {tolerance:g} points: {detail}")
    return {"ok": ok, "tolerance_points": tolerance, "text": text, "gaps": gaps}


def build_receipt(*, forget_ids: Sequence[int], model_before: nn.Module | Mapping, model_after: nn.Module | Mapping,
                  config: Mapping[str, Any], metrics: Mapping[str, Any], verdict: Mapping[str, Any]) -> dict:
    """The receipt as a dict (see the module docstring)."""
    return {
        "format": RECEIPT_FORMAT,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "forget_ids_sha256": forget_ids_sha256(forget_ids),
        "n_forget": int(np.unique(np.asarray(forget_ids, dtype=np.int64)).size),
        "model_before_sha256": model_sha256(model_before),
        "model_after_sha256": model_sha256(model_after),
        "config": dict(config),
        "metrics": dict(metrics),
        "verdict": dict(verdict),
    }


def write_receipt(folder: str | Path, receipt: Mapping[str, Any]) -> Path:
    """Write ``receipt.json`` atomically into ``folder``."""
    from privkit.io.atomic import atomic_write_json

    path = Path(folder) / RECEIPT_FILE
    atomic_write_json(path, dict(receipt))
    return path
