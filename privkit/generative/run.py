"""``privkit i2i unlearn``: one deletion request against a trained image-to-image model.

Flow (every check on the inputs happens before the run folder is created, so bad input exits
with one line and writes nothing):

1. load the I2I model (:func:`~privkit.generative.train.load_i2i`; a classifier run is refused),
   its recipe and operator;
2. load ``--data`` (with the size the model was trained with unless given), check the image shape
   and that the training samples are those the model was trained on (``data_fingerprint``);
3. rebuild the split (:func:`~privkit.generative.train.i2i_split`) and select the forget set inside
   the training samples with ``select_forget(train, spec, target=target)``; the forget *test* set
   is the test samples matching the same ``class=``/``attr=`` selection (for ``ids=``/``random=``,
   the forgotten training samples themselves), the retain test set the other test samples;
4. ``--proxy-retain DATA``: the retain set becomes every image of DATA (same image shape);
5. train the metric classifier (:class:`~privkit.generative.metrics.FeatureClassifier`) on the
   training split, run the method (timed), optionally retrain on D_R (``--compare-retrain``,
   timed), score original / unlearned (/ retrained) on the forget and retain test sets, and write
   the model (kind ``"i2i"`` with ``unlearned_by``), ``metrics.json`` and ``report.html`` (image
   grid and PCA plot of encoder embeddings).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privkit.errors import ConfigError, DataError
from privkit.generative.metrics import FeatureClassifier, completion_metrics
from privkit.generative.train import default_target, i2i_split, load_i2i, reconstruct, save_i2i
from privkit.generative.unlearn import I2IRecipe, I2IUnlearnContext, forget_target, get_i2i_unlearner

__all__ = ["I2IRequest", "prepare_i2i_request", "method_params", "run_i2i_method", "score_models", "i2i_unlearn_run",
           "image_grid_figure", "embedding_figure", "METRIC_KEYS"]

#: per-set metrics written to metrics.json as ``<set>_<key>`` (and ``<set>_<key>_original``)
METRIC_KEYS = ("fd", "is", "cosine", "accuracy", "chance", "psnr", "ssim")


@dataclass
class I2IRequest:
    """A validated deletion request for an I2I model."""

    model: torch.nn.Module
    operator: Any
    meta: dict
    dataset: Any
    train: Any
    retain: Any            # what the method uses as D_R (the proxy set with --proxy-retain)
    real_retain: Any       # the retained training samples (retraining always uses these)
    forget: Any
    forget_test: Any
    retain_test: Any
    val: Any
    forget_ids: np.ndarray
    target: str
    forget_attribute: str
    context: I2IUnlearnContext


def _forget_attribute(spec: str, target: str) -> str:
    kind, _, value = str(spec).partition("=")
    if kind.strip() == "attr":
        return value.partition(":")[0].strip()
    return target


def prepare_i2i_request(model_dir, data_spec: str, forget_spec: str, *, proxy_retain: str | None = None,
                        data_seed: int | None = None, seed: int | None = None, size: int | None = None,
                        target: str | None = None, dataset=None, proxy_dataset=None,
                        progress: bool = False) -> I2IRequest:
    """Load and check everything a request needs (PrivkitError on bad input, nothing written)."""
    from privkit.data.schema import Schema
    from privkit.data.splits import select_forget

    model, operator, meta = load_i2i(model_dir)
    config = meta.get("config") or {}
    if dataset is None:
        from privkit.data import load_dataset

        same_data = str(data_spec) == str(config.get("data"))
        ds_size = size if size is not None else (config.get("size") if same_data else None)
        dataset = load_dataset(data_spec, size=ds_size, seed=0)
    Schema.from_dict(meta["schema"]).check_compatible(dataset.schema, "I2I model")
    trained_seed = int(config.get("data_seed", 0))
    if data_seed is not None and int(data_seed) != trained_seed:
        raise ConfigError(f"--data-seed {data_seed} differs from the data seed {trained_seed} the model was trained "
                          f"with; pass --data-seed {trained_seed} (or leave it out)")
    target = target or config.get("target") or default_target(dataset.schema)
    dataset.schema.attribute(target)
    split = i2i_split(dataset, trained_seed, config.get("target") or target)
    train = dataset.subset(split.train)
    if meta.get("data_fingerprint") and train.fingerprint() != meta["data_fingerprint"]:
        raise DataError(f"the training samples of --data {data_spec} differ from those {model_dir} was trained on; "
                        f"use the same data (and --size) as `privkit i2i train`")
    forget_pos, retain_pos = select_forget(train, forget_spec, target=target, seed=trained_seed)
    test = dataset.subset(split.test)
    kind = str(forget_spec).partition("=")[0].strip()
    forget_test = retain_test = None
    if kind in ("class", "attr"):
        try:
            f_test, r_test = select_forget(test, forget_spec, target=target, seed=trained_seed)
            forget_test, retain_test = test.subset(f_test), test.subset(r_test)
        except ConfigError:  # the spec parsed on the training samples: here it matched no (or every) test sample
            forget_test = retain_test = None
    if forget_test is None:  # ids=/random= (or no test sample of the class): score the forgotten samples themselves
        forget_test, retain_test = train.subset(forget_pos), test
    real_retain = train.subset(retain_pos)
    retain = real_retain
    if proxy_retain is not None:
        if proxy_dataset is None:
            from privkit.data import load_dataset

            proxy_dataset = load_dataset(proxy_retain)
        if tuple(proxy_dataset.schema.input_shape) != tuple(dataset.schema.input_shape):
            raise ConfigError(f"--proxy-retain {proxy_retain} has images of shape {list(proxy_dataset.schema.input_shape)}"
                              f" but the model takes {list(dataset.schema.input_shape)}; use images of the same size")
        retain = proxy_dataset
    recipe = I2IRecipe.from_config(config)
    context = I2IUnlearnContext(target=target, operator=operator, i2i_recipe=recipe,
                                seed=int(recipe.seed if seed is None else seed), progress=progress)
    return I2IRequest(model=model, operator=operator, meta=meta, dataset=dataset, train=train, retain=retain,
                      real_retain=real_retain, forget=train.subset(forget_pos), forget_test=forget_test,
                      retain_test=retain_test, val=dataset.subset(split.val), forget_ids=train.base_indices[forget_pos],
                      target=target, forget_attribute=_forget_attribute(forget_spec, target), context=context)


def method_params(method_name: str, *, alpha: float | None = None, epochs: int | None = None,
                  lr: float | None = None, frozen_stages: int | None = None) -> dict:
    """The options a method accepts among ``alpha``/``epochs``/``lr``/``frozen_stages`` (``retrain`` has none of
    ``alpha``/``frozen_stages``)."""
    from privkit.generative.unlearn import I2I_UNLEARNERS

    accepted = inspect.signature(I2I_UNLEARNERS.lookup(method_name).__init__).parameters
    if alpha is not None and not alpha >= 0:
        raise ConfigError(f"--alpha {alpha} must be >= 0 (the paper uses 0.1-0.2)")
    given = {"alpha": alpha, "epochs": epochs, "lr": lr, "frozen_stages": frozen_stages}
    return {k: v for k, v in given.items() if v is not None and k in accepted}


def run_i2i_method(method, request: I2IRequest, retain=None) -> tuple[torch.nn.Module, float, dict]:
    """Run ``method`` on the request; returns ``(model, seconds, info)``."""
    context = request.context
    context.info = {}
    torch.manual_seed(context.seed)
    t0 = time.perf_counter()
    out = method.unlearn(request.model, request.retain if retain is None else retain, request.forget, request.val,
                         context=context)
    return out, time.perf_counter() - t0, dict(context.info)


def score_models(models: dict, request: I2IRequest, evaluator: FeatureClassifier) -> dict:
    """``{name: {"forget": metrics, "retain": metrics}}`` on the forget and retain test sets."""
    out: dict = {name: {} for name in models}
    for set_name, part in (("forget", request.forget_test), ("retain", request.retain_test)):
        x, attrs = part.materialize()
        labels = attrs[:, part.schema.index(request.forget_attribute)].numpy()
        truth_features, truth_probs = evaluator.features_and_probs(x)
        for name, model in models.items():
            completed = reconstruct(model, request.operator, x)
            out[name][set_name] = completion_metrics(completed, x, labels, evaluator, truth_features, truth_probs)
    return out


def flat_metrics(scores: dict, original: dict) -> dict:
    """``forget_fd``, ``forget_fd_original``, ``forget_fd_ratio``, ... as written to metrics.json."""
    flat: dict[str, Any] = {}
    for set_name in ("forget", "retain"):
        for key in METRIC_KEYS:
            flat[f"{set_name}_{key}"] = scores[set_name][key]
            flat[f"{set_name}_{key}_original"] = original[set_name][key]
        before = original[set_name]["fd"]
        flat[f"{set_name}_fd_ratio"] = float(scores[set_name]["fd"] / before) if before > 0 else None
        flat[f"n_{set_name}_test"] = scores[set_name]["n"]
        # the metric classifier on the ground truth itself: the ceiling of <set>_accuracy
        flat[f"{set_name}_truth_accuracy"] = scores[set_name].get("truth_accuracy")
    return flat


# -- figures ----------------------------------------------------------------------------------------

def _to_image(t: torch.Tensor) -> np.ndarray:
    a = t.detach().clamp(0, 1).numpy()
    return a[0] if a.shape[0] == 1 else np.transpose(a[:3], (1, 2, 0))


def image_grid_figure(rows: list[tuple[str, torch.Tensor]], column_titles: list[str] | None = None):
    """A figure with one row per ``(label, images (N, C, H, W))``."""
    from privkit.evaluate.report import new_figure

    n = max(len(imgs) for _, imgs in rows)
    fig = new_figure(1.1 * n + 1.0, 1.15 * len(rows) + 0.3)
    for r, (label, imgs) in enumerate(rows):
        for c in range(n):
            ax = fig.add_subplot(len(rows), n, r * n + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(imgs):
                ax.imshow(_to_image(imgs[c]), cmap="gray", vmin=0, vmax=1)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == 0 and column_titles and c < len(column_titles):
                ax.set_title(column_titles[c], fontsize=7)
    return fig


@torch.no_grad()
def embedding_figure(original, unlearned, operator, x_forget: torch.Tensor, x_retain: torch.Tensor, seed: int = 0):
    """PCA (2-D) of encoder embeddings: forget/retain inputs under both encoders and the noise target."""
    from privkit.evaluate.report import new_figure

    g = torch.Generator().manual_seed(seed)
    _, noise_emb = forget_target(original.encoder, operator, x_forget, g)
    groups = {
        "forget, original": original.embed(operator(x_forget)),
        "forget, unlearned": unlearned.embed(operator(x_forget)),
        "retain, original": original.embed(operator(x_retain)),
        "retain, unlearned": unlearned.embed(operator(x_retain)),
        "noise target E0(T(n))": noise_emb,
    }
    all_z = torch.cat(list(groups.values())).numpy()
    mean = all_z.mean(0)
    _, _, vt = np.linalg.svd(all_z - mean, full_matrices=False)
    fig = new_figure(5.5, 4.2)
    ax = fig.add_subplot(111)
    markers = ["o", "x", "s", "+", "^"]
    for (name, z), mk in zip(groups.items(), markers):
        p = (z.numpy() - mean) @ vt[:2].T
        ax.scatter(p[:, 0], p[:, 1], s=14, marker=mk, label=name, alpha=0.7)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7)
    return fig


@torch.no_grad()
def embedding_distances(original, unlearned, operator, x_forget: torch.Tensor, x_retain: torch.Tensor,
                        seed: int = 0) -> dict:
    """Mean squared distance of forget embeddings to the noise target (before/after) and retain drift."""
    g = torch.Generator().manual_seed(seed)
    _, noise_emb = forget_target(original.encoder, operator, x_forget, g)
    before = original.embed(operator(x_forget))
    after = unlearned.embed(operator(x_forget))
    r0, r1 = original.embed(operator(x_retain)), unlearned.embed(operator(x_retain))
    return {"forget_to_noise_before": float(((before - noise_emb) ** 2).mean()),
            "forget_to_noise_after": float(((after - noise_emb) ** 2).mean()),
            "retain_drift": float(((r1 - r0) ** 2).mean()),
            "retain_scale": float((r0 ** 2).mean())}


# -- `privkit i2i unlearn` -------------------------------------------------------------------------

def i2i_unlearn_run(model_dir, data_spec: str, forget_spec: str, method_name: str, out, *,
                    alpha: float | None = None, proxy_retain: str | None = None, compare_retrain: bool = False,
                    epochs: int | None = None, lr: float | None = None, frozen_stages: int | None = None,
                    data_seed: int | None = None,
                    seed: int | None = None, size: int | None = None, target: str | None = None,
                    eval_epochs: int = 8, eval_on_completions: bool = False, progress: bool = True,
                    overwrite: bool = False, dataset=None, proxy_dataset=None) -> Path:
    """Run one I2I deletion request and write a finished run folder (``privkit i2i unlearn``).

    Returns the run folder: ``weights.safetensors`` + ``meta.json`` (kind ``"i2i"``, ``unlearned_by``),
    ``metrics.json`` (``forget_fd_ratio``, ``retain_fd_ratio``, per-set FD/IS/cosine/accuracy/chance/
    PSNR/SSIM after and ``_original``, ``unlearn_seconds``, ``retrain_seconds`` with
    ``--compare-retrain``) and ``report.html``.

    ``frozen_stages`` keeps the first encoder stages (input side) of an encoder method at the
    original weights (:func:`~privkit.generative.unlearn.freeze_encoder_stages`).

    ``eval_on_completions`` also trains the metric classifier on the original model's completions
    of the training images (with their true labels), for data where a classifier of real images
    misreads completions (:meth:`~privkit.generative.metrics.FeatureClassifier.fit`).
    """
    from privkit.evaluate.report import Report
    from privkit.generative.train import i2i_meta
    from privkit.io.rundir import RunDir

    params = method_params(method_name, alpha=alpha, epochs=epochs, lr=lr, frozen_stages=frozen_stages)
    method = get_i2i_unlearner(method_name, **params)
    if eval_epochs < 1:
        raise ConfigError(f"--eval-epochs {eval_epochs} must be at least 1")
    request = prepare_i2i_request(model_dir, data_spec, forget_spec, proxy_retain=proxy_retain, data_seed=data_seed,
                                  seed=seed, size=size, target=target, dataset=dataset, proxy_dataset=proxy_dataset,
                                  progress=progress)
    if params.get("frozen_stages"):  # refused before the metric classifier trains, not after
        from privkit.generative.unlearn import check_frozen_stages

        check_frozen_stages(request.model, int(params["frozen_stages"]))
    config: dict[str, Any] = {
        "task": "i2i", "model": str(model_dir), "data": str(data_spec), "forget": forget_spec, "method": method_name,
        "method_options": params, "proxy_retain": proxy_retain, "compare_retrain": bool(compare_retrain),
        "seed": request.context.seed, "target": request.target, "forget_attribute": request.forget_attribute,
        "operator": request.operator.to_dict(), "n_retain": len(request.retain), "n_forget": len(request.forget),
        "eval_epochs": eval_epochs, "eval_on_completions": bool(eval_on_completions),
    }
    with RunDir(out, "i2i-unlearn", config, overwrite=overwrite) as run:
        run.log("training the metric classifier")
        evaluator = FeatureClassifier(request.forget_attribute, epochs=eval_epochs, seed=request.context.seed)
        completions = None
        if eval_on_completions:  # teach the classifier what completed images look like (see FeatureClassifier.fit)
            completions = reconstruct(request.model, request.operator, request.train.materialize()[0])
        evaluator.fit(request.train, progress=progress, completions=completions)
        models = {"original": request.model}
        timings: dict[str, float] = {}
        if compare_retrain and method_name != "retrain":
            run.log("retraining on the retain set (reference)")
            retrained, seconds, _ = run_i2i_method(get_i2i_unlearner("retrain"), request, retain=request.real_retain)
            timings["retrain"] = seconds
            models["retrain"] = retrained
        run.log(f"unlearning with {method_name}")
        method_retain = request.real_retain if method_name == "retrain" else None
        unlearned, seconds, info = run_i2i_method(method, request, retain=method_retain)
        timings[method_name] = seconds
        models[method_name] = unlearned
        scores = score_models(models, request, evaluator)
        metrics = flat_metrics(scores[method_name], scores["original"])
        metrics["unlearn_seconds"] = seconds
        if "retrain" in timings:
            metrics["retrain_seconds"] = timings["retrain"]
            metrics["speedup_vs_retrain"] = timings["retrain"] / max(seconds, 1e-9)
            metrics["retrain_forget_fd_ratio"] = flat_metrics(scores["retrain"], scores["original"])["forget_fd_ratio"]
            metrics["retrain_retain_fd_ratio"] = flat_metrics(scores["retrain"], scores["original"])["retain_fd_ratio"]
        xf, _ = request.forget_test.materialize()
        xr, _ = request.retain_test.materialize()
        xr = xr[:max(len(xf), 16)]
        metrics.update(embedding_distances(request.model, unlearned, request.operator, xf, xr,
                                           seed=request.context.seed))

        report = Report(f"I2I unlearning of {forget_spec} from {model_dir} with {method_name}", "i2i-unlearn")
        report.update_metrics(metrics)
        report.update_metrics({"method": method_name, "proxy_retain": proxy_retain})
        headers = ["model", "set", "FD", "IS", "cosine", "accuracy", "accuracy on ground truth", "chance", "PSNR",
                   "SSIM", "n"]
        rows = [[name, set_name] + [s[set_name][k] for k in ("fd", "is", "cosine", "accuracy", "truth_accuracy",
                                                             "chance", "psnr", "ssim", "n")]
                for name, s in scores.items() for set_name in ("forget", "retain")]
        report.table("completion metrics on the test sets (features of privkit's own metric classifier)", headers, rows)
        report.text("FD and IS use the penultimate features and softmax of a small CNN privkit trained in this run on "
                    f"the I2I model's training split to predict {request.forget_attribute!r} ({eval_epochs} epochs"
                    f"{', real images and the original model completions of them' if eval_on_completions else ''}); "
                    "no Inception or CLIP network is downloaded, so values compare runs on the same data only.",
                    title="Which network the metrics use")
        report.table("timing (seconds)", ["step", "seconds"], [[k, v] for k, v in timings.items()])
        ok = (metrics["forget_fd_ratio"] or 0) >= 3 and (metrics["retain_fd_ratio"] or 99) <= 1.1
        report.verdict(f"forget FD x{metrics['forget_fd_ratio']:.2f} of the original model's, retain FD "
                       f"x{metrics['retain_fd_ratio']:.2f} (target: forget >= 3x, retain <= 1.1x)", ok=ok)
        k = min(6, len(xf))
        kr = min(4, len(xr))
        x_show = torch.cat([xf[:k], xr[:kr]])
        rows_fig = [("input", request.operator(x_show)[:, :-1]),
                    ("original", reconstruct(request.model, request.operator, x_show)),
                    (method_name, reconstruct(unlearned, request.operator, x_show)), ("ground truth", x_show)]
        report.figure("forget (left) and retain (right) test images",
                      image_grid_figure(rows_fig, ["forget"] * k + ["retain"] * kr))
        report.figure("encoder embeddings (PCA)", embedding_figure(request.model, unlearned, request.operator, xf, xr,
                                                                 seed=request.context.seed))
        meta = i2i_meta(unlearned, request.dataset.schema, request.operator, config=dict(request.meta.get("config", {})),
                        metrics=report.to_dict(), data_fingerprint=request.meta.get("data_fingerprint", ""),
                        extra={"unlearned_by": method_name, "unlearn_config": config,
                               "forget_ids": [int(i) for i in request.forget_ids]})
        if run.main:
            save_i2i(run.path, unlearned, meta)
            report.write(run.path)
        run.finish()
    return Path(out)
