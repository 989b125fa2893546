"""Shared CLI plumbing: one-line errors with exit code 2, data options, run folders.

Only ``typer`` is imported at module level so ``privkit --help`` stays instant; torch and the
library are imported inside commands.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def fail(message: str) -> None:
    """Print one red line to stderr and exit with code 2."""
    typer.secho(f"error: {' '.join(str(message).split())}", fg=typer.colors.RED, err=True)
    raise typer.Exit(EXIT_BAD_INPUT)


def handle_errors(fn: Callable) -> Callable:
    """Turn privkit errors into one red line + exit 2, Ctrl-C into a clean exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except KeyboardInterrupt:
            typer.secho("interrupted; finished files and the last checkpoint are intact", fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(EXIT_INTERRUPTED)
        except Exception as e:  # narrowed below: only privkit's own error family is shown as one line
            from privkit.errors import PrivkitError
            from privkit.train import TrainingInterrupted

            if isinstance(e, TrainingInterrupted):
                typer.secho(f"{e}; continue with the same command and --resume", fg=typer.colors.YELLOW, err=True)
                raise typer.Exit(EXIT_INTERRUPTED)
            if isinstance(e, PrivkitError):
                fail(str(e))
            raise

    return wrapper


def parse_list(value: Optional[str]) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def load_data(spec: str, size: Optional[int] = None, seed: int = 0, bins: Optional[list[str]] = None, **kwargs):
    """Resolve ``--data`` (a path or a built-in name) to an AttributeDataset."""
    from privkit.data import load_dataset
    from privkit.data.bins import parse_bins

    parsed = parse_bins(bins or [])
    return load_dataset(spec, size=size, seed=seed, bins=parsed or None, progress=progress_callback("preparing data"),
                        **{k: v for k, v in kwargs.items() if v is not None})


def parse_image_size(value: Optional[str]) -> Optional[tuple[int, int]]:
    """``"32"`` -> (32, 32), ``"56,46"`` -> (56, 46); anything else is a one-line ConfigError."""
    if value is None:
        return None
    from privkit.errors import ConfigError

    parts = parse_list(value)
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) == 1:
        sizes = sizes * 2
    if len(sizes) != 2 or min(sizes) < 1:
        raise ConfigError(f"--image-size {value!r} must be HEIGHT,WIDTH positive integers (or one number), e.g. 32,32")
    return sizes[0], sizes[1]


def progress_callback(description: str):
    """A ``progress(done, total)`` callback drawing a rich progress bar on stderr."""
    state: dict = {}

    def callback(done: int, total: int) -> None:
        if not sys.stderr.isatty():
            return
        from rich.progress import Progress

        if "bar" not in state:
            state["bar"] = Progress(transient=True)
            state["bar"].start()
            state["task"] = state["bar"].add_task(description, total=total)
        state["bar"].update(state["task"], completed=done, total=total)
        if done >= total:
            state["bar"].stop()
            state.clear()

    return callback


def read_metrics(run: Path) -> dict | None:
    """The finished run's ``metrics.json``; ``None`` on non-main ranks under torchrun (only rank 0
    writes, and it may not have written yet), where commands print nothing."""
    import json

    from privkit.distributed import is_main_process

    if not is_main_process():
        return None
    return json.loads((Path(run) / "metrics.json").read_text())


def echo_done(run: Path, what: str = "report") -> None:
    from privkit.distributed import is_main_process

    if not is_main_process():
        return
    typer.secho(f"{what}: {run / 'report.html'}", fg=typer.colors.GREEN)


DataOpt = typer.Option(..., "--data", help="dataset folder/file or built-in name (see `privkit datasets list`)")
SizeOpt = typer.Option(None, "--size", help="number of samples when --data is a built-in dataset")
ImageSizeOpt = typer.Option(None, "--image-size", help="resize images to HEIGHT,WIDTH (or one number for a square) "
                                                       "before training; later commands on the run reuse it")
BinsOpt = typer.Option(None, "--bin", help="bin a numeric attribute into named classes, e.g. age=25,35 (repeatable)")
OutOpt = typer.Option(..., "--out", help="run folder to write")
SeedOpt = typer.Option(0, "--seed", help="training seed")
DataSeedOpt = typer.Option(0, "--data-seed", help="seed of the data split and forget selection (separate from --seed)")
