"""``privkit audit residual``: the auditor's residual-knowledge report, and the ``--fix`` flow.

The forget set is rebuilt exactly as ``privkit unlearn`` built it (same data, ``--data-seed`` and
``--forget``), from the model's own ``meta.json``; the reference must be a model of the same
schema. With ``--fix`` the unlearned model is fine-tuned with RURK and audited again; both
audits share one report, side by side.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from privkit.audit.residual import ResidualResult, residual_knowledge
from privkit.errors import ConfigError
from privkit.evaluate.report import Report, new_figure

DEFAULT_TAUS = (0.01, 0.02, 0.03, 0.05, 0.1)


def parse_taus(text: str | Sequence[float]) -> list[float]:
    if isinstance(text, str):
        try:
            taus = [float(t) for t in text.split(",") if t.strip()]
        except ValueError:
            raise ConfigError(f"--tau {text!r} is not a comma-separated list of numbers, e.g. 0.01,0.03,0.1") from None
    else:
        taus = [float(t) for t in text]
    if not taus:
        raise ConfigError("--tau is empty; give radii such as 0.01,0.03,0.1")
    for t in taus:
        if not (t > 0) or not math.isfinite(t):
            raise ConfigError(f"--tau {t:g} must be a positive radius; e.g. 0.01,0.03,0.1")
    return taus


def _value_range(dataset) -> tuple[float, float] | None:
    """Valid input range for clipping perturbations: [0, 1] for images, none otherwise."""
    return (0.0, 1.0) if dataset.schema.modality == "image" else None


def audit_models(unlearned: torch.nn.Module, reference: torch.nn.Module | None, request, taus, *, norm: str,
                 sampler: str, samples: int, seed: int) -> ResidualResult:
    target_col = request.dataset.schema.index(request.context.target)
    forget_batches = ((x, a[:, target_col]) for _, x, a in request.forget.batches(256))
    heldout = {}
    if reference is None:
        hx, ha = request.test.materialize()
        heldout = {"heldout_x": hx, "heldout_y": ha[:, target_col]}
    return residual_knowledge(unlearned, reference, forget_batches, None, taus=taus, norm=norm, sampler=sampler,
                              samples=samples, seed=seed, clip=_value_range(request.dataset), **heldout)


def audit_request(model_dir, data_spec: str, forget_spec: str, *, data_seed: int = 0, size: int | None = None):
    """The deletion request an unlearned model answered: its forget set, retain set and test split.

    ``prepare_request`` on an unlearned run treats that run as the start of a *further* request: the
    samples it forgot are removed from its training data first (``forgotten_ids``), so ``--forget``
    would select among what it still holds (``class=3`` matches nothing, ``random=0.1`` picks other
    samples). The audit needs the samples it *forgot*, so the request is rebuilt from the model it was
    unlearned from (``meta.json`` ``unlearn.model``) and checked against the forget set it recorded
    (``forget_ids_sha256``); the audited model then replaces that model in the request.
    """
    import json

    from privkit.errors import ArtifactError
    from privkit.models import load_model
    from privkit.unlearn.receipt import forget_ids_sha256
    from privkit.unlearn.run import prepare_request

    meta_path = Path(model_dir) / "meta.json"
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{meta_path} is missing; --model must be a finished run folder") from None
    except ValueError:
        raise ArtifactError(f"{meta_path} is not valid JSON; the run is corrupt, re-create it") from None
    if not (meta.get("unlearned_by") and meta.get("forgotten_ids") is not None):
        # a trained (not unlearned) model: its training data is the whole training split
        return prepare_request(model_dir, data_spec, forget_spec, data_seed=data_seed, size=size, dataset=None)
    origin = (meta.get("unlearn") or {}).get("model")
    if not origin or not Path(origin).is_dir():
        raise ArtifactError(f"{model_dir} was unlearned from {origin!r}, which is not a folder here; run the audit "
                            f"from the directory `privkit unlearn` ran in, so the forget set can be rebuilt")
    request = prepare_request(origin, data_spec, forget_spec, data_seed=data_seed, size=size, dataset=None)
    if meta.get("forget_ids_sha256") and forget_ids_sha256(request.forget_ids) != meta["forget_ids_sha256"]:
        raise ConfigError(f"--forget {forget_spec} selects other samples than {model_dir} forgot; use the --forget "
                          f"and --data-seed of the `privkit unlearn` run")
    model, meta = load_model(model_dir)
    request.model = model
    request.start_model = model
    request.meta = meta
    return request


def _curve_figure(results: dict[str, ResidualResult]):
    fig = new_figure(6, 3.6)
    ax = fig.add_subplot(111)
    for label, res in results.items():
        taus = [r["tau"] for r in res.summary]
        mean = [r["mean_r_tau"] for r in res.summary]
        ax.plot(taus, mean, marker="o", label=f"{label}: mean r_tau")
        ax.fill_between(taus, [r["ci_low"] for r in res.summary], [r["ci_high"] for r in res.summary], alpha=0.2)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("tau (radius of the perturbation ball)")
    ax.set_ylabel("r_tau")
    ax.legend(fontsize=8)
    return fig


def _rates_figure(results: dict[str, ResidualResult]):
    fig = new_figure(6, 3.6)
    ax = fig.add_subplot(111)
    for label, res in results.items():
        taus = [r["tau"] for r in res.summary]
        ax.plot(taus, [r["recognition_unlearned"] for r in res.summary], marker="o", label=f"{label}: unlearned model")
        ax.plot(taus, [r["recognition_reference"] for r in res.summary], marker="x", ls=":", label=f"{label}: reference")
    ax.set_xscale("log")
    ax.set_xlabel("tau")
    ax.set_ylabel("recognition rate of perturbed forget samples")
    ax.legend(fontsize=8)
    return fig


def _sample_figure(dataset, positions: np.ndarray, r_values: np.ndarray, title: str):
    """The forget samples with the highest r_tau: images, spectrograms or signal plots."""
    n = len(positions)
    fig = new_figure(1.8 * max(n, 1), 2.2)
    modality = dataset.schema.modality
    for k, pos in enumerate(positions):
        x, _ = dataset[int(pos)]
        ax = fig.add_subplot(1, max(n, 1), k + 1)
        if modality == "image":
            img = x.numpy()
            ax.imshow(img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0)), cmap="gray", vmin=0, vmax=1)
        elif modality == "audio":
            ax.specgram(x.numpy().reshape(-1), Fs=dataset.schema.sample_rate or 8000, NFFT=256, noverlap=128)
        else:
            arr = x.numpy().reshape(x.shape[0], -1) if x.dim() > 1 else x.numpy()[None]
            for row in arr[:6]:
                ax.plot(row, lw=0.6)
        ax.set_title(f"r={r_values[k]:.2f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return fig


def _add_audit(report: Report, label: str, res: ResidualResult, request, headline_tau: float | None) -> dict:
    metrics = res.to_metrics(headline_tau)
    report.heading(f"{label}")
    report.verdict(res.verdict(headline_tau), ok=metrics["ci_high"] <= 1.0 or metrics["ci_low"] <= 1.0 <= metrics["ci_high"])
    report.table(f"{label}: r_tau over tau ({res.tier} tier)",
                 ["tau", "mean r_tau", "CI low", "CI high", "fraction > 1", "recognised (unlearned)", "recognised (reference)"],
                 [[r["tau"], r["mean_r_tau"], r["ci_low"], r["ci_high"], r["frac_above_1"], r["recognition_unlearned"],
                   r["recognition_reference"]] for r in res.summary])
    top = res.top_samples(6, headline_tau)
    r_head = res.r_tau[res._tau_index(headline_tau)]
    report.figure(f"{label}: forget samples with the highest r_tau", _sample_figure(request.forget, top, r_head[top], label))
    return metrics


def _or_dash(value):
    """A table cell: the value, or a dash where a check did not measure it."""
    return "–" if value is None else value


#: Mean r_tau above which ``--fix`` runs RURK even when no single forget sample exceeds 1
#: (issue 6's target for a fixed model).
FIX_THRESHOLD = 1.05


def audit_residual_run(model_dir: Path, data_spec: str, forget_spec: str, out: Path, *, reference_dir: Path | None = None,
                       taus: Sequence[float] = DEFAULT_TAUS, headline_tau: float | None = None, norm: str = "linf",
                       sampler: str = "uniform", samples: int = 64, seed: int = 0, data_seed: int = 0,
                       size: int | None = None, fix: bool = False, fix_options: dict | None = None,
                       force_fix: bool = False, overwrite: bool = False) -> Path:
    """Audit an unlearned model's residual knowledge (and optionally fix it with RURK).

    With ``fix``, RURK fine-tunes the model only when the audit finds residual knowledge at the
    headline radius (some forget sample with r_tau > 1, or a mean above
    :data:`FIX_THRESHOLD`): fine-tuning a model that passes can only cost utility (on the ORL
    benchmark it cut a model at retrain's test accuracy by 10 points). ``force_fix`` runs RURK
    regardless. Either way the run holds ``fixed-model`` and a ``before``/``after`` pair, and
    ``metrics.json`` says whether the fix was applied (``fix_applied``).

    The reference is handed to RURK (:meth:`~privkit.unlearn.methods_rurk.RURKUnlearner.with_reference`),
    whose :class:`~privkit.audit.rurk.StopRule` stops once fresh perturbations of the forget set are
    no longer recognised more than by the reference, and keeps the accuracy on the *validation*
    split at or above ``min(before, reference) - 1 point`` (roll-back, halved step). The test split
    is only used for the reported ``TA_before``/``TA_after`` (``n_test`` images); ``fix_stop`` and
    ``fix_checks`` record the rule's decisions.
    """
    from privkit.audit.residual import _check_config
    from privkit.data.schema import Schema
    from privkit.io.rundir import RunDir
    from privkit.models import load_model, model_meta, save_model
    from privkit.unlearn.run import run_method

    taus = parse_taus(taus)
    _check_config(taus, norm, sampler, samples, 0.95, "bootstrap", (0.0, 1.0))
    if headline_tau is not None and not any(math.isclose(headline_tau, t) for t in taus):
        raise ConfigError(f"--headline-tau {headline_tau:g} is not in --tau {taus}; add it to the grid")
    request = audit_request(model_dir, data_spec, forget_spec, data_seed=data_seed, size=size)
    reference = None
    if reference_dir is not None:
        reference, ref_meta = load_model(reference_dir)
        Schema.from_dict(ref_meta["schema"]).check_compatible(request.dataset.schema, "reference model",
                                                              attributes=[request.context.target])
        if ref_meta.get("target") != request.context.target:
            raise ConfigError(f"--reference predicts {ref_meta.get('target')!r} but --model predicts "
                              f"{request.context.target!r}; use a reference retrained for the same attribute")
    config = {"model": str(model_dir), "reference": str(reference_dir) if reference_dir else None, "data": data_spec,
              "forget": forget_spec, "taus": taus, "norm": norm, "sampler": sampler, "samples": samples, "seed": seed,
              "data_seed": data_seed, "fix": fix, "fix_options": fix_options or {}, "force_fix": force_fix}
    unlearned = request.model
    with RunDir(out, "audit-residual", config, overwrite=overwrite) as run:
        report = Report(f"Residual-knowledge audit of {model_dir}", "audit-residual")
        report.text("r_tau(x, y) = Pr[m(x') = y] / Pr[a(x') = y] over perturbations x' in the ball B_p(x, tau): the "
                    "unlearned model m against a model a retrained without the forget set. r_tau > 1 means m still "
                    "recognises the neighbourhood of a forgotten sample better than a model that never saw it. "
                    + ("" if reference is not None else "No --reference was given: this is the WEAKER held-out tier, "
                       "comparing with held-out samples of the same class instead of a retrained model."),
                    title="What this measures")
        before = audit_models(unlearned, reference, request, taus, norm=norm, sampler=sampler, samples=samples, seed=seed)
        if not fix:
            metrics = _add_audit(report, "audit", before, request, headline_tau)
            report.update_metrics(metrics)
            report.figure("r_tau over tau (band: confidence interval)", _curve_figure({"audit": before}))
            report.figure("raw recognition rates", _rates_figure({"audit": before}))
        else:
            from privkit.unlearn.base import get_unlearner

            headline = before.to_metrics(headline_tau)
            needs_fix = headline["frac_above_1"] > 0 or headline["mean_r_tau"] > FIX_THRESHOLD
            if needs_fix or force_fix:
                request.start_model = unlearned
                # the stop rule audits against the reference on fresh perturbations and keeps the validation
                # accuracy above min(start, reference) - 1 point (never looks at the test split)
                method = get_unlearner("rurk", **(fix_options or {})).with_reference(reference)
                fixed, seconds, info = run_method(method, request)
                fix_info = info.get("rurk", {})
                after = audit_models(fixed, reference, request, taus, norm=norm, sampler=sampler, samples=samples,
                                     seed=seed)
            else:
                fixed, seconds, after, fix_info = unlearned, 0.0, before, {}
                report.text(f"No residual knowledge at tau={headline['tau']:g}: no forget sample has r_tau > 1 and the "
                            f"mean is {headline['mean_r_tau']:.3f} <= {FIX_THRESHOLD}. RURK was not run, so the model "
                            "keeps its utility; `fixed-model` is the audited model unchanged (pass --fix-always to "
                            "fine-tune anyway).", title="Fix not needed")
            m_before = _add_audit(report, "before RURK", before, request, headline_tau)
            m_after = _add_audit(report, "after RURK" if fixed is not unlearned else "after (unchanged)", after,
                                 request, headline_tau)
            report.update_metrics({"before": m_before, "after": m_after, "fix_seconds": seconds,
                                   "fix_applied": fixed is not unlearned})
            report.figure("r_tau over tau, before and after RURK", _curve_figure({"before": before, "after": after}))
            report.figure("raw recognition rates, before and after RURK", _rates_figure({"before": before, "after": after}))
            from privkit.classify import evaluate_predictions

            ta = {name: evaluate_predictions(m, request.test, request.context.target)["accuracy"]
                  for name, m in (("before", unlearned), ("after", fixed))}
            report.table("utility on the test split", ["model", "test accuracy"], [[k, v] for k, v in ta.items()])
            report.update_metrics({"TA_before": ta["before"], "TA_after": ta["after"], "n_test": len(request.test)})
            if "distill_left_out" in fix_info:
                # classes the retain distillation left out (a forgotten class or identity; see rurk_loss)
                report.update_metrics({"fix_distill_left_out": fix_info["distill_left_out"]})
            rule = fix_info.get("stop_rule")
            if rule is not None:
                report.update_metrics({"fix_stop": rule["stopped"], "fix_checks": rule["checks"]})
                report.table("RURK stop rule (validation split and fresh perturbations; the test split is never used)",
                             ["step", "val accuracy", "mean r_tau (fresh)", "fraction > 1 (fresh)", "action"],
                             [[c.get("step"), _or_dash(c.get("val_accuracy")), _or_dash(c.get("mean_r_tau")), _or_dash(c.get("frac_above_1")),
                               c.get("action", "")] for c in rule["checks"]])
                report.text(f"RURK stopped: {rule['stopped']} (floor on validation accuracy: "
                            + (f"{rule['floor']:.3f}" if rule["floor"] is not None else "none") + ").",
                            title="Why RURK stopped")
            fixed_dir = run.path / "fixed-model"
            meta = model_meta(fixed, request.dataset.schema, target=request.context.target,
                              config=request.meta.get("config", {}), metrics={"TA": ta["after"]},
                              data_fingerprint=request.meta.get("data_fingerprint", ""),
                              extra={"unlearned_by": "rurk", "fixed_from": str(model_dir),
                                     **{k: request.meta[k] for k in ("unlearn", "forget_ids_sha256", "forgotten_ids",
                                                                     "retain_fingerprint") if k in request.meta}})
            save_model(fixed_dir, fixed, meta)
            from privkit.io.atomic import atomic_write_json

            atomic_write_json(fixed_dir / "complete", {"command": "audit-residual --fix"})
        report.write(run.path)
        run.finish()
    return Path(out)
