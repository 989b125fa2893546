"""Train and evaluate attribute classifiers: what ``privkit train`` and ``privkit evaluate`` run.

The split is a function of ``(data, data_seed)`` only, recorded in ``meta.json``, so unlearning and
audits rebuild exactly the same train/val/test samples from a trained model's run folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from privkit.data.datasets import AttributeDataset
from privkit.errors import ConfigError
from privkit.evaluate.metrics import accuracy_with_ci, confusion_matrix, majority_chance
from privkit.evaluate.report import Report, new_figure

VAL_FRACTION = 0.1
TEST_FRACTION = 0.2


@dataclass
class DataSplit:
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def classifier_split(dataset: AttributeDataset, target: str, data_seed: int = 0, val: float = VAL_FRACTION,
                     test: float = TEST_FRACTION) -> DataSplit:
    """Train/val/test split for a classifier of ``target``.

    Grouped by identity (no person in two splits) unless the target *is* the identity, in which
    case the split is closed-set (same people, disjoint samples) and stratified by it.
    """
    from privkit.data.splits import split_dataset

    identity = dataset.schema.identity_attribute
    if target == identity:
        s = split_dataset(dataset, val=val, test=test, seed=data_seed, group_by=None, stratify=target)
    else:
        s = split_dataset(dataset, val=val, test=test, seed=data_seed, group_by="auto", stratify=None)
    return DataSplit(np.asarray(s.train), np.asarray(s.val), np.asarray(s.test))


def evaluate_predictions(model: torch.nn.Module, dataset: AttributeDataset, target: str) -> dict:
    """Accuracy (with Wilson CI), chance, confusion matrix and per-group accuracy of ``model`` on ``dataset``."""
    from privkit.train import predict_logits

    logits, attrs = predict_logits(model, dataset)
    j = dataset.schema.index(target)
    y = attrs[:, j].numpy()
    pred = logits.argmax(1).numpy()
    k = dataset.schema.attribute(target).num_classes
    out = accuracy_with_ci(pred, y)
    out["chance"] = majority_chance(y, k)
    out["confusion"] = confusion_matrix(pred, y, k)
    groups = {}
    for a in dataset.schema.attributes:
        if a.name == target or a.num_classes > 12:
            continue
        col = attrs[:, dataset.schema.index(a.name)].numpy()
        groups[a.name] = {a.classes[c]: float((pred[col == c] == y[col == c]).mean()) for c in np.unique(col)}
    out["accuracy_by_group"] = groups
    return out


def confusion_figure(confusion: np.ndarray, classes: tuple[str, ...], title: str):
    fig = new_figure(4.5, 4.0)
    ax = fig.add_subplot(111)
    ax.imshow(confusion, cmap="Blues")
    if len(classes) <= 15:
        ax.set_xticks(range(len(classes)), labels=[str(c) for c in classes], rotation=90)
        ax.set_yticks(range(len(classes)), labels=[str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig


def add_evaluation(report: Report, result: dict, target: str, classes: tuple[str, ...], split_name: str = "test") -> None:
    report.set_metric("accuracy", result["accuracy"], ci=(result["ci_low"], result["ci_high"]))
    report.set_metric("chance", result["chance"])
    report.set_metric("n_" + split_name, result["n"])
    report.table(f"{target}: {split_name} accuracy", ["attribute", "accuracy", "95% CI", "chance", "samples"],
                 [[target, result["accuracy"], f"[{result['ci_low']:.3f}, {result['ci_high']:.3f}]", result["chance"], result["n"]]])
    for attr, by in result["accuracy_by_group"].items():
        report.table(f"accuracy of {target} within each {attr}", [attr, "accuracy"], [[k, v] for k, v in by.items()])
    report.figure(f"confusion matrix ({split_name})", confusion_figure(result["confusion"], classes, f"{target} ({split_name})"))


def train_run(data_spec: str, target: str, out: Path, *, model_name: str | None = None, epochs: int = 10,
              batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 0.0, seed: int = 0, data_seed: int = 0,
              size: int | None = None, dp: dict | None = None, resume: bool = False, overwrite: bool = False,
              progress: bool = True, dataset: AttributeDataset | None = None, data_options: dict | None = None,
              model_kwargs: dict | None = None, peft: str | None = None, pretrain_epochs: int = 0) -> Path:
    """Train a classifier for one attribute and write a finished run folder (``privkit train``).

    Every check on the inputs happens before the run folder is created.
    """
    from privkit.data import load_dataset
    from privkit.io.rundir import RunDir
    from privkit.models import create, model_meta, save_model
    from privkit.models.registry import default_model, model_entry
    from privkit.train import ClassifierConfig, LoopConfig, train_classifier

    ds = dataset if dataset is not None else load_dataset(data_spec, size=size, seed=0, **(data_options or {}))
    attribute = ds.schema.attribute(target)
    if attribute.num_classes < 2:
        raise ConfigError(f"attribute {target!r} has a single class; choose an attribute with at least two classes")
    model_name = model_name or default_model(ds.schema.modality)
    entry = model_entry(model_name)
    kwargs = dict(model_kwargs or {})
    notes = []
    if dp:
        from privkit.privacy.dp import DPConfig, dp_model_kwargs

        from privkit.distributed import dist_info

        dp_cfg = DPConfig(**dp)
        dp_cfg.validate(len(ds))
        if dist_info().world_size > 1:
            raise ConfigError("--dp under torchrun is not supported (each process would sample and noise on its "
                              "own, and the accountant would count one); run DP training in one process")
        extra, note = dp_model_kwargs(entry.factory)
        kwargs.update(extra)
        notes.append(note)
    split = classifier_split(ds, target, data_seed)
    if len(split.train) == 0 or len(split.test) == 0:
        raise ConfigError(f"the dataset has too few samples ({len(ds)}) to split into train and test; use more data")
    torch.manual_seed(seed)
    model = create(model_name, ds.schema, attribute.num_classes, **kwargs)
    cfg = ClassifierConfig(lr=lr, weight_decay=weight_decay)
    cfg.validate()
    loop = LoopConfig(epochs=epochs, batch_size=batch_size, seed=seed, progress=progress, description=f"train {target}")
    loop.validate()
    config: dict[str, Any] = {
        "data": str(data_spec), "size": size, "target": target, "model": model_name, "model_kwargs": kwargs,
        "epochs": epochs, "batch_size": batch_size, "seed": seed, "data_seed": data_seed,
        "val_fraction": VAL_FRACTION, "test_fraction": TEST_FRACTION, "optim": cfg.to_dict(), "dp": dp,
        "data_options": data_options or {}, "peft": peft, "pretrain_epochs": pretrain_epochs,
    }
    train_set = ds.subset(split.train)
    with RunDir(out, "train", config, resume=resume, overwrite=overwrite) as run:
        epsilon = None
        if dp:
            from privkit.privacy.dp import DPClassifierTask
            from privkit.train import run_training, unwrap

            task = DPClassifierTask(model, train_set, ds.schema.index(target), cfg, dp_cfg, epochs, batch_size, seed)
            history = run_training(task, None, loop, checkpoint_dir=run.checkpoint_dir, resume=resume)
            epsilon = task.epsilon()
            model = unwrap(task.nets["model"])
        else:
            model, history = train_classifier(model, train_set, target, cfg, loop, checkpoint_dir=run.checkpoint_dir,
                                              resume=resume)
        result = evaluate_predictions(model, ds.subset(split.test), target)
        report = Report(f"Classifier for {target!r} on {data_spec}", "train")
        add_evaluation(report, result, target, attribute.classes)
        if dp:
            report.set_metric("epsilon", epsilon)
            report.set_metric("delta", dp["delta"])
            report.set_metric("target_epsilon", dp["target_epsilon"])
            report.set_metric("max_grad_norm", dp["max_grad_norm"])
            report.set_metric("noise_multiplier", task.noise_multiplier)
            report.text(f"DP-SGD (Opacus, RDP accountant): epsilon spent {epsilon:.3f} at delta {dp['delta']:g} "
                        f"(target {dp['target_epsilon']:g}); noise multiplier {task.noise_multiplier:.3f}; "
                        f"per-sample gradients clipped to {dp['max_grad_norm']:g}. " + " ".join(notes), title="Privacy")
        report.table("training history", list(history[0].keys()), [list(h.values()) for h in history])
        meta = model_meta(model, ds.schema, target=target, config=config, metrics=report.to_dict(),
                          data_fingerprint=train_set.fingerprint(),
                          extra={"split_fingerprint": ds.fingerprint(), "history": history})
        if run.main:
            save_model(run.path, model, meta)
            report.write(run.path)
        run.finish()
    return Path(out)


def evaluate_run(model_dir: Path, data_spec: str, out: Path | None = None, *, split: str = "test",
                 size: int | None = None, overwrite: bool = False, dataset: AttributeDataset | None = None) -> tuple[Report, Path | None]:
    """Evaluate a trained classifier on data (``privkit evaluate``)."""
    from privkit.data import load_dataset
    from privkit.io.rundir import RunDir
    from privkit.models import load_model

    model, meta = load_model(model_dir)
    cfg = meta.get("config", {})
    ds = dataset if dataset is not None else load_dataset(data_spec, size=size, seed=0, **cfg.get("data_options", {}))
    target = meta["target"]
    from privkit.data.schema import Schema

    Schema.from_dict(meta["schema"]).check_compatible(ds.schema, "model", attributes=[target])
    if split not in ("test", "val", "train", "all"):
        raise ConfigError(f"--split {split!r} is not one of test, val, train, all")
    if split == "all":
        part = ds
    else:
        s = classifier_split(ds, target, int(cfg.get("data_seed", 0)))
        part = ds.subset(getattr(s, split))
    result = evaluate_predictions(model, part, target)
    report = Report(f"Evaluation of {model_dir} on {data_spec} ({split})", "evaluate")
    add_evaluation(report, result, target, ds.schema.attribute(target).classes, split)
    if out is None:
        return report, None
    with RunDir(out, "evaluate", {"model": str(model_dir), "data": data_spec, "split": split}, overwrite=overwrite) as run:
        report.write(run.path)
        run.finish()
    return report, Path(out)
