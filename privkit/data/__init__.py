"""Datasets: one interface (:class:`AttributeDataset`) over real on-disk layouts and built-in data.

:func:`load_dataset` takes either a built-in dataset name (generated once into a cache folder) or a
path whose layout is detected from its marker files (``attributes.csv`` -> ``image_csv``,
``list_attr_celeba.txt`` -> ``celeba``, ``recordings/`` + ``speakers.csv`` -> ``fsdd``,
``audioMNIST_meta.txt`` -> ``audiomnist``, ``A_DeviceMotion_data/`` -> ``motionsense``, ``*.npz`` ->
``npz``, a folder of ``AGE_GENDER_RACE_DATETIME.jpg`` -> ``utkface``).

Examples
--------
>>> ds = load_dataset("../shared/data/orl_faces")                # doctest: +SKIP
>>> ds.schema.input_shape, ds.schema.identity_attribute          # doctest: +SKIP
((1, 112, 92), 'identity')
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from privkit.data.bins import parse_bins
from privkit.data.datasets import ArrayDataset, AttributeDataset, AttributeSubset, FunctionDataset
from privkit.data.loaders import LAYOUTS, SIZE_OPTIONS, LayoutDataset, LoadOptions, check_option_values, detect_layout
from privkit.data.schema import Attribute, Schema
from privkit.data.splits import Split, select_forget, split_dataset
from privkit.data.writers import WRITERS, write_released
from privkit.errors import ConfigError, DataError, SchemaError

#: Name of the file marking a completely generated built-in dataset in the cache.
COMPLETE_MARKER = ".privkit-complete.json"
#: Which kind of data each size option applies to (for the error when it is given to other data).
_OPTION_KIND = {"image_size": "image", "sample_rate": "audio", "duration": "audio", "window": "motion",
                "stride": "motion"}


def list_builtin() -> list[str]:
    """Names of the built-in (generated) datasets."""
    from privkit.data.synthetic import BUILTIN_DATASETS

    return list(BUILTIN_DATASETS)


def default_cache_dir() -> Path:
    """``$PRIVKIT_CACHE`` if set, else ``~/.cache/privkit/datasets``."""
    env = os.environ.get("PRIVKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "privkit" / "datasets"


def builtin_path(name: str, *, size: int | None = None, seed: int = 0, cache_dir: str | Path | None = None,
                 progress: Callable | None = None) -> Path:
    """Path of built-in dataset ``name`` generated with ``size`` and ``seed``, generating it if needed.

    Generation writes to a temporary sibling folder that is renamed into place with a completion
    marker, so an interrupted run never leaves a half-written dataset that later runs would trust.
    """
    from privkit.data.synthetic import generate

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = f"{name}-n{size if size is not None else 'default'}-s{int(seed)}"
    final = root / key
    marker = final / COMPLETE_MARKER
    if marker.is_file():
        try:
            rel = json.loads(marker.read_text())["path"]
        except (OSError, ValueError, KeyError, TypeError):
            rel = None
        if rel is not None and (final / rel).exists():
            return final / rel
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{key}.partial-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        out = Path(generate(name, tmp, size=size, seed=seed, progress=progress))
        try:
            rel = str(out.resolve().relative_to(tmp.resolve()))
        except ValueError:
            raise DataError(f"the generator of {name!r} wrote {out}, outside its folder {tmp}; report this bug") from None
        (tmp / COMPLETE_MARKER).write_text(json.dumps({"name": name, "size": size, "seed": seed, "path": rel}))
        if (final / COMPLETE_MARKER).exists():  # another process (say a torchrun rank) finished first
            shutil.rmtree(tmp, ignore_errors=True)
            rel = json.loads((final / COMPLETE_MARKER).read_text())["path"]
            return final / rel
        if final.exists():  # stale, incomplete folder from an interrupted run
            shutil.rmtree(final)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / COMPLETE_MARKER).exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # lost a race to another process: use its copy
    except OSError as e:
        from privkit.errors import ResourceError

        raise ResourceError(f"cannot generate {name!r} into {root}: {e.strerror or e}; set cache_dir or "
                            f"$PRIVKIT_CACHE to a writable folder") from None
    return final / rel


def _unknown_message(spec: str) -> str:
    try:
        names = ", ".join(list_builtin())
    except ImportError:
        names = "(none installed)"
    return (f"{spec!r} is neither a built-in dataset ({names}) nor a folder/file in a known layout "
            f"({', '.join(LAYOUTS)})")


def load_dataset(spec: str | Path, *, size: int | None = None, seed: int = 0,
                 bins: str | Sequence[str] | Mapping[str, Sequence[float]] | None = None,
                 image_size: int | Sequence[int] | None = None, sample_rate: int | None = None,
                 duration: float | None = None, window: int | None = None, stride: int | None = None,
                 cache_dir: str | Path | None = None, progress: Callable[[int, int], Any] | None = None,
                 layout: str | None = None, **options: Any) -> AttributeDataset:
    """Load a built-in dataset by name or a dataset folder/file in any registered layout.

    Parameters
    ----------
    spec : str or Path
        A built-in name (see :func:`list_builtin`) or a path.
    size, seed : int
        Number of samples and seed of a generated built-in dataset (ignored for paths: an error).
    bins : str, list of str or mapping
        Edges for numeric attributes, e.g. ``["age=25,35"]`` (see :func:`privkit.data.bins.parse_bins`).
    image_size : (H, W) or int
        Resize images to this size (image layouts only).
    sample_rate, duration : int, float
        Common audio rate (Hz) and clip length (s) (audio layouts only).
    window, stride : int
        Motion window length and hop in samples (motion layouts only).
    cache_dir : path
        Where built-in datasets are generated (default ``$PRIVKIT_CACHE`` or ``~/.cache/privkit/datasets``).
    progress : callable ``(done, total)``, optional
    layout : str, optional
        Force a layout instead of detecting it.
    **options
        Layout-specific options (``channels`` for images, ``attributes`` for CelebA).
    """
    opts = LoadOptions(bins=parse_bins(bins), image_size=image_size, sample_rate=sample_rate, duration=duration,
                       window=window, stride=stride, progress=progress)
    check_option_values(opts)
    spec_str = str(spec)
    path = Path(spec_str).expanduser()
    builtin_names: list[str] = []
    if not path.exists():
        try:
            builtin_names = list_builtin()
        except ImportError:
            builtin_names = []
    if spec_str in builtin_names:
        path = builtin_path(spec_str, size=size, seed=seed, cache_dir=cache_dir, progress=progress)
    else:
        if size is not None:
            raise ConfigError(f"size={size} applies to built-in datasets only, not to the path {spec_str}; drop it")
        if not path.exists():
            raise DataError(_unknown_message(spec_str) + "; check the name or path")
        if path.is_dir() and not any(path.iterdir()):
            raise DataError(f"dataset folder {path} is empty; point --data at a folder with samples")
    if layout is None:
        layout = detect_layout(path)
        if layout is None:
            raise DataError(_unknown_message(str(path)) + "; arrange the files as one of those layouts")
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; use one of {', '.join(LAYOUTS)}")
    spec_layout = LAYOUTS[layout]
    for name in SIZE_OPTIONS:
        if getattr(opts, name) is not None and name not in spec_layout.options:
            kind = spec_layout.modality or "array (npz)"
            raise SchemaError(f"{name} applies to {_OPTION_KIND[name]} data but {path} is {kind} data "
                              f"({layout} layout); drop {name}")
    for name, value in options.items():
        if name not in spec_layout.extra_options:
            raise ConfigError(f"unknown option {name!r} for the {layout} layout; it accepts "
                              f"{', '.join(spec_layout.extra_options) or 'no extra options'}")
        opts.extra[name] = value
    return spec_layout.load(path, opts)


def describe(dataset: AttributeDataset) -> dict:
    """Schema, size, class counts and majority-class chance per attribute (for ``datasets info``)."""
    schema = dataset.schema
    attributes = []
    for a in schema.attributes:
        attributes.append({"name": a.name, "identity": a.identity, "num_classes": a.num_classes,
                           "classes": list(a.classes), "counts": dataset.class_counts(a.name),
                           "chance": dataset.chance(a.name)})
    return {
        "root": dataset.root,
        "layout": schema.layout,
        "modality": schema.modality,
        "input_shape": list(schema.input_shape),
        "sample_rate": schema.sample_rate,
        "num_samples": len(dataset),
        "identity_attribute": schema.identity_attribute,
        "attributes": attributes,
        "dropped_attributes": dict(schema.extra.get("dropped_attributes", {})),
        "bins": dict(schema.extra.get("bins", {})),
    }


__all__ = [
    "Attribute", "Schema", "AttributeDataset", "AttributeSubset", "ArrayDataset", "FunctionDataset", "LayoutDataset",
    "LAYOUTS", "WRITERS", "load_dataset", "list_builtin", "describe", "builtin_path", "default_cache_dir",
    "parse_bins", "Split", "split_dataset", "select_forget", "write_released",
]
