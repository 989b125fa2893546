"""``privkit anonymize``: model-agnostic biometric anonymization.

A saved anonymizer is applied to new data by ``privkit transform`` (registered with the other saved
transforms; the ``"anonymizer"`` artifact kind is registered in :mod:`privkit.anonymize.artifact`).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from privkit.cli.common import read_metrics, BinsOpt, DataOpt, OutOpt, SizeOpt, echo_done, handle_errors, load_data, parse_list


def register(app: typer.Typer, audit_app: typer.Typer, attack_app: typer.Typer) -> None:
    app.command("anonymize")(anonymize)


@handle_errors
def anonymize(data: str = DataOpt,
              sensitive: str = typer.Option(..., "--sensitive", help="identity attribute to hide (e.g. identity, speaker)"),
              keep: str = typer.Option(..., "--keep", help="attribute to keep (drives feature relevance)"),
              out: Path = OutOpt,
              k: int = typer.Option(5, "--k", help="identities per set: each record is mixed with k-1 other people"),
              weight: float = typer.Option(0.5, "--weight", help="share w in [0, 1] of a record's own relevant features"),
              top_features: float = typer.Option(0.2, "--top-features", help="fraction p in (0, 1] of features treated as relevant"),
              seed: int = typer.Option(0, "--seed", help="seed of the random sets (and the attackers)"),
              size: Optional[int] = SizeOpt, bins: Optional[List[str]] = BinsOpt,
              release: Optional[Path] = typer.Option(None, "--release", help="also write the anonymized data here, in the input's own format"),
              other: Optional[str] = typer.Option(None, "--other", help="attribute not used for relevance to report utility on (default: first other non-identity attribute)"),
              relevance: str = typer.Option("linear", "--relevance", help="relevance scores: linear | mutual_info"),
              weighting: str = typer.Option("hard", "--weighting", help="per-feature weights: hard | soft"),
              pool_size: Optional[int] = typer.Option(None, "--pool-size", help="records kept as the reference pool (default: all)"),
              attackers: str = typer.Option("linear,mlp", "--attackers", help="fresh attackers of the report (linear, mlp, cnn)"),
              curve_k: str = typer.Option("1,2,3,5,8", "--curve-k", help="k values of the privacy-utility curve ('' for none)"),
              curve_attackers: str = typer.Option("linear,mlp", "--curve-attackers", help="attackers of the curve"),
              batch_size: int = typer.Option(256, "--batch-size", help="records anonymized per batch"),
              overwrite: bool = typer.Option(False, "--overwrite", help="replace a finished run in --out")) -> None:
    """Anonymize biometric data (Chen et al., 2024): mix each record with k-1 other people, keep one attribute.

    Writes the anonymizer artifact, metrics.json and report.html to --out (and the release to --release).
    """
    import json

    from privkit.anonymize.run import AnonymizeConfig, anonymize_run
    from privkit.errors import ConfigError

    try:
        ks = tuple(int(v) for v in parse_list(curve_k))
    except ValueError:
        raise ConfigError(f"--curve-k {curve_k!r} is not a list of integers; use e.g. 1,2,3,5,8") from None
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be at least 1")
    cfg = AnonymizeConfig(k=k, weight=weight, top_features=top_features, seed=seed, relevance=relevance,
                          weighting=weighting, pool_size=pool_size, attackers=tuple(parse_list(attackers)),
                          curve_k=ks, curve_attackers=tuple(parse_list(curve_attackers)), other=other, batch_size=batch_size)
    if not cfg.attackers:
        raise ConfigError("--attackers is empty; name at least one of linear, mlp, cnn")
    ds = load_data(data, size=size, bins=bins)
    run = anonymize_run(data, sensitive, keep, out, cfg, dataset=ds, size=size, release_dir=release, overwrite=overwrite)
    m = read_metrics(run)
    if m is None:
        return
    reid, util = m["reidentification"], m["utility"][keep]
    typer.echo(f"re-identification {reid['original']:.3f} -> {reid['released']:.3f} (chance {reid['chance']:.3f}); "
               f"{keep} {util['original']:.3f} -> {util['released']:.3f}; min k {m['achieved_k']['min']}")
    if release is not None:
        typer.secho(f"released: {release}", fg=typer.colors.GREEN)
    echo_done(run)

