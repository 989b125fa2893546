r"""Train an image-to-image model (``privkit i2i train``) and save/load it as an ``"i2i"`` artifact.

The training objective on a batch :math:`\{x_i\}` with operator mask :math:`m` is

.. math::

    \mathcal L = \frac{\lVert m \odot (D(E(T(x))) - x)\rVert^2}{\lVert m\rVert_1}
               + w\,\frac{\lVert D(E(T(x))) - x\rVert^2}{C H W}

the mean squared error on the hidden region plus ``whole_weight`` :math:`w` times that on the
whole image (the model also reproduces the visible pixels, so its encoder must carry them).

The split is ``split_dataset(ds, val=0.1, test=0.2, seed=data_seed, group_by=None, stratify=target)``:
closed-set (the same identities and classes in every split) so a forget request for a class or a
person has test images of that class/person to evaluate on. ``target`` defaults to the identity
attribute, else the first attribute; ``class=NAME`` forget requests refer to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from privkit.errors import ArtifactError, ConfigError
from privkit.generative.models import create_i2i, i2i_model_entry
from privkit.generative.tasks import MaskOperator, create_operator
from privkit.train import LoopConfig, TrainTask, run_training, unwrap

__all__ = ["I2IConfig", "I2ITask", "reconstruction_loss", "train_i2i", "i2i_split", "default_target", "save_i2i",
           "load_i2i", "train_i2i_run", "KIND", "VAL_FRACTION", "TEST_FRACTION"]

KIND = "i2i"
VAL_FRACTION = 0.1
TEST_FRACTION = 0.2


@dataclass
class I2IConfig:
    """Optimisation recipe of an I2I model (recorded in ``meta.json``; retraining reuses it)."""

    lr: float = 2e-3
    whole_weight: float = 0.5

    def validate(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"--lr {self.lr} must be > 0")
        if not self.whole_weight >= 0:
            raise ConfigError(f"whole_weight {self.whole_weight} must be >= 0")

    def to_dict(self) -> dict:
        return asdict(self)


def reconstruction_loss(output: torch.Tensor, x: torch.Tensor, m: torch.Tensor, whole_weight: float) -> torch.Tensor:
    """Hidden-region MSE + ``whole_weight`` x whole-image MSE (see the module docstring)."""
    sq = (output - x) ** 2
    hidden = (sq * m).sum() / (m.expand_as(sq).sum().clamp_min(1.0))
    return hidden + whole_weight * sq.mean()


class I2ITask(TrainTask):
    """One step: :math:`T(x)` -> model -> :func:`reconstruction_loss` -> Adam."""

    def __init__(self, model: nn.Module, operator: MaskOperator, cfg: I2IConfig):
        self.operator = operator
        self.cfg = cfg
        self.nets = {"model": model}
        self.optimizers = {"model": torch.optim.Adam(model.parameters(), lr=cfg.lr)}

    def step(self, batch, epoch: int, step: int) -> dict[str, float]:
        x, _ = batch
        model = self.nets["model"]
        model.train()
        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        out = model(self.operator(x))
        loss = reconstruction_loss(out, x, self.operator.mask_for(x), self.cfg.whole_weight)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach())}


def train_i2i(model: nn.Module, dataset, operator: MaskOperator, cfg: I2IConfig, loop: LoopConfig,
              checkpoint_dir=None, resume: bool = False) -> tuple[nn.Module, list[dict]]:
    """Train ``model`` on ``dataset`` with the shared loop; returns ``(model, history)``."""
    cfg.validate()
    task = I2ITask(model, operator, cfg)
    history = run_training(task, dataset, loop, checkpoint_dir=checkpoint_dir, resume=resume)
    model = unwrap(task.nets["model"])
    model.eval()
    return model, history


def default_target(schema) -> str:
    """The attribute ``class=`` refers to: the identity attribute, else the first attribute."""
    return schema.identity_attribute or schema.attribute_names[0]


def i2i_split(dataset, data_seed: int = 0, target: str | None = None):
    """Closed-set train/val/test split stratified by ``target`` (see the module docstring)."""
    from privkit.data.splits import split_dataset

    target = target or default_target(dataset.schema)
    return split_dataset(dataset, val=VAL_FRACTION, test=TEST_FRACTION, seed=data_seed, group_by=None, stratify=target)


@torch.no_grad()
def reconstruct(model: nn.Module, operator: MaskOperator, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Completed images: generated pixels inside the hidden region, the input elsewhere."""
    model.eval()
    outs = [model(operator(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    out = torch.cat(outs) if outs else x.clone()
    return operator.composite(x, out)


# -- artifacts --------------------------------------------------------------------------------------

def i2i_meta(model: nn.Module, schema, operator: MaskOperator, *, config: dict, metrics: dict, data_fingerprint: str,
             extra: dict | None = None) -> dict:
    spec = getattr(unwrap(model), "privkit_spec", None) or getattr(model, "privkit_spec", None)
    if spec is None:
        raise ConfigError("model was not created with privkit.generative.models.create_i2i; cannot describe it")
    meta = {"kind": KIND, "architecture": spec["architecture"], "kwargs": spec["kwargs"],
            "input_shape": spec["input_shape"], "schema": schema.to_dict(), "operator": operator.to_dict(),
            "config": config, "metrics": metrics, "data_fingerprint": data_fingerprint,
            "num_parameters": int(sum(p.numel() for p in model.parameters()))}
    meta.update(extra or {})
    return meta


def save_i2i(folder, model: nn.Module, meta: dict) -> Path:
    from privkit.io.artifacts import save_artifact

    return save_artifact(folder, dict(unwrap(model).state_dict()), meta)


def load_i2i(folder) -> tuple[nn.Module, MaskOperator, dict]:
    """``(model, operator, meta)`` from a finished ``privkit i2i train`` / ``i2i unlearn`` run; never unpickles."""
    from privkit.io.artifacts import load_artifact, read_meta
    from privkit.io.rundir import require_complete

    folder = require_complete(folder, "model")
    kind = read_meta(folder).get("kind")
    if kind != KIND:
        raise ArtifactError(f"{folder} holds a {kind!r} model, not an image-to-image model; pass the --out folder of "
                            f"`privkit i2i train`")
    tensors, meta = load_artifact(folder, KIND)
    try:
        model = create_i2i(meta["architecture"], meta["input_shape"], **meta.get("kwargs", {}))
        operator = create_operator(meta["operator"]["name"], meta["operator"]["mask"])
    except (KeyError, TypeError):
        raise ArtifactError(f"{folder}/meta.json lacks architecture/input_shape/operator; re-create the run") from None
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError:
        raise ArtifactError(f"weights in {folder} do not fit I2I architecture {meta['architecture']!r}; "
                            f"the artifact is inconsistent") from None
    model.eval()
    return model, operator, meta


# -- `privkit i2i train` -----------------------------------------------------------------------------

def train_i2i_run(data_spec: str, out, *, model_name: str = "unet", operator_name: str = "center-crop",
                  mask: float = 0.5, epochs: int = 10, batch_size: int = 64, lr: float = 2e-3,
                  whole_weight: float = 0.5, seed: int = 0, data_seed: int = 0, size: int | None = None,
                  target: str | None = None, model_kwargs: dict | None = None, resume: bool = False,
                  overwrite: bool = False, progress: bool = True, dataset=None) -> Path:
    """Train an I2I model and write a finished run folder (``privkit i2i train``).

    Every check on the inputs happens before the run folder is created. The folder holds
    ``weights.safetensors`` + ``meta.json`` (kind ``"i2i"``: architecture, kwargs, input shape,
    schema, operator, config with data/size/data_seed/split fractions), ``metrics.json``
    (test-set PSNR/SSIM of the completed images) and ``report.html``.
    """
    from privkit.data import load_dataset
    from privkit.evaluate.metrics import psnr, ssim
    from privkit.evaluate.report import Report
    from privkit.io.rundir import RunDir

    i2i_model_entry(model_name)
    operator = create_operator(operator_name, mask)
    cfg = I2IConfig(lr=lr, whole_weight=whole_weight)
    cfg.validate()
    loop = LoopConfig(epochs=epochs, batch_size=batch_size, seed=seed, progress=progress, description="train i2i")
    loop.validate()
    ds = dataset if dataset is not None else load_dataset(data_spec, size=size, seed=0)
    if ds.schema.modality != "image":
        raise ConfigError(f"image-to-image models need image data but {data_spec} is {ds.schema.modality} data; "
                          f"use an image dataset")
    operator.check(ds.schema.input_shape)
    target = target or default_target(ds.schema)
    ds.schema.attribute(target)
    split = i2i_split(ds, data_seed, target)
    if len(split.train) == 0 or len(split.test) == 0:
        raise ConfigError(f"the dataset has too few samples ({len(ds)}) to split into train and test; use more data")
    torch.manual_seed(seed)
    model = create_i2i(model_name, ds.schema.input_shape, **(model_kwargs or {}))
    config: dict[str, Any] = {
        "task": "i2i", "data": str(data_spec), "size": size, "model": model_name,
        "model_kwargs": model.privkit_spec["kwargs"], "operator": operator_name, "mask": mask, "target": target,
        "epochs": epochs, "batch_size": batch_size, "seed": seed, "data_seed": data_seed,
        "val_fraction": VAL_FRACTION, "test_fraction": TEST_FRACTION, "optim": cfg.to_dict(),
    }
    train_set = ds.subset(split.train)
    with RunDir(out, "i2i-train", config, resume=resume, overwrite=overwrite) as run:
        model, history = train_i2i(model, train_set, operator, cfg, loop, checkpoint_dir=run.checkpoint_dir,
                                   resume=resume)
        x_test, _ = ds.subset(split.test).materialize()
        completed = reconstruct(model, operator, x_test)
        scores = {"test_psnr": float(np.mean([psnr(a.numpy(), b.numpy()) for a, b in zip(completed, x_test)])),
                  "test_ssim": float(np.mean([ssim(a.numpy(), b.numpy()) for a, b in zip(completed, x_test)])),
                  "final_loss": float(history[-1]["loss"]), "first_loss": float(history[0]["loss"])}
        report = Report(f"{model_name} {operator_name} model on {data_spec}", "i2i-train")
        report.update_metrics(scores)
        report.table("training history", list(history[0].keys()), [list(h.values()) for h in history])
        from privkit.generative.run import image_grid_figure

        report.figure("test images: input, completed, ground truth",
                      image_grid_figure([("input", operator(x_test[:8])[:, :-1]), ("completed", completed[:8]),
                                         ("ground truth", x_test[:8])]))
        meta = i2i_meta(model, ds.schema, operator, config=config, metrics=report.to_dict(),
                        data_fingerprint=train_set.fingerprint(),
                        extra={"split_fingerprint": ds.fingerprint(), "history": history})
        if run.main:
            save_i2i(run.path, model, meta)
            report.write(run.path)
        run.finish()
    return Path(out)
