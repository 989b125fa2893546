"""``privkit unlearn``: one deletion request from a trained model's run folder to a finished run.

Flow (every check on the inputs happens before the run folder is created, so bad input exits
with one line and writes nothing):

1. load the trained model (``load_model``), its recipe (``meta.json`` ``config``) and, for a PEFT
   model, its pretrained values ``w0``;
2. load ``--data`` (with the size/bins the model was trained with unless given), check the
   schemas are compatible and that the training samples are those the model was trained on
   (``data_fingerprint``);
3. rebuild the split ``classifier_split(ds, target, data_seed)`` and select the forget set
   *inside the training samples* with ``select_forget(train, spec, target=target, seed=data_seed)``;
   ``ids=FILE`` indexes the full dataset as ``privkit datasets info`` numbers them. When ``--model``
   is itself an unlearned run, its training data is what it still holds: the samples it (and the
   runs before it) forgot are removed first (``forgotten_ids`` in its ``meta.json``), so requests
   can be chained;
4. run the method (timed: ``RTE``), optionally retrain in the same command (``--compare-retrain``)
   or read a retrain run (``--reference``), compute the metrics, write the unlearned model (a
   loadable classifier artifact with ``unlearned_by``), ``metrics.json`` + ``report.html`` and
   ``receipt.json``. For ``ntk``/``fast-ntk`` served from a kept NTK state the downdated state is
   saved in the run folder too (``ntk_state.safetensors``), so the next request is cheap; the
   report, ``meta.json`` and the receipt show the one-off cost (the state's fit at training time)
   apart from the per-request cost (``ntk_costs``). ``metrics.json`` keeps exactly the
   :data:`~privkit.unlearn.metrics.METRIC_KEYS`.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privkit.errors import ArtifactError, ConfigError, DataError
from privkit.unlearn.base import TrainingRecipe, UnlearnContext, get_unlearner
from privkit.unlearn.metrics import METRIC_KEYS, unlearning_metrics
from privkit.unlearn.receipt import (RECEIPT_FILE, build_receipt, erasure_verdict, forget_ids_sha256, model_sha256,
                                     write_receipt)

__all__ = ["UnlearnRequest", "prepare_request", "unlearn_run", "run_method"]


@dataclass
class UnlearnRequest:
    """A validated deletion request: the model, the data sets and the method, ready to run."""

    model: torch.nn.Module
    meta: dict
    dataset: Any
    retain: Any
    forget: Any
    val: Any
    test: Any
    forget_ids: np.ndarray  # indices in the full dataset
    context: UnlearnContext
    start_model: torch.nn.Module  # the original model, or the --from run's model


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path} is missing; point at a finished `privkit unlearn` run") from None
    except ValueError:
        raise ArtifactError(f"{path} is not valid JSON; the run is corrupt, re-create it") from None


def prepare_request(model_dir: str | Path, data_spec: str, forget_spec: str, *, data_seed: int = 0,
                    seed: int | None = None, size: int | None = None, dataset=None, from_run: str | Path | None = None,
                    progress: bool = False) -> UnlearnRequest:
    """Load and check everything a deletion request needs (raises PrivkitError on bad input)."""
    from privkit.classify import classifier_split
    from privkit.data.schema import Schema
    from privkit.data.splits import select_forget
    from privkit.models import load_model
    from privkit.unlearn.peft import load_w0, training_indices

    model, meta = load_model(model_dir)
    config = meta.get("config") or {}
    target = meta.get("target")
    if not target:
        raise ArtifactError(f"{model_dir} does not record the attribute it predicts (meta.json 'target'); re-train it")
    if dataset is None:
        from privkit.data import load_dataset

        same_data = str(data_spec) == str(config.get("data"))
        # the size (and binning) the model was trained with, unless given: same samples, same split
        ds_size = size if size is not None else (config.get("size") if same_data else None)
        options = (config.get("data_options") or {}) if same_data else {}
        dataset = load_dataset(data_spec, size=ds_size, seed=0, **{k: v for k, v in options.items() if v})
    Schema.from_dict(meta["schema"]).check_compatible(dataset.schema, "model", attributes=[target])
    trained_seed = int(config.get("data_seed", 0))
    if int(data_seed) != trained_seed:
        raise ConfigError(f"--data-seed {data_seed} differs from the data seed {trained_seed} the model was trained "
                          f"with; pass --data-seed {trained_seed} so the split matches its training data")
    split = classifier_split(dataset, target, data_seed)
    train_idx = training_indices(meta, split.train)
    train = dataset.subset(train_idx)
    if meta.get("data_fingerprint") and train.fingerprint() != meta["data_fingerprint"]:
        raise DataError(f"the training samples of --data {data_spec} differ from those {model_dir} was trained on; "
                        f"use the same data (and --size) as `privkit train`")
    train = _still_held(train, meta, model_dir)
    forget_pos, retain_pos = select_forget(train, forget_spec, target=target, seed=data_seed)
    recipe = TrainingRecipe.from_config(config)
    w0 = load_w0(model_dir, meta)
    context = UnlearnContext(target=target, recipe=recipe, w0=w0, seed=int(recipe.seed if seed is None else seed),
                             progress=progress, model_dir=Path(model_dir), model_meta=meta,
                             train_fingerprint=train.fingerprint(), n_train=len(train))
    start = model
    if from_run is not None:
        start, from_meta = load_model(from_run)
        if not from_meta.get("unlearned_by"):
            raise ConfigError(f"--from {from_run} is not an unlearning run; pass the --out folder of `privkit unlearn`")
        if from_meta.get("architecture") != meta.get("architecture") or from_meta.get("kwargs") != meta.get("kwargs"):
            raise ConfigError(f"--from {from_run} holds a {from_meta.get('architecture')!r} model but --model is a "
                              f"{meta.get('architecture')!r}; use runs of the same model")
        Schema.from_dict(from_meta["schema"]).check_compatible(dataset.schema, "--from model", attributes=[target])
        receipt = _read_json(Path(from_run) / RECEIPT_FILE)
        if receipt.get("forget_ids_sha256") != forget_ids_sha256(train.base_indices[forget_pos]):
            raise ConfigError(f"--from {from_run} forgot another set of samples than --forget {forget_spec}; "
                              f"use the same --forget and --data-seed")
    return UnlearnRequest(model=model, meta=meta, dataset=dataset, retain=train.subset(retain_pos),
                          forget=train.subset(forget_pos), val=dataset.subset(split.val),
                          test=dataset.subset(split.test), forget_ids=train.base_indices[forget_pos],
                          context=context, start_model=start)


def _still_held(train, meta: dict, model_dir) -> Any:
    """The training samples an (unlearned) model still holds: ``train`` minus its ``forgotten_ids``."""
    forgotten = meta.get("forgotten_ids")
    if not meta.get("unlearned_by") or forgotten is None:
        return train
    forgotten = np.asarray(forgotten, dtype=np.int64)
    held = ~np.isin(train.base_indices, forgotten)
    if int((~held).sum()) != forgotten.size:
        raise ArtifactError(f"{model_dir} forgot samples outside its training data (meta.json 'forgotten_ids'); "
                            f"the artifact was modified, re-create it")
    remaining = train.subset(np.nonzero(held)[0])
    if meta.get("retain_fingerprint") and remaining.fingerprint() != meta["retain_fingerprint"]:
        raise DataError(f"the samples {model_dir} still holds differ from those it was unlearned on; use the same "
                        f"data (and --size) as `privkit train`")
    return remaining


def run_method(method, request: UnlearnRequest) -> tuple[torch.nn.Module, float, dict]:
    """Run ``method`` on the request; returns ``(unlearned model, seconds, method info)``."""
    context = request.context
    context.info = {}
    context.ntk_state_out = None
    torch.manual_seed(context.seed)
    t0 = time.perf_counter()
    out = method.unlearn(request.start_model, request.retain, request.forget, request.val, context=context)
    seconds = time.perf_counter() - t0
    return out, seconds, dict(context.info)


def _ntk_costs(ntk: dict, seconds: float) -> dict[str, Any]:
    """One-off vs per-request cost of an NTK step (``meta.json``/receipt ``ntk_costs``)."""
    return {"path": ntk.get("path", "one-shot"), "path_reason": ntk.get("path_reason", ""),
            "one_off_seconds": float(ntk.get("one_off_seconds", 0.0)),
            "per_request_seconds": float(ntk.get("per_request_seconds", seconds)), "RTE": float(seconds)}


def _load_reference(reference: str | Path, request: UnlearnRequest) -> dict:
    from privkit.io.rundir import require_complete

    folder = require_complete(reference, "--reference")
    receipt = _read_json(Path(folder) / RECEIPT_FILE)
    if receipt.get("config", {}).get("method") != "retrain":
        raise ConfigError(f"--reference {reference} is a {receipt.get('config', {}).get('method')!r} run, not a "
                          f"retrain run; run `privkit unlearn --method retrain` with the same --forget first")
    if receipt.get("forget_ids_sha256") != forget_ids_sha256(request.forget_ids):
        raise ConfigError(f"--reference {reference} retrained without another forget set than --forget; use the same "
                          f"--forget and --data-seed")
    if receipt.get("model_before_sha256") != model_sha256(request.model):
        raise ConfigError(f"--reference {reference} was retrained for another original model than --model")
    metrics = receipt.get("metrics") or {}
    if any(metrics.get(k) is None for k in ("UA", "RA", "TA", "MIA_efficacy")):
        raise ArtifactError(f"{folder}/{RECEIPT_FILE} lacks UA/RA/TA/MIA_efficacy; re-create the retrain run")
    return metrics


def unlearn_run(model_dir: str | Path, data_spec: str, forget_spec: str, method_name: str, out: str | Path, *,
                reference: str | Path | None = None, compare_retrain: bool = False,
                from_run: str | Path | None = None, data_seed: int = 0, seed: int | None = None,
                epochs: int | None = None, lr: float | None = None, size: int | None = None,
                method_options: dict | None = None, tolerance: float = 5.0, progress: bool = True,
                overwrite: bool = False, dataset=None) -> Path:
    """Run one deletion request and write a finished run folder (``privkit unlearn``).

    Parameters
    ----------
    model_dir : path
        Run folder of the trained model.
    data_spec : str
        The data it was trained on (built-in name or path).
    forget_spec : str
        ``class=NAME | attr=ATTRIBUTE:VALUE | ids=FILE | random=FRACTION``.
    method_name : str
        A registered method (:func:`privkit.unlearn.list_unlearners`).
    reference : path, optional
        A finished ``--method retrain`` run with the same forget set (for ``avg_gap``).
    compare_retrain : bool
        Retrain in this command as the reference.
    from_run : path, optional
        Start from this unlearning run's model (RURK as a post-hoc fix); ``--method rurk`` only.
    epochs, lr : optional
        Method overrides (iterative methods).
    tolerance : float
        Points within which UA and MIA efficacy must match retrain for a positive verdict.

    Returns
    -------
    Path of the run folder, holding ``weights.safetensors`` + ``meta.json`` (kind ``classifier``,
    ``unlearned_by``), ``metrics.json``, ``report.html`` and ``receipt.json``.
    """
    from privkit.evaluate.report import Report
    from privkit.io.rundir import RunDir
    from privkit.models import model_meta, save_model
    from privkit.unlearn.peft import W0_FILE, ntk_state_meta, save_ntk_state

    # -- validation, nothing written yet ---------------------------------------------------------
    params = dict(method_options or {})
    if epochs is not None:
        params["epochs"] = epochs
    if lr is not None:
        params["lr"] = lr
    method = get_unlearner(method_name, **params)
    if reference is not None and compare_retrain:
        raise ConfigError("pass either --reference RUN or --compare-retrain, not both")
    if from_run is not None and method_name != "rurk":
        raise ConfigError(f"--from applies RURK post hoc to an unlearned model; use it with --method rurk, "
                          f"not {method_name!r}")
    if not (tolerance >= 0):
        raise ConfigError(f"--tolerance {tolerance} must be >= 0 points")
    request = prepare_request(model_dir, data_spec, forget_spec, data_seed=data_seed, seed=seed, size=size,
                              dataset=dataset, from_run=from_run, progress=progress)
    if hasattr(method, "check"):
        method.check(request.start_model, request.context)  # e.g. fast-ntk on a model without BN/prompts
    ref_metrics = _load_reference(reference, request) if reference is not None else None
    target = request.context.target
    config: dict[str, Any] = {
        "model": str(Path(model_dir).resolve()), "data": str(data_spec), "forget": forget_spec, "method": method_name,
        "method_options": params, "reference": str(reference) if reference is not None else None,
        "compare_retrain": bool(compare_retrain), "from": str(from_run) if from_run is not None else None,
        "data_seed": int(data_seed), "seed": request.context.seed, "target": target,
        "n_retain": len(request.retain), "n_forget": len(request.forget), "n_test": len(request.test),
        "tolerance": tolerance,
    }

    with RunDir(out, "unlearn", config, overwrite=overwrite) as run:
        timings: dict[str, float] = {}
        infos: dict[str, dict] = {}
        rows_by_name: dict[str, dict] = {}
        if compare_retrain and method_name != "retrain":
            run.log("retraining the reference")
            retrained, seconds, info = run_method(get_unlearner("retrain"), request)
            timings["retrain"] = seconds
            ref_metrics = unlearning_metrics(retrained, request.retain, request.forget, request.test, target, seconds,
                                             seed=request.context.seed)
            ref_metrics["avg_gap"] = 0.0
            rows_by_name["retrain (this run)"] = ref_metrics
        run.log(f"unlearning with {method_name}")
        unlearned, seconds, info = run_method(method, request)
        timings[method_name] = seconds
        infos[method_name] = info
        if method_name == "retrain":
            ref_metrics = None
        metrics = unlearning_metrics(unlearned, request.retain, request.forget, request.test, target, seconds,
                                     reference=ref_metrics, seed=request.context.seed)
        if method_name == "retrain":
            metrics["avg_gap"] = 0.0  # the reference compared with itself
        original = unlearning_metrics(request.model, request.retain, request.forget, request.test, target, 0.0,
                                      reference=ref_metrics, seed=request.context.seed)
        verdict = erasure_verdict(metrics, ref_metrics, tolerance, method_name)

        report = Report(f"Unlearning {forget_spec} from {model_dir} with {method_name}", "unlearn")
        report.update_metrics({k: metrics[k] for k in METRIC_KEYS})
        if ref_metrics is not None and reference is not None:
            rows_by_name[f"retrain ({reference})"] = dict(ref_metrics)
        rows = [["original (before)"] + [original[k] for k in METRIC_KEYS[:-1]] + [original["avg_gap"]]]
        rows += [[name] + [m.get(k) for k in METRIC_KEYS] for name, m in rows_by_name.items()]
        rows.append([method_name] + [metrics[k] for k in METRIC_KEYS])
        report.table("unlearning metrics (UA/RA/TA/MIA in %, RTE in seconds, avg_gap in points vs retrain)",
                     ["model", *METRIC_KEYS], rows)
        if metrics["avg_gap"] is None:
            report.text("avg_gap is null: no retrained reference was given. Pass --compare-retrain to retrain in the "
                        "same command, or --reference RUN with a `--method retrain` run of the same forget set.",
                        title="Why avg_gap is missing")
        report.table("timing (seconds)", ["step", "seconds"], [[k, v] for k, v in timings.items()])
        ntk = infos.get(method_name, {}).get("ntk")
        ntk_costs = None
        state = None
        if ntk:
            report.table("NTK step", ["quantity", "value"],
                         [[k, v] for k, v in ntk.items() if k not in ("timings", "memory")]
                         + [[f"seconds: {k}", v] for k, v in ntk.get("timings", {}).items()])
            ntk_costs = _ntk_costs(ntk, seconds)
            kept = ntk_costs["path"] == "kept-state"
            replay = ntk.get("step") == "replay"
            rows = [["one-off: replay state over D (network linearised along w0 -> w*, recipe replayed over D)"
                     if replay else "one-off: NTK state over D (J^T J, J^T r, eigendecomposition)",
                     ntk_costs["one_off_seconds"],
                     "once, by `privkit train --peft`" if kept else "nothing kept: paid inside every request"],
                    ["per request: " + ("recipe replayed over D_r on the stored linearised network" if replay
                                        else "forget-set Jacobians + downdated solve") if kept
                     else "per request: Jacobians over all of D + " + ("two replays" if replay else "two solves"),
                     ntk_costs["per_request_seconds"], "every deletion request (RTE)"]]
            if request.context.ntk_state_out is not None:
                # move the kept state to D_r for the next request; timed apart from the request itself
                state, ntk_costs["upkeep_seconds"] = request.context.ntk_state_out.commit()
                rows.append(["upkeep: downdate the kept state to D_r (and re-factorise when due)",
                             ntk_costs["upkeep_seconds"], "after every request, so the next one is cheap"])
            report.table("NTK cost: one-off vs per request (seconds)", ["cost", "seconds", "paid"], rows)
            report.text(f"Path: {ntk_costs['path']} ({ntk_costs['path_reason']}).", title="NTK path")
        report.text(f"Forgot {len(request.forget)} of {len(request.forget) + len(request.retain)} training samples "
                    f"({forget_spec}, data seed {data_seed}); method {method_name} with seed {request.context.seed}. "
                    f"UA = 100 - forget accuracy; MIA efficacy = % of forget samples an SVC on true-class confidence "
                    f"(trained retain vs test) calls non-members.", title="Request")
        report.verdict(verdict["text"], verdict["ok"])
        report.metrics.pop("verdict", None)  # metrics.json holds exactly METRIC_KEYS; the verdict is in the receipt

        spec = dict(getattr(request.model, "privkit_spec", {}))
        unlearned.privkit_spec = {k: spec[k] for k in ("architecture", "kwargs", "num_classes")}
        meta = model_meta(unlearned, request.dataset.schema, target=target, config=request.meta.get("config", {}),
                          metrics=report.to_dict(), data_fingerprint=request.meta.get("data_fingerprint", ""),
                          extra={"unlearned_by": method_name, "retain_fingerprint": request.retain.fingerprint(), "unlearn": config,
                                 "original_weights_sha256": request.meta.get("weights_sha256"),
                                 "forget_ids_sha256": forget_ids_sha256(request.forget_ids),
                                 # every sample removed so far (dataset indices): what a further request against
                                 # this model starts from
                                 "forgotten_ids": sorted(set(int(i) for i in request.meta.get("forgotten_ids") or [])
                                                         | set(int(i) for i in request.forget_ids))})
        for key in ("w0_sha256", "w0_file", "peft", "peft_parameters"):
            if key in request.meta:
                meta[key] = request.meta[key]
        if ntk_costs is not None:
            meta["ntk_costs"] = ntk_costs
        if request.context.w0 is not None:
            # keep w0 beside the weights so the unlearned model can serve further NTK requests
            shutil.copyfile(Path(model_dir) / W0_FILE, run.path / W0_FILE)
        if state is not None:
            # the state downdated to D_r: the next request against this model needs only its forget set
            meta.update(ntk_state_meta(state, save_ntk_state(run.path, state), request.retain.fingerprint(),
                                       float(request.meta["ntk_state_fit_seconds"])))
        save_model(run.path, unlearned, meta)
        report.write(run.path)
        receipt = build_receipt(forget_ids=request.forget_ids, model_before=request.start_model if from_run else request.model,
                                model_after=unlearned, config=config,
                                metrics={k: metrics[k] for k in METRIC_KEYS}, verdict=verdict)
        receipt["reference_metrics"] = ref_metrics
        if ntk_costs is not None:
            receipt["ntk_costs"] = ntk_costs
        write_receipt(run.path, receipt)
        run.finish()
    return Path(out)
