"""Run directories: one self-describing folder per command.

A run folder holds ``config.json`` (the resolved options), ``metrics.json``, ``report.html``, the
artifacts, ``log.txt``, ``checkpoints/`` while training, and a ``complete`` marker written last.
Anything without the marker is an interrupted (or still running) run and is never loaded as a
finished artifact.
"""

from __future__ import annotations

import datetime as _dt
import os
import shutil
from pathlib import Path
from typing import Any

from privkit.errors import ArtifactError, ConfigError, ResourceError
from privkit.io.atomic import _describe_os_error, atomic_write_json

COMPLETE = "complete"
CHECKPOINTS = "checkpoints"


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / COMPLETE).is_file()


def require_complete(folder: str | Path, what: str = "run") -> Path:
    """Return ``folder`` if it is a finished run, else raise a one-line :class:`ArtifactError`."""
    folder = Path(folder)
    if not folder.exists():
        raise ArtifactError(f"{what} folder {folder} does not exist; pass the --out folder of a finished privkit run")
    if not folder.is_dir():
        raise ArtifactError(f"{what} {folder} is not a folder; pass the --out folder of a finished privkit run")
    if not is_complete(folder):
        raise ArtifactError(
            f"{what} folder {folder} has no 'complete' marker: it was interrupted or is still running; "
            f"finish it with --resume or run it again"
        )
    return folder


class RunDir:
    """The output folder of one command.

    Use as a context manager: if the command fails with an error before anything worth keeping
    (a checkpoint) exists, a folder this run created is removed, so bad input never leaves a
    half-written output. Ctrl-C keeps the folder (and its last checkpoint) for ``--resume``.

    Parameters
    ----------
    path : path-like
        The ``--out`` folder.
    command : str
        Name of the command, recorded in ``config.json``.
    config : dict
        Resolved options.
    resume : bool
        Continue an interrupted run in ``path``.
    overwrite : bool
        Replace a finished run in ``path``.
    """

    def __init__(self, path: str | os.PathLike, command: str, config: dict[str, Any], *, resume: bool = False,
                 overwrite: bool = False):
        self.path = Path(path)
        self.command = command
        self.config = dict(config)
        self.resume = resume
        self.overwrite = overwrite
        self.created = False
        # under torchrun only rank 0 writes; the other ranks train and skip every write
        from privkit.distributed import is_main_process

        self.main = is_main_process()
        if self.main:
            self._check()

    # -- checks before anything is written ---------------------------------------------------
    def _check(self) -> None:
        p = self.path
        if p.exists() and not p.is_dir():
            raise ConfigError(f"--out {p} is a file, not a folder; choose a folder path")
        if p.is_dir() and any(p.iterdir()):
            if is_complete(p) and not self.overwrite:
                raise ConfigError(f"--out {p} already holds a finished run; choose another --out or pass --overwrite")
            if not is_complete(p) and not self.resume and not self.overwrite:
                what = "an interrupted run" if (p / "config.json").exists() else "other files"
                raise ConfigError(f"--out {p} already holds {what}; pass --resume to continue it or choose another --out")
        parent = p.parent if not p.exists() else p
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not os.access(parent, os.W_OK):
            raise ResourceError(f"cannot write to {parent}: permission denied; choose a writable --out folder")

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def has_checkpoint(self) -> bool:
        return self.checkpoint_dir.is_dir() and any(self.checkpoint_dir.iterdir())

    # -- lifecycle --------------------------------------------------------------------------
    def __enter__(self) -> "RunDir":
        if not self.main:
            return self
        try:
            if self.overwrite and self.path.is_dir():
                shutil.rmtree(self.path)
            self.created = not self.path.exists()
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _describe_os_error(self.path, e) from None
        cfg = dict(self.config, command=self.command)
        atomic_write_json(self.path / "config.json", cfg)
        self.log(f"start {self.command}")
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None or exc_type is KeyboardInterrupt or not self.main:
            return False
        if self.created and not self.has_checkpoint():
            shutil.rmtree(self.path, ignore_errors=True)
        return False

    def log(self, message: str) -> None:
        if not self.main:
            return
        stamp = _dt.datetime.now().isoformat(timespec="seconds")
        try:
            with open(self.path / "log.txt", "a", encoding="utf-8") as f:
                f.write(f"{stamp} {message}\n")
        except OSError as e:
            raise _describe_os_error(self.path / "log.txt", e) from None

    def write_json(self, name: str, obj: Any) -> Path:
        if not self.main:
            return self.path / name
        atomic_write_json(self.path / name, obj)
        return self.path / name

    def finish(self, keep_checkpoints: bool = False) -> Path:
        """Write the ``complete`` marker (last); drop checkpoints unless asked to keep them."""
        if not self.main:
            return self.path
        if not keep_checkpoints and self.checkpoint_dir.exists():
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
        self.log(f"complete {self.command}")
        atomic_write_json(self.path / COMPLETE, {"command": self.command,
                                                   "finished": _dt.datetime.now().isoformat(timespec="seconds")})
        return self.path
