"""AttributeDataset: the one dataset interface every privkit module takes.

An :class:`AttributeDataset` is a ``torch.utils.data.Dataset`` yielding ``(x, attrs)`` where ``x``
is a float32 tensor of shape ``schema.input_shape`` and ``attrs`` a LongTensor with one label per
schema attribute. Labels are known without reading samples (``dataset.labels``), so splits,
class counts and forget selections never touch the samples; samples are read from disk on demand
so nothing needs the whole dataset in memory.
"""

from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from privkit.data.schema import Schema
from privkit.errors import DataError


class AttributeDataset(Dataset):
    """Base class: a schema, an ``(N, A)`` int64 label matrix and a per-sample reader.

    Subclasses implement :meth:`load` (``i -> np.ndarray`` of ``schema.input_shape``). ``sample_ids``
    are stable names of the samples (relative paths for folder layouts, row numbers for arrays)
    used to write released data back in the input's own layout.

    Parameters
    ----------
    schema : Schema
    labels : array of shape (N, A), int
    sample_ids : sequence of str, length N
    root : str, optional
        Folder (or file) the data was read from.
    """

    def __init__(self, schema: Schema, labels: np.ndarray, sample_ids: Sequence[str], root: str | None = None):
        labels = np.asarray(labels, dtype=np.int64).reshape(len(sample_ids), len(schema.attributes))
        if len(sample_ids) == 0:
            raise DataError(f"the dataset at {root or '(memory)'} is empty; point --data at a folder with samples")
        for j, a in enumerate(schema.attributes):
            col = labels[:, j]
            if col.min() < 0 or col.max() >= a.num_classes:
                raise DataError(f"labels of attribute {a.name!r} fall outside its {a.num_classes} classes")
        self.schema = schema
        self.labels = labels
        self.sample_ids = list(sample_ids)
        self.root = root

    # -- reading -----------------------------------------------------------------------------
    def load(self, i: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.sample_ids)

    def __getitem__(self, i: int):
        x = self.load(int(i))
        x = torch.as_tensor(np.asarray(x, dtype=np.float32)).reshape(self.schema.input_shape)
        return x, torch.from_numpy(self.labels[int(i)].copy())

    # -- labels -------------------------------------------------------------------------------
    def attr(self, name: str) -> np.ndarray:
        """Integer labels of attribute ``name`` for every sample."""
        return self.labels[:, self.schema.index(name)]

    def class_counts(self, name: str) -> dict[str, int]:
        a = self.schema.attribute(name)
        counts = np.bincount(self.attr(name), minlength=a.num_classes)
        return {c: int(n) for c, n in zip(a.classes, counts)}

    def chance(self, name: str) -> float:
        """Majority-class fraction of attribute ``name``: the accuracy of always guessing it."""
        counts = np.bincount(self.attr(name), minlength=self.schema.attribute(name).num_classes)
        return float(counts.max() / max(1, counts.sum()))

    # -- views --------------------------------------------------------------------------------
    def subset(self, indices: Sequence[int]) -> "AttributeSubset":
        return AttributeSubset(self, indices)

    @property
    def base(self) -> "AttributeDataset":
        return self

    @property
    def base_indices(self) -> np.ndarray:
        """Indices of these samples in the underlying (full) dataset, as ``datasets info`` numbers them."""
        return np.arange(len(self))

    def fingerprint(self) -> str:
        """SHA-256 over schema, sample ids and labels: identifies the training data in artifacts."""
        h = hashlib.sha256()
        h.update(self.schema.to_json().encode())
        for s in self.sample_ids:
            h.update(s.encode())
            h.update(b"\0")
        h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()

    def batches(self, batch_size: int = 256, indices: Sequence[int] | None = None):
        """Yield ``(index_array, x, attrs)`` batches in order, reading from disk as it goes."""
        order = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            items = [self[int(i)] for i in idx]
            yield idx, torch.stack([x for x, _ in items]), torch.stack([a for _, a in items])

    def materialize(self, indices: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All (or the given) samples as two tensors. Holds them in memory: use for small data only."""
        xs, ys = [], []
        for _, x, y in self.batches(512, indices):
            xs.append(x)
            ys.append(y)
        if not xs:
            return torch.empty((0, *self.schema.input_shape)), torch.empty((0, len(self.schema.attributes)), dtype=torch.long)
        return torch.cat(xs), torch.cat(ys)


class AttributeSubset(AttributeDataset):
    """A view on some samples of another dataset, keeping its schema and reader."""

    def __init__(self, dataset: AttributeDataset, indices: Sequence[int]):
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(dataset)):
            raise DataError(f"sample index out of range 0..{len(dataset) - 1}")
        self.parent = dataset
        self.indices = idx
        self.schema = dataset.schema
        self.labels = dataset.labels[idx]
        self.sample_ids = [dataset.sample_ids[i] for i in idx]
        self.root = dataset.root

    def load(self, i: int) -> np.ndarray:
        return self.parent.load(int(self.indices[i]))

    def __getitem__(self, i: int):
        return self.parent[int(self.indices[i])]

    @property
    def base(self) -> AttributeDataset:
        return self.parent.base

    @property
    def base_indices(self) -> np.ndarray:
        return self.parent.base_indices[self.indices]


class ArrayDataset(AttributeDataset):
    """Samples held in an array (features, or small data loaded from ``.npz``).

    ``x`` may be a ``numpy.memmap`` so large arrays need not be in memory.
    """

    def __init__(self, schema: Schema, x: np.ndarray, labels: np.ndarray, sample_ids: Sequence[str] | None = None,
                 root: str | None = None):
        if sample_ids is None:
            sample_ids = [str(i) for i in range(len(x))]
        super().__init__(schema, labels, sample_ids, root)
        if tuple(x.shape[1:]) != tuple(schema.input_shape):
            raise DataError(f"array samples have shape {list(x.shape[1:])} but the schema says {list(schema.input_shape)}")
        self.x = x

    def load(self, i: int) -> np.ndarray:
        return np.asarray(self.x[i], dtype=np.float32)


class FunctionDataset(AttributeDataset):
    """Samples produced by a function ``i -> np.ndarray`` (used for layouts read file by file)."""

    def __init__(self, schema: Schema, labels: np.ndarray, sample_ids: Sequence[str], reader: Callable[[int], np.ndarray],
                 root: str | None = None, paths: Sequence[str] | None = None):
        super().__init__(schema, labels, sample_ids, root)
        self._reader = reader
        self.paths = list(paths) if paths is not None else None

    def load(self, i: int) -> np.ndarray:
        return self._reader(i)
