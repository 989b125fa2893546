"""Built-in datasets that privkit generates offline, in the on-disk layouts of real datasets.

Each built-in dataset is written by a small generator, deterministic per seed, in exactly the
layout of a real dataset (an image folder with ``attributes.csv``, FSDD, MotionSense, an ``.npz``
file), so that the real loaders in :mod:`privkit.data.loaders` read it and every privkit command
can be demonstrated and tested without a download. Generation is pure numpy/scipy/PIL/soundfile
and takes seconds on a laptop.

Every generated attribute is learnable from the samples (tests check it with a quick held-out
classifier), because a privacy toolkit demonstrated on data whose sensitive attributes cannot be
inferred would demonstrate nothing.

Examples
--------
>>> import tempfile, pathlib
>>> from privkit.data.synthetic import generate, BUILTIN_DATASETS
>>> sorted(BUILTIN_DATASETS)
['digits', 'synthetic-faces', 'synthetic-motion', 'synthetic-speech']
>>> root = generate("synthetic-faces", pathlib.Path(tempfile.mkdtemp()) / "faces", size=48, seed=0)
>>> (root / "attributes.csv").read_text().splitlines()[0]
'path,identity,gender,age,glasses,expression'
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from privkit.errors import ConfigError, DataError, ResourceError

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class BuiltinDataset:
    """One generated dataset.

    Parameters
    ----------
    name : str
        Name users type (``synthetic-faces``).
    description : str
        One line saying what the data holds.
    default_size : int
        Number of samples (images, clips, motion windows) written when no size is given.
    layout : str
        On-disk layout, the same name the loaders use (``image_csv``, ``fsdd``, ``motionsense``,
        ``npz``).
    generate : callable
        ``generate(out_dir: Path, size: int, seed: int, progress) -> None`` writes the files into an
        existing empty folder ``out_dir``; ``progress(done, total)`` (or None) is called as files
        are written.
    min_size : int
        Smallest size the generator accepts (enough samples for every class to appear).
    """

    name: str
    description: str
    default_size: int
    layout: str
    generate: Callable
    min_size: int = 1


BUILTIN_DATASETS: dict[str, BuiltinDataset] = {}


def register_builtin(name: str, description: str, default_size: int, layout: str, min_size: int = 1):
    """Decorator registering ``generate(out_dir, size, seed, progress)`` as built-in ``name``.

    Examples
    --------
    >>> @register_builtin("toy-doc", "doc example", default_size=3, layout="npz")
    ... def _write_toy(out_dir, size, seed, progress):
    ...     pass
    >>> BUILTIN_DATASETS.pop("toy-doc").layout
    'npz'
    """

    def decorator(generate_fn: Callable) -> Callable:
        if name in BUILTIN_DATASETS:
            raise ConfigError(f"built-in dataset {name!r} is registered twice; give the second one another name")
        BUILTIN_DATASETS[name] = BuiltinDataset(
            name=name,
            description=description,
            default_size=int(default_size),
            layout=layout,
            generate=generate_fn,
            min_size=int(min_size),
        )
        return generate_fn

    return decorator


def generate(
    name: str,
    out_dir,
    size: Optional[int] = None,
    seed: int = 0,
    progress: Optional[ProgressCallback] = None,
) -> Path:
    """Write built-in dataset ``name`` into ``out_dir`` and return the folder.

    The files are written into a temporary sibling folder that is renamed to ``out_dir`` only when
    complete, so an interrupted generation never leaves a half-written dataset that looks whole.

    Parameters
    ----------
    name : str
        A key of :data:`BUILTIN_DATASETS`.
    out_dir : str or Path
        Destination folder; it must not exist or be empty.
    size : int, optional
        Number of samples; the dataset's ``default_size`` when None.
    seed : int
        Non-negative seed; the same seed writes byte-identical files.
    progress : callable, optional
        ``progress(done, total)`` called as files are written.

    Returns
    -------
    Path
        ``out_dir``.
    """
    if name not in BUILTIN_DATASETS:
        raise DataError(
            f"unknown built-in dataset {name!r}; known built-in datasets: {', '.join(sorted(BUILTIN_DATASETS))}"
        )
    spec = BUILTIN_DATASETS[name]
    if size is None:
        size = spec.default_size
    if isinstance(size, bool) or not isinstance(size, int) and not hasattr(size, "__index__"):
        raise ConfigError(f"size {size!r} of built-in dataset {name!r} is not an integer; give a whole number")
    size = int(size)
    if size < spec.min_size:
        raise ConfigError(
            f"size {size} is too small for built-in dataset {name!r}; give a size of at least {spec.min_size}"
        )
    if isinstance(seed, bool) or not hasattr(seed, "__index__") or int(seed) < 0:
        raise ConfigError(f"seed {seed!r} is not a non-negative integer; give a seed such as 0")
    seed = int(seed)

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ResourceError(
            f"output folder {out_dir} already exists and is not empty; give a new folder or empty it first"
        )
    parent = out_dir.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ResourceError(f"cannot create the parent folder {parent} ({err.strerror}); choose a writable location")

    # A sibling (same file system) so that the final os.replace is an atomic rename.
    staging = parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        spec.generate(staging, size, seed, progress)
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above); os.replace onto a folder is not portable
        os.replace(staging, out_dir)
    except BaseException:
        # Also on KeyboardInterrupt: never leave a partial folder behind.
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def list_builtin() -> list[str]:
    """Names of the built-in datasets, sorted."""
    return sorted(BUILTIN_DATASETS)


# Importing the generator modules registers them (registries by decorator, no if-chains).
from privkit.data.synthetic import digits, faces, motion, speech  # noqa: E402,F401

__all__ = ["BuiltinDataset", "BUILTIN_DATASETS", "register_builtin", "generate", "list_builtin"]
