"""``digits``: scikit-learn's bundled 8x8 handwritten digits, written as an ``npz`` file.

Not generated but bundled with scikit-learn (no download), so it is the smallest real image
dataset every installation has. Written as ``digits.npz`` with arrays ``x`` (float32,
``(N, 1, 8, 8)``, scaled to [0, 1]), ``digit`` (int64) and ``modality`` (``"image"``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from privkit.data.synthetic import register_builtin

FULL_SIZE = 1797  # samples in sklearn.datasets.load_digits
# The zip format stores a modification time; a fixed one makes the file byte-identical per seed.
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def write_npz_deterministic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` as an uncompressed ``.npz`` readable by ``np.load(allow_pickle=False)``.

    ``np.savez`` stamps each member with the current time, so two runs differ byte-wise; this
    writes the same members with a fixed time and never pickles (object arrays are refused).
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for key in sorted(arrays):
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_FIXED_ZIP_TIME)
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(arrays[key]), allow_pickle=False)


@register_builtin(
    "digits",
    "scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes) as digits.npz",
    default_size=FULL_SIZE,
    layout="npz",
    min_size=10,
)
def write_digits(out_dir: Path, size: int, seed: int, progress=None) -> None:
    """Write ``digits.npz``; a size below 1,797 keeps a class-stratified random subset."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network access

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # pixel counts 0..16 -> [0, 1]
    labels = bunch.target.astype(np.int64)
    if size < len(labels):
        rng = np.random.default_rng([seed, 0xD161])
        # Stratified: every class keeps its share (at least one sample each, since size >= 10).
        order = rng.permutation(len(labels))
        per_class = {c: order[labels[order] == c] for c in range(10)}
        quota = np.floor(np.bincount(labels, minlength=10) * size / len(labels)).astype(int)
        quota = np.maximum(quota, 1)
        for c in rng.permutation(10)[: size - quota.sum()]:
            quota[c] += 1
        keep = np.sort(np.concatenate([per_class[c][: quota[c]] for c in range(10)]))
        images, labels = images[keep], labels[keep]
    write_npz_deterministic(
        Path(out_dir) / "digits.npz",
        {"x": images[:, None, :, :], "digit": labels, "modality": np.array("image")},
    )
    if progress is not None:
        progress(1, 1)
