"""``privkit datasets list | info | make``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from privkit.cli.common import BinsOpt, handle_errors, load_data, progress_callback

app = typer.Typer(no_args_is_help=True)


@app.command("list")
@handle_errors
def list_datasets() -> None:
    """Built-in datasets (generated offline) and the on-disk layouts privkit reads."""
    from privkit.data import LAYOUTS
    from privkit.data.synthetic import BUILTIN_DATASETS

    typer.echo("built-in datasets (generated offline, deterministic per seed):")
    for name, entry in BUILTIN_DATASETS.items():
        typer.echo(f"  {name:<18} {entry.description} [layout {entry.layout}, default size {entry.default_size}]")
    typer.echo("layouts read from disk: " + ", ".join(sorted(LAYOUTS)))


@app.command("info")
@handle_errors
def info(data: str = typer.Argument(..., help="dataset folder/file or built-in name"),
         size: Optional[int] = typer.Option(None, "--size"), seed: int = typer.Option(0, "--seed"),
         bins: Optional[List[str]] = BinsOpt,
         as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """Schema, class counts and majority-class chance per attribute. Samples are numbered 0..N-1
    in this order; `--forget ids=FILE` uses these numbers."""
    import json

    from privkit.data import describe

    ds = load_data(data, size=size, seed=seed, bins=bins)
    d = describe(ds)
    if as_json:
        typer.echo(json.dumps(d, indent=2, default=str))
        return
    s = ds.schema
    typer.echo(f"{data}: {len(ds)} samples, modality {s.modality}, input shape {list(s.input_shape)}, layout {s.layout}"
               + (f", {s.sample_rate} Hz" if s.sample_rate else ""))
    for a in s.attributes:
        counts = ds.class_counts(a.name)
        shown = ", ".join(f"{c}:{n}" for c, n in list(counts.items())[:12]) + (" ..." if len(counts) > 12 else "")
        tag = " (identity)" if a.identity else ""
        typer.echo(f"  {a.name}{tag}: {a.num_classes} classes, chance {ds.chance(a.name):.3f}  [{shown}]")


@app.command("make")
@handle_errors
def make(name: str = typer.Argument(..., help="built-in dataset name"),
         out: Path = typer.Option(..., "--out", help="folder to write (must not exist)"),
         size: Optional[int] = typer.Option(None, "--size"), seed: int = typer.Option(0, "--seed")) -> None:
    """Generate a built-in dataset into OUT in its real on-disk layout."""
    from privkit.data.synthetic import generate

    path = generate(name, out, size=size, seed=seed, progress=progress_callback(f"generating {name}"))
    typer.secho(f"wrote {name} to {path}", fg=typer.colors.GREEN)
