"""Loaders of real on-disk dataset layouts and the registry that picks one.

Each layout module registers its loader with :func:`register_layout`, giving a ``detect`` test
(does this path look like my layout?), the modality and the size options it understands. The
resolver (:func:`privkit.data.load_dataset`) walks :data:`LAYOUTS` in registration order and
uses the first whose ``detect`` accepts the path.

Every loader returns a :class:`LayoutDataset`: labels are parsed up front from the label files,
every sample file's header is checked at construction, and samples are read lazily.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from privkit.data.bins import bin_classes, bin_values, to_numbers
from privkit.data.datasets import FunctionDataset
from privkit.data.schema import Attribute, Schema
from privkit.errors import ConfigError, DataError, SchemaError

#: Column names that mark the identity attribute (the person).
IDENTITY_NAMES = ("identity", "person", "subject", "speaker")

#: Name of the optional per-dataset sidecar with layout hints (label names, sample rate ...).
SIDECAR = "privkit_layout.json"

#: Option names the resolver may pass, grouped by the modality they apply to.
SIZE_OPTIONS = ("image_size", "sample_rate", "duration", "window", "stride")


@dataclass
class LoadOptions:
    """Options shared by all loaders (``None`` means the layout's default).

    ``extra`` holds layout-specific options (``channels`` for images, ``attributes`` for CelebA).
    """

    bins: dict[str, list[float]] = field(default_factory=dict)
    image_size: tuple[int, int] | None = None
    sample_rate: int | None = None
    duration: float | None = None
    window: int | None = None
    stride: int | None = None
    progress: Callable[[int, int], Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """A registered on-disk layout."""

    name: str
    load: Callable[[Path, LoadOptions], "LayoutDataset"]
    detect: Callable[[Path], bool]
    modality: str | None  # None: decided by the file (npz)
    options: tuple[str, ...]  # size options it accepts
    extra_options: tuple[str, ...] = ()
    description: str = ""
    priority: int = 50  # detection order: lower first; generic patterns (UTKFace names) last


#: Registry of layouts, in detection order.
LAYOUTS: dict[str, Layout] = {}


def register_layout(name: str, *, detect: Callable[[Path], bool], modality: str | None,
                    options: Sequence[str] = (), extra_options: Sequence[str] = (), description: str = "",
                    priority: int = 50):
    """Decorator registering ``loader(root, options) -> LayoutDataset`` under ``name``."""

    def wrap(loader):
        LAYOUTS[name] = Layout(name, loader, detect, modality, tuple(options), tuple(extra_options),
                               description, priority)
        return loader

    return wrap


def detect_layout(path: Path) -> str | None:
    """Name of the first registered layout whose ``detect`` accepts ``path``, else None."""
    for layout in sorted(LAYOUTS.values(), key=lambda lay: lay.priority):
        try:
            if layout.detect(path):
                return layout.name
        except OSError:
            continue
    return None


class LayoutDataset(FunctionDataset):
    """A dataset read from an on-disk layout.

    Attributes
    ----------
    paths : list of str
        Absolute path of the file each sample is read from.
    meta : dict
        What the writer of this layout needs to write released data back (raw label rows ...).
    """

    def __init__(self, schema: Schema, labels: np.ndarray, sample_ids: Sequence[str],
                 reader: Callable[[int], np.ndarray], root: str, paths: Sequence[str], meta: dict):
        super().__init__(schema, labels, sample_ids, reader, root=root, paths=paths)
        self.meta = meta

    def __repr__(self) -> str:
        return f"{type(self).__name__}(layout={self.schema.layout!r}, n={len(self)}, root={self.root!r})"


# -- small helpers shared by the layout modules ------------------------------------------------

_NUM_RE = re.compile(r"(\d+)")


def natural_key(s: str):
    """Sort key putting ``s2`` before ``s10`` (numbers compared as numbers)."""
    return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in _NUM_RE.split(str(s)) if t != ""]


def require_dir(root: Path, what: str) -> Path:
    if not root.exists():
        raise DataError(f"dataset folder {root} does not exist; check the --data path")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; point --data at the {what} dataset folder")
    return root


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataError(f"{what} {path} is missing; the dataset folder must contain it")
    return path


def read_text(path: Path) -> str:
    """The file as UTF-8 text (a BOM is dropped); unreadable bytes are a DataError naming the file."""
    try:
        return path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the file") from None


def read_csv(path: Path, required: Sequence[str] = ()) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV file; every row must have the header's number of cells."""
    text = read_text(path)
    if "\0" in text:
        raise DataError(f"{path} contains NUL bytes; it is not a CSV text file")
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline="")) if any(c.strip() for c in r)]
    except csv.Error as e:
        raise DataError(f"{path} is not valid CSV ({e}); fix the file") from None
    if not rows:
        raise DataError(f"{path} is empty; it needs a header line and one row per sample")
    header = [h.strip() for h in rows[0]]
    for name in required:
        if name not in header:
            raise DataError(f"{path} has no column {name!r} (header: {','.join(header)}); add it")
    if len(set(header)) != len(header):
        raise DataError(f"{path} has duplicate column names in its header {header}; name each column once")
    body = []
    for lineno, r in enumerate(rows[1:], start=2):
        if len(r) != len(header):
            raise DataError(f"{path} row {lineno} has {len(r)} cells but the header has {len(header)}; fix that row")
        body.append([c.strip() for c in r])
    return header, body


def read_sidecar(root: Path) -> dict:
    """The optional ``privkit_layout.json`` of a dataset folder (``{}`` when absent)."""
    path = root / SIDECAR
    if not path.is_file():
        return {}
    try:
        d = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); fix or delete it") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} must hold a JSON object; fix or delete it")
    return d


def safe_path(root: Path, rel: str, what: str = "path") -> Path:
    """``root / rel`` refused when it escapes ``root`` (``../``, absolute path, symlink out)."""
    if not rel:
        raise DataError(f"an empty {what} in {root}; every row must name a file")
    p = Path(rel)
    if p.is_absolute() or rel.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", rel):
        raise DataError(f"{what} {rel!r} is absolute; paths must be relative to the dataset folder {root}")
    if ".." in p.parts:
        raise DataError(f"{what} {rel!r} escapes the dataset folder {root}; remove '..' from the path")
    full = root / p
    try:
        resolved = full.resolve()
        resolved.relative_to(root.resolve())
    except ValueError:
        raise DataError(f"{what} {rel!r} points outside the dataset folder {root} (symlink?); refused") from None
    except OSError as e:
        raise DataError(f"cannot resolve {what} {rel!r} in {root}: {e}") from None
    return full


def check_missing(paths: Sequence[Path], source: Path) -> None:
    """Raise naming the first missing file and how many are missing."""
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"{len(missing)} file(s) listed in {source} are missing, first: {missing[0]}; "
                        f"remove those rows or restore the files")


def report(progress, done: int, total: int) -> None:
    if progress is not None:
        progress(done, total)


@dataclass
class Column:
    """Raw per-sample values of one attribute before it becomes an :class:`Attribute`.

    ``classes`` fixes the class names (and their order); ``default_edges`` bins the column unless
    the user gives other bins; ``droppable`` drops it (recorded in ``schema.extra``) when it has a
    single class, which carries no information for any audit.
    """

    name: str
    values: list[str]
    identity: bool = False
    classes: tuple[str, ...] | None = None
    default_edges: list[float] | None = None
    droppable: bool = False
    aliases: Mapping[str, str] | None = None  # raw value -> class name (e.g. "0" -> "male")


def build_attributes(columns: Sequence[Column], bins: Mapping[str, Sequence[float]] | None,
                     sample_ids: Sequence[str], source: str) -> tuple[tuple[Attribute, ...], np.ndarray, dict]:
    """Turn raw columns into attributes and an ``(N, A)`` label matrix.

    Returns ``(attributes, labels, extra)`` where ``extra["dropped_attributes"]`` maps single-class
    droppable attributes to their only value and ``extra["bins"]`` the edges used per binned column.
    """
    bins = dict(bins or {})
    known = [c.name for c in columns]
    for name in bins:
        if name not in known:
            raise SchemaError(f"cannot bin unknown attribute {name!r}; {source} has: {', '.join(known)}")
    attributes, label_cols = [], []
    dropped: dict[str, str] = {}
    used_bins: dict[str, list[float]] = {}
    for col in columns:
        for i, v in enumerate(col.values):
            if v is None or str(v).strip() == "":
                raise DataError(f"attribute {col.name!r} is empty for sample {sample_ids[i]} in {source}; fill in the value")
        values = [str(v).strip() for v in col.values]
        if col.aliases:
            values = [col.aliases.get(v, v) for v in values]
        edges = bins.get(col.name, col.default_edges)
        if edges is not None:
            numbers = to_numbers(col.name, values, sample_ids)
            labels = bin_values(numbers, edges)
            classes = bin_classes(edges)
            used_bins[col.name] = [float(e) for e in edges]
        elif col.classes is not None:
            classes = tuple(col.classes)
            lookup = {c: k for k, c in enumerate(classes)}
            labels = np.empty(len(values), dtype=np.int64)
            for i, v in enumerate(values):
                if v not in lookup:
                    raise DataError(f"attribute {col.name!r} has the unknown value {v!r} for sample {sample_ids[i]} "
                                    f"in {source}; use one of {', '.join(classes)}")
                labels[i] = lookup[v]
        else:
            classes = tuple(sorted(set(values), key=natural_key))
            lookup = {c: k for k, c in enumerate(classes)}
            labels = np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))
        if col.droppable and edges is None and len(set(labels.tolist())) <= 1:
            dropped[col.name] = classes[int(labels[0])] if len(labels) else ""
            continue
        attributes.append(Attribute(col.name, classes, identity=col.identity))
        label_cols.append(labels)
    labels = np.stack(label_cols, axis=1) if label_cols else np.zeros((len(sample_ids), 0), dtype=np.int64)
    extra = {"dropped_attributes": dropped, "bins": used_bins}
    return tuple(attributes), labels, extra


def check_option_values(opts: LoadOptions) -> None:
    """Validate the generic size options (positive sizes, sensible durations)."""
    if opts.image_size is not None:
        size = opts.image_size
        if isinstance(size, int):
            size = (size, size)
        try:
            size = tuple(int(s) for s in size)
        except (TypeError, ValueError):
            raise ConfigError(f"image_size {opts.image_size!r} must be HEIGHT,WIDTH integers, e.g. 64,64") from None
        if len(size) != 2 or min(size) < 1:
            raise ConfigError(f"image_size {opts.image_size!r} must be two positive integers HEIGHT,WIDTH")
        opts.image_size = size
    if opts.sample_rate is not None and (int(opts.sample_rate) != opts.sample_rate or opts.sample_rate < 1):
        raise ConfigError(f"sample_rate {opts.sample_rate!r} must be a positive integer (Hz), e.g. 8000")
    if opts.duration is not None and not (0 < float(opts.duration) < 3600):
        raise ConfigError(f"duration {opts.duration!r} must be a positive number of seconds, e.g. 1.0")
    for name in ("window", "stride"):
        v = getattr(opts, name)
        if v is not None and (int(v) != v or v < 1):
            raise ConfigError(f"{name} {v!r} must be a positive integer number of samples, e.g. 128")


# Import the layout modules so that their decorators fill LAYOUTS.
from privkit.data.loaders import image_folder as _image_folder  # noqa: E402,F401
from privkit.data.loaders import audio_folder as _audio_folder  # noqa: E402,F401
from privkit.data.loaders import motion as _motion  # noqa: E402,F401
from privkit.data.loaders import arrays as _arrays  # noqa: E402,F401

__all__ = ["LAYOUTS", "Layout", "LayoutDataset", "LoadOptions", "register_layout", "detect_layout",
           "build_attributes", "Column", "natural_key", "safe_path"]
